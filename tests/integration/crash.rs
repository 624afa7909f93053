//! The real `dropgate` binary killed with SIGKILL in the middle of a storm,
//! restarted on the same data dir: no 201 is ever lost, and no more than the
//! stock is ever sold.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use crate::support::*;

const STOCK: i64 = 300;

/// Starts the binary and reads the address it prints once it listens.
fn spawn_dropgate(config: &Path, data_dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the dropgate binary starts");
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let addr = first_line
        .trim()
        .strip_prefix("dropgate listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// 150 concurrent shoppers' loops, each reserving one unit per new user,
/// until the server is gone or the round is sold out; every 201 is recorded.
async fn storm(addr: SocketAddr, first_user: usize, won: Arc<Mutex<Vec<String>>>) -> bool {
    let http = Http::new(addr);
    let mut workers = Vec::new();
    for worker in 0..150 {
        let http = http.clone();
        let won = won.clone();
        workers.push(tokio::spawn(async move {
            for n in 0..1000 {
                let user = format!("crash-{}", first_user + worker * 1000 + n);
                match http.try_reserve("crash", "sku", 1, &user).await {
                    Some(reply) if reply.status == 201 => won
                        .lock()
                        .unwrap()
                        .push(reply.body["id"].as_str().unwrap().to_owned()),
                    Some(reply) if reply.error() == "sold_out" => return true,
                    Some(reply) => panic!("unexpected {} {:?}", reply.status, reply.body),
                    None => return false,
                }
            }
            false
        }));
    }
    let mut sold_out = false;
    for worker in workers {
        sold_out |= worker.await.unwrap();
    }
    sold_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_storm_loses_no_win_and_never_oversells() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let config_path = dir.path().join("dropgate.toml");
    let config =
        config_head("") + &window_drop("crash", "sku", STOCK, 2, now - hours(1), now + hours(1));
    std::fs::write(&config_path, config).unwrap();
    let data_dir = dir.path().join("data");
    let won = Arc::new(Mutex::new(Vec::new()));

    let (mut child, addr) = spawn_dropgate(&config_path, &data_dir);
    let killer = {
        let won = won.clone();
        tokio::spawn(async move {
            // Kill once some units are sold and the storm is in full swing.
            while won.lock().unwrap().len() < 60 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            child.kill().expect("SIGKILL delivered");
            child.wait().unwrap();
        })
    };
    let sold_out_before_kill = storm(addr, 0, won.clone()).await;
    killer.await.unwrap();
    assert!(
        !sold_out_before_kill,
        "the kill came after the sell-out; raise STOCK"
    );
    let won_before_kill = won.lock().unwrap().len();
    assert!((60..STOCK as usize).contains(&won_before_kill));
    eprintln!("won before kill: {won_before_kill}");

    let (mut child, addr) = spawn_dropgate(&config_path, &data_dir);
    let sold_out = storm(addr, 1_000_000, won.clone()).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sold_out, "selling resumed after the restart until sold out");

    let db = open_db(&data_dir.join("orders.db"));
    let rows = order_ids(&db);
    let won = won.lock().unwrap();
    let unique: HashSet<&String> = won.iter().collect();
    assert_eq!(unique.len(), won.len(), "no order id answered twice");
    let lost: Vec<_> = won.iter().filter(|id| !rows.contains(*id)).collect();
    assert!(lost.is_empty(), "201s lost in the crash: {lost:?}");
    assert_eq!(
        live_units(&db, "crash@%"),
        STOCK,
        "exactly the stock is sold over both runs"
    );
    assert!(max_units_per_user(&db) <= 2);
}
