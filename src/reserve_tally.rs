//! Reserve outcomes and latencies per drop, counted in memory for the
//! operator page's live view (`GET /admin/v1/live`): the page polls the
//! running totals every second and shows their differences, so a rate and
//! a p99 cover the last second, not the life of the process. Nothing here
//! reads the order store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;

use crate::telemetry::LATENCY_BUCKETS;
use crate::SeededHasher;

/// The outcomes told apart, as the router names them; any other is `other`.
pub const OUTCOMES: [&str; 11] = [
    "won",
    "replayed",
    "sold_out",
    "limit_exceeded",
    "rate_limited",
    "overloaded",
    "unavailable",
    "not_open",
    "closed",
    "queue_required",
    "other",
];

/// Drops tallied at most: a drop id that is not in the catalog is never
/// tallied, and this bounds the map should the catalog grow without end.
const MAX_DROPS: usize = 10_000;

#[derive(Default)]
struct Tally {
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Counts per latency bucket (`LATENCY_BUCKETS`, then one for slower).
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// One drop's totals since the process started.
#[derive(Debug, Serialize, PartialEq)]
pub struct TallyView {
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// Requests per latency bucket, in the order of `latency_buckets`.
    pub latency: Vec<u64>,
}

impl Tally {
    fn count(&self, outcome: &str, took: Duration) {
        self.outcomes[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.latency[latency_index(took)].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct ReserveTally {
    by_drop: DashMap<Box<str>, Tally, SeededHasher>,
}

fn outcome_index(outcome: &str) -> usize {
    let outcome = match outcome {
        "rate_limited_ip" | "rate_limited_user" | "rate_limited_global" => "rate_limited",
        other => other,
    };
    OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(OUTCOMES.len() - 1)
}

fn latency_index(took: Duration) -> usize {
    let seconds = took.as_secs_f64();
    LATENCY_BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(LATENCY_BUCKETS.len())
}

impl ReserveTally {
    /// Counts one answered reserve on `drop`; `known` says whether the
    /// drop exists, asked only the first time an id is seen.
    pub fn record(&self, drop: &str, outcome: &str, took: Duration, known: impl FnOnce() -> bool) {
        // The shard's read guard is held for two relaxed adds: no Arc is
        // cloned, so the reserve path writes no shared reference count.
        if let Some(tally) = self.by_drop.get(drop) {
            tally.count(outcome, took);
            return;
        }
        if self.by_drop.len() >= MAX_DROPS || !known() {
            return;
        }
        self.by_drop
            .entry(drop.into())
            .or_default()
            .count(outcome, took);
    }

    /// The drop's totals; zeros for a drop not reserved on yet.
    pub fn view(&self, drop: &str) -> TallyView {
        let empty = Tally::default();
        let found = self.by_drop.get(drop);
        let tally = found.as_deref().unwrap_or(&empty);
        TallyView {
            outcomes: OUTCOMES
                .iter()
                .zip(&tally.outcomes)
                .map(|(name, count)| (*name, count.load(Ordering::Relaxed)))
                .collect(),
            latency: tally
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_latencies_are_counted_per_known_drop() {
        let tally = ReserveTally::default();
        tally.record("d1", "won", Duration::from_micros(300), || true);
        tally.record("d1", "rate_limited_user", Duration::from_millis(3), || true);
        tally.record("d1", "rate_limited_ip", Duration::from_secs(9), || true);
        tally.record("d1", "conflict", Duration::from_millis(3), || true);
        tally.record("nope", "won", Duration::from_millis(1), || false);
        let d1 = tally.view("d1");
        assert_eq!(d1.outcomes["won"], 1);
        assert_eq!(d1.outcomes["rate_limited"], 2);
        assert_eq!(d1.outcomes["other"], 1);
        assert_eq!(d1.latency[0], 1, "300 µs is in the first bucket");
        assert_eq!(d1.latency[3], 2, "3 ms is in the 5 ms bucket");
        assert_eq!(
            *d1.latency.last().unwrap(),
            1,
            "9 s is slower than every bound"
        );
        assert_eq!(
            tally.view("nope").outcomes["won"],
            0,
            "unknown drops are not tallied"
        );
    }
}
