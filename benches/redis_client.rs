//! The Redis engine's hot path: one `EVALSHA` of `lua/reserve.lua` from 50
//! concurrent tasks, through a cloned multiplexed connection (what dropgate
//! uses) against a deadpool-redis pool checkout per call (whose recycle
//! pings Redis on every checkout). Starts its own redis-server (AOF off:
//! this measures the client side) on a free loopback port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::Script;

const TASKS: u64 = 50;

/// The server process and its temp dir, both gone when dropped.
pub struct RedisServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server on a free loopback port; `appendonly` is "no" or "yes"
/// (with `appendfsync always`, as dropgate's durable setting).
pub fn start_redis_with(appendonly: &str) -> (RedisServer, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("this bench needs redis-server (apt-get install redis-server)");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (
        RedisServer { child, _dir: dir },
        format!("redis://127.0.0.1:{port}"),
    )
}

fn start_redis() -> (RedisServer, String) {
    start_redis_with("no")
}

/// One reserve alone in a call of the script (a batch of one): every check
/// passes, the winner is appended. This compares connections, not batching.
async fn reserve(script: &Script, conn: &mut impl ConnectionLike, n: u64) {
    let keys =
        ["stock", "held", "keys", "orders", "live", "winners"].map(|k| format!("dg:{{bench}}:{k}"));
    let mut call = script.key(&keys[0]);
    for key in &keys[1..] {
        call.key(key);
    }
    let (code, _): (i64, String) = call
        .arg(1)
        .arg(0)
        .arg(0)
        .arg(i64::MAX)
        .arg("sku")
        .arg(1)
        .arg(i64::MAX)
        .arg(format!("u{}", n % 2000))
        .arg("")
        .arg("")
        .arg(format!("o{n}"))
        .arg(r#"{"id":"o","drop_id":"bench","round_id":"bench@x","sku":"sku","quantity":1}"#)
        .invoke_async(conn)
        .await
        .unwrap();
    assert_eq!(code, 1);
}

pub fn connections(c: &mut Criterion) {
    let (_server, url) = start_redis();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let script = Arc::new(Script::new(include_str!("../lua/reserve.lua")));
    let client = redis::Client::open(url.as_str()).unwrap();
    let multiplexed = rt
        .block_on(redis::aio::ConnectionManager::new(client.clone()))
        .unwrap();
    let mut setup = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let _: () = rt
        .block_on(
            redis::cmd("HSET")
                .arg("dg:{bench}:stock")
                .arg("sku")
                .arg(i64::MAX / 2)
                .query_async(&mut setup),
        )
        .unwrap();
    let mut config = deadpool_redis::Config::from_url(url.as_str());
    config.pool = Some(PoolConfig {
        max_size: TASKS as usize,
        timeouts: Timeouts {
            wait: Some(Duration::from_secs(1)),
            create: Some(Duration::from_secs(1)),
            recycle: Some(Duration::from_secs(1)),
        },
        ..PoolConfig::default()
    });
    let pool = config.create_pool(Some(Runtime::Tokio1)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("redis_reserve");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(
        BenchmarkId::new("multiplexed_clone", format!("{TASKS}_tasks")),
        |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (script, conn) = (script.clone(), multiplexed.clone());
                spread(iters, counter.clone(), move |n| {
                    let (script, mut conn) = (script.clone(), conn.clone());
                    async move { reserve(&script, &mut conn, n).await }
                })
            });
        },
    );
    group.bench_function(
        BenchmarkId::new("deadpool_checkout", format!("{TASKS}_tasks")),
        |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (script, pool) = (script.clone(), pool.clone());
                spread(iters, counter.clone(), move |n| {
                    let (script, pool) = (script.clone(), pool.clone());
                    async move {
                        let mut conn = pool.get().await.unwrap();
                        reserve(&script, &mut conn, n).await
                    }
                })
            });
        },
    );
    group.finish();
}

/// Makes `iters` calls of `call` from `TASKS` concurrent tasks; the time taken.
async fn spread<F, Fut>(iters: u64, counter: Arc<AtomicU64>, call: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (call, counter) = (call.clone(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..iters.div_ceil(TASKS) {
                    call(counter.fetch_add(1, Ordering::Relaxed)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}
