//! What is left of each round's SKUs, as this instance last read it from
//! Redis, kept current by its own decisions (a win takes units, a release
//! gives them back) and read again once older than [`MAX_AGE`]: so the
//! drop views, read on every page refresh at the opening, cost no Redis
//! call, lag other instances' sales by at most that much, and never lag
//! this instance's own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::domain::{RoundId, SkuId};

/// How old a reading may get before it is read again.
pub const MAX_AGE: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct StockCache {
    rounds: DashMap<RoundId, Reading>,
}

struct Reading {
    read_at: Instant,
    left: HashMap<SkuId, u64>,
}

impl StockCache {
    /// Units of `sku` left, if a reading younger than [`MAX_AGE`] has it.
    pub fn get(&self, round: &RoundId, sku: &SkuId) -> Option<u64> {
        let reading = self.rounds.get(round)?;
        if reading.read_at.elapsed() >= MAX_AGE {
            return None;
        }
        reading.left.get(sku).copied()
    }

    pub fn put(&self, round: &RoundId, left: HashMap<SkuId, u64>, read_at: Instant) {
        self.rounds.insert(round.clone(), Reading { read_at, left });
    }

    /// This instance sold `units` (`delta` < 0) or took them back (> 0).
    pub fn adjust(&self, round: &RoundId, sku: &SkuId, delta: i64) {
        if let Some(mut reading) = self.rounds.get_mut(round) {
            if let Some(left) = reading.left.get_mut(sku) {
                *left = left.saturating_add_signed(delta);
            }
        }
    }

    /// Forgets a round: the next question reads Redis (a restock, a
    /// reconciliation, a retired round).
    pub fn forget(&self, round: &RoundId) {
        self.rounds.remove(round);
    }
}
