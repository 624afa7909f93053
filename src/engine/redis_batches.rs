//! Gathers the reserve attempts that arrive while earlier calls are in
//! flight into one call of `lua/reserve.lua` per round.
//!
//! A call's fixed cost in Redis (parsing the command, entering the script,
//! the reply, the `appendfsync always` write) then serves many attempts: a
//! bare `redis-benchmark` of the script decided 1.7× the reservations per
//! second with 4 attempts a call and 2.6× with 32 (BENCHMARKS.md). An
//! attempt that finds nothing in flight goes out at once, so a quiet server
//! adds no delay; the batches grow only when Redis is busy.
//!
//! The script decides the attempts of a call one after another, exactly as
//! separate calls in that order would be decided.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Cmd;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::redis_engine::unavailable;
use super::redis_keys::RoundKeys;
use super::redis_reconcile::Reconciler;
use super::redis_topology::RedisConn;
use super::EngineError;
use crate::config::RedisSettings;
use crate::domain::RoundId;

/// Attempts decided by one call at most.
const MAX_BATCH: usize = 64;
/// Calls in flight at once: enough to keep Redis busy while a reply travels
/// back and the next batch is built.
const CALLS_IN_FLIGHT: usize = 4;
/// Attempts waiting for a call; beyond that, callers wait (the admission
/// layer's in-flight cap keeps this far from full).
const QUEUE_DEPTH: usize = 16 * 1024;

const RESERVE_LUA: &str = include_str!("../../lua/reserve.lua");

/// One attempt's ten arguments to the script, in its order.
pub struct ScriptAttempt {
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
    pub sku: String,
    pub units: u32,
    pub per_user_limit: u32,
    pub user: String,
    pub key: String,
    pub fingerprint: String,
    pub order_id: String,
    pub order_json: String,
}

/// The script's answer for one attempt: its code and detail.
pub type Answer = (i64, String);

struct Pending {
    attempt: ScriptAttempt,
    reply: oneshot::Sender<Result<Answer, EngineError>>,
}

/// An attempt waiting for a call, with its round.
type Queued = (RoundId, Pending);

#[derive(Clone)]
pub struct ReserveBatches {
    queue: mpsc::Sender<Queued>,
}

impl ReserveBatches {
    /// Starts the task that sends the batches over `conns` in turn; it ends
    /// with the last handle.
    pub fn start(
        conns: Vec<RedisConn>,
        reconciler: Arc<Reconciler>,
        settings: RedisSettings,
    ) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        // The SHA-1 that `EVALSHA` names the script by.
        let hash: Arc<str> = redis::Script::new(RESERVE_LUA).get_hash().into();
        tokio::spawn(dispatch(conns, hash, pending, reconciler, settings));
        Self { queue }
    }

    /// Decides one attempt in the next call for its round.
    pub async fn decide(
        &self,
        round_id: &RoundId,
        attempt: ScriptAttempt,
    ) -> Result<Answer, EngineError> {
        let (reply, answer) = oneshot::channel();
        let queued = (round_id.clone(), Pending { attempt, reply });
        let stopped = || unavailable("the reserve batcher stopped");
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn dispatch(
    conns: Vec<RedisConn>,
    hash: Arc<str>,
    mut queue: mpsc::Receiver<Queued>,
    reconciler: Arc<Reconciler>,
    settings: RedisSettings,
) {
    let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut turn = 0;
    while let Some((call, rounds)) = next_batch(&mut queue, &calls, MAX_BATCH).await {
        let call = Arc::new(call);
        for (round_id, attempts) in rounds {
            turn = (turn + 1) % conns.len();
            let (mut conn, hash, call) = (conns[turn].clone(), hash.clone(), call.clone());
            let reconciler = reconciler.clone();
            tokio::spawn(async move {
                let mut answers = invoke(&mut conn, &hash, &round_id, &attempts, &reconciler).await;
                if let Ok(decided) = &answers {
                    if let Err(e) = confirm_wins(&mut conn, &round_id, decided, settings).await {
                        answers = Err(e);
                    }
                }
                settle(attempts, answers);
                drop(call);
            });
        }
    }
}

/// Waits for a request, then for a call free to send it, and takes every
/// request queued meanwhile (up to `max`), grouped by round: what one
/// script call per round then serves. None once every sender is gone.
pub(crate) async fn next_batch<T>(
    queue: &mut mpsc::Receiver<(RoundId, T)>,
    calls: &Arc<Semaphore>,
    max: usize,
) -> Option<(OwnedSemaphorePermit, HashMap<RoundId, Vec<T>>)> {
    let first = queue.recv().await?;
    // Requests arriving while every call is in flight join this batch.
    let call = calls.clone().acquire_owned().await.ok()?;
    let mut rounds: HashMap<RoundId, Vec<T>> = HashMap::new();
    let mut taken = 1;
    rounds.entry(first.0).or_default().push(first.1);
    while taken < max {
        match queue.try_recv() {
            Ok((round_id, next)) => rounds.entry(round_id).or_default().push(next),
            Err(_) => break,
        }
        taken += 1;
    }
    Some((call, rounds))
}

async fn invoke(
    conn: &mut RedisConn,
    hash: &str,
    round_id: &RoundId,
    attempts: &[Pending],
    reconciler: &Arc<Reconciler>,
) -> Result<Vec<Answer>, EngineError> {
    let keys = RoundKeys::new(round_id.as_str());
    let build = |script: Script, sent: Sent| match script {
        Script::ByHash => script_call(("EVALSHA", hash), sent, &keys, attempts),
        Script::WithText => script_call(("EVAL", RESERVE_LUA), sent, &keys, attempts),
    };
    // {code1, detail1, code2, detail2, ...}
    let flat = send(conn, build, reconciler).await?;
    if flat.len() != 2 * attempts.len() {
        return Err(unavailable(format!(
            "reserve script answered {} values for {} attempts",
            flat.len(),
            attempts.len()
        )));
    }
    let mut values = flat.into_iter();
    let mut answers = Vec::with_capacity(attempts.len());
    while let (Some(code), Some(detail)) = (values.next(), values.next()) {
        let code = redis::from_redis_value(code).map_err(unavailable)?;
        let detail = redis::from_redis_value(detail).map_err(unavailable)?;
        answers.push((code, detail));
    }
    Ok(answers)
}

/// How a call names the script: by its hash (`EVALSHA`), or with its text
/// (`EVAL`, after `NOSCRIPT`).
#[derive(Clone, Copy)]
enum Script {
    ByHash,
    WithText,
}

/// Whether a call may have run before: only a call sent again after its
/// connection dropped makes the script look its attempts up by order id
/// (a first sending cannot have been decided, so it spares that read).
#[derive(Clone, Copy)]
enum Sent {
    First,
    Again,
}

/// The script call, built as one command so each argument is copied once into it.
fn script_call(script: (&str, &str), sent: Sent, keys: &RoundKeys, attempts: &[Pending]) -> Cmd {
    let mut call = Cmd::new();
    call.arg(script.0)
        .arg(script.1)
        .arg(7)
        .arg(&keys.stock)
        .arg(&keys.held)
        .arg(&keys.keys)
        .arg(&keys.orders)
        .arg(&keys.live)
        .arg(&keys.winners)
        .arg(&keys.unstored)
        .arg(attempts.len())
        .arg(match sent {
            Sent::First => 0,
            Sent::Again => 1,
        });
    for Pending { attempt: a, .. } in attempts {
        call.arg(a.opens_at_ms)
            .arg(a.closes_at_ms)
            .arg(&a.sku)
            .arg(a.units)
            .arg(a.per_user_limit)
            .arg(&a.user)
            .arg(&a.key)
            .arg(&a.fingerprint)
            .arg(&a.order_id)
            .arg(&a.order_json);
    }
    call
}

/// With `replica_acks`, a batch that won or replayed anything is answered only once
/// `WAIT` has the connection's writes on that many replicas; short of it
/// within the timeout, the whole batch is answered unavailable (503). The
/// wins stand in the master and reach the store: a retry with the same
/// Idempotency-Key replays its order. What this protects against and what
/// it does not (a replica's AOF is not fsynced by `WAIT`): BENCHMARKS.md.
async fn confirm_wins(
    conn: &mut RedisConn,
    round_id: &RoundId,
    answers: &[Answer],
    settings: RedisSettings,
) -> Result<(), EngineError> {
    // A replay too: its win may be one a failover cut off from the replicas
    // (the script writes on a replay, so WAIT covers it).
    let decided = |code: &i64| *code == 1 || *code == 2;
    if settings.replica_acks == 0 || !answers.iter().any(|(code, _)| decided(code)) {
        return Ok(());
    }
    let timeout_ms = settings.replica_ack_timeout.as_millis().max(1) as u64;
    let mut wait = redis::cmd("WAIT");
    wait.arg(settings.replica_acks).arg(timeout_ms);
    // Asked of the master that decided the round, on the socket the
    // script went by: WAIT counts that socket's writes.
    let stock = RoundKeys::new(round_id.as_str()).stock;
    let acked = conn
        .on_master_of(&stock, &wait)
        .await
        .map_err(unavailable)?;
    let acked: u32 = redis::from_redis_value(acked).map_err(unavailable)?;
    if acked < settings.replica_acks {
        metrics::counter!("dropgate_redis_replica_ack_timeouts_total").increment(1);
        return Err(unavailable(format!(
            "{acked} of {} replicas confirmed the win within {timeout_ms} ms",
            settings.replica_acks
        )));
    }
    Ok(())
}

/// Sends the call, and sends it once more if the connection dropped (the
/// manager reconnects meanwhile), marked as sent again: the script then
/// knows an attempt it has already decided by its order id, so a resent
/// call decides nothing twice. A stalled Redis (a timeout) is not waited
/// on twice.
async fn send(
    conn: &mut RedisConn,
    build: impl Fn(Script, Sent) -> Cmd,
    reconciler: &Arc<Reconciler>,
) -> Result<Vec<redis::Value>, EngineError> {
    // A client that resends by itself may have run the call already.
    let first = match conn.resends_by_itself() {
        true => Sent::Again,
        false => Sent::First,
    };
    match send_loading(conn, &build, first, reconciler).await {
        Err(SendError::Redis(e)) if e.is_unrecoverable_error() && !e.is_timeout() => {
            send_loading(conn, &build, Sent::Again, reconciler).await
        }
        reply => reply,
    }
    .map_err(|e| match e {
        SendError::Redis(e) => unavailable(e),
        SendError::Engine(e) => e,
    })
}

enum SendError {
    Redis(redis::RedisError),
    Engine(EngineError),
}

/// Sends the call. `NOSCRIPT` means nothing ran, and that this Redis has
/// not run `reserve.lua` since its script cache was emptied: it restarted,
/// a replica took over, or its scripts were flushed. Scripts are not kept
/// in snapshots, AOF or replication, so no reserve is ever decided by a
/// restarted Redis before this point: here the engine makes sure Redis is
/// the server it was (or reconciles every live round, I7), and only then
/// sends the call again with the script's text (`EVAL`, which also caches
/// the script on that server, whichever master of a cluster it is).
async fn send_loading(
    conn: &mut RedisConn,
    build: &impl Fn(Script, Sent) -> Cmd,
    sent: Sent,
    reconciler: &Arc<Reconciler>,
) -> Result<Vec<redis::Value>, SendError> {
    match build(Script::ByHash, sent).query_async(conn).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            reconciler
                .check_identity()
                .await
                .map_err(SendError::Engine)?;
            build(Script::WithText, sent)
                .query_async(conn)
                .await
                .map_err(SendError::Redis)
        }
        reply => reply.map_err(SendError::Redis),
    }
}

fn settle(attempts: Vec<Pending>, answers: Result<Vec<Answer>, EngineError>) {
    match answers {
        Ok(answers) => {
            for (pending, answer) in attempts.into_iter().zip(answers) {
                // The shopper may have hung up; the decision stands either way.
                let _ = pending.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            for pending in attempts {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}
