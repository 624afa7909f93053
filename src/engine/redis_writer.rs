//! The Redis-mode order writer. The reserve script appends every winner to
//! its round's stream; this task reads the streams in a consumer group,
//! inserts the orders in batches (idempotent on the order id) through the
//! store's group-commit writer, and acknowledges entries only after that
//! commit. Acknowledged entries are trimmed away (`lua/ack.lua`); an
//! un-acked one never is.
//!
//! After a restart the consumer first re-reads its own pending entries; the
//! pending entries of a consumer that died are claimed (`XAUTOCLAIM`) once
//! they have sat idle for `claim_idle` (`[server] claim_idle`, 30 s by default). Several writers (one per instance)
//! share the group safely: each entry goes to one of them, and a duplicate
//! delivery inserts nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::redis_engine::release_units;
use super::redis_keys::{RoundKeys, ROUNDS, WRITERS_GROUP};
use super::redis_reconcile::MasterFence;
use super::redis_topology::{Redis, RedisConn};
use super::EngineError;
use crate::domain::IdempotencyKey;
use crate::order::Order;
use crate::store::{OrderStore, StoreError};

/// Entries read (and committed together) per round per pass.
const BATCH: usize = 1024;
/// How long the writer sleeps when every stream is drained.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// How often the writer measures its lag.
const LAG_EVERY: Duration = Duration::from_millis(250);

pub struct RedisOrderWriter {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    lag: Arc<AtomicU64>,
    dead_letters: Arc<AtomicU64>,
}

impl RedisOrderWriter {
    /// Starts the writer as consumer `consumer` (stable across restarts of
    /// one instance, so its own pending entries are found again).
    pub async fn start(
        redis: &Redis,
        store: OrderStore,
        consumer: String,
        claim_idle: Duration,
        fence: Arc<MasterFence>,
    ) -> Result<Self, EngineError> {
        let conn = redis.connect().await?;
        let (stop, stopped) = watch::channel(false);
        let lag = Arc::new(AtomicU64::new(0));
        let dead_letters = Arc::new(AtomicU64::new(0));
        let consumer = Consumer {
            lag: lag.clone(),
            dead_letters: dead_letters.clone(),
            last_lag: Instant::now() - LAG_EVERY,
            conn,
            store,
            name: consumer,
            grouped: HashSet::new(),
            caught_up: HashSet::new(),
            claim_idle,
            last_claim: Instant::now(),
            fence,
            release: redis::Script::new(include_str!("../../lua/release.lua")),
            ack: redis::Script::new(include_str!("../../lua/ack.lua")),
        };
        let task = tokio::spawn(run(consumer, stopped));
        Ok(Self {
            stop,
            task: Mutex::new(Some(task)),
            lag,
            dead_letters,
        })
    }

    /// Winner entries the writer could not store and kept aside in the
    /// rounds' dead-letter streams, as last measured: each is a 201 that is
    /// not in the order store and needs an operator.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Winners in the streams not yet stored and acknowledged, as last
    /// measured (every 250 ms): how far the order store is behind Redis.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Puts every winner already in the streams into the store, then stops.
    pub async fn drain_and_stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

struct Consumer {
    conn: RedisConn,
    store: OrderStore,
    name: String,
    /// Rounds whose stream has our consumer group.
    grouped: HashSet<String>,
    /// Rounds whose own pending entries were re-read since start.
    caught_up: HashSet<String>,
    /// Pending entries idle this long belong to a consumer presumed dead.
    claim_idle: Duration,
    last_claim: Instant,
    lag: Arc<AtomicU64>,
    dead_letters: Arc<AtomicU64>,
    last_lag: Instant,
    /// In step with the reconciler on master changes (see `pass`).
    fence: Arc<MasterFence>,
    release: redis::Script,
    /// Acknowledges stored entries and trims the stream (`lua/ack.lua`).
    ack: redis::Script,
}

async fn run(mut consumer: Consumer, mut stopped: watch::Receiver<bool>) {
    let mut rechecked = false;
    loop {
        let stopping = *stopped.borrow();
        if stopping && !rechecked && consumer.conn.resends_by_itself() {
            // Before stopping, our own pending entries once more: a read
            // the cluster client retried by itself after a failover can
            // have left entries delivered to us that we never saw (they
            // would otherwise wait for XAUTOCLAIM).
            consumer.caught_up.clear();
            rechecked = true;
        }
        let moved = match consumer.pass().await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(error = %e, "order writer pass failed; retrying");
                // Redis may have come back empty (restart without
                // persistence): find out again which groups exist.
                consumer.grouped.clear();
                consumer.caught_up.clear();
                if stopping {
                    // Whatever is left stays in the streams for the next start.
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if moved == 0 {
            if stopping {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

/// Why a pass (or one round of it) could not move its winners.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the order store: {0}")]
    Store(#[from] StoreError),
}

impl Consumer {
    /// Moves one batch from every round's stream into the store. A round
    /// that fails is logged and retried next pass; the others go on.
    async fn pass(&mut self) -> Result<usize, PassError> {
        // A new master is read only once its rounds are reconciled (it may
        // hold wins the reconciliation voids), and a reconciliation after a
        // master change waits for this pass to store what it read.
        let fence = self.fence.clone();
        let _pass = fence.passes.read().await;
        if self.conn.master_changes() != fence.settled.load(Ordering::Acquire) {
            return Ok(0);
        }
        let rounds: Vec<String> = self.conn.smembers(ROUNDS).await?;
        // Retired rounds leave the set: forget them here too.
        self.grouped.retain(|round| rounds.contains(round));
        self.caught_up.retain(|round| rounds.contains(round));
        // Looking twice per idle period finds a dead consumer's entries soon
        // after they qualify, without scanning the pending lists constantly.
        let claim = self.last_claim.elapsed() >= self.claim_idle / 2;
        if claim {
            self.last_claim = Instant::now();
        }
        if self.last_lag.elapsed() >= LAG_EVERY {
            self.last_lag = Instant::now();
            self.measure(&rounds).await?;
        }
        let mut moved = 0;
        for round in rounds {
            match self.move_round(&round, claim).await {
                Ok(n) => moved += n,
                Err(e) => {
                    tracing::warn!(round, error = %e, "order writer could not move this round's winners; retrying");
                    // Redis may have come back without the round's group.
                    self.grouped.remove(&round);
                    self.caught_up.remove(&round);
                }
            }
        }
        Ok(moved)
    }

    async fn move_round(&mut self, round: &str, claim: bool) -> Result<usize, PassError> {
        let keys = RoundKeys::new(round);
        self.ensure_group(round, &keys.winners).await?;
        let entries = self.read(round, &keys.winners).await?;
        let mut moved = self.write(&keys, entries).await?;
        if claim {
            let claimed = self.claim_from_the_dead(&keys.winners).await?;
            moved += self.write(&keys, claimed).await?;
        }
        Ok(moved)
    }

    /// Winners not yet stored, and entries kept aside as dead letters.
    async fn measure(&mut self, rounds: &[String]) -> Result<(), PassError> {
        if rounds.is_empty() {
            self.lag.store(0, Ordering::Relaxed);
            self.dead_letters.store(0, Ordering::Relaxed);
            return Ok(());
        }
        // One round per call: on a cluster, rounds live on different masters.
        let (mut lag, mut dead) = (0, 0);
        for round in rounds {
            let keys = RoundKeys::new(round);
            let (waiting, kept): (u64, u64) = redis::pipe()
                .xlen(keys.winners)
                .xlen(keys.dead)
                .query_async(&mut self.conn)
                .await?;
            lag += waiting;
            dead += kept;
        }
        self.lag.store(lag, Ordering::Relaxed);
        self.dead_letters.store(dead, Ordering::Relaxed);
        Ok(())
    }

    async fn ensure_group(&mut self, round: &str, stream: &str) -> Result<(), PassError> {
        if self.grouped.contains(round) {
            return Ok(());
        }
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(stream, WRITERS_GROUP, "0")
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        self.grouped.insert(round.to_owned());
        Ok(())
    }

    /// Our own pending entries first (after a restart), then new ones.
    async fn read(&mut self, round: &str, stream: &str) -> Result<Vec<StreamId>, PassError> {
        if !self.caught_up.contains(round) {
            let pending = self.read_from(stream, "0").await?;
            if !pending.is_empty() {
                return Ok(pending);
            }
            self.caught_up.insert(round.to_owned());
        }
        self.read_from(stream, ">").await
    }

    async fn read_from(&mut self, stream: &str, from: &str) -> Result<Vec<StreamId>, PassError> {
        let options = StreamReadOptions::default()
            .group(WRITERS_GROUP, &self.name)
            .count(BATCH);
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[stream], &[from], &options)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    async fn claim_from_the_dead(&mut self, stream: &str) -> Result<Vec<StreamId>, PassError> {
        let idle_ms = self.claim_idle.as_millis() as u64;
        let options = StreamAutoClaimOptions::default().count(BATCH);
        let reply: StreamAutoClaimReply = self
            .conn
            .xautoclaim_options(stream, WRITERS_GROUP, &self.name, idle_ms, "0-0", options)
            .await?;
        Ok(reply.claimed)
    }

    /// Commits the entries' orders, then acknowledges and deletes them. An
    /// entry that cannot be stored (unreadable, say after an upgrade that
    /// changed the order's JSON, or colliding with another stored order) is
    /// first copied to the round's dead-letter stream: nothing is deleted
    /// that was neither stored nor kept.
    async fn write(
        &mut self,
        keys: &RoundKeys,
        entries: Vec<StreamId>,
    ) -> Result<usize, PassError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let texts = self.order_texts(keys, &entries).await?;
        let mut orders = Vec::with_capacity(entries.len());
        // Entries whose order text is gone from the orders hash (voided,
        // or lost), by order id; and entries that cannot be read at all.
        let mut textless = Vec::new();
        let mut dead: Vec<(&StreamId, &str)> = Vec::new();
        for (entry, text) in entries.iter().zip(&texts) {
            match (text, entry.get::<String>("id")) {
                (Some(text), _) => match decode(entry, text) {
                    Some(keyed) => orders.push((entry, keyed)),
                    None => dead.push((entry, "unreadable")),
                },
                (None, Some(id)) => textless.push((entry, id)),
                (None, None) => dead.push((entry, "unreadable")),
            }
        }
        let mut ids: Vec<&str> = orders.iter().map(|(_, (o, _))| o.id.as_str()).collect();
        ids.extend(textless.iter().map(|(_, id)| id.as_str()));
        if !ids.is_empty() {
            let voided: Vec<bool> = self.conn.smismember(&keys.voided, &ids).await?;
            let (decoded, gone) = voided.split_at(orders.len());
            let mut kept = decoded.iter();
            let (stored, void): (Vec<_>, Vec<_>) = orders
                .into_iter()
                .partition(|_| !kept.next().copied().unwrap_or(false));
            orders = stored;
            const VOIDED: &str =
                "voided: its unit was sold by another Redis server during a failover";
            dead.extend(void.into_iter().map(|(entry, _)| (entry, VOIDED)));
            dead.extend(
                textless
                    .iter()
                    .zip(gone)
                    .map(|((entry, _), voided)| match voided {
                        true => (*entry, VOIDED),
                        false => (*entry, "unreadable: its order text is gone"),
                    }),
            );
        }
        let refused = self
            .store
            .insert_many(orders.iter().map(|(_, keyed)| keyed.clone()).collect())
            .await?;
        dead.extend(
            orders
                .iter()
                .filter(|(_, (order, _))| refused.contains(&order.id))
                .map(|(entry, _)| (*entry, "collides with a stored order")),
        );
        // A refused order is not in the store (another order holds its
        // idempotency key: the same shopper's retry, decided anew by a
        // server that never had the first win, a failover apart). It will
        // never be stored, so the units it holds in Redis go back.
        for (_, (order, _)) in orders.iter().filter(|(_, (o, _))| refused.contains(&o.id)) {
            release_units(&mut self.conn, &self.release, order).await?;
        }
        for (entry, reason) in &dead {
            let text = entries
                .iter()
                .position(|e| e.id == entry.id)
                .and_then(|at| texts[at].as_deref());
            self.keep_aside(&keys.dead, entry, text, reason).await?;
            tracing::error!(
                entry = %entry.id,
                stream = %keys.winners,
                reason,
                "winner entry not stored: kept in the dead-letter stream"
            );
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _trimmed: i64 = self
            .ack
            .key(&keys.winners)
            .arg(WRITERS_GROUP)
            .arg(&ids)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(ids.len())
    }

    /// The order text of each entry: its own `order` field (entries written
    /// before the text moved to the orders hash), or the orders hash's, by
    /// the entry's order `id` (one call for the batch).
    async fn order_texts(
        &mut self,
        keys: &RoundKeys,
        entries: &[StreamId],
    ) -> Result<Vec<Option<String>>, PassError> {
        let ids: Vec<String> = entries.iter().filter_map(|e| e.get("id")).collect();
        let mut found = match ids.is_empty() {
            true => Vec::new(),
            false => {
                redis::cmd("HMGET")
                    .arg(&keys.orders)
                    .arg(&ids)
                    .query_async::<Vec<Option<String>>>(&mut self.conn)
                    .await?
            }
        }
        .into_iter();
        Ok(entries
            .iter()
            .map(|e| match e.get::<String>("id") {
                Some(_) => found.next().flatten(),
                None => e.get("order"),
            })
            .collect())
    }

    /// Copies an entry, field by field, to the dead-letter stream, with its
    /// order text when the entry names it by id.
    async fn keep_aside(
        &mut self,
        dead: &str,
        entry: &StreamId,
        text: Option<&str>,
        reason: &str,
    ) -> Result<(), PassError> {
        let mut fields: Vec<(String, Vec<u8>)> = entry
            .map
            .keys()
            .filter_map(|field| Some((field.clone(), entry.get::<Vec<u8>>(field)?)))
            .collect();
        if let (Some(text), false) = (text, entry.map.contains_key("order")) {
            fields.push(("order".into(), text.as_bytes().to_vec()));
        }
        fields.push(("reason".into(), reason.as_bytes().to_vec()));
        fields.push(("entry".into(), entry.id.as_bytes().to_vec()));
        let _: String = self.conn.xadd(dead, "*", &fields).await?;
        Ok(())
    }
}

fn decode(entry: &StreamId, text: &str) -> Option<(Order, Option<(IdempotencyKey, String)>)> {
    let order: Order = serde_json::from_str(text).ok()?;
    let key: String = entry.get("key").unwrap_or_default();
    let fingerprint: String = entry.get("fingerprint").unwrap_or_default();
    let idempotency = match key.is_empty() {
        true => None,
        false => Some((IdempotencyKey::parse(&key).ok()?, fingerprint)),
    };
    Some((order, idempotency))
}
