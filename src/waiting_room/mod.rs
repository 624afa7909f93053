//! The waiting room: a fair opening for a drop that declares a queue.
//!
//! Everyone who joins between the queue's opening (`opens_before` the
//! round) and the end of the draw window (`draw_window` after the opening)
//! gets a place drawn uniformly at random: a random 52-bit score drawn by
//! the server at the first join, never drawn again for that account (I9).
//! Later arrivals line up behind in arrival order. Admission is
//! allocation: an admitted ticket holds its holder's whole purchase limit
//! (less what they already bought) until it is used up or expires, and the
//! queue admits the next shopper only while units not held remain, at most
//! `admit_rate` a second. So the draw decides who buys, not who clicks
//! fastest once admitted.
//!
//! Two backends keep the queue: [`memory`] (embedded engine, one instance)
//! and [`redis`] (shared by every instance, next to the round's keys).

pub mod auto_rate;
pub mod memory;
pub mod redis;
pub mod tickets;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tokio::sync::watch;

use crate::app::App;
use crate::catalog::Drop;
use crate::domain::{RoundId, UserId};
use crate::engine::EngineError;
use crate::schedule::Round;

/// A drop's `queue = { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRules {
    /// How long before the opening shoppers may join.
    pub opens_before: SignedDuration,
    /// After the opening, how long joins still enter the draw.
    pub draw_window: SignedDuration,
    /// Shoppers admitted per second at most; None: what the engine and
    /// the order writer sustain ([`auto_rate`]), up to `limits.global_rps`.
    pub admit_rate: Option<u32>,
    /// How long an admitted ticket holds its units.
    pub ticket_ttl: SignedDuration,
}

impl Default for QueueRules {
    fn default() -> Self {
        Self {
            opens_before: SignedDuration::from_mins(10),
            draw_window: SignedDuration::from_secs(3),
            admit_rate: None,
            ticket_ttl: SignedDuration::from_mins(2),
        }
    }
}

/// The random score that places a shopper in the draw: uniform below
/// 2^52, so that it and every arrival number after it (2^52 + n) is an
/// exact double (Redis keeps sorted-set scores as doubles).
pub const DRAW_SCORES: u64 = 1 << 52;

/// One round's queue, as the backends need it.
#[derive(Debug, Clone)]
pub struct RoundQueue {
    /// Its drop: the per-user limit, and the SKUs admission counts units of.
    pub drop: Arc<Drop>,
    pub round_id: RoundId,
    /// When joining opens.
    pub opens_at: Timestamp,
    /// When the draw is made: joins before it are drawn.
    pub draw_at: Timestamp,
    pub closes_at: Timestamp,
    pub ticket_ttl: SignedDuration,
    /// The configured admit rate (an operator may set another live).
    pub admit_rate: u32,
}

impl RoundQueue {
    pub fn of(drop: &Arc<Drop>, round: &Round, rules: &QueueRules, default_rate: u32) -> Self {
        Self {
            drop: drop.clone(),
            round_id: round.id.clone(),
            opens_at: round.opens_at - rules.opens_before,
            draw_at: round.opens_at + rules.draw_window,
            closes_at: round.closes_at,
            ticket_ttl: rules.ticket_ttl,
            admit_rate: rules.admit_rate.unwrap_or(default_rate).max(1),
        }
    }

    /// The queue of the drop's current round, if it has one.
    pub fn current(app: &App, drop: &Arc<Drop>, now: Timestamp) -> Option<Self> {
        let rules = drop.queue.as_ref()?;
        let round = drop.round_at(now);
        let automatic = app
            .queue_rates
            .get(&drop.id, app.admission.limits().global_rps);
        Some(Self::of(drop, &round, rules, automatic))
    }

    /// True while shoppers may join or be admitted.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.opens_at <= now && now < self.closes_at
    }
}

/// A queue's figures, as its last admission step left them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Entries ever made (the draw's and the later arrivals').
    pub joined: u64,
    pub admitted: u64,
    /// Units held by admitted tickets not used up or expired.
    pub held: u64,
    /// Shoppers a second the queue admits at most, now.
    pub admit_rate: u32,
    /// Shoppers a second it admitted lately (what estimates use).
    pub measured_rate: f64,
    /// No unit left and none held: nobody more will be admitted.
    pub sold_out: bool,
}

/// Each queued drop's latest figures, by drop id (the operator page's).
pub type QueueFigures = dashmap::DashMap<String, QueueStats, crate::SeededHasher>;

/// One shopper's entry, as a backend knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// This call made the entry (a first join, or a rejoin after expiry).
    pub joined_now: bool,
    /// Not yet admitted: entries before this one still waiting, plus one.
    /// None until the draw is made.
    pub position: Option<u64>,
    pub admitted_at: Option<Timestamp>,
    pub stats: QueueStats,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue opens at {0}")]
    NotOpen(Timestamp),
    #[error(transparent)]
    Backend(#[from] EngineError),
}

#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// Puts `user` in the queue (`join`) or only looks. None: not in it.
    /// A join after the entry's ticket expired moves it to the back.
    async fn enter(
        &self,
        queue: &RoundQueue,
        user: &UserId,
        join: bool,
        now: Timestamp,
    ) -> Result<Option<Entry>, QueueError>;

    /// One admission step: gives back the holds of expired or used-up
    /// tickets, then admits the next in line while the rate and the units
    /// not held allow. Safe to run from every instance at once.
    async fn admit(&self, queue: &RoundQueue, now: Timestamp) -> Result<QueueStats, EngineError>;

    /// Sets the round's admit rate, at once, for every instance.
    async fn set_rate(&self, queue: &RoundQueue, rate: u32) -> Result<(), EngineError>;
}

/// What `POST` and `GET /api/v1/drops/{id}/queue` answer.
#[derive(Debug, Serialize)]
pub struct QueueView {
    /// Sent as `Queue-Ticket` to reserve; only once admitted.
    pub ticket: Option<String>,
    /// `waiting`, `admitted`, `expired` (join again to line up at the
    /// back) or `sold_out`.
    pub state: &'static str,
    pub position: Option<u64>,
    /// When the shopper was admitted, or is expected to be.
    pub admit_at: Option<Timestamp>,
    pub estimated_wait_s: Option<f64>,
    /// When the draw is made (joins before it are drawn).
    pub draw_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

impl QueueView {
    pub fn of(app: &App, queue: &RoundQueue, user: &UserId, entry: &Entry, now: Timestamp) -> Self {
        let base = |state| QueueView {
            ticket: None,
            state,
            position: entry.position,
            admit_at: None,
            estimated_wait_s: None,
            draw_at: queue.draw_at,
            expires_at: None,
        };
        if let Some(at) = entry.admitted_at {
            let expires = at + queue.ticket_ttl;
            if now >= expires {
                return base("expired");
            }
            return QueueView {
                ticket: Some(app.queue_tickets.issue(
                    &queue.drop.id,
                    &queue.round_id,
                    user,
                    expires,
                )),
                admit_at: Some(at),
                expires_at: Some(expires),
                position: Some(0),
                ..base("admitted")
            };
        }
        if entry.stats.sold_out {
            return base("sold_out");
        }
        let wait = estimated_wait(queue, entry, now);
        QueueView {
            estimated_wait_s: wait.map(|w| (w.as_secs_f64() * 10.0).round() / 10.0),
            admit_at: wait.and_then(|w| now.checked_add(w).ok()),
            ..base("waiting")
        }
    }
}

/// How long until this entry is admitted, from the admission rate measured
/// lately. During the draw the place is not known yet: the middle of the
/// entries so far is assumed. None when admission has stalled (every unit
/// left is held by admitted tickets: the wait depends on whether they buy).
pub fn estimated_wait(queue: &RoundQueue, entry: &Entry, now: Timestamp) -> Option<SignedDuration> {
    let stats = &entry.stats;
    let (ahead, until_draw) = match entry.position {
        Some(position) => (position as f64, 0.0),
        None => (
            (stats.joined as f64 + 1.0) / 2.0,
            queue.draw_at.duration_since(now).as_secs_f64().max(0.0),
        ),
    };
    let rate = if now < queue.draw_at || stats.admitted == 0 {
        f64::from(stats.admit_rate.max(1))
    } else {
        stats.measured_rate
    };
    if rate <= 0.0 {
        return None;
    }
    let seconds = until_draw + ahead / rate;
    Some(SignedDuration::from_secs_f64(seconds))
}

/// How often every queue runs an admission step.
pub const ADMIT_EVERY: Duration = Duration::from_millis(100);

/// Admits shoppers in every active queue, every [`ADMIT_EVERY`], and
/// publishes each queue's figures in `/metrics`.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ADMIT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = app.clock.now();
        let ceiling = app.admission.limits().global_rps;
        for drop in app.catalog().drops() {
            let Some(mut queue) = RoundQueue::current(&app, drop, now) else {
                continue;
            };
            if !queue.is_active(now) {
                continue;
            }
            if drop.queue.as_ref().is_some_and(|q| q.admit_rate.is_none()) {
                queue.admit_rate = app.queue_rates.step(&drop.id, strained(&app), ceiling);
            }
            match app.queues.admit(&queue, now).await {
                Ok(stats) => publish(&app, &queue, stats),
                Err(e) => {
                    tracing::warn!(drop = %queue.drop.id, error = %e, "queue admission step failed; will retry")
                }
            }
        }
    }
}

/// True when the engine or the order writer is near what it sustains.
fn strained(app: &App) -> bool {
    let limits = app.admission.limits();
    app.admission.in_flight() * 4 >= limits.max_in_flight * 3
        || app.writer_lag() > auto_rate::STRAINED_LAG
}

fn publish(app: &App, queue: &RoundQueue, stats: QueueStats) {
    let drop = queue.drop.id.to_string();
    metrics::gauge!("dropgate_queue_joined", "drop" => drop.clone()).set(stats.joined as f64);
    metrics::gauge!("dropgate_queue_admitted", "drop" => drop.clone()).set(stats.admitted as f64);
    metrics::gauge!("dropgate_queue_held_units", "drop" => drop.clone()).set(stats.held as f64);
    metrics::gauge!("dropgate_queue_admit_rate", "drop" => drop.clone())
        .set(f64::from(stats.admit_rate));
    metrics::gauge!("dropgate_queue_measured_rate", "drop" => drop.clone())
        .set(stats.measured_rate);
    app.queue_figures.insert(drop, stats);
}

/// Smooths the measured admission rate: one sample a second at least,
/// each weighing half (a few seconds of memory).
pub fn smoothed(previous: f64, admitted: u64, over: Duration) -> f64 {
    let sample = admitted as f64 / over.as_secs_f64().max(1e-3);
    previous * 0.5 + sample * 0.5
}
