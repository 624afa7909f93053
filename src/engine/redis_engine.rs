//! The Redis engine: stock, limits and idempotency keys live in Redis and
//! every decision is one Lua script (`lua/`); winners are appended to the
//! round's stream in the same script, for the order writer
//! (`redis_writer.rs`) to put in the order store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use redis::{AsyncCommands, Script};

use super::redis_batches::{ReserveBatches, ScriptAttempt};
use super::redis_keys::{RoundKeys, ROUNDS};
use super::redis_reconcile::{MasterFence, Reconciler};
use super::redis_stock_cache::StockCache;
use super::redis_topology::{Redis, RedisConn};
use super::{
    EngineError, InventoryEngine, Refused, ReserveAttempt, ReserveOutcome, Reserved, Retired,
    Topology,
};
use crate::catalog::LiveCatalog;
use crate::config::RedisSettings;
use crate::domain::{OrderId, RoundId, SkuId};
use crate::order::Order;
use crate::store::{OrderStore, RestockRecord};

/// Bound on the order-store write of a restock.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// Tries of one reserve: a round set up in between (twice, should a
/// reconciliation fence the round again meanwhile).
const RESERVE_TRIES: usize = 3;

struct Scripts {
    release: Script,
    restock: Script,
}

/// Connections the reserve calls take in turn. Redis reads at most 16 KiB
/// from a client per pass of its event loop, and with `appendfsync always`
/// it fsyncs once per pass: more sockets let one fsync cover more attempts.
const RESERVE_CONNECTIONS: usize = 4;

/// What `reserve.lua` and `restock.lua` answer for a round that is not set up.
const NOT_SET_UP: i64 = -6;

pub struct RedisEngine {
    redis: Redis,
    /// A multiplexed connection: clones share its sockets and pipeline the
    /// commands of many requests; it reconnects after Redis restarts.
    conn: RedisConn,
    scripts: Arc<Scripts>,
    /// Reserve attempts, gathered into one `reserve.lua` call per round.
    reserves: ReserveBatches,
    /// Sets up rounds Redis does not know and reconciles them after Redis
    /// may have lost state (I7).
    reconciler: Arc<Reconciler>,
    catalog: LiveCatalog,
    store: OrderStore,
    /// Units left per round and SKU, as last read, for the drop views.
    stock: StockCache,
}

pub(super) fn unavailable(
    cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> EngineError {
    EngineError::unavailable(cause)
}

impl RedisEngine {
    /// Every SKU's units left in the round, read from Redis and kept for
    /// the next questions (empty: the round is not set up in Redis).
    async fn read_stock(&self, round_id: &RoundId) -> Result<HashMap<SkuId, u64>, EngineError> {
        let keys = RoundKeys::new(round_id.as_str());
        let mut conn = self.conn.clone();
        let read_at = Instant::now();
        let raw: HashMap<String, u64> = conn.hgetall(&keys.stock).await.map_err(unavailable)?;
        let left: HashMap<SkuId, u64> = raw
            .into_iter()
            .filter_map(|(sku, n)| SkuId::parse(&sku).ok().map(|sku| (sku, n)))
            .collect();
        if !left.is_empty() {
            self.stock.put(round_id, left.clone(), read_at);
        }
        Ok(left)
    }

    pub async fn open(
        redis: &Redis,
        catalog: LiveCatalog,
        store: OrderStore,
        settings: RedisSettings,
    ) -> Result<Self, EngineError> {
        let conn = redis.connect().await?;
        let mut reserve_conns = vec![conn.clone()];
        for _ in 1..RESERVE_CONNECTIONS {
            reserve_conns.push(redis.connect().await?);
        }
        let reconciler = Reconciler::start(conn.clone(), catalog.clone(), store.clone()).await?;
        let engine = Self {
            reserves: ReserveBatches::start(reserve_conns, reconciler.clone(), settings),
            conn,
            scripts: Arc::new(Scripts {
                release: Script::new(include_str!("../../lua/release.lua")),
                restock: Script::new(include_str!("../../lua/restock.lua")),
            }),
            reconciler,
            catalog,
            store,
            stock: StockCache::default(),
            redis: redis.clone(),
        };
        engine.warn_if_wins_could_be_lost().await;
        Ok(engine)
    }

    /// What keeps the order writer in step with master changes.
    pub fn master_fence(&self) -> Arc<MasterFence> {
        self.reconciler.fence()
    }

    /// A 201 in Redis mode is as durable as Redis's persistence; say so
    /// loudly when acknowledged wins could vanish with a Redis crash.
    async fn warn_if_wins_could_be_lost(&self) {
        let mut conn = self.conn.clone();
        let setting = |reply: Result<Vec<String>, redis::RedisError>| {
            reply.ok().and_then(|v| v.get(1).cloned())
        };
        let aof = setting(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendonly")
                .query_async(&mut conn)
                .await,
        );
        let fsync = setting(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendfsync")
                .query_async(&mut conn)
                .await,
        );
        match (aof.as_deref(), fsync.as_deref()) {
            (Some("yes"), Some("always")) => tracing::info!("Redis persistence: AOF with appendfsync always"),
            (Some("yes"), fsync) => tracing::warn!(
                ?fsync,
                "Redis AOF is on but not fsynced on every write: a Redis crash can lose up to a second of acknowledged wins"
            ),
            _ => tracing::warn!(
                "Redis has AOF off: a Redis crash or restart loses acknowledged wins not yet in the order store \
                 (set appendonly yes and appendfsync always)"
            ),
        }
    }
}

/// Runs `release.lua` for an order: true if this call gave its units back.
pub(super) async fn release_units(
    conn: &mut RedisConn,
    release: &Script,
    order: &Order,
) -> redis::RedisResult<bool> {
    let keys = RoundKeys::new(order.round_id.as_str());
    let released: i64 = release
        .key(&keys.stock)
        .key(&keys.held)
        .key(&keys.live)
        .key(&keys.ended)
        .arg(order.id.as_str())
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

fn parse_order(json: &str) -> Result<Order, EngineError> {
    serde_json::from_str(json).map_err(|e| unavailable(format!("unreadable order in Redis: {e}")))
}

#[async_trait]
impl InventoryEngine for RedisEngine {
    async fn reserve(&self, attempt: ReserveAttempt) -> Result<ReserveOutcome, EngineError> {
        let order = &attempt.order;
        let (key, fingerprint) = match &attempt.idempotency {
            Some((key, fingerprint)) => (key.as_str(), fingerprint.as_str()),
            None => ("", ""),
        };
        let arguments = || -> Result<ScriptAttempt, EngineError> {
            Ok(ScriptAttempt {
                opens_at_ms: attempt.opens_at.as_millisecond(),
                closes_at_ms: attempt.closes_at.as_millisecond(),
                sku: order.sku.as_str().to_owned(),
                units: order.quantity.get(),
                per_user_limit: attempt.per_user_limit,
                user: order.user_id.as_str().to_owned(),
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                order_id: order.id.as_str().to_owned(),
                order_json: serde_json::to_string(order).map_err(unavailable)?,
            })
        };
        // A round unknown to Redis is set up, then the attempt sent again.
        for _ in 0..RESERVE_TRIES {
            let (code, detail) = self.reserves.decide(&order.round_id, arguments()?).await?;
            return Ok(match code {
                1 => {
                    let units = i64::from(order.quantity.get());
                    self.stock.adjust(&order.round_id, &order.sku, -units);
                    Ok(Reserved::Won(attempt.order))
                }
                2 => Ok(Reserved::Replayed(parse_order(&detail)?)),
                -1 => Err(Refused::NotOpen {
                    opens_at: attempt.opens_at,
                }),
                -2 => Err(Refused::Closed),
                -3 => Err(Refused::SoldOut),
                -4 => Err(Refused::LimitExceeded {
                    limit: attempt.per_user_limit,
                }),
                -5 => Err(Refused::IdempotencyMismatch),
                NOT_SET_UP => {
                    self.reconciler.set_up(&order.round_id).await?;
                    continue;
                }
                other => return Err(unavailable(format!("reserve script returned {other}"))),
            });
        }
        Err(unavailable("the round could not be set up in Redis"))
    }

    async fn release(&self, order: &Order) -> Result<bool, EngineError> {
        let mut conn = self.conn.clone();
        let released = release_units(&mut conn, &self.scripts.release, order)
            .await
            .map_err(unavailable)?;
        if released {
            let units = i64::from(order.quantity.get());
            self.stock.adjust(&order.round_id, &order.sku, units);
        }
        Ok(released)
    }

    async fn remaining(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        allocated: u64,
    ) -> Result<u64, EngineError> {
        if let Some(left) = self.stock.get(round_id, sku) {
            return Ok(left);
        }
        let mut left = self.read_stock(round_id).await?;
        if left.is_empty() && self.catalog.get(round_id.drop_part()).is_some() {
            self.reconciler.set_up(round_id).await?;
            left = self.read_stock(round_id).await?;
        }
        Ok(left.get(sku).copied().unwrap_or(allocated))
    }

    async fn restock(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        units: u64,
        restock_id: &str,
    ) -> Result<(), EngineError> {
        // The round must exist in Redis before the restock is stored: a
        // round set up from the store afterwards would count the units twice.
        self.reconciler.set_up(round_id).await?;
        let record = RestockRecord::new(restock_id, round_id, sku, units);
        // Stored even when recorded before (a retry): whether Redis applied
        // it is for restock.lua to say, by the restock id.
        let stored = self.store.add_restock(record, Timestamp::now());
        tokio::time::timeout(STORE_TIMEOUT, stored)
            .await
            .map_err(|_| unavailable("the order store did not answer in time"))?
            .map_err(unavailable)?;
        let keys = RoundKeys::new(round_id.as_str());
        let mut conn = self.conn.clone();
        let left: i64 = self
            .scripts
            .restock
            .key(&keys.stock)
            .key(&keys.restocks)
            .arg(sku.as_str())
            .arg(units)
            .arg(restock_id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.stock.forget(round_id);
        // -7 (this restock id was applied before: a retry) adds nothing.
        if left == NOT_SET_UP {
            // Redis lost the round between the set-up and now; the stored
            // restock is counted when the round is set up again.
            self.reconciler.set_up(round_id).await?;
        }
        Ok(())
    }

    async fn recent_order(&self, id: &OrderId) -> Result<Option<Order>, EngineError> {
        let mut conn = self.conn.clone();
        let rounds: Vec<String> = conn.smembers(ROUNDS).await.map_err(unavailable)?;
        for round in rounds {
            let json: Option<String> = conn
                .hget(RoundKeys::new(&round).orders, id.as_str())
                .await
                .map_err(unavailable)?;
            if let Some(json) = json {
                return parse_order(&json).map(Some);
            }
        }
        Ok(None)
    }

    /// A retired round leaves `dg:rounds` (so the writer stops reading its
    /// stream) and its keys go, once every winner is stored: its stream is
    /// empty and it has no dead letters (those keep the round listed, and
    /// counted, until an operator has dealt with them).
    async fn retire(&self, retired: &Retired<'_>) -> Result<usize, EngineError> {
        let mut conn = self.conn.clone();
        let rounds: Vec<String> = conn.smembers(ROUNDS).await.map_err(unavailable)?;
        let mut forgotten = 0;
        for name in rounds {
            // A member that is no round id of ours is left alone.
            let Ok(round) = RoundId::parse(&name) else {
                continue;
            };
            if !retired(&round) {
                continue;
            }
            let keys = RoundKeys::new(&name);
            let (waiting, dead): (u64, u64) = redis::pipe()
                .xlen(&keys.winners)
                .xlen(&keys.dead)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if waiting > 0 || dead > 0 {
                continue;
            }
            // The round's keys first, then the listing (another slot on a
            // cluster): a retire cut off in between is finished next time.
            let _: () = redis::pipe()
                .unlink(&keys.retired()[..])
                .ignore()
                .unlink(&keys.dead)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let _: () = conn.srem(ROUNDS, &name).await.map_err(unavailable)?;
            self.reconciler.forget(&round);
            self.stock.forget(&round);
            forgotten += 1;
        }
        Ok(forgotten)
    }

    async fn rounds_held(&self) -> Result<usize, EngineError> {
        let mut conn = self.conn.clone();
        conn.scard(ROUNDS).await.map_err(unavailable)
    }

    async fn topology(&self) -> Option<Topology> {
        let mut conn = self.conn.clone();
        let nodes = self.redis.nodes(&mut conn).await.unwrap_or_default();
        Some(Topology {
            kind: self.redis.topology(),
            nodes,
        })
    }

    async fn ready(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }
}
