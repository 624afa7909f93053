//! Redis never knows less than the order store (I7). A round Redis does not
//! know (a first sale, or a restart without persistence) and every live
//! round after Redis may have rolled back (a restart from an older
//! snapshot or AOF, a failover to a lagging replica) is reconciled from the
//! store before it sells again: its live orders, their holdings, the
//! idempotency keys and order ids, the restocks.
//!
//! How a rollback is noticed: a Redis server's `run_id` changes with every
//! restart and differs on every server. `reconcile.lua` writes, in the same
//! step that settles a round, the `run_id` of the server it ran on to the
//! round's own `reconciled_under` key; a server holding the round whose
//! `run_id` differs from that key (a restart, a snapshot, a replica promoted
//! by Sentinel or by the cluster, or a flush that took the key too) may know
//! less than the store. Kept per round, the mark lives on the master that
//! holds the round, so on a cluster each master is judged by itself. The
//! mark is shared, so after a restart one instance reconciles and the
//! others see the work done, and an instance that restarts while Redis
//! stays up reconciles nothing. The check (`lua/identity.lua`) runs at
//! start, every [`WATCH_EVERY`], and before `reserve.lua` is loaded into a
//! Redis that answered `NOSCRIPT`: scripts are kept in no snapshot, AOF or
//! replica, so a restarted or promoted Redis always answers the first
//! reserve that way, and decides nothing before this check has run
//! (`redis_batches.rs`).
//!
//! How selling stops meanwhile, on every instance: the round's stock hash is
//! deleted first (the fence). `reserve.lua` answers "not set up" for a round
//! without stock, so every instance's reserves wait for a reconciliation
//! (`reconcile.lua` creates the stock again) instead of selling stale units.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use jiff::Timestamp;
use redis::{AsyncCommands, Script};
use tokio::sync::Mutex;

use super::redis_engine::unavailable;
use super::redis_keys::{RoundKeys, ROUNDS};
use super::redis_topology::RedisConn;
use super::EngineError;
use crate::catalog::LiveCatalog;
use crate::domain::RoundId;
use crate::schedule::Phase;
use crate::store::{restocked_units, OrderStore, StoreError, StoredOrder, RECOVERY_READ_TIMEOUT};

/// How often every instance reads Redis's identity.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long a request waits for a set-up or reconciliation before it gets
/// 503; the work itself goes on (a big round, a slow store) and the retry
/// finds it done.
const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// Orders whose JSON and keys are put back per Redis call.
const RESTORE_CHUNK: usize = 500;

/// The server holding a round, and the server the round was last
/// reconciled under (empty: never, or the mark is lost).
struct Identity {
    run_id: String,
    role: String,
    reconciled_under: String,
}

pub struct Reconciler {
    conn: RedisConn,
    reconcile: Script,
    identity: Script,
    catalog: LiveCatalog,
    store: OrderStore,
    /// One reconciliation of a round at a time in this instance; requests
    /// that meet the round unset wait for it rather than each starting one.
    rounds: DashMap<RoundId, Arc<Mutex<()>>>,
    /// One identity check at a time in this instance; held while every
    /// round is reconciled, so a second check waits and then finds it done.
    checking: Mutex<()>,
    /// Keeps this instance's order writer in step with master changes.
    fence: Arc<MasterFence>,
}

/// Between this instance's reconciler and its order writer, on a Sentinel
/// master change. The writer reads a new master's streams only once the
/// rounds are reconciled there (it may hold wins the reconciliation voids),
/// and the reconciliation waits for a writer pass in flight: entries read
/// from the old master are stored before the store is read, so the new
/// master learns of them and does not sell their units or keys again.
#[derive(Default)]
pub struct MasterFence {
    /// The master changes whose reconciliation is done.
    pub settled: AtomicU64,
    /// Held (shared) by a writer pass, (exclusive) by a reconciliation
    /// after a master change.
    pub passes: tokio::sync::RwLock<()>,
}

impl Reconciler {
    /// Reads the identity and reconciles every live round, then watches the
    /// identity for as long as the engine lives.
    pub async fn start(
        conn: RedisConn,
        catalog: LiveCatalog,
        store: OrderStore,
    ) -> Result<Arc<Self>, EngineError> {
        let reconciler = Arc::new(Self {
            conn,
            reconcile: Script::new(include_str!("../../lua/reconcile.lua")),
            identity: Script::new(include_str!("../../lua/identity.lua")),
            catalog,
            store,
            rounds: DashMap::new(),
            checking: Mutex::new(()),
            fence: Arc::default(),
        });
        // Whatever happened to Redis while this instance was down is found
        // out before it sells.
        reconciler.check_identity_now().await?;
        tokio::spawn(watch(Arc::downgrade(&reconciler)));
        Ok(reconciler)
    }

    /// Sets up a round Redis does not know (its stock hash is absent): once,
    /// however many requests ask at the same moment.
    pub fn fence(&self) -> Arc<MasterFence> {
        self.fence.clone()
    }

    /// Forgets a retired round's gate.
    pub fn forget(&self, round_id: &RoundId) {
        self.rounds.remove(round_id);
    }

    pub async fn set_up(self: &Arc<Self>, round_id: &RoundId) -> Result<(), EngineError> {
        let (this, round_id) = (self.clone(), round_id.clone());
        bounded(async move { this.set_up_now(&round_id).await }).await
    }

    /// Reads the identity now and, if Redis is not the server it was,
    /// reconciles every live round before returning.
    pub async fn check_identity(self: &Arc<Self>) -> Result<(), EngineError> {
        let this = self.clone();
        bounded(async move { this.check_identity_now().await }).await
    }

    async fn set_up_now(&self, round_id: &RoundId) -> Result<(), EngineError> {
        let gate = self.gate(round_id);
        let _one_at_a_time = gate.lock().await;
        let keys = RoundKeys::new(round_id.as_str());
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(&keys.stock).await.map_err(unavailable)?;
        if exists {
            return Ok(()); // another request's set-up finished meanwhile
        }
        self.merge(round_id).await
    }

    /// Every live round whose server is not the one it was reconciled
    /// under is fenced and reconciled; every live round is listed for the
    /// order writer (the listing may sit on another master, which may have
    /// lost it).
    async fn check_identity_now(&self) -> Result<(), EngineError> {
        let _one_at_a_time = self.checking.lock().await;
        // A new master under Sentinel: every live round is taken again.
        let changes = self.conn.master_changes();
        let new_master = changes != self.fence.settled.load(Ordering::Acquire);
        let _no_pass_in_flight = match new_master {
            true => Some(self.fence.passes.write().await),
            false => None,
        };
        let now = Timestamp::now();
        let mut live = Vec::new();
        for drop in self.catalog.snapshot().drops() {
            let round = drop.round_at(now);
            if round.phase_at(now) == Phase::Closed {
                continue;
            }
            let identity = self.identity(&round.id).await?;
            if new_master || identity.reconciled_under != identity.run_id {
                if identity.role != "master" {
                    tracing::error!(round = %round.id, role = %identity.role, "the Redis server holding this round is not a master: writes will fail");
                }
                tracing::warn!(
                    round = %round.id,
                    reconciled_under = %identity.reconciled_under,
                    now = %identity.run_id,
                    "the Redis server holding this round may know less than the order store \
                     (a restart, a rollback, a failover, or a first start): reconciling it"
                );
                metrics::counter!("dropgate_redis_reconciliations_total").increment(1);
                self.fence_and_merge(&round.id).await?;
            }
            live.push(round.id.as_str().to_owned());
        }
        if !live.is_empty() {
            let mut conn = self.conn.clone();
            let _: i64 = conn.sadd(ROUNDS, &live).await.map_err(unavailable)?;
        }
        self.fence.settled.store(changes, Ordering::Release);
        Ok(())
    }

    async fn identity(&self, round_id: &RoundId) -> Result<Identity, EngineError> {
        let mut conn = self.conn.clone();
        let keys = RoundKeys::new(round_id.as_str());
        let (run_id, role, reconciled_under): (String, String, String) = self
            .identity
            .key(&keys.reconciled_under)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Identity {
            run_id,
            role,
            reconciled_under,
        })
    }

    /// Fences the round (no instance sells it until it is merged), then
    /// merges it.
    async fn fence_and_merge(&self, round_id: &RoundId) -> Result<(), EngineError> {
        let gate = self.gate(round_id);
        let _one_at_a_time = gate.lock().await;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .del(RoundKeys::new(round_id.as_str()).stock)
            .await
            .map_err(unavailable)?;
        self.merge(round_id).await
    }

    fn gate(&self, round_id: &RoundId) -> Arc<Mutex<()>> {
        self.rounds.entry(round_id.clone()).or_default().clone()
    }

    /// Puts back what the store knows of the round, then settles stock and
    /// holdings in one step (`reconcile.lua`).
    async fn merge(&self, round_id: &RoundId) -> Result<(), EngineError> {
        let drop = self
            .catalog
            .get(round_id.drop_part())
            .ok_or_else(|| unavailable(format!("round {round_id} of an unknown drop")))?;
        let read = async {
            let orders = self.store.round_orders(round_id.clone()).await?;
            let restocks = self.store.restocks(Some(round_id.clone())).await?;
            let restock_ids = self.store.restock_ids(round_id.clone()).await?;
            Ok::<_, StoreError>((orders, restocks, restock_ids))
        };
        let (orders, restocks, restock_ids) = tokio::time::timeout(RECOVERY_READ_TIMEOUT, read)
            .await
            .map_err(|_| unavailable("the order store did not answer in time"))?
            .map_err(unavailable)?;
        let keys = RoundKeys::new(round_id.as_str());
        let mut conn = self.conn.clone();
        // Registered first: a round whose stock exists but that the order
        // writer does not know would keep its winners waiting. On a cluster
        // the listing may sit on a master that is failing over: the round
        // sells on, and the identity check lists it again every 250 ms.
        let listed: redis::RedisResult<i64> = conn.sadd(ROUNDS, round_id.as_str()).await;
        if let Err(e) = listed {
            tracing::warn!(round = %round_id, error = %e, "could not list the round for the order writer yet");
        }
        self.restore(&keys, &orders, &restock_ids).await?;

        let mut settle = self.reconcile.key(&keys.stock);
        settle
            .key(&keys.held)
            .key(&keys.live)
            .key(&keys.ended)
            .key(&keys.reconciled_under)
            .key(&keys.orders)
            .key(&keys.voided)
            .arg(drop.skus.len());
        for sku in &drop.skus {
            settle
                .arg(sku.id.as_str())
                .arg(sku.stock + restocked_units(&restocks, sku.id.as_str()));
        }
        let (live, ended): (Vec<&StoredOrder>, Vec<&StoredOrder>) =
            orders.iter().partition(|o| o.order.status.is_live());
        settle.arg(live.len());
        for stored in &live {
            settle
                .arg(stored.order.id.as_str())
                .arg(holding(&stored.order));
        }
        for stored in &ended {
            settle.arg(stored.order.id.as_str());
        }
        let (live_units, voided): (i64, i64) =
            settle.invoke_async(&mut conn).await.map_err(unavailable)?;
        tracing::info!(
            round = %round_id,
            stored = orders.len(),
            live_units,
            "round reconciled with the order store"
        );
        if voided > 0 {
            metrics::counter!("dropgate_redis_voided_wins_total").increment(voided as u64);
            tracing::error!(
                round = %round_id,
                voided,
                "wins only this Redis server knew, whose units another server sold meanwhile (a failover and a \
                 fail-back), were voided: kept as dead letters for an operator, never stored"
            );
        }
        Ok(())
    }

    /// The orders' JSON (replays, resent calls), the idempotency keys and
    /// the restock ids the store knows, put back in chunks. Only adds: safe
    /// while the round sells elsewhere.
    async fn restore(
        &self,
        keys: &RoundKeys,
        orders: &[StoredOrder],
        restock_ids: &[String],
    ) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let wanted = orders
            .iter()
            .filter(|o| o.order.status.is_live() || o.idempotency.is_some());
        let wanted: Vec<&StoredOrder> = wanted.collect();
        for chunk in wanted.chunks(RESTORE_CHUNK) {
            let mut pipe = redis::pipe();
            let mut jsons = Vec::with_capacity(chunk.len());
            for stored in chunk {
                let json = serde_json::to_string(&stored.order).map_err(unavailable)?;
                jsons.push((stored.order.id.as_str(), json));
            }
            pipe.hset_multiple(&keys.orders, &jsons).ignore();
            let keyed: Vec<(String, String)> = chunk
                .iter()
                .filter_map(|stored| {
                    let (key, fingerprint) = stored.idempotency.as_ref()?;
                    let order = &stored.order;
                    Some((
                        format!("{}\n{}", order.user_id, key.as_str()),
                        format!("{fingerprint}\n{}", order.id),
                    ))
                })
                .collect();
            if !keyed.is_empty() {
                pipe.hset_multiple(&keys.keys, &keyed).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        }
        for chunk in restock_ids.chunks(RESTORE_CHUNK) {
            let applied: Vec<(&str, &str)> =
                chunk.iter().map(|id| (id.as_str(), "stored")).collect();
            let _: () = conn
                .hset_multiple(&keys.restocks, &applied)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Runs `work` on a task of its own and waits for it up to [`REQUEST_WAIT`]:
/// a request that stops waiting does not cancel a reconciliation half-way
/// (which would leave a fenced round for the next request to start over).
async fn bounded<F>(work: F) -> Result<(), EngineError>
where
    F: std::future::Future<Output = Result<(), EngineError>> + Send + 'static,
{
    match tokio::time::timeout(REQUEST_WAIT, tokio::spawn(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(unavailable("the reconciliation task failed")),
        Err(_) => Err(unavailable(
            "Redis is being reconciled with the order store; retry shortly",
        )),
    }
}

/// How the scripts record what a live order holds.
pub fn holding(order: &crate::order::Order) -> String {
    format!("{}\n{}\n{}", order.sku, order.quantity.get(), order.user_id)
}

/// Reads the identity every [`WATCH_EVERY`] until the engine is gone.
async fn watch(reconciler: Weak<Reconciler>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(reconciler) = reconciler.upgrade() else {
            return;
        };
        if let Err(e) = reconciler.check_identity_now().await {
            tracing::debug!(error = %e, "could not read Redis's identity");
        }
    }
}
