//! The waiting room in Redis: one queue per round shared by every
//! instance, its keys beside the round's (same hash tag, so the admission
//! step reads the engine's stock and holdings in the same script). Joins
//! and looks that arrive together go to Redis in one script call per round
//! (`lua/queue_enter.lua`), as reserve attempts do; each instance
//! runs the admission step (`lua/queue_admit.lua`), which admits no faster
//! for being run by many. If Redis loses the queue (a restart without
//! persistence), shoppers find themselves out of it and join again,
//! behind; tickets already issued stay valid until they expire.

use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Script, Value};

use super::{Entry, QueueBackend, QueueError, QueueStats, RoundQueue, DRAW_SCORES};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::domain::{RoundId, UserId};
use crate::engine::{next_batch, EngineError, InventoryEngine, RedisConn, RoundKeys};

/// What the admission script answers for a round not set up in Redis.
const NOT_SET_UP: i64 = -6;

/// Joins and looks answered by one script call at most.
const MAX_BATCH: usize = 128;
/// Calls in flight at once.
const CALLS_IN_FLIGHT: usize = 4;
/// Joins waiting for a call; beyond that, callers wait.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Values `queue_enter.lua` answers per shopper.
const ANSWER_LEN: usize = 10;

pub struct RedisQueues {
    conn: RedisConn,
    engine: Arc<dyn InventoryEngine>,
    entering: mpsc::Sender<(RoundId, Asked)>,
    admit: Script,
    draw: Mutex<StdRng>,
}

/// One shopper's join or look, waiting for its call.
struct Asked {
    opens_at_ms: i64,
    draw_at_ms: i64,
    ttl_ms: i64,
    user: String,
    join: bool,
    score: u64,
    reply: oneshot::Sender<Result<Vec<Value>, EngineError>>,
}

impl RedisQueues {
    pub fn new(conn: RedisConn, engine: Arc<dyn InventoryEngine>, seed: Option<u64>) -> Self {
        let (entering, queue) = mpsc::channel(QUEUE_DEPTH);
        let enter = Script::new(include_str!("../../lua/queue_enter.lua"));
        tokio::spawn(dispatch(conn.clone(), enter, queue));
        Self {
            conn,
            engine,
            entering,
            admit: Script::new(include_str!("../../lua/queue_admit.lua")),
            draw: Mutex::new(match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            }),
        }
    }
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EngineError {
    EngineError::unavailable(e)
}

/// Reads a script's reply item as text (Redis answers numbers as integers
/// and the rest as bulk strings).
fn text(value: &Value) -> String {
    match value {
        Value::Int(n) => n.to_string(),
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

fn int(value: &Value) -> i64 {
    text(value).parse().unwrap_or(0)
}

fn float(value: &Value) -> Option<f64> {
    text(value).parse().ok()
}

fn time(value: &Value) -> Option<Timestamp> {
    text(value)
        .parse::<i64>()
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
}

/// Entries, admitted, held, rate, measured, sold out: as both scripts
/// answer them (the admission script from its first item).
fn stats(items: &[Value], configured_rate: u32) -> QueueStats {
    let rate = u32::try_from(int(&items[3]))
        .ok()
        .filter(|r| *r > 0)
        .unwrap_or(configured_rate);
    QueueStats {
        joined: int(&items[0]).max(0) as u64,
        admitted: int(&items[1]).max(0) as u64,
        held: int(&items[2]).max(0) as u64,
        admit_rate: rate,
        measured_rate: float(&items[4]).unwrap_or(f64::from(rate)),
        sold_out: int(&items[5]) == 1,
    }
}

#[async_trait]
impl QueueBackend for RedisQueues {
    async fn enter(
        &self,
        queue: &RoundQueue,
        user: &UserId,
        join: bool,
        _now: Timestamp,
    ) -> Result<Option<Entry>, QueueError> {
        let score = self
            .draw
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random_range(0..DRAW_SCORES);
        let (reply, answer) = oneshot::channel();
        let asked = Asked {
            opens_at_ms: queue.opens_at.as_millisecond(),
            draw_at_ms: queue.draw_at.as_millisecond(),
            ttl_ms: queue.ticket_ttl.as_millis() as i64,
            user: user.as_str().to_owned(),
            join,
            score,
            reply,
        };
        let stopped = || unavailable("the queue batcher stopped");
        self.entering
            .send((queue.round_id.clone(), asked))
            .await
            .map_err(|_| stopped())?;
        let reply = answer.await.map_err(|_| stopped())??;
        match reply.first().map(int) {
            Some(-1) => return Err(QueueError::NotOpen(queue.opens_at)),
            Some(1) if reply.len() == ANSWER_LEN => {}
            _ => return Ok(None),
        }
        let position = int(&reply[2]);
        Ok(Some(Entry {
            joined_now: int(&reply[1]) == 1,
            position: u64::try_from(position).ok(),
            admitted_at: time(&reply[3]),
            // From the fifth item on, as the admission step answers them
            // (a rate not set live is empty: the configured one).
            stats: stats(&reply[4..10], queue.admit_rate),
        }))
    }

    async fn admit(&self, queue: &RoundQueue, _now: Timestamp) -> Result<QueueStats, EngineError> {
        let keys = RoundKeys::new(queue.round_id.as_str());
        for _ in 0..2 {
            let mut conn = self.conn.clone();
            let reply: Vec<Value> = self
                .admit
                .key(&keys.queue_entries)
                .key(&keys.queue_state)
                .key(&keys.queue_admits)
                .key(&keys.queue_pending)
                .key(&keys.stock)
                .key(&keys.held)
                .arg(queue.admit_rate)
                .arg(queue.drop.per_user_limit)
                .arg(queue.ticket_ttl.as_millis() as i64)
                .arg(queue.draw_at.as_millisecond())
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if reply.first().map(int) == Some(NOT_SET_UP) {
                // The engine sets a round up when asked what is left of it.
                if let Some(sku) = queue.drop.skus.first() {
                    self.engine
                        .remaining(&queue.round_id, &sku.id, sku.stock)
                        .await?;
                }
                continue;
            }
            if reply.len() != 6 {
                return Err(unavailable("queue_admit.lua answered an unexpected shape"));
            }
            return Ok(stats(&reply, queue.admit_rate));
        }
        Err(unavailable("the round could not be set up in Redis"))
    }

    async fn set_rate(&self, queue: &RoundQueue, rate: u32) -> Result<(), EngineError> {
        let keys = RoundKeys::new(queue.round_id.as_str());
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(&keys.queue_state)
            .arg("rate")
            .arg(rate.max(1))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }
}

/// Sends the joins and looks gathered while earlier calls were in flight,
/// one call per round; ends with the last sender.
async fn dispatch(conn: RedisConn, script: Script, mut queue: mpsc::Receiver<(RoundId, Asked)>) {
    let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some((call, rounds)) = next_batch(&mut queue, &calls, MAX_BATCH).await {
        let call = Arc::new(call);
        for (round_id, asked) in rounds {
            let (mut conn, script, call) = (conn.clone(), script.clone(), call.clone());
            tokio::spawn(async move {
                let answers = invoke(&mut conn, &script, &round_id, &asked).await;
                match answers {
                    Ok(values) => {
                        for (asked, answer) in asked.into_iter().zip(values.chunks(ANSWER_LEN)) {
                            let _ = asked.reply.send(Ok(answer.to_vec()));
                        }
                    }
                    Err(e) => {
                        for asked in asked {
                            let _ = asked.reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(call);
            });
        }
    }
}

async fn invoke(
    conn: &mut RedisConn,
    script: &Script,
    round_id: &RoundId,
    asked: &[Asked],
) -> Result<Vec<Value>, EngineError> {
    let keys = RoundKeys::new(round_id.as_str());
    let first = &asked[0];
    let mut call = script.prepare_invoke();
    call.key(&keys.queue_entries)
        .key(&keys.queue_state)
        .key(&keys.queue_admits)
        .arg(first.opens_at_ms)
        .arg(first.draw_at_ms)
        .arg(first.ttl_ms)
        .arg(asked.len());
    for a in asked {
        call.arg(&a.user)
            .arg(if a.join { "1" } else { "0" })
            .arg(a.score);
    }
    let values: Vec<Value> = call.invoke_async(conn).await.map_err(unavailable)?;
    if values.len() != ANSWER_LEN * asked.len() {
        return Err(unavailable(format!(
            "queue_enter.lua answered {} values for {} shoppers",
            values.len(),
            asked.len()
        )));
    }
    Ok(values)
}
