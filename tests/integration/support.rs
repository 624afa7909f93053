//! Shared test fixtures: an in-process server on 127.0.0.1:0 with its own
//! temp data dir and a manual clock, a small HTTP client, and direct reads
//! of the SQLite order store.

use rusqlite::OptionalExtension;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use dropgate::clock::{Clock, ManualClock};
use dropgate::config::{Config, SecretSource};
use dropgate::domain::UserId;
use dropgate::{auth, App, Database, EngineChoice};

pub const JWT_SECRET: &str = "test-jwt-secret-of-at-least-32-bytes";
pub const ADMIN_TOKEN: &str = "test-admin-token-of-at-least-32-bytes";
pub const PAYMENT_SECRET: &str = "test-payment-secret-of-at-least-32-bytes";
pub const LOGISTICS_SECRET: &str = "test-logistics-secret-of-at-least-32-bytes";

/// Logs go to the test output only when TEST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

/// Limits so high that only tests about admission control meet them.
pub const OPEN_LIMITS: &str = "global_rps = 10000000\nglobal_burst = 10000000\n\
    per_user_rps = 10000000\nper_user_burst = 10000000\nper_ip_rps = 10000000\n\
    per_ip_burst = 10000000\nmax_in_flight = 1000000";

/// The config file head every test uses; append drops to it.
pub fn config_head(server_extra: &str) -> String {
    config_head_with_limits(OPEN_LIMITS, server_extra)
}

/// The config file head with the given `[limits]` lines.
pub fn config_head_with_limits(limits: &str, server_extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[auth]
jwt_secret = "{JWT_SECRET}"
admin_token = "{ADMIN_TOKEN}"
payment_secret = "{PAYMENT_SECRET}"
logistics_secret = "{LOGISTICS_SECRET}"
[limits]
{limits}
[server]
sweep_interval = "50ms"
shutdown_grace = "5s"
{server_extra}
"#
    )
}

/// A drop with one window and one SKU.
pub fn window_drop(
    id: &str,
    sku: &str,
    stock: i64,
    limit: i64,
    opens: Timestamp,
    closes: Timestamp,
) -> String {
    format!(
        r#"
[[drops]]
id = "{id}"
product = "Phone {id}"
per_user_limit = {limit}
pay_within = "15m"
opens_at = "{opens}"
closes_at = "{closes}"
[[drops.skus]]
id = "{sku}"
name = "8GB+256GB"
price = "1999.00"
stock = {stock}
"#
    )
}

pub fn hours(n: i64) -> SignedDuration {
    SignedDuration::from_hours(n)
}

pub fn token(user: &str) -> String {
    auth::mint(JWT_SECRET, &UserId::parse(user).unwrap(), 3600, false)
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            client,
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .expect("request reaches the server")
    }

    /// Like `send`, but `None` when the connection fails (server gone).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let res = self.client.request(req).await.ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.ok()?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// The body of a GET as text (metrics, say).
    pub async fn get_text(&self, path: &str) -> String {
        let req = Request::builder()
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self
            .client
            .request(req)
            .await
            .expect("request reaches the server");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::GET, path, &headers, Vec::new()).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        self.post_with(path, token, &[], body).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        headers.push(("content-type", "application/json"));
        headers.extend_from_slice(extra);
        self.send(Method::POST, path, &headers, body.as_bytes().to_vec())
            .await
    }

    /// Reserves `quantity` of `sku` in `drop` as `user`.
    pub async fn reserve(&self, drop: &str, sku: &str, quantity: i64, user: &str) -> Reply {
        self.try_reserve(drop, sku, quantity, user)
            .await
            .expect("request reaches the server")
    }

    pub async fn try_reserve(
        &self,
        drop: &str,
        sku: &str,
        quantity: i64,
        user: &str,
    ) -> Option<Reply> {
        let body = format!(r#"{{"sku": "{sku}", "quantity": {quantity}}}"#);
        let auth = format!("Bearer {}", token(user));
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let path = format!("/api/v1/drops/{drop}/reserve");
        self.try_send(Method::POST, &path, &headers, body.into_bytes())
            .await
    }

    /// Reserves with an `Idempotency-Key`; `body` is the raw JSON.
    pub async fn reserve_keyed(&self, drop: &str, user: &str, key: &str, body: &str) -> Reply {
        let path = format!("/api/v1/drops/{drop}/reserve");
        self.post_with(&path, Some(&token(user)), &[("idempotency-key", key)], body)
            .await
    }

    /// Edits `user`'s order at checkout (`PATCH`); `body` is the raw JSON.
    pub async fn edit_order(&self, user: &str, order: &str, body: &str) -> Reply {
        let auth = format!("Bearer {}", token(user));
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let path = format!("/api/v1/orders/{order}");
        self.send(Method::PATCH, &path, &headers, body.as_bytes().to_vec())
            .await
    }

    pub async fn cancel(&self, order: &str, user: &str) -> Reply {
        self.post(
            &format!("/api/v1/orders/{order}/cancel"),
            Some(&token(user)),
            "",
        )
        .await
    }

    /// Sends a payment notice as the gateway does, signed with the payment secret.
    pub async fn notify_payment(&self, notice: &str) -> Reply {
        let signature = dropgate::payment::sign(PAYMENT_SECRET.as_bytes(), notice.as_bytes());
        self.post_with(
            "/api/v1/payments/notify",
            None,
            &[("x-signature", &signature)],
            notice,
        )
        .await
    }

    /// Sends a carrier's notice, signed with the logistics secret.
    pub async fn notify_logistics(&self, notice: &str) -> Reply {
        let signature = dropgate::payment::sign(LOGISTICS_SECRET.as_bytes(), notice.as_bytes());
        self.post_with(
            "/api/v1/logistics/notify",
            None,
            &[("x-signature", &signature)],
            notice,
        )
        .await
    }

    /// Sends the gateway's refund confirmation, signed with the payment secret.
    pub async fn notify_refund(&self, notice: &str) -> Reply {
        let signature = dropgate::payment::sign(PAYMENT_SECRET.as_bytes(), notice.as_bytes());
        self.post_with(
            "/api/v1/payments/refund-notify",
            None,
            &[("x-signature", &signature)],
            notice,
        )
        .await
    }

    /// Calls the admin API with the admin token.
    pub async fn admin(&self, method: Method, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        self.send(method, path, &headers, body.as_bytes().to_vec())
            .await
    }

    /// Units of the first SKU still for sale, as the drop endpoint reports.
    pub async fn remaining(&self, drop: &str) -> u64 {
        self.get(&format!("/api/v1/drops/{drop}"), None).await.body["skus"][0]["remaining"]
            .as_u64()
            .expect("drop has a SKU")
    }
}

/// A dropgate served in this process, with its own data dir and clock.
pub struct TestServer {
    pub http: Http,
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub app: Arc<App>,
    pub db_path: PathBuf,
    pub database: Database,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), dropgate::store::StoreError>>>,
    _dir: Option<TempDir>,
}

impl TestServer {
    /// Starts the embedded engine on a fresh temp dir with the clock at `now`.
    pub async fn start_with_clock(config: &str, now: Timestamp) -> Self {
        Self::start_with_engine(config, now, &EngineChoice::Embedded).await
    }

    /// Starts on a fresh temp dir with the clock at `now`.
    pub async fn start_with_engine(config: &str, now: Timestamp, engine: &EngineChoice) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_on(config, &dir.path().join("orders.db"), now, engine).await;
        server._dir = Some(dir);
        server
    }

    /// Starts the embedded engine on an existing database file, e.g. to restart after a stop.
    pub async fn start_at(config: &str, db_path: &Path, now: Timestamp) -> Self {
        Self::start_on(config, db_path, now, &EngineChoice::Embedded).await
    }

    pub async fn start_on(
        config: &str,
        db_path: &Path,
        now: Timestamp,
        engine: &EngineChoice,
    ) -> Self {
        Self::start_with_database(config, &Database::Sqlite(db_path.to_owned()), now, engine).await
    }

    pub async fn start_with_database(
        config: &str,
        database: &Database,
        now: Timestamp,
        engine: &EngineChoice,
    ) -> Self {
        init_logging();
        let config =
            Config::from_toml(config, SecretSource::Environment).expect("test config is valid");
        let clock = Arc::new(ManualClock::new(now));
        let app = App::open(config, database, engine, clock.clone())
            .await
            .expect("app opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(dropgate::run(listener, app.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            http: Http::new(addr),
            addr,
            clock,
            app,
            db_path: match database {
                Database::Sqlite(path) => path.clone(),
                Database::Postgres(_) => PathBuf::from("(postgres)"),
            },
            database: database.clone(),
            stop: Some(stop),
            served: Some(served),
            _dir: None,
        }
    }

    /// Shuts down gracefully and waits until the order writer is flushed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap().expect("orders flushed");
        }
    }

    pub fn engine(&self) -> &dyn dropgate::engine::InventoryEngine {
        self.app.engine.as_ref()
    }

    /// Reads the order store directly, whichever database it is.
    pub async fn audit(&self) -> Audit {
        Audit::open(&self.database).await
    }

    pub fn db(&self) -> rusqlite::Connection {
        open_db(&self.db_path)
    }
}

pub fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("order store opens")
}

/// Units in live orders (pending payment or paid) of the rounds matching `$1`.
/// Written once for SQLite and PostgreSQL alike (`$1` is a parameter in both).
fn live_units_sql() -> String {
    format!(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM orders \
         WHERE round_id LIKE $1 AND status IN ({})",
        live_statuses()
    )
}

/// The statuses whose orders hold units, from the server's state machine.
fn live_statuses() -> String {
    dropgate::order::OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_live())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The most live units any single user holds in one round.
fn max_units_per_user_sql() -> String {
    format!(
        "SELECT CAST(COALESCE(MAX(units), 0) AS BIGINT) FROM (SELECT SUM(quantity) \
         AS units FROM orders WHERE status IN ({}) GROUP BY round_id, user_id) AS per_user",
        live_statuses()
    )
}

fn sqlite_scalar(db: &rusqlite::Connection, sql: &str, args: &[&str]) -> i64 {
    db.query_row(sql, rusqlite::params_from_iter(args), |r| r.get(0))
        .unwrap()
}

/// Units in live orders (pending payment or paid), from an SQLite file.
pub fn live_units(db: &rusqlite::Connection, round_like: &str) -> i64 {
    sqlite_scalar(db, &live_units_sql(), &[round_like])
}

/// The most live units any single user holds in one round, from an SQLite file.
pub fn max_units_per_user(db: &rusqlite::Connection) -> i64 {
    sqlite_scalar(db, &max_units_per_user_sql(), &[])
}

pub fn order_ids(db: &rusqlite::Connection) -> std::collections::HashSet<String> {
    let mut stmt = db.prepare("SELECT id FROM orders").unwrap();
    let ids = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    ids.map(Result::unwrap).collect()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free loopback port with its files in a temp
/// dir, AOF on with `appendfsync always`; killed when dropped.
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    pub dir: TempDir,
    /// What it was started with, to start it again the same way.
    settings: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, &["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts on `dir` (keeping what an earlier server left there) with extra settings.
    pub fn start_in(mut dir: TempDir, settings: &[&str]) -> Self {
        // Another test may take the free port before redis-server binds it:
        // then our server exits, and we try another port.
        for _ in 0..5 {
            match Self::try_start_on(free_port(), dir, settings) {
                Ok(server) => return server,
                Err(back) => dir = back,
            }
        }
        panic!("redis-server found no free port in five tries");
    }

    /// Starts on a given port, e.g. to come back where a killed server was.
    pub fn start_on(port: u16, dir: TempDir, settings: &[&str]) -> Self {
        Self::try_start_on(port, dir, settings)
            .unwrap_or_else(|_| panic!("redis-server could not listen on port {port}"))
    }

    /// Starts and waits for PONG from our own server; gives the dir back if
    /// the server exited instead (its port was taken).
    fn try_start_on(port: u16, dir: TempDir, settings: &[&str]) -> Result<Self, TempDir> {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .arg("--dir")
            .arg(dir.path())
            .args(settings)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("Redis-mode tests need redis-server on PATH (apt-get install redis-server): {e}"));
        let settings = settings.iter().map(|s| s.to_string()).collect();
        let mut server = Self {
            child,
            port,
            dir,
            settings,
        };
        if server.wait_until_ready() {
            return Ok(server);
        }
        let _ = server.child.wait();
        let dir = tempfile::tempdir().unwrap();
        Err(std::mem::replace(&mut server.dir, dir))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn engine(&self) -> EngineChoice {
        EngineChoice::Redis { url: self.url() }
    }
}

/// A real Redis Cluster on loopback: `masters` masters with `replicas`
/// replicas each, joined by `redis-cli --cluster create`; every node keeps
/// AOF with `appendfsync always`, and fails over after a second's silence.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    pub replicas: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let bus_port = free_port().to_string();
                RedisServer::start_in(
                    tempfile::tempdir().unwrap(),
                    &[
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus_port,
                        "--cluster-node-timeout",
                        "1000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cluster tests need redis-cli on PATH (apt-get install redis-tools): {e}")
            });
        assert!(created.success(), "redis-cli --cluster create failed");
        let mut cluster = Self {
            masters: Vec::new(),
            replicas: Vec::new(),
        };
        for node in nodes {
            match node.info_field("replication", "role").as_str() {
                "master" => cluster.masters.push(node),
                _ => cluster.replicas.push(node),
            }
        }
        assert_eq!(cluster.masters.len(), masters, "masters after create");
        cluster.wait_until_ok();
        cluster
    }

    /// Until every node says the cluster is ok and every replica is in sync.
    pub fn wait_until_ok(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let masters_ok = self
                .masters
                .iter()
                .all(|n| n.info_field_of("CLUSTER", "INFO", "cluster_state") == "ok");
            let replicas_ok = self.replicas.iter().all(|n| {
                n.info_field_of("CLUSTER", "INFO", "cluster_state") == "ok"
                    && n.info_field("replication", "master_link_status") == "up"
            });
            if masters_ok && replicas_ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the Redis Cluster did not come up within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .masters
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    pub fn engine(&self) -> EngineChoice {
        EngineChoice::Redis { url: self.url() }
    }
}

/// 100 shopper loops, each a new user per purchase, until sold out. A 503
/// (Redis down, a failover) is retried after a pause with the same
/// Idempotency-Key, as a shopper's page does: a win that stood is replayed.
/// Collects every 201's (and replay's) order id.
pub async fn storm_drop_until_sold_out(
    drop: &'static str,
    sku: &'static str,
    servers: Vec<Http>,
    won: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut workers = Vec::new();
    for worker in 0..100 {
        let http = servers[worker % servers.len()].clone();
        let won = won.clone();
        workers.push(tokio::spawn(async move {
            let body = format!(r#"{{"sku": "{sku}", "quantity": 1}}"#);
            for n in 0..10_000 {
                let (user, key) = (format!("w{worker}-{n}"), format!("k{worker}-{n}"));
                let reply = loop {
                    let reply = http.reserve_keyed(drop, &user, &key, &body).await;
                    if (reply.status, reply.error()) != (503, "unavailable") {
                        break reply;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                };
                match (reply.status, reply.error()) {
                    (201 | 200, _) => won
                        .lock()
                        .unwrap()
                        .push(reply.body["id"].as_str().unwrap().to_owned()),
                    (409, "sold_out") => return,
                    (status, error) => panic!("unexpected {status} {error}"),
                }
            }
            panic!("never sold out");
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
}

/// A real `redis-sentinel` on loopback watching one master as `dg`
/// (quorum 1), judging it down after half a second of silence.
pub struct RedisSentinel {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts and waits until it knows the master and `replicas` replicas of it.
    pub fn start(master: &RedisServer, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor dg 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds dg 500\n\
                 sentinel failover-timeout dg 3000\n",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("Sentinel tests need redis-sentinel on PATH (apt-get install redis-sentinel): {e}"));
        let sentinel = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while sentinel.known_replicas() < replicas {
            assert!(
                std::time::Instant::now() < deadline,
                "Sentinel never saw {replicas} replicas"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        sentinel
    }

    fn known_replicas(&self) -> usize {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SENTINEL", "replicas", "dg"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // One `flags` field per replica; a healthy one is just `slave`.
        let lines: Vec<&str> = text.lines().collect();
        lines
            .windows(2)
            .filter(|w| w[0] == "flags" && w[1] == "slave")
            .count()
    }

    /// The port of the server Sentinel names as master now.
    pub fn master_port(&self) -> u16 {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "SENTINEL",
                "get-master-addr-by-name",
                "dg",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/dg", self.port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica of `master` on loopback (AOF always, like its master), once in sync.
pub fn start_replica(master: &RedisServer) -> RedisServer {
    let replica = RedisServer::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--replicaof",
            "127.0.0.1",
            &master.port.to_string(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while replica.info_field("replication", "master_link_status") != "up" {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never linked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    replica
}

/// A connection of the test's own to a test Redis.
pub async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Calls of one command Redis has served so far (scripts' calls included).
pub async fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let mut conn = redis_conn(redis).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

impl RedisServer {
    /// One field of `INFO <section>`, read with redis-cli ("" if absent).
    pub fn info_field(&self, section: &str, field: &str) -> String {
        self.info_field_of("INFO", section, field)
    }

    /// One `field:value` line of a command's text answer, e.g. `CLUSTER INFO`.
    pub fn info_field_of(&self, command: &str, section: &str, field: &str) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), command, section])
            .output()
            .unwrap_or_else(|e| {
                panic!("tests need redis-cli on PATH (apt-get install redis-tools): {e}")
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// True once the server answers PING; false if it exited first.
    fn wait_until_ready(&mut self) -> bool {
        use std::io::{Read, Write};
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    // Answered by our server, not one that already held the port.
                    return self
                        .child
                        .try_wait()
                        .map_or(true, |exited| exited.is_none());
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Sends a signal to the server, e.g. `-STOP` and `-CONT` to stall it.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Kills the server (SIGKILL) and starts it again on its port, with
    /// its files and settings, once `meanwhile` has run.
    pub fn kill_then_restart(self, meanwhile: impl FnOnce()) -> Self {
        let (port, settings) = (self.port, self.settings.clone());
        let dir = self.kill();
        meanwhile();
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        Self::start_on(port, dir, &settings)
    }

    /// Stops the server at once, as a crash would (SIGKILL), keeping its files.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Direct reads of the order store for the invariants, SQLite or PostgreSQL.
pub enum Audit {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl Audit {
    pub async fn open(database: &Database) -> Self {
        match database {
            Database::Sqlite(path) => Audit::Sqlite(open_db(path)),
            Database::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                Audit::Postgres(client)
            }
        }
    }

    /// One number from a query with at most one parameter (`$1`).
    async fn scalar(&self, sql: &str, args: &[&str]) -> i64 {
        match self {
            Audit::Sqlite(db) => sqlite_scalar(db, sql, args),
            Audit::Postgres(client) => {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
                    .iter()
                    .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                client
                    .query_one(sql, &params)
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        }
    }

    /// Stored orders matching an SQL condition the test writes itself.
    pub async fn count_where(&self, condition: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM orders WHERE {condition}");
        self.scalar(&sql, &[]).await
    }

    /// Units in live orders of the rounds matching `round_like`.
    pub async fn live_units(&self, round_like: &str) -> i64 {
        self.scalar(&live_units_sql(), &[round_like]).await
    }

    /// The most live units one user holds in one round.
    pub async fn max_units_per_user(&self) -> i64 {
        self.scalar(&max_units_per_user_sql(), &[]).await
    }

    pub async fn order_ids(&self) -> std::collections::HashSet<String> {
        match self {
            Audit::Sqlite(db) => order_ids(db),
            Audit::Postgres(client) => {
                let rows = client.query("SELECT id FROM orders", &[]).await.unwrap();
                rows.iter().map(|r| r.get::<_, String>(0)).collect()
            }
        }
    }

    /// The invariants after a storm: no order id answered twice, every 201
    /// a row, exactly `stock` units live in the rounds matching `round_like`
    /// (I1: nothing oversold or lost), nobody above `limit` (I2).
    pub async fn assert_sold_exactly(
        &self,
        won: &[String],
        round_like: &str,
        stock: i64,
        limit: i64,
    ) {
        let unique: std::collections::HashSet<&String> = won.iter().collect();
        assert_eq!(unique.len(), won.len(), "no order id answered twice");
        let rows = self.order_ids().await;
        let lost: Vec<_> = won.iter().filter(|id| !rows.contains(*id)).collect();
        assert!(lost.is_empty(), "201s missing from the store: {lost:?}");
        assert_eq!(
            self.live_units(round_like).await,
            stock,
            "exactly the stock sold"
        );
        assert!(
            self.max_units_per_user().await <= limit,
            "nobody above the limit"
        );
    }

    pub async fn status_of(&self, id: &str) -> String {
        self.stored_status(id).await.expect("the order is stored")
    }

    /// The types of the order's events in the store, oldest first.
    pub async fn event_types(&self, order: &str) -> Vec<String> {
        let sql = "SELECT type FROM order_events WHERE order_id = $1 ORDER BY id";
        match self {
            Audit::Sqlite(db) => {
                let mut stmt = db.prepare(sql).unwrap();
                stmt.query_map([order], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Audit::Postgres(client) => client
                .query(sql, &[&order])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect(),
        }
    }

    /// The order's status, or None while the store does not have it.
    pub async fn stored_status(&self, id: &str) -> Option<String> {
        let sql = "SELECT status FROM orders WHERE id = $1";
        match self {
            Audit::Sqlite(db) => db.query_row(sql, [id], |r| r.get(0)).optional().unwrap(),
            Audit::Postgres(client) => client
                .query_opt(sql, &[&id])
                .await
                .unwrap()
                .map(|row| row.get(0)),
        }
    }
}

/// A real PostgreSQL on a free loopback port with its cluster in a temp dir
/// (initdb, trust auth on loopback only); killed when dropped. PostgreSQL
/// refuses to run as root, so as root it runs as `nobody`.
pub struct PostgresServer {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// A PostgreSQL program, run as `nobody` when the tests run as root.
fn postgres_command(program: &str) -> std::process::Command {
    let path = postgres_bin_dir().join(program);
    if running_as_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(path);
        command
    } else {
        std::process::Command::new(path)
    }
}

impl PostgresServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            std::process::Command::new("chown")
                .arg("nobody")
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let initdb = postgres_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        // A free port can be taken by another test's server before
        // postgres binds it: then postgres exits, and it starts again on
        // another port.
        let port = free_port();
        let child = Self::spawn(dir.path(), port);
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..3 {
            match server.wait_until_ready() {
                Ok(()) => return server,
                Err(Exited) => {
                    server.port = free_port();
                    server.child = Self::spawn(server._dir.path(), server.port);
                }
                Err(NotReady) => break,
            }
        }
        panic!(
            "PostgreSQL on port {} never became ready; its log:\n{}",
            server.port,
            server.log()
        );
    }

    fn spawn(dir: &Path, port: u16) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .expect("the postgres log opens");
        postgres_command("postgres")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts")
    }

    /// The server's log (its last 4 kB).
    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self._dir.path().join("postgres.log")).unwrap_or_default();
        let mut start = text.len().saturating_sub(4096);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }

    /// Stops the server as `pg_ctl stop -m fast` does (SIGINT to the
    /// postmaster: every session is cut), waits for it to exit, then starts
    /// it again on the same data and port.
    pub fn restart_fast(&mut self) {
        self.stop_fast();
        self.start_again();
    }

    pub fn stop_fast(&mut self) {
        let stopped = postgres_command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self._dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(stopped.success(), "pg_ctl stop -m fast failed");
        let _ = self.child.wait();
    }

    pub fn start_again(&mut self) {
        self.child = Self::spawn(self._dir.path(), self.port);
        if let Err(e) = self.wait_until_ready() {
            panic!(
                "PostgreSQL on port {} did not come back ({e:?}); its log:\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the postmaster and every
    /// backend under it, to stall or resume the whole server.
    pub fn signal_all(&self, signal: &str) {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let children = std::process::Command::new("pgrep")
                .args(["-P", &pids[i].to_string()])
                .output()
                .expect("pgrep runs");
            pids.extend(
                String::from_utf8_lossy(&children.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            i += 1;
        }
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn database(&self) -> Database {
        Database::Postgres(self.url())
    }

    /// Waits up to 30 s for the server to take connections.
    fn wait_until_ready(&mut self) -> Result<(), NotStarted> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let ready = std::process::Command::new(postgres_bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(Exited);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        Err(NotReady)
    }
}

/// Why a PostgreSQL the tests started does not answer.
#[derive(Debug)]
enum NotStarted {
    /// The postmaster exited (its port taken, say).
    Exited,
    /// Still starting after the wait.
    NotReady,
}
use NotStarted::{Exited, NotReady};

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|bin| bin.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL-mode tests need PostgreSQL (apt-get install postgresql)")
        })
}

/// Starts the binary and reads the address it prints once it listens.
pub fn spawn_dropgate(config: &Path, data_dir: &Path) -> (Child, SocketAddr) {
    spawn_dropgate_with(config, data_dir, &[])
}

pub fn spawn_dropgate_with(
    config: &Path,
    data_dir: &Path,
    extra: &[String],
) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "error")
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

/// Stops a child with SIGTERM (drain, flush) and waits for it.
pub fn terminate(mut child: Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(child.wait().unwrap().success(), "dropgate exited uncleanly");
}

/// A dropgate child process that is killed if the test panics before it
/// stops it, so a failed test leaves no server running.
pub struct Running(Option<Child>);

impl Running {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Stops it with SIGTERM and checks that it exits cleanly.
    pub fn terminate(mut self) {
        terminate(self.0.take().expect("running"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
