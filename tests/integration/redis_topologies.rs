//! The Redis topologies beyond one server: a Redis Cluster whose masters
//! hold different drops' rounds, and failovers mid-sale (a cluster master
//! killed, a Sentinel master killed) with `replica_acks = 1`: nothing
//! acknowledged is lost and nothing is resold, checked from the store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::support::*;

const DROP: &str = "fo";
const SKU: &str = "sku";
const STOCK: i64 = 1000;
const LIMIT: i64 = 2;

/// The master that holds `drop`'s round (its stock key), by position.
fn holder_of(masters: &[RedisServer], drop: &str) -> usize {
    let pattern = format!("dg:{{{drop}@*}}:stock");
    masters
        .iter()
        .position(|m| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &m.port.to_string(), "--scan", "--pattern", &pattern])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        })
        .expect("some master holds the round")
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With `replica_acks = 1`: a win `WAIT` cannot confirm in time is answered
/// 503 yet stands (a retry with its key replays it). The storm retries with
/// a new shopper, so the store may hold more orders than 201s: the audit
/// asks that every 201 is stored and that exactly the stock is sold.
fn acked_config() -> (String, Timestamp) {
    let now = Timestamp::now();
    let config = config_head("")
        + "[redis]\nreplica_acks = 1\nreplica_ack_timeout = \"300ms\"\n"
        + &window_drop(DROP, SKU, STOCK, LIMIT, now - hours(1), now + hours(1));
    (config, now)
}

/// After a failover: the storm sold on the new master, and the round was
/// reconciled there (the reconciliation at start comes before the metrics
/// recorder, so it is not counted).
async fn assert_sold_after_the_failover(
    s: &TestServer,
    won: &Arc<Mutex<Vec<String>>>,
    at_kill: usize,
) {
    let sold = won.lock().unwrap().len();
    assert!(sold > at_kill, "nothing sold after the failover ({sold})");
    let metrics = s.http.get_text("/metrics").await;
    let reconciled = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dropgate_redis_reconciliations_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(reconciled >= Some(1), "reconciled {reconciled:?} times");
}

/// Starts a storm on the drop and returns once it has won 60 units.
async fn storm_then_wait(s: &TestServer) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let won = Arc::new(Mutex::new(Vec::new()));
    let storm = tokio::spawn(storm_drop_until_sold_out(
        DROP,
        SKU,
        vec![s.http.clone()],
        won.clone(),
    ));
    wait_for_wins(&won, 60).await;
    (storm, won)
}

async fn wait_for_wins(won: &Arc<Mutex<Vec<String>>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while won.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "never reached {n} wins");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drops_spread_over_the_cluster_masters_and_every_win_is_stored() {
    let cluster = RedisCluster::start(3, 0);
    let now = Timestamp::now();
    let drops: Vec<String> = (0..12).map(|n| format!("d{n}")).collect();
    let mut config = config_head("");
    for drop in &drops {
        config += &window_drop(drop, SKU, 5, 1, now - hours(1), now + hours(1));
    }
    let mut server = TestServer::start_with_engine(&config, now, &cluster.engine()).await;
    for drop in &drops {
        let won = server.http.reserve(drop, SKU, 1, "ann").await;
        assert_eq!(won.status, 201, "{drop}: {:?}", won.body);
        let again = server.http.reserve(drop, SKU, 1, "ann").await;
        assert_eq!(again.error(), "limit_exceeded", "{drop}");
    }
    let holders: std::collections::HashSet<usize> = drops
        .iter()
        .map(|d| holder_of(&cluster.masters, d))
        .collect();
    assert!(holders.len() >= 2, "12 rounds on one master: {holders:?}");

    let ready = server.http.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["redis"]["kind"], "cluster");
    let nodes = ready.body["redis"]["nodes"].as_array().unwrap();
    let masters_up = nodes
        .iter()
        .filter(|n| n["role"] == "master" && n["state"] == "up")
        .count();
    assert_eq!(masters_up, 3, "{nodes:?}");
    let metrics = server.http.get_text("/metrics").await;
    for master in &cluster.masters {
        let line = format!(
            "dropgate_redis_node_up{{address=\"127.0.0.1:{}\"}} 1",
            master.port
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    server.stop().await;
    let audit = server.audit().await;
    assert_eq!(
        audit.count_where("user_id = 'ann'").await,
        12,
        "the writer stored the wins of every master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_master_killed_mid_sale_loses_no_acknowledged_win() {
    let won = cluster_master_killed_mid_sale(acked_config()).await;
    won.audit
        .assert_sold_exactly(&won.ids, &format!("{DROP}@%"), STOCK, LIMIT)
        .await;
}

/// Without `replica_acks` a win the replica had not received when its
/// master died is lost with it (its unit goes back on sale): the audit
/// says how many, and that nothing the store holds was sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_replica_acks_a_cluster_failover_resells_nothing_stored() {
    let now = Timestamp::now();
    let config =
        config_head("") + &window_drop(DROP, SKU, STOCK, LIMIT, now - hours(1), now + hours(1));
    let won = cluster_master_killed_mid_sale((config, now)).await;
    assert_nothing_stored_resold(&won).await;
}

/// The audit without `replica_acks`: what was lost (201s not stored), and
/// that nothing stored was sold twice.
async fn assert_nothing_stored_resold(won: &Sold) {
    let stored = won.audit.order_ids().await;
    let lost = won.ids.iter().filter(|id| !stored.contains(*id)).count();
    eprintln!(
        "without replica_acks: {lost} of {} wins answered 201 or 200 were lost in the failover",
        won.ids.len()
    );
    let live = won.audit.live_units(&format!("{DROP}@%")).await;
    assert!(live <= STOCK, "{live} units live of {STOCK}: resold");
    assert!(won.audit.max_units_per_user().await <= LIMIT);
}

/// What a storm across a cluster failover left: the 201s and the store
/// (the stopped server keeps its files).
struct Sold {
    ids: Vec<String>,
    audit: Audit,
    _server: TestServer,
}

/// A storm on a three-master cluster with a replica each; the master that
/// holds the round is killed (-9) mid-sale and comes back as a replica once
/// its replica has taken over; the storm goes on until sold out.
async fn cluster_master_killed_mid_sale((config, now): (String, Timestamp)) -> Sold {
    let mut cluster = RedisCluster::start(3, 1);
    let mut s = TestServer::start_with_engine(&config, now, &cluster.engine()).await;
    // Found before the storm (the round is set up at start), so the kill
    // comes while it sells.
    let holder = cluster.masters.remove(holder_of(&cluster.masters, DROP));
    let (storm, won) = storm_then_wait(&s).await;
    let at_kill = won.lock().unwrap().len();
    let port = holder.port.to_string();
    let replica = cluster
        .replicas
        .iter()
        .find(|r| r.info_field("replication", "master_port") == port)
        .expect("the holder has a replica");
    // Killed; back (as a replica) only once its replica has taken over.
    let back = holder.kill_then_restart(|| {
        wait_until("the replica promoted", Duration::from_secs(20), || {
            replica.info_field("replication", "role") == "master"
        })
    });
    storm.await.unwrap();
    // Restarted, it believes its old slots for a moment, until the cluster
    // tells it otherwise.
    wait_until("the old master a replica", Duration::from_secs(20), || {
        back.info_field("replication", "role") == "slave"
    });
    assert_sold_after_the_failover(&s, &won, at_kill).await;
    s.stop().await;
    let ids = won.lock().unwrap().clone();
    Sold {
        ids,
        audit: s.audit().await,
        _server: s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_mid_sale_loses_no_acknowledged_win() {
    let won = sentinel_master_killed_mid_sale(acked_config()).await;
    won.audit
        .assert_sold_exactly(&won.ids, &format!("{DROP}@%"), STOCK, LIMIT)
        .await;
}

/// Without `replica_acks`: a win only the old master had is lost when the
/// replica takes over, or voided if Sentinel fails back to the old master
/// after its unit was sold again; nothing the store holds is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_replica_acks_a_sentinel_failover_resells_nothing_stored() {
    let now = Timestamp::now();
    let config =
        config_head("") + &window_drop(DROP, SKU, STOCK, LIMIT, now - hours(1), now + hours(1));
    let won = sentinel_master_killed_mid_sale((config, now)).await;
    assert_nothing_stored_resold(&won).await;
}

/// A storm on a master with one replica under one Sentinel; the master is
/// killed (-9) mid-sale and restarted on its address as soon as Sentinel
/// names the replica (Sentinel may then fail back and forth); the storm
/// goes on until sold out.
async fn sentinel_master_killed_mid_sale((config, now): (String, Timestamp)) -> Sold {
    let master = RedisServer::start();
    let replica = start_replica(&master);
    let sentinel = RedisSentinel::start(&master, 1);
    let engine = dropgate::EngineChoice::Redis {
        url: sentinel.url(),
    };
    let mut s = TestServer::start_with_engine(&config, now, &engine).await;
    let (storm, won) = storm_then_wait(&s).await;
    let at_kill = won.lock().unwrap().len();
    let back = master.kill_then_restart(|| {
        wait_until(
            "Sentinel names the replica",
            Duration::from_secs(20),
            || sentinel.master_port() == replica.port,
        )
    });
    storm.await.unwrap();
    assert_sold_after_the_failover(&s, &won, at_kill).await;
    // Sentinel may fail over more than once (it can judge the new master
    // down before its links settle): /readyz names the master of the moment.
    let metrics = s.http.get_text("/metrics").await;
    assert!(
        metrics.contains("dropgate_redis_master_changes_total"),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = s.http.get("/readyz", None).await;
        assert_eq!(ready.body["redis"]["kind"], "sentinel");
        let named = format!("127.0.0.1:{}", sentinel.master_port());
        if ready.body["redis"]["nodes"][0]["address"] == named.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "{named}: {:?}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
    drop(back);
    let ids = won.lock().unwrap().clone();
    Sold {
        ids,
        audit: s.audit().await,
        _server: s,
    }
}
