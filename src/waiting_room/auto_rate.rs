//! The admit rate of a queue that names none: it follows what the engine
//! and the order writer sustain. Every admission step it grows by a tenth
//! while neither shows strain, and halves when one does — the engine's
//! calls in flight at three quarters of `max_in_flight`, or more than
//! [`STRAINED_LAG`] won orders waiting for the order writer — between
//! [`FLOOR`] shoppers a second and `limits.global_rps`. Admission is
//! allocation, so a slower rate delays shoppers but never changes who buys.

use dashmap::DashMap;

use crate::domain::DropId;

/// Won orders waiting for the order writer past which it is behind.
pub const STRAINED_LAG: u64 = 10_000;
/// The slowest an automatic rate goes.
pub const FLOOR: f64 = 10.0;

/// Each queued drop's automatic rate, shared by the admission ticker
/// (which moves it) and the shoppers' views (which estimate with it).
#[derive(Default)]
pub struct AutoRates {
    rates: DashMap<DropId, f64>,
}

impl AutoRates {
    /// The drop's rate now; it starts at a tenth of the ceiling.
    pub fn get(&self, drop: &DropId, ceiling: u32) -> u32 {
        let rate = self
            .rates
            .get(drop)
            .map_or(f64::from(ceiling) / 10.0, |r| *r);
        rate.clamp(FLOOR.min(f64::from(ceiling)), f64::from(ceiling.max(1))) as u32
    }

    /// One admission step's move: halve under strain, else grow by a tenth.
    pub fn step(&self, drop: &DropId, strained: bool, ceiling: u32) -> u32 {
        let ceiling = f64::from(ceiling.max(1));
        let mut rate = self.rates.entry(drop.clone()).or_insert(ceiling / 10.0);
        *rate = if strained {
            *rate / 2.0
        } else {
            *rate * 1.1 + 1.0
        };
        *rate = rate.clamp(FLOOR.min(ceiling), ceiling);
        *rate as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_halves_under_strain_and_climbs_back_to_the_ceiling() {
        let rates = AutoRates::default();
        let drop = DropId::parse("phone").unwrap();
        assert_eq!(rates.get(&drop, 50_000), 5_000);
        let mut rate = rates.step(&drop, true, 50_000);
        assert_eq!(rate, 2_500);
        for _ in 0..20 {
            rate = rates.step(&drop, true, 50_000);
        }
        assert_eq!(rate, 10, "never below the floor");
        for _ in 0..200 {
            rate = rates.step(&drop, false, 50_000);
        }
        assert_eq!(rate, 50_000, "up to the ceiling");
        assert_eq!(rates.get(&drop, 50_000), 50_000);
    }
}
