//! What is on sale: drops, their SKUs and prices, already validated.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use crate::domain::{DropId, RoundId, SkuId};
use crate::schedule::{Round, Timing};
use crate::SeededHasher;

#[derive(Debug, Clone)]
pub struct Sku {
    pub id: SkuId,
    pub name: String,
    pub price: Decimal,
    /// Due at once on a presale drop; the rest of the price is due later.
    pub deposit: Option<Decimal>,
    /// Units on sale in every round.
    pub stock: u64,
}

#[derive(Debug, Clone)]
pub struct Drop {
    pub id: DropId,
    pub product: String,
    /// Units one account may hold per round, over all SKUs.
    pub per_user_limit: u32,
    pub pay_within: SignedDuration,
    pub presale: bool,
    pub timing: Timing,
    pub skus: Vec<Sku>,
    /// What this drop changes of the store's payment rules.
    pub payments: crate::payment_rules::DropPayments,
    /// A presale's balance window (presale drops have one, others none).
    pub balance: Option<crate::presale::BalanceWindow>,
    /// When paid orders ship, and where the drop counts days.
    pub shipping: crate::shipping::ShipPlan,
    /// The waiting room at each round's opening, if the drop has one.
    pub queue: Option<crate::waiting_room::QueueRules>,
    pub round_cache: RoundCache,
}

impl Drop {
    /// The current round, or the next one when none is current.
    pub fn round_at(&self, now: Timestamp) -> Arc<Round> {
        if let Some(round) = self.round_cache.get(now) {
            return round;
        }
        let round = Arc::new(self.timing.round_at(&self.id, now));
        self.round_cache.put(now, round.clone());
        round
    }

    pub fn sku(&self, id: &str) -> Option<&Sku> {
        self.skus.iter().find(|s| s.id.as_str() == id)
    }
}

/// The last round a drop's `round_at` computed, reused while the answer
/// cannot have changed: every request asks, and a weekly schedule's answer
/// takes time-zone arithmetic and formatting the round id.
#[derive(Default)]
pub struct RoundCache(ArcSwapOption<CachedRound>);

struct CachedRound {
    round: Arc<Round>,
    /// The answer holds from the instant it was computed at until the round
    /// closes or another round could open: scheduled openings of one drop
    /// are at least 23 hours apart (a day, less a daylight-saving hour).
    from: Timestamp,
    until: Timestamp,
}

const NO_NEW_OPENING_FOR: SignedDuration = SignedDuration::from_hours(23);

impl RoundCache {
    fn get(&self, now: Timestamp) -> Option<Arc<Round>> {
        let cached = self.0.load();
        let cached = cached.as_ref()?;
        (cached.from <= now && now < cached.until).then(|| cached.round.clone())
    }

    fn put(&self, now: Timestamp, round: Arc<Round>) {
        let until = round
            .opens_at
            .checked_add(NO_NEW_OPENING_FOR)
            .map_or(round.closes_at, |t| t.min(round.closes_at));
        self.0.store(Some(Arc::new(CachedRound {
            round,
            from: now,
            until,
        })));
    }
}

/// A copy starts with an empty cache.
impl Clone for RoundCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for RoundCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoundCache")
    }
}

/// All drops, in configuration order, looked up by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    drops: Vec<Arc<Drop>>,
    by_id: HashMap<String, Arc<Drop>, SeededHasher>,
}

impl Catalog {
    /// Builds a catalog; the caller has checked that drop ids are unique.
    pub fn new(drops: Vec<Drop>) -> Self {
        let drops: Vec<Arc<Drop>> = drops.into_iter().map(Arc::new).collect();
        let by_id = drops
            .iter()
            .map(|d| (d.id.as_str().to_owned(), d.clone()))
            .collect();
        Self { drops, by_id }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Drop>> {
        self.by_id.get(id)
    }

    pub fn drops(&self) -> &[Arc<Drop>] {
        &self.drops
    }
}

/// The catalog as it stands now. Operators add drops while the server runs,
/// so readers take a snapshot (one atomic load, no lock) and writers swap in
/// a new catalog.
#[derive(Clone, Default)]
pub struct LiveCatalog(Arc<ArcSwap<Catalog>>);

/// A drop with this id is already on sale.
#[derive(Debug, thiserror::Error)]
#[error("a drop with id {0:?} exists")]
pub struct DropExists(pub String);

impl LiveCatalog {
    pub fn new(catalog: Catalog) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(catalog)))
    }

    pub fn snapshot(&self) -> Arc<Catalog> {
        self.0.load_full()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Drop>> {
        self.0.load().get(id).cloned()
    }

    /// A round is retired once it is no longer its drop's current round (a
    /// later one has come): nothing sells in it again and its units never
    /// come back, so the engines forget it. A closed round its drop still
    /// shows (a one-window drop after its close) is kept, for its figures.
    pub fn is_retired(&self, round: &RoundId, now: Timestamp) -> bool {
        match self.get(round.drop_part()) {
            Some(drop) => drop.round_at(now).id != *round,
            None => true,
        }
    }

    /// The round of every drop that may still change: what the embedded
    /// engine loads from the store at start.
    pub fn current_rounds(&self, now: Timestamp) -> Vec<RoundId> {
        self.snapshot()
            .drops()
            .iter()
            .map(|drop| drop.round_at(now).id.clone())
            .collect()
    }

    /// Adds a drop unless its id is taken.
    pub fn add(&self, drop: Drop) -> Result<Arc<Drop>, DropExists> {
        let drop = Arc::new(drop);
        let mut taken = false;
        self.0.rcu(|current| {
            taken = current.get(drop.id.as_str()).is_some();
            if taken {
                return current.clone();
            }
            let mut next = Catalog::clone(current);
            next.by_id.insert(drop.id.as_str().to_owned(), drop.clone());
            next.drops.push(drop.clone());
            Arc::new(next)
        });
        if taken {
            return Err(DropExists(drop.id.as_str().to_owned()));
        }
        Ok(drop)
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use crate::config::{Config, SecretSource};

    /// The cache answers exactly what the schedule computes, walking time
    /// forwards across openings and closings, and backwards.
    #[test]
    fn the_cached_round_is_the_computed_round() {
        let config = Config::from_toml(
            r#"
            [auth]
            jwt_secret = "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj"
            admin_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            payment_secret = "pppppppppppppppppppppppppppppppppppp"
            logistics_secret = "llllllllllllllllllllllllllllllllllll"
            [[drops]]
            id = "d"
            product = "P"
            per_user_limit = 1
            pay_within = "15m"
            schedule = { days = ["Mon", "Tue", "Fri"], at = "23:30", time_zone = "Asia/Shanghai", duration = "26h" }
            [[drops.skus]]
            id = "s"
            name = "n"
            price = "1.00"
            stock = 1
            "#,
            SecretSource::Environment,
        )
        .unwrap();
        let drop = config.catalog.get("d").unwrap().clone();
        let start: Timestamp = "2026-11-23T00:00:00Z".parse().unwrap();
        let mut times: Vec<Timestamp> = (0..24 * 14 * 4)
            .map(|quarter| start + jiff::SignedDuration::from_mins(15 * quarter))
            .collect();
        times.extend(times.clone().into_iter().rev().step_by(7));
        for now in times {
            let cached = drop.round_at(now);
            let computed = drop.timing.round_at(&drop.id, now);
            assert_eq!(*cached, computed, "at {now}");
        }
    }
}
