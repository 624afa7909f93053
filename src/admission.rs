//! Admission control: token buckets per client address, per shopper and
//! for the whole server, plus a cap on engine calls in flight. Each check is
//! cheap and runs before the work it protects (ARCHITECTURE.md, the request path).
//!
//! governor fixes a limiter's quota when it is built, so a change of limits
//! builds a fresh set of buckets and swaps it in atomically: requests never
//! wait on a lock, and the new limits apply to the next request. Keys start
//! again with full buckets after a change, which errs on the side of letting
//! shoppers in.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;
use crate::SeededHasher;

/// Admission-control limits; the admin API changes them live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub global_rps: u32,
    pub global_burst: u32,
    pub per_user_rps: u32,
    pub per_user_burst: u32,
    pub per_ip_rps: u32,
    pub per_ip_burst: u32,
    pub max_in_flight: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            global_rps: 50_000,
            global_burst: 5_000,
            per_user_rps: 5,
            per_user_burst: 10,
            per_ip_rps: 200,
            per_ip_burst: 400,
            max_in_flight: 1024,
        }
    }
}

/// The largest rate or burst accepted; beyond it a limit means "no limit"
/// and is more likely a typo than a wish.
pub const MAX_RATE: u32 = 10_000_000;
/// The largest in-flight cap accepted: far past what one engine can serve.
pub const MAX_IN_FLIGHT: u32 = 1_000_000;

impl Limits {
    /// Refuses a limit of 0 (nothing would get through) and absurd ones,
    /// naming the field.
    pub fn check(self) -> Result<Self, (&'static str, String)> {
        let fields = [
            ("global_rps", self.global_rps, MAX_RATE),
            ("global_burst", self.global_burst, MAX_RATE),
            ("per_user_rps", self.per_user_rps, MAX_RATE),
            ("per_user_burst", self.per_user_burst, MAX_RATE),
            ("per_ip_rps", self.per_ip_rps, MAX_RATE),
            ("per_ip_burst", self.per_ip_burst, MAX_RATE),
            ("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT),
        ];
        for (name, value, max) in fields {
            if value == 0 || value > max {
                return Err((name, format!("must be from 1 to {max}, not {value}")));
            }
        }
        Ok(self)
    }
}

/// Which layer turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Ip,
    User,
    Global,
    InFlight,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Ip => "ip",
            Layer::User => "user",
            Layer::Global => "global",
            Layer::InFlight => "in_flight",
        }
    }
}

/// A request turned away, and when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub layer: Layer,
    pub retry_after: Duration,
}

impl Rejection {
    /// Whole seconds for the `Retry-After` header, never 0: a client told to
    /// retry at once would come straight back.
    pub fn retry_after_secs(&self) -> u32 {
        let secs = self.retry_after.as_secs_f64().ceil() as u64;
        secs.clamp(1, u64::from(u32::MAX)) as u32
    }
}

type Keyed<K, C> =
    RateLimiter<K, DashMapStateStore<K, SeededHasher>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One generation of buckets, built from one set of limits.
struct Buckets<C: Clock> {
    limits: Limits,
    per_ip: Keyed<IpAddr, C>,
    /// Keyed by a salted 64-bit hash of the user id rather than the id
    /// itself: a fixed-size key keeps a million tracked shoppers small, and
    /// the per-process salt keeps collisions out of an attacker's reach.
    per_user: Keyed<u64, C>,
    global: Direct<C>,
}

impl<C: Clock + Clone> Buckets<C> {
    fn new(limits: Limits, clock: &C) -> Self {
        Self {
            limits,
            per_ip: RateLimiter::dashmap_with_clock_and_hasher(
                quota(limits.per_ip_rps, limits.per_ip_burst),
                clock.clone(),
                SeededHasher::default(),
            ),
            per_user: RateLimiter::dashmap_with_clock_and_hasher(
                quota(limits.per_user_rps, limits.per_user_burst),
                clock.clone(),
                SeededHasher::default(),
            ),
            global: RateLimiter::direct_with_clock(
                quota(limits.global_rps, limits.global_burst),
                clock.clone(),
            ),
        }
    }
}

/// Limits are checked to be at least 1 before they get here.
fn quota(rps: u32, burst: u32) -> Quota {
    let nonzero = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    Quota::per_second(nonzero(rps)).allow_burst(nonzero(burst))
}

pub struct Admission<C: Clock = DefaultClock> {
    clock: C,
    buckets: ArcSwap<Buckets<C>>,
    user_salt: SeededHasher,
    /// Engine calls under way. Past `max_in_flight` a request is refused with
    /// 503 rather than queued: a queue in front of the engine would only add
    /// latency to every request behind it once the engine is saturated.
    in_flight: Arc<AtomicU32>,
}

impl Admission<DefaultClock> {
    pub fn new(limits: Limits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Admission<C> {
    pub fn with_clock(limits: Limits, clock: C) -> Self {
        Self {
            buckets: ArcSwap::from_pointee(Buckets::new(limits, &clock)),
            clock,
            user_salt: SeededHasher::default(),
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.buckets.load().limits
    }

    /// Applies new limits to the next request on.
    pub fn set_limits(&self, limits: Limits) {
        self.buckets
            .store(Arc::new(Buckets::new(limits, &self.clock)));
    }

    /// The per-address bucket, checked before the request is parsed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Rejection> {
        let buckets = self.buckets.load();
        buckets
            .per_ip
            .check_key(&ip)
            .map_err(|wait| self.rejection(Layer::Ip, &wait))
    }

    /// The per-shopper bucket, checked once the token is verified.
    pub fn check_user(&self, user: &UserId) -> Result<(), Rejection> {
        let key = self.user_salt.hash_one(user.as_str());
        let buckets = self.buckets.load();
        buckets
            .per_user
            .check_key(&key)
            .map_err(|wait| self.rejection(Layer::User, &wait))
    }

    /// The in-flight cap and the global bucket, in front of the engine. The
    /// ticket holds the in-flight place until it is dropped.
    pub fn enter_engine(&self) -> Result<EngineTicket, Rejection> {
        let buckets = self.buckets.load();
        // The cap is checked first so that a refusal there spends no token.
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = EngineTicket {
            in_flight: self.in_flight.clone(),
        };
        if before >= buckets.limits.max_in_flight {
            return Err(Rejection {
                layer: Layer::InFlight,
                retry_after: Duration::from_secs(1),
            });
        }
        buckets
            .global
            .check()
            .map_err(|wait| self.rejection(Layer::Global, &wait))?;
        Ok(ticket)
    }

    /// Engine calls under way now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Forgets addresses and shoppers whose buckets are full again, so the
    /// keyed limiters hold only recent clients however many pass through.
    pub fn prune(&self) {
        let buckets = self.buckets.load();
        buckets.per_ip.retain_recent();
        buckets.per_ip.shrink_to_fit();
        buckets.per_user.retain_recent();
        buckets.per_user.shrink_to_fit();
    }

    /// Addresses and shoppers the keyed limiters track now.
    pub fn tracked_keys(&self) -> (usize, usize) {
        let buckets = self.buckets.load();
        (buckets.per_ip.len(), buckets.per_user.len())
    }

    fn rejection(&self, layer: Layer, wait: &NotUntil<C::Instant>) -> Rejection {
        Rejection {
            layer,
            retry_after: wait.wait_time_from(self.clock.now()),
        }
    }
}

/// A place among the engine calls in flight, given back on drop (also when
/// the request future is dropped because the client went away).
pub struct EngineTicket {
    in_flight: Arc<AtomicU32>,
}

impl Drop for EngineTicket {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits() -> Limits {
        Limits {
            global_rps: 100,
            global_burst: 10,
            per_user_rps: 5,
            per_user_burst: 2,
            per_ip_rps: 10,
            per_ip_burst: 3,
            max_in_flight: 2,
        }
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn the_ip_bucket_allows_its_burst_then_refuses_until_a_token_comes_back() {
        let clock = FakeRelativeClock::default();
        let admission = Admission::with_clock(limits(), clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            admission.check_ip(ip).unwrap();
        }
        let refused = admission.check_ip(ip).unwrap_err();
        assert_eq!(refused.layer, Layer::Ip);
        // 10 per second: the next token is 100 ms away.
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // Another address has its own bucket.
        admission.check_ip("192.0.2.2".parse().unwrap()).unwrap();
        clock.advance(Duration::from_millis(100));
        admission.check_ip(ip).unwrap();
        assert!(admission.check_ip(ip).is_err());
    }

    #[test]
    fn the_user_bucket_refills_at_its_rate() {
        let clock = FakeRelativeClock::default();
        let admission = Admission::with_clock(limits(), clock.clone());
        let alice = user("alice");
        let mut allowed = 0;
        // Ten simulated seconds of a shopper trying every millisecond.
        for _ in 0..10_000 {
            if admission.check_user(&alice).is_ok() {
                allowed += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        // The burst of 2, then 5 per second for 10 s.
        assert!((50..=52).contains(&allowed), "allowed {allowed}");
        admission.check_user(&user("bob")).unwrap();
    }

    #[test]
    fn the_global_bucket_and_the_in_flight_cap_guard_the_engine() {
        let clock = FakeRelativeClock::default();
        let admission = Admission::with_clock(limits(), clock.clone());
        let first = admission.enter_engine().unwrap();
        let second = admission.enter_engine().unwrap();
        assert_eq!(admission.in_flight(), 2);
        let full = admission.enter_engine().err().unwrap();
        assert_eq!(full.layer, Layer::InFlight);
        assert_eq!(admission.in_flight(), 2, "a refused call holds no place");
        drop((first, second));
        assert_eq!(admission.in_flight(), 0);
        // 2 tokens were spent above; 8 remain of the burst of 10.
        for _ in 0..8 {
            drop(admission.enter_engine().unwrap());
        }
        let empty = admission.enter_engine().err().unwrap();
        assert_eq!(empty.layer, Layer::Global);
        assert_eq!(empty.retry_after, Duration::from_millis(10));
        clock.advance(Duration::from_millis(10));
        drop(admission.enter_engine().unwrap());
    }

    #[test]
    fn new_limits_apply_to_the_next_request() {
        let clock = FakeRelativeClock::default();
        let admission = Admission::with_clock(limits(), clock);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            admission.check_ip(ip).unwrap();
        }
        assert!(admission.check_ip(ip).is_err());
        admission.set_limits(Limits {
            per_ip_burst: 100,
            ..limits()
        });
        assert_eq!(admission.limits().per_ip_burst, 100);
        for _ in 0..100 {
            admission.check_ip(ip).unwrap();
        }
        assert!(admission.check_ip(ip).is_err());
    }

    #[test]
    fn pruning_forgets_shoppers_whose_buckets_are_full_again() {
        let clock = FakeRelativeClock::default();
        let admission = Admission::with_clock(limits(), clock.clone());
        for n in 0..1000 {
            admission.check_user(&user(&format!("u{n}"))).unwrap();
        }
        assert_eq!(admission.tracked_keys().1, 1000);
        // A burst of 2 at 5 per second is full again 400 ms after one request.
        clock.advance(Duration::from_millis(400));
        admission.prune();
        assert_eq!(admission.tracked_keys().1, 0);
    }
}
