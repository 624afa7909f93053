//! The local sold-out mark: once the engine has said a SKU is sold out in a
//! round, later requests for it are refused here, without an engine call.
//!
//! Stock can come back (a cancel, an expiry, an operator's restock). On this
//! instance that clears the mark at once. Another instance sharing the Redis
//! engine cannot tell us, so a mark is trusted for [`RECHECK`] only: after
//! that, one request (the first to claim the recheck) asks the engine again
//! while the rest are still refused. A mark therefore outlives returned stock
//! by at most `RECHECK` plus one engine call: well within [`CLEAR_BOUND`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::domain::RoundId;
use crate::SeededHasher;

/// How long a sold-out answer from the engine is trusted before one request
/// asks again.
pub const RECHECK: Duration = Duration::from_millis(250);

/// The promise made to shoppers and tested: stock that comes back anywhere
/// is offered again within this time.
pub const CLEAR_BOUND: Duration = Duration::from_secs(1);

/// Marks by a hash of round id and SKU, so that the lookup on every request
/// allocates nothing; each mark keeps both to confirm.
type Marks = HashMap<u64, Arc<Mark>, SeededHasher>;

pub struct SoldOutMarks {
    started: Instant,
    /// Read by every refused request and written only when the engine says
    /// sold out or stock comes back, so the map is copied on write and read
    /// through `ArcSwap`: a read takes no lock and writes to no memory the
    /// other cores read, where a locked map made the cores fight over its
    /// lock word on every request.
    marks: ArcSwap<Marks>,
    salt: SeededHasher,
}

struct Mark {
    round_id: RoundId,
    sku: String,
    /// When the engine last said "sold out": ms since `started`, plus one
    /// so that 0 never means a real time.
    checked: AtomicU64,
}

impl Mark {
    fn is_for(&self, round_id: &RoundId, sku: &str) -> bool {
        &self.round_id == round_id && self.sku == sku
    }
}

impl Default for SoldOutMarks {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            marks: ArcSwap::from_pointee(Marks::default()),
            salt: SeededHasher::default(),
        }
    }
}

impl SoldOutMarks {
    /// True if the request can be refused as sold out without the engine.
    /// False when there is no mark, or when this caller should recheck it.
    pub fn refuses(&self, round_id: &RoundId, sku: &str) -> bool {
        let marks = self.marks.load();
        if marks.is_empty() {
            return false;
        }
        let Some(mark) = marks.get(&self.key(round_id, sku)) else {
            return false;
        };
        if !mark.is_for(round_id, sku) {
            return false;
        }
        let checked = mark.checked.load(Ordering::Acquire);
        let now = self.now_ms();
        if now.saturating_sub(checked) < RECHECK.as_millis() as u64 {
            return true;
        }
        // Exactly one caller wins the recheck; the others keep refusing.
        mark.checked
            .compare_exchange(checked, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    /// The engine said sold out.
    pub fn mark(&self, round_id: &RoundId, sku: &str) {
        let key = self.key(round_id, sku);
        let now = self.now_ms();
        if let Some(mark) = self.marks.load().get(&key) {
            if mark.is_for(round_id, sku) {
                mark.checked.store(now, Ordering::Release);
                return;
            }
        }
        self.rewrite(|marks| {
            let mark = Mark {
                round_id: round_id.clone(),
                sku: sku.to_owned(),
                checked: AtomicU64::new(now),
            };
            marks.insert(key, Arc::new(mark));
        });
    }

    /// Units came back, or the engine sold one: the SKU is on sale.
    /// Called on every win: with nothing marked it returns before hashing.
    pub fn clear(&self, round_id: &RoundId, sku: &str) {
        let marks = self.marks.load();
        if marks.is_empty() {
            return;
        }
        let key = self.key(round_id, sku);
        if !marks.contains_key(&key) {
            return;
        }
        self.rewrite(|marks| {
            marks.remove(&key);
        });
    }

    /// Publishes a changed copy of the marks; readers keep the old one until
    /// they load again. `change` may run more than once under a race.
    fn rewrite(&self, change: impl Fn(&mut Marks)) {
        self.marks.rcu(|marks| {
            let mut marks = Marks::clone(marks);
            change(&mut marks);
            marks
        });
    }

    fn key(&self, round_id: &RoundId, sku: &str) -> u64 {
        self.salt.hash_one((round_id.as_str(), sku))
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(name: &str) -> RoundId {
        RoundId::parse(&format!("d@{name}")).unwrap()
    }

    #[test]
    fn a_mark_refuses_until_cleared() {
        let marks = SoldOutMarks::default();
        assert!(!marks.refuses(&round("r1"), "a"));
        marks.mark(&round("r1"), "a");
        assert!(marks.refuses(&round("r1"), "a"));
        assert!(
            !marks.refuses(&round("r1"), "b"),
            "another SKU is not marked"
        );
        assert!(
            !marks.refuses(&round("r2"), "a"),
            "another round is not marked"
        );
        marks.clear(&round("r1"), "a");
        assert!(!marks.refuses(&round("r1"), "a"));
    }

    #[test]
    fn an_old_mark_lets_exactly_one_request_recheck() {
        let marks = SoldOutMarks::default();
        marks.mark(&round("r1"), "a");
        std::thread::sleep(RECHECK + Duration::from_millis(20));
        let rechecks = (0..100)
            .filter(|_| !marks.refuses(&round("r1"), "a"))
            .count();
        assert_eq!(rechecks, 1);
    }
}
