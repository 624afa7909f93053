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

/// Entries read (and committed together) per round per pass. An entry holds
/// the wins of one script call (up to 64, 7–20 under load), so a pass
/// commits about a thousand orders under load and never more than 8,192:
/// one group commit, short enough not to hold up the store's other writes.
const BATCH: usize = 128;
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

    /// Wins the writer could not store and kept aside in the
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

    /// Wins not yet stored, and wins kept aside as dead letters.
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
            // Wins counted by the reserve script; an entry holds one at
            // least, and entries of earlier versions are counted only there.
            let (counted, entries, kept): (Option<i64>, u64, u64) = redis::pipe()
                .get(&keys.unstored)
                .xlen(&keys.winners)
                .xlen(&keys.dead)
                .query_async(&mut self.conn)
                .await?;
            lag += entries.max(counted.unwrap_or(0).max(0) as u64);
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

    /// Commits the entries' orders, then acknowledges and trims them. A win
    /// that cannot be stored (unreadable, say after an upgrade that changed
    /// the order's JSON, voided, or colliding with another stored order) is
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
        let (mut wins, unreadable) = wins_of(&entries);
        self.read_texts(keys, &mut wins).await?;
        let mut orders = Vec::with_capacity(wins.len());
        // Wins whose order text is gone from the orders hash (voided, or
        // lost), by order id; and wins whose text cannot be read.
        let mut textless = Vec::new();
        let mut dead: Vec<(&Win, &str)> = Vec::new();
        for win in &wins {
            match (&win.text, &win.order_id) {
                (Some(text), _) => match decode(win, text) {
                    Some(keyed) => orders.push((win, keyed)),
                    None => dead.push((win, "unreadable")),
                },
                (None, Some(id)) => textless.push((win, id.as_str())),
                (None, None) => dead.push((win, "unreadable")),
            }
        }
        let mut ids: Vec<&str> = orders.iter().map(|(_, (o, _))| o.id.as_str()).collect();
        ids.extend(textless.iter().map(|(_, id)| *id));
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
            dead.extend(void.into_iter().map(|(win, _)| (win, VOIDED)));
            dead.extend(
                textless
                    .iter()
                    .zip(gone)
                    .map(|((win, _), voided)| match voided {
                        true => (*win, VOIDED),
                        false => (*win, "unreadable: its order text is gone"),
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
                .map(|(win, _)| (*win, "collides with a stored order")),
        );
        // A refused order is not in the store (another order holds its
        // idempotency key: the same shopper's retry, decided anew by a
        // server that never had the first win, a failover apart). It will
        // never be stored, so the units it holds in Redis go back.
        for (_, (order, _)) in orders.iter().filter(|(_, (o, _))| refused.contains(&o.id)) {
            release_units(&mut self.conn, &self.release, order).await?;
        }
        for (win, reason) in &dead {
            self.keep_aside(&keys.dead, &win.dead_letter(reason))
                .await?;
            tracing::error!(
                entry = %win.entry,
                stream = %keys.winners,
                reason,
                "winner not stored: kept in the dead-letter stream"
            );
        }
        for entry in &unreadable {
            self.keep_aside(&keys.dead, &raw_dead_letter(entry)).await?;
            tracing::error!(
                entry = %entry.id,
                stream = %keys.winners,
                "winner entry unreadable: kept in the dead-letter stream"
            );
        }
        let mut ack = self.ack.key(&keys.winners);
        ack.key(&keys.unstored).arg(WRITERS_GROUP);
        for entry in &entries {
            ack.arg(&entry.id).arg(counted_wins(entry));
        }
        let _trimmed: i64 = ack.invoke_async(&mut self.conn).await?;
        Ok(wins.len() + unreadable.len())
    }

    /// The order text of each win named by its order id, from the orders
    /// hash (one call for the batch).
    async fn read_texts(&mut self, keys: &RoundKeys, wins: &mut [Win]) -> Result<(), PassError> {
        let ids: Vec<&str> = wins
            .iter()
            .filter(|win| win.text.is_none())
            .filter_map(|win| win.order_id.as_deref())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let found: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.orders)
            .arg(&ids)
            .query_async(&mut self.conn)
            .await?;
        let named = wins
            .iter_mut()
            .filter(|win| win.text.is_none() && win.order_id.is_some());
        for (win, text) in named.zip(found) {
            win.text = text;
        }
        Ok(())
    }

    async fn keep_aside(
        &mut self,
        dead: &str,
        fields: &[(String, Vec<u8>)],
    ) -> Result<(), PassError> {
        let _: String = self.conn.xadd(dead, "*", fields).await?;
        Ok(())
    }
}

/// One win as a stream entry names it. Entries of this version carry every
/// win of one script call, in three line lists (`ids`, `keys`,
/// `fingerprints`); earlier versions wrote an entry per win with its order
/// id (`id`) or its text (`order`).
struct Win {
    /// The stream entry's id.
    entry: String,
    order_id: Option<String>,
    key: String,
    fingerprint: String,
    text: Option<String>,
}

impl Win {
    /// What the dead-letter stream keeps of a win: the entry's fields for
    /// it, its order text when known, why, and the entry it came from.
    fn dead_letter(&self, reason: &str) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::with_capacity(6);
        if let Some(id) = &self.order_id {
            fields.push(("id".to_owned(), id.clone().into_bytes()));
        }
        fields.push(("key".to_owned(), self.key.clone().into_bytes()));
        fields.push((
            "fingerprint".to_owned(),
            self.fingerprint.clone().into_bytes(),
        ));
        if let Some(text) = &self.text {
            fields.push(("order".to_owned(), text.clone().into_bytes()));
        }
        fields.push(("reason".to_owned(), reason.as_bytes().to_vec()));
        fields.push(("entry".to_owned(), self.entry.clone().into_bytes()));
        fields
    }
}

/// The wins the entries name, in order, and the entries that name none
/// readably (kept aside whole).
fn wins_of(entries: &[StreamId]) -> (Vec<Win>, Vec<&StreamId>) {
    let mut wins = Vec::with_capacity(entries.len());
    let mut unreadable = Vec::new();
    for entry in entries {
        let field = |name: &str| entry.get::<String>(name);
        if let Some(ids) = field("ids") {
            let keys = field("keys").unwrap_or_default();
            let fingerprints = field("fingerprints").unwrap_or_default();
            let (ids, keys, fingerprints): (Vec<_>, Vec<_>, Vec<_>) = (
                ids.split('\n').collect(),
                keys.split('\n').collect(),
                fingerprints.split('\n').collect(),
            );
            if ids.len() != keys.len() || ids.len() != fingerprints.len() {
                unreadable.push(entry);
                continue;
            }
            for ((id, key), fingerprint) in ids.into_iter().zip(keys).zip(fingerprints) {
                wins.push(Win {
                    entry: entry.id.clone(),
                    order_id: Some(id.to_owned()),
                    key: key.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                    text: None,
                });
            }
            continue;
        }
        let (order_id, text) = (field("id"), field("order"));
        if order_id.is_none() && text.is_none() {
            unreadable.push(entry);
            continue;
        }
        wins.push(Win {
            entry: entry.id.clone(),
            order_id,
            key: field("key").unwrap_or_default(),
            fingerprint: field("fingerprint").unwrap_or_default(),
            text,
        });
    }
    (wins, unreadable)
}

/// The wins an entry added to the round's `unstored` count: those of its
/// `ids` list (entries of earlier versions added none).
fn counted_wins(entry: &StreamId) -> usize {
    entry
        .get::<String>("ids")
        .map_or(0, |ids| ids.split('\n').count())
}

/// An entry no win could be read from, field by field, with why.
fn raw_dead_letter(entry: &StreamId) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = entry
        .map
        .keys()
        .filter_map(|field| Some((field.clone(), entry.get::<Vec<u8>>(field)?)))
        .collect();
    fields.push(("reason".into(), b"unreadable".to_vec()));
    fields.push(("entry".into(), entry.id.as_bytes().to_vec()));
    fields
}

fn decode(win: &Win, text: &str) -> Option<(Order, Option<(IdempotencyKey, String)>)> {
    let order: Order = serde_json::from_str(text).ok()?;
    let idempotency = match win.key.is_empty() {
        true => None,
        false => Some((
            IdempotencyKey::parse(&win.key).ok()?,
            win.fingerprint.clone(),
        )),
    };
    Some((order, idempotency))
}
