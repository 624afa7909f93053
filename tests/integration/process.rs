//! The real `dropgate` binary as a child process: killed with SIGKILL in the
//! middle of a storm and restarted on the same data dir (no 201 is ever lost,
//! no more than the stock is ever sold), stopped with SIGTERM (drains and
//! exits cleanly), and its `token` command.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use crate::support::*;

const STOCK: i64 = 300;

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
    kill_9_mid_storm(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_storm_in_redis_mode_loses_no_win_and_never_oversells() {
    let redis = RedisServer::start();
    kill_9_mid_storm(&["--redis".into(), redis.url()]).await;
}

/// Kills dropgate with SIGKILL once 60 units are sold, restarts it on the
/// same data dir, sells out, stops it gracefully, then reads the store.
async fn kill_9_mid_storm(engine_args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), STOCK);
    let data_dir = dir.path().join("data");
    let won = Arc::new(Mutex::new(Vec::new()));

    let (mut child, addr) = spawn_dropgate_with(&config_path, &data_dir, engine_args);
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

    let (child, addr) = spawn_dropgate_with(&config_path, &data_dir, engine_args);
    let sold_out = storm(addr, 1_000_000, won.clone()).await;
    terminate(child);
    assert!(sold_out, "selling resumed after the restart until sold out");

    let won = won.lock().unwrap().clone();
    let db = Audit::open(&dropgate::Database::Sqlite(data_dir.join("orders.db"))).await;
    db.assert_sold_exactly(&won, "crash@%", STOCK, 2).await;
}

fn write_config(dir: &Path, stock: i64) -> std::path::PathBuf {
    let now = Timestamp::now();
    let path = dir.join("dropgate.toml");
    let config =
        config_head("") + &window_drop("crash", "sku", stock, 2, now - hours(1), now + hours(1));
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_storm_drains_requests_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), 100_000);
    let data_dir = dir.path().join("data");
    let won = Arc::new(Mutex::new(Vec::new()));
    let (mut child, addr) = spawn_dropgate(&config_path, &data_dir);
    let pid = child.id().to_string();
    let terminator = {
        let won = won.clone();
        tokio::spawn(async move {
            while won.lock().unwrap().len() < 200 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success());
            tokio::task::spawn_blocking(move || child.wait().unwrap())
                .await
                .unwrap()
        })
    };
    storm(addr, 0, won.clone()).await;
    let exit = terminator.await.unwrap();
    assert!(exit.success(), "dropgate exited with {exit}");

    let rows = order_ids(&open_db(&data_dir.join("orders.db")));
    let won = won.lock().unwrap();
    let lost: Vec<_> = won.iter().filter(|id| !rows.contains(*id)).collect();
    assert!(lost.is_empty(), "201s without rows after SIGTERM: {lost:?}");
}

#[test]
fn the_token_command_mints_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), 1);
    let output = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .args(["token", "--user", "alice", "--ttl", "600", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = dropgate::auth::TokenVerifier::new(JWT_SECRET);
    let shopper = verifier
        .verify(Some(&format!("Bearer {}", token.trim())))
        .unwrap();
    assert_eq!(shopper.user.as_str(), "alice");

    let refused = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .args(["token", "--user", "not valid"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn an_invalid_config_stops_start_up_naming_drop_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 1);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("pay_within = \"15m\"", "pay_within = \"soon\"");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"crash\"") && stderr.contains("pay_within"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_server_keeps_accepting_after_running_out_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), 10);
    let data_dir = dir.path().join("data");
    // A descriptor limit far below the connection cap, so accept() fails with EMFILE.
    let script = format!(
        "ulimit -n 64 && exec {} serve --config {} --data-dir {}",
        env!("CARGO_BIN_EXE_dropgate"),
        config_path.display(),
        data_dir.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let addr: SocketAddr = first_line
        .trim()
        .trim_start_matches("dropgate listening on http://")
        .parse()
        .unwrap();

    // More connections than descriptors, but fewer than the listen backlog.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(flood);

    let http = Http::new(addr);
    let mut served = false;
    for _ in 0..100 {
        if let Some(reply) = http
            .try_send(hyper::Method::GET, "/healthz", &[], Vec::new())
            .await
        {
            served = reply.status == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(served, "the server stopped accepting after EMFILE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_sharing_redis_and_postgres_never_oversell() {
    let redis = RedisServer::start();
    let postgres = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), STOCK);
    let args = [
        "--redis".to_owned(),
        redis.url(),
        "--database".to_owned(),
        postgres.url(),
    ];
    let (first, first_addr) = spawn_dropgate_with(&config_path, &dir.path().join("a"), &args);
    let (second, second_addr) = spawn_dropgate_with(&config_path, &dir.path().join("b"), &args);
    let won = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = tokio::join!(
        storm(first_addr, 0, won.clone()),
        storm(second_addr, 500_000, won.clone())
    );
    assert!(a && b, "both instances sold until sold out");
    terminate(first);
    terminate(second);

    let won = won.lock().unwrap().clone();
    let db = Audit::open(&postgres.database()).await;
    db.assert_sold_exactly(&won, "crash@%", STOCK, 2).await;
}
