//! Following the master of a Redis deployment watched by Sentinel.
//!
//! The Sentinels are asked every [`FOLLOW_EVERY`] (and at once when a
//! connection drops) which server is the master, by
//! `SENTINEL get-master-addr-by-name`, which names the replica being
//! promoted as soon as a failover has chosen it; the server named must
//! also say it is a master. A connection never reconnects by itself: one
//! that dropped waits for the Sentinels' answer, so an old master that comes
//! back on its address during a failover (a master again, with what it had)
//! is not written to.
//!
//! A new master is fenced before anyone uses it: its script cache is
//! flushed, so the first reserve meets `NOSCRIPT` and waits for the
//! reconciliation, and the count of master changes goes up, which makes
//! the reconciler take every live round again from the store even on a
//! server whose `run_id` it has seen before (a flip back to a master that
//! kept selling what it had while another served).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::Notify;

use super::redis_topology::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use super::EngineError;

/// How often the Sentinels are asked which server is the master.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EngineError {
    EngineError::unavailable(cause)
}

pub struct Sentinel {
    sentinels: Vec<redis::Client>,
    master_name: String,
    /// The master's address, as last named.
    master: ArcSwap<String>,
    changes: AtomicU64,
    followers: Mutex<Vec<Weak<Follower>>>,
    wake: Arc<Notify>,
    /// One look at a time.
    checking: tokio::sync::Mutex<()>,
}

/// One connection to the master of the moment; none while it is unknown.
pub struct Follower {
    current: ArcSwap<Option<Link>>,
    sentinel: Weak<Sentinel>,
}

/// A connection and the master it goes to.
struct Link {
    address: String,
    conn: MultiplexedConnection,
}

impl Follower {
    /// Sends a request on the current connection; a dropped connection is
    /// given up, for the Sentinels to name the master again.
    pub async fn send<T>(
        &self,
        request: impl AsyncFnOnce(MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let seen = self.current.load_full();
        let Some(link) = seen.as_ref() else {
            self.lost(&seen);
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no Redis master known yet (a Sentinel failover)",
            )));
        };
        let reply = request(link.conn.clone()).await;
        if let Err(e) = &reply {
            if e.is_unrecoverable_error() && !e.is_timeout() {
                self.lost(&seen);
            }
        }
        reply
    }

    /// Masters named since start (see [`Sentinel::changes`]).
    pub fn master_changes(&self) -> u64 {
        self.sentinel.upgrade().map_or(0, |s| s.changes())
    }

    fn lost(&self, seen: &Arc<Option<Link>>) {
        self.current.compare_and_swap(seen, Arc::new(None));
        if let Some(sentinel) = self.sentinel.upgrade() {
            sentinel.wake.notify_one();
        }
    }
}

impl Sentinel {
    /// `nodes`: `H1:P1,H2:P2`; finds the master now, then follows it.
    pub async fn start(nodes: &str, master_name: &str) -> Result<Arc<Self>, EngineError> {
        let sentinels = nodes
            .split(',')
            .map(|n| redis::Client::open(format!("redis://{n}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unavailable(format!("--redis: a Sentinel address: {e}")))?;
        let sentinel = Arc::new(Self {
            sentinels,
            master_name: master_name.to_owned(),
            master: ArcSwap::from_pointee(String::new()),
            changes: AtomicU64::new(0),
            followers: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            checking: tokio::sync::Mutex::new(()),
        });
        let (address, _) = sentinel.find_master().await?;
        sentinel.master.store(Arc::new(address));
        tokio::spawn(follow(Arc::downgrade(&sentinel), sentinel.wake.clone()));
        Ok(sentinel)
    }

    pub fn master(&self) -> String {
        self.master.load().to_string()
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub async fn follower(self: &Arc<Self>) -> Result<Arc<Follower>, EngineError> {
        let (address, client) = self.find_master().await?;
        let conn = connect(&client).await?;
        let follower = Arc::new(Follower {
            current: ArcSwap::from_pointee(Some(Link { address, conn })),
            sentinel: Arc::downgrade(self),
        });
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.retain(|f| f.strong_count() > 0);
        followers.push(Arc::downgrade(&follower));
        Ok(follower)
    }

    /// The master a Sentinel names, once it says it is one.
    async fn find_master(&self) -> Result<(String, redis::Client), EngineError> {
        let mut last_error = unavailable("no Sentinel answered");
        for sentinel in &self.sentinels {
            match self.ask(sentinel).await {
                Ok(found) => return Ok(found),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn ask(&self, sentinel: &redis::Client) -> Result<(String, redis::Client), EngineError> {
        let mut conn = connect(sentinel).await?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (host, port) = named.ok_or_else(|| {
            unavailable(format!(
                "Sentinel knows no master named {}",
                self.master_name
            ))
        })?;
        let address = format!("{host}:{port}");
        let client = redis::Client::open(format!("redis://{address}")).map_err(unavailable)?;
        let mut master = connect(&client).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut master)
            .await
            .map_err(unavailable)?;
        if !info.lines().any(|l| l.trim() == "role:master") {
            return Err(unavailable(format!(
                "{address} is named by Sentinel but not yet a master"
            )));
        }
        Ok((address, client))
    }

    /// Asks the Sentinels; a new master is fenced (see the module's notes),
    /// then every follower without a connection to it gets one.
    async fn check(&self) -> Result<(), EngineError> {
        let _one_at_a_time = self.checking.lock().await;
        let (address, client) = self.find_master().await?;
        if *self.master.load_full() != address {
            let mut conn = connect(&client).await?;
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            tracing::warn!(from = %self.master.load(), to = %address, "Sentinel names a new Redis master: following it");
            metrics::counter!("dropgate_redis_master_changes_total").increment(1);
            self.changes.fetch_add(1, Ordering::AcqRel);
            self.master.store(Arc::new(address.clone()));
        }
        let followers: Vec<Arc<Follower>> = {
            let followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
            followers.iter().filter_map(Weak::upgrade).collect()
        };
        for follower in followers {
            let current = follower.current.load_full();
            if current
                .as_ref()
                .as_ref()
                .is_some_and(|l| l.address == address)
            {
                continue;
            }
            let link = Link {
                address: address.clone(),
                conn: connect(&client).await?,
            };
            follower.current.store(Arc::new(Some(link)));
        }
        Ok(())
    }
}

async fn connect(client: &redis::Client) -> Result<MultiplexedConnection, EngineError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)
}

/// Looks every [`FOLLOW_EVERY`] or when woken, until the deployment's
/// handle is gone.
async fn follow(sentinel: Weak<Sentinel>, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = wake.notified() => {}
        }
        let Some(sentinel) = sentinel.upgrade() else {
            return;
        };
        if let Err(e) = sentinel.check().await {
            tracing::debug!(error = %e, "could not ask the Sentinels for the master");
        }
    }
}
