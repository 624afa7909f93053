//! The waiting room in memory, for the embedded engine (one instance).
//!
//! Nothing is stored: a restart starts every queue empty. Tickets already
//! issued stay valid until they expire (they are signed, not looked up),
//! but their holds are forgotten; shoppers still waiting find themselves
//! out of the queue (`GET` answers 404) and join again, behind, in
//! arrival order once the draw is over. A restart in the minutes of a
//! sale therefore costs waiting shoppers their places, never an order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{smoothed, Entry, QueueBackend, QueueError, QueueStats, RoundQueue, DRAW_SCORES};
use crate::domain::{RoundId, UserId};
use crate::engine::{EmbeddedEngine, EngineError, InventoryEngine};

pub struct MemoryQueues {
    engine: Arc<EmbeddedEngine>,
    draw: Mutex<StdRng>,
    books: DashMap<RoundId, Arc<Mutex<Book>>>,
}

struct Slot {
    score: u64,
    /// Index in `line` once the draw is made (or the entry came after it).
    place: Option<usize>,
    admitted_at: Option<Timestamp>,
}

#[derive(Default)]
struct Book {
    entries: HashMap<UserId, Slot>,
    /// Everyone in place order, once drawn; rejoins leave a stale copy
    /// behind (its slot's place points further on), skipped by admission.
    line: Vec<UserId>,
    drawn: bool,
    /// The next index of `line` to admit.
    next: usize,
    admitted: u64,
    /// Admitted tickets whose holds may still count, oldest first.
    pending: VecDeque<(UserId, Timestamp)>,
    held: u64,
    tokens: f64,
    last_step: Option<Timestamp>,
    rate: Option<u32>,
    measured: Option<f64>,
    measured_at: Option<(Timestamp, u64)>,
    sold_out: bool,
}

impl Book {
    /// Makes the draw once its time has come: the drawn entries sorted by
    /// their random scores become the head of the line.
    fn draw_if_due(&mut self, queue: &RoundQueue, now: Timestamp) {
        if self.drawn || now < queue.draw_at {
            return;
        }
        let mut drawn: Vec<(u64, UserId)> = self
            .entries
            .iter()
            .map(|(user, slot)| (slot.score, user.clone()))
            .collect();
        drawn.sort_unstable();
        for (place, (_, user)) in drawn.iter().enumerate() {
            if let Some(slot) = self.entries.get_mut(user) {
                slot.place = Some(place);
            }
        }
        self.line = drawn.into_iter().map(|(_, user)| user).collect();
        self.drawn = true;
    }

    /// Enters `user` unless their entry stands; true if this made one (a
    /// first join, or a rejoin at the back after their ticket expired).
    fn join(
        &mut self,
        queue: &RoundQueue,
        user: &UserId,
        now: Timestamp,
        draw: &Mutex<StdRng>,
    ) -> bool {
        self.draw_if_due(queue, now);
        let stands = self.entries.get(user).map(|slot| {
            slot.admitted_at
                .is_none_or(|at| now < at + queue.ticket_ttl)
        });
        if stands == Some(true) {
            return false;
        }
        let (score, place) = if self.drawn {
            let place = self.line.len();
            self.line.push(user.clone());
            (DRAW_SCORES + place as u64, Some(place))
        } else {
            let score = draw
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .random_range(0..DRAW_SCORES);
            (score, None)
        };
        self.entries.insert(
            user.clone(),
            Slot {
                score,
                place,
                admitted_at: None,
            },
        );
        true
    }

    fn stats(&self, queue: &RoundQueue) -> QueueStats {
        let rate = self.rate.unwrap_or(queue.admit_rate);
        QueueStats {
            joined: self.entries.len() as u64,
            admitted: self.admitted,
            held: self.held,
            admit_rate: rate,
            measured_rate: self.measured.unwrap_or(f64::from(rate)),
            sold_out: self.sold_out,
        }
    }

    fn entry(&self, queue: &RoundQueue, user: &UserId, joined_now: bool) -> Option<Entry> {
        let slot = self.entries.get(user)?;
        let position = match (slot.admitted_at, slot.place) {
            (Some(_), _) => Some(0),
            (None, Some(place)) => Some((place + 1).saturating_sub(self.next) as u64),
            (None, None) => None,
        };
        Some(Entry {
            joined_now,
            position,
            admitted_at: slot.admitted_at,
            stats: self.stats(queue),
        })
    }
}

impl MemoryQueues {
    /// `seed`: a fixed draw (tests); None draws from the OS's entropy.
    pub fn new(engine: Arc<EmbeddedEngine>, seed: Option<u64>) -> Self {
        let draw = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            engine,
            draw: Mutex::new(draw),
            books: DashMap::new(),
        }
    }

    fn book(&self, round_id: &RoundId) -> Arc<Mutex<Book>> {
        if let Some(book) = self.books.get(round_id) {
            return book.clone();
        }
        self.books.entry(round_id.clone()).or_default().clone()
    }

    /// Forgets the queues of rounds that have closed.
    fn forget_closed(&self, queue: &RoundQueue) {
        let drop = queue.drop.id.as_str();
        self.books
            .retain(|round, _| round.drop_part() != drop || *round == queue.round_id);
    }
}

fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    // A panic cannot leave a book half-changed in a way that matters more
    // than losing the queue; go on with it.
    book.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl QueueBackend for MemoryQueues {
    async fn enter(
        &self,
        queue: &RoundQueue,
        user: &UserId,
        join: bool,
        now: Timestamp,
    ) -> Result<Option<Entry>, QueueError> {
        if now < queue.opens_at {
            return Err(QueueError::NotOpen(queue.opens_at));
        }
        let book = self.book(&queue.round_id);
        let mut book = lock(&book);
        book.draw_if_due(queue, now);
        if !join {
            return Ok(book.entry(queue, user, false));
        }
        let joined_now = book.join(queue, user, now, &self.draw);
        Ok(book.entry(queue, user, joined_now))
    }

    async fn admit(&self, queue: &RoundQueue, now: Timestamp) -> Result<QueueStats, EngineError> {
        self.forget_closed(queue);
        let book = self.book(&queue.round_id);
        // Expired holds go; the rest are looked up in the engine.
        let pending: Vec<UserId> = {
            let mut book = lock(&book);
            book.draw_if_due(queue, now);
            if !book.drawn {
                return Ok(book.stats(queue));
            }
            while book
                .pending
                .front()
                .is_some_and(|(_, at)| now >= *at + queue.ticket_ttl)
            {
                book.pending.pop_front();
            }
            book.pending.iter().map(|(u, _)| u.clone()).collect()
        };
        let holdings = self.engine.holdings(&queue.round_id, &pending);
        let mut remaining = 0;
        for sku in &queue.drop.skus {
            remaining += self
                .engine
                .remaining(&queue.round_id, &sku.id, sku.stock)
                .await?;
        }

        let mut book = lock(&book);
        let limit = queue.drop.per_user_limit;
        let used_up: std::collections::HashSet<&UserId> = pending
            .iter()
            .zip(&holdings)
            .filter(|(_, held)| **held >= limit)
            .map(|(u, _)| u)
            .collect();
        book.pending.retain(|(u, _)| !used_up.contains(u));
        let held: u64 = holdings
            .iter()
            .map(|h| u64::from(limit.saturating_sub(*h)))
            .sum();

        let rate = f64::from(book.rate.unwrap_or(queue.admit_rate));
        let since = book.last_step.unwrap_or(queue.draw_at);
        let elapsed = now.duration_since(since).as_secs_f64().max(0.0);
        book.tokens = (book.tokens + elapsed * rate).min(rate.max(1.0));
        book.last_step = Some(now);

        let mut free = remaining.saturating_sub(held);
        let mut held_now = held;
        while book.tokens >= 1.0 && free > 0 && book.next < book.line.len() {
            let index = book.next;
            book.next += 1;
            let user = book.line[index].clone();
            let Some(slot) = book.entries.get_mut(&user) else {
                continue;
            };
            if slot.place != Some(index) || slot.admitted_at.is_some() {
                continue; // a stale copy: the entry rejoined further back
            }
            slot.admitted_at = Some(now);
            book.pending.push_back((user, now));
            book.admitted += 1;
            book.tokens -= 1.0;
            let hold = u64::from(limit).min(free);
            free -= hold;
            held_now += hold;
        }
        book.held = held_now;
        book.sold_out = remaining == 0 && held == 0;
        let admitted = book.admitted;
        match book.measured_at {
            Some((at, before)) if now.duration_since(at).as_secs_f64() >= 1.0 => {
                let over = Duration::from_secs_f64(now.duration_since(at).as_secs_f64());
                let previous = book.measured.unwrap_or(rate);
                book.measured = Some(smoothed(previous, admitted - before, over));
                book.measured_at = Some((now, admitted));
            }
            Some(_) => {}
            None => book.measured_at = Some((now, admitted)),
        }
        Ok(book.stats(queue))
    }

    async fn set_rate(&self, queue: &RoundQueue, rate: u32) -> Result<(), EngineError> {
        lock(&self.book(&queue.round_id)).rate = Some(rate.max(1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn queue(round: usize, at: Timestamp) -> RoundQueue {
        let drop = crate::config::drop_from_json(
            br#"{"id": "phone", "product": "Phone", "per_user_limit": 1, "pay_within": "15m",
                 "opens_at": "2027-01-01T00:00:00Z", "closes_at": "2027-01-02T00:00:00Z",
                 "skus": [{"id": "sku", "name": "8GB", "price": "1.00", "stock": 10}]}"#,
        )
        .unwrap();
        RoundQueue {
            drop: Arc::new(drop),
            round_id: RoundId::parse(&format!("phone@r{round}")).unwrap(),
            opens_at: at - SignedDuration::from_mins(10),
            draw_at: at + SignedDuration::from_secs(3),
            closes_at: at + SignedDuration::from_hours(1),
            ticket_ttl: SignedDuration::from_mins(2),
            admit_rate: 100,
        }
    }

    /// I9: whatever an account sends and whenever it joins before the
    /// draw, its place is drawn uniformly. Twenty accounts, two thousand
    /// rounds: five "scripted" accounts join first (ten minutes early) and
    /// join again twenty times each, fifteen "honest" ones join once, at
    /// the last second of the draw window. How often each account lands in
    /// the first quarter of places must fit one uniform distribution
    /// (chi-square, 19 degrees of freedom, p = 0.001: 43.8), and the
    /// scripted accounts' share must be what chance gives them.
    #[test]
    fn places_in_the_draw_are_uniform_whatever_an_account_sends() {
        let draw = Mutex::new(StdRng::seed_from_u64(20261206));
        let opening = Timestamp::from_second(1_800_000_000).unwrap();
        let (accounts, rounds, top) = (20usize, 2000usize, 5usize);
        let users: Vec<UserId> = (0..accounts)
            .map(|i| UserId::parse(&format!("user-{i}")).unwrap())
            .collect();
        let mut in_top = vec![0u32; accounts];
        for round in 0..rounds {
            let queue = queue(round, opening);
            let mut book = Book::default();
            for user in &users[..5] {
                for _ in 0..20 {
                    book.join(&queue, user, queue.opens_at, &draw);
                }
            }
            let late = queue.draw_at - SignedDuration::from_millis(1);
            for user in &users[5..] {
                assert!(book.join(&queue, user, late, &draw));
            }
            book.draw_if_due(&queue, queue.draw_at);
            for user in &book.line[..top] {
                in_top[users.iter().position(|u| u == user).unwrap()] += 1;
            }
        }
        let expected = (rounds * top / accounts) as f64;
        let chi_square: f64 = in_top
            .iter()
            .map(|&n| (f64::from(n) - expected).powi(2) / expected)
            .sum();
        assert!(chi_square < 43.8, "chi-square {chi_square:.1}: {in_top:?}");
        let scripted: u32 = in_top[..5].iter().sum();
        let share = f64::from(scripted) / (rounds * top) as f64;
        // Chance gives the five a quarter of the top places (sd ~0.0097).
        assert!((share - 0.25).abs() < 0.03, "scripted share {share:.3}");
    }

    #[test]
    fn joins_after_the_draw_line_up_in_arrival_order_and_a_join_again_changes_nothing() {
        let draw = Mutex::new(StdRng::seed_from_u64(7));
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let queue = queue(0, at);
        let mut book = Book::default();
        let user = |i: usize| UserId::parse(&format!("u{i}")).unwrap();
        for i in 0..3 {
            assert!(book.join(&queue, &user(i), queue.opens_at, &draw));
        }
        let after = queue.draw_at + SignedDuration::from_secs(1);
        for i in 3..6 {
            assert!(book.join(&queue, &user(i), after, &draw));
            assert!(!book.join(&queue, &user(i), after, &draw), "a second join");
        }
        assert_eq!(&book.line[3..], &[user(3), user(4), user(5)]);
        let places: Vec<_> = (0..6)
            .map(|i| book.entry(&queue, &user(i), false).unwrap().position)
            .collect();
        let mut drawn: Vec<u64> = places[..3].iter().map(|p| p.unwrap()).collect();
        drawn.sort_unstable();
        assert_eq!(drawn, [1, 2, 3]);
        assert_eq!(&places[3..], &[Some(4), Some(5), Some(6)]);
    }
}
