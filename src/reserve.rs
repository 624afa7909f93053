//! The reserve service: everything a reservation decides outside the
//! engine. It finds the SKU, checks the presale terms and the sale window,
//! consults the sold-out marks, prices the order, fingerprints the request
//! for its idempotency key, and asks the engine. The HTTP handler only
//! parses the request and maps the answer.

use std::time::Instant;

use jiff::Timestamp;

use crate::admission::Rejection;
use crate::app::App;
use crate::catalog::{Drop, Sku};
use crate::domain::{IdempotencyKey, OrderId, Quantity, UserId};
use crate::engine::{outside_window, EngineError, Refused, ReserveAttempt, Reserved};
use crate::money::Currency;
use crate::order::{Order, OrderStatus};
use crate::pricing::price_at_win;
use crate::schedule::Round;
use crate::telemetry;
use rust_decimal::Decimal;

/// What a shopper asks for.
pub struct Request<'a> {
    pub user: UserId,
    pub sku: &'a str,
    pub quantity: Quantity,
    pub accept_presale_terms: bool,
    pub key: Option<IdempotencyKey>,
    /// The token's `student` claim: student promotions apply.
    pub student: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Win {
    /// A new order, durable in the order store.
    New(Order),
    /// The order an earlier request with the same key created, as it is now.
    Replayed(Order),
}

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no SKU {sku:?} in this drop")]
    NoSuchSku { sku: String },
    #[error("this is a presale drop: set accept_presale_terms to true")]
    PresaleTermsRequired,
    #[error("the round opens at {opens_at}")]
    NotOpen { opens_at: Timestamp },
    #[error("the round has closed")]
    Closed,
    #[error("sold out")]
    SoldOut,
    #[error("the purchase limit is {limit} per shopper per round")]
    LimitExceeded { limit: u32 },
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    /// Too many reservations are with the engine already.
    #[error("the engine is at capacity")]
    Busy(Rejection),
    #[error("the clock is out of range")]
    ClockOutOfRange,
    #[error("the inventory engine is unavailable")]
    Unavailable(#[source] EngineError),
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotOpen { opens_at } => Refusal::NotOpen { opens_at },
            Refused::Closed => Refusal::Closed,
            Refused::SoldOut => Refusal::SoldOut,
            Refused::LimitExceeded { limit } => Refusal::LimitExceeded { limit },
            Refused::IdempotencyMismatch => Refusal::IdempotencyMismatch,
        }
    }
}

/// Decides one reservation in the drop's current round.
pub async fn reserve(app: &App, drop: &Drop, request: Request<'_>) -> Result<Win, Refusal> {
    let sku = drop.sku(request.sku).ok_or_else(|| Refusal::NoSuchSku {
        sku: request.sku.to_owned(),
    })?;
    if drop.presale && !request.accept_presale_terms {
        return Err(Refusal::PresaleTermsRequired);
    }
    let now = order_time(app.clock.now());
    let round = drop.round_at(now);
    if let Some(refused) = outside_window(round.opens_at, round.closes_at, now) {
        return Err(refused.into());
    }
    // A request with a key may be the replay of a win, which only the
    // engine can recognise: the sold-out mark answers keyless ones alone.
    if request.key.is_none() && app.sold_out.refuses(&round.id, sku.id.as_str()) {
        return Err(Refusal::SoldOut);
    }
    // Admitted to the engine before the order is built, so a refusal here
    // costs no order id, prices or copies.
    let _in_flight = app.admission.enter_engine().map_err(Refusal::Busy)?;
    let quantity = request.quantity;
    let attempt = ReserveAttempt {
        order: new_order(app, drop, sku, &round, &request, now)?,
        opens_at: round.opens_at,
        closes_at: round.closes_at,
        allocated: sku.stock,
        per_user_limit: drop.per_user_limit,
        idempotency: request.key.map(|k| (k, fingerprint(sku, quantity))),
    };
    let started = Instant::now();
    let decided = app.engine.reserve(attempt).await;
    telemetry::engine_call("reserve", started.elapsed());
    match decided.map_err(Refusal::Unavailable)? {
        Ok(Reserved::Won(order)) => {
            // A recheck that wins means stock came back: let everyone in.
            app.sold_out.clear(&order.round_id, order.sku.as_str());
            Ok(Win::New(order))
        }
        Ok(Reserved::Replayed(order)) => Ok(Win::Replayed(as_it_is_now(app, order).await)),
        Err(Refused::SoldOut) => {
            // Refused for one unit means none are left; refused for more
            // may leave a unit for someone asking for less.
            if quantity.get() == 1 {
                app.sold_out.mark(&round.id, sku.id.as_str());
            }
            Err(Refusal::SoldOut)
        }
        Err(refused) => Err(refused.into()),
    }
}

/// Orders carry millisecond times, as the order store keeps them. Cut
/// rather than rounded: jiff's rounding took more instructions than finding
/// the round (callgrind).
fn order_time(now: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// What the idempotency key stands for: the same key with another SKU or
/// quantity is another request.
fn fingerprint(sku: &Sku, quantity: Quantity) -> String {
    format!("{}*{}", sku.id, quantity.get())
}

/// The order a win becomes, priced from the catalog and the promotions
/// live at this instant (locked: later promotion changes do not touch it).
fn new_order(
    app: &App,
    drop: &Drop,
    sku: &Sku,
    round: &Round,
    request: &Request<'_>,
    now: Timestamp,
) -> Result<Order, Refusal> {
    let quantity = request.quantity;
    let pricing = price_at_win(
        sku.price,
        quantity.get(),
        &sku.id,
        request.student,
        &app.promotions.live(),
        now,
    );
    // A presale takes its deposit now (never more than the whole price).
    let deposit_due = match sku.deposit {
        Some(deposit) => (deposit * Decimal::from(quantity.get())).min(pricing.amount_due),
        None => pricing.amount_due,
    };
    // A presale owes the rest in the balance window of its round.
    let balance = drop
        .balance
        .filter(|_| deposit_due < pricing.amount_due)
        .map(|window| {
            (
                pricing.amount_due - deposit_due,
                window.for_round(round.opens_at),
            )
        });
    Ok(Order {
        id: OrderId::generate(),
        drop_id: drop.id.clone(),
        round_id: round.id.clone(),
        sku: sku.id.clone(),
        quantity,
        user_id: request.user.clone(),
        status: OrderStatus::PendingPayment,
        unit_price: sku.price,
        amount_due: pricing.amount_due,
        deposit_due,
        currency: Currency::Cny,
        created_at: now,
        // pay_within is at most 30 days (checked in config), so this only
        // fails for a clock near the end of time.
        pay_by: now
            .checked_add(drop.pay_within)
            .map_err(|_| Refusal::ClockOutOfRange)?,
        pricing,
        address: None,
        payment_method: None,
        installments: None,
        payment_id: None,
        balance_due: balance.map(|(due, _)| due),
        balance_from: balance.map(|(_, (from, _))| from),
        balance_until: balance.map(|(_, (_, until))| until),
        paid_amount: None,
        coupon_id: None,
        after: Default::default(),
    })
}

/// A replayed order as the store has it now (paid, cancelled, …), not as
/// it was created; the engine's copy while the store lacks it or is down.
async fn as_it_is_now(app: &App, order: Order) -> Order {
    match app.store.get(order.id.clone()).await {
        Ok(Some(stored)) => stored,
        _ => order,
    }
}

#[cfg(test)]
mod tests {
    //! The service on a real embedded engine over a real SQLite file, with
    //! the demo catalog and a clock the tests move.

    use std::sync::Arc;

    use jiff::SignedDuration;

    use super::*;
    use crate::app::{Database, EngineChoice};
    use crate::clock::{Clock, ManualClock};
    use crate::demo::{self, DEMO_DROP, DEMO_SKU};

    struct Fixture {
        app: Arc<App>,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    /// The demo drop opens 30 s after `start`, for two hours.
    async fn fixture() -> Fixture {
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let database = Database::Sqlite(dir.path().join("orders.db"));
        let config = demo::config(start).unwrap();
        let app = App::open(config, &database, &EngineChoice::Embedded, clock.clone())
            .await
            .unwrap();
        Fixture {
            app,
            clock,
            _dir: dir,
        }
    }

    fn ask<'a>(user: &str, sku: &'a str, quantity: i64, key: Option<&str>) -> Request<'a> {
        Request {
            user: UserId::parse(user).unwrap(),
            sku,
            quantity: Quantity::new(quantity).unwrap(),
            accept_presale_terms: false,
            key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
            student: false,
        }
    }

    async fn try_demo(f: &Fixture, request: Request<'_>) -> Result<Win, Refusal> {
        let drop = f.app.live_catalog().get(DEMO_DROP).unwrap();
        reserve(&f.app, &drop, request).await
    }

    async fn stored(f: &Fixture) -> usize {
        f.app.store.flush().await.unwrap();
        let mut total = 0;
        for user in ["alice", "bob"] {
            let user = UserId::parse(user).unwrap();
            total += f.app.store.list_for_user(user).await.unwrap().len();
        }
        total
    }

    fn open(f: &Fixture) {
        f.clock.advance(SignedDuration::from_secs(31));
    }

    #[tokio::test]
    async fn before_the_opening_and_after_the_close_nothing_is_sold() {
        let f = fixture().await;
        let early = try_demo(&f, ask("alice", DEMO_SKU, 1, None)).await;
        assert!(matches!(early, Err(Refusal::NotOpen { .. })), "{early:?}");
        f.clock.advance(SignedDuration::from_hours(3));
        let late = try_demo(&f, ask("alice", DEMO_SKU, 1, None)).await;
        assert!(matches!(late, Err(Refusal::Closed)), "{late:?}");
        assert_eq!(stored(&f).await, 0);
    }

    #[tokio::test]
    async fn a_win_is_priced_from_the_catalog_and_due_within_pay_within() {
        let f = fixture().await;
        open(&f);
        let now = f.clock.now();
        let Ok(Win::New(order)) = try_demo(&f, ask("alice", DEMO_SKU, 2, None)).await else {
            panic!("a win expected");
        };
        assert_eq!(order.status, OrderStatus::PendingPayment);
        assert_eq!(order.unit_price.to_string(), "1999.00");
        assert_eq!(order.amount_due.to_string(), "3998.00");
        assert_eq!(order.deposit_due, order.amount_due);
        assert_eq!(order.created_at, now);
        assert_eq!(order.pay_by, now + SignedDuration::from_mins(15));
        assert_eq!(stored(&f).await, 1, "the win is durable when answered");
    }

    #[tokio::test]
    async fn unknown_skus_and_presales_without_the_terms_are_refused_before_the_engine() {
        let f = fixture().await;
        open(&f);
        let unknown = try_demo(&f, ask("alice", "no-such-sku", 1, None)).await;
        assert!(matches!(unknown, Err(Refusal::NoSuchSku { .. })));
        // The presale drop opens on its own weekly schedule; the terms are
        // checked first, whatever the time.
        let presale = f.app.live_catalog().get("mi-15-ultra").unwrap();
        let refused = reserve(
            &f.app,
            &presale,
            ask("alice", "mi15u-16-512-black", 1, None),
        )
        .await;
        assert!(matches!(refused, Err(Refusal::PresaleTermsRequired)));
        assert_eq!(stored(&f).await, 0);
    }

    #[tokio::test]
    async fn a_replay_gets_the_same_order_and_another_request_under_the_key_is_refused() {
        let f = fixture().await;
        open(&f);
        let Ok(Win::New(first)) = try_demo(&f, ask("alice", DEMO_SKU, 1, Some("k-1"))).await else {
            panic!("a win expected");
        };
        let again = try_demo(&f, ask("alice", DEMO_SKU, 1, Some("k-1"))).await;
        assert_eq!(again.unwrap(), Win::Replayed(first));
        let other = try_demo(&f, ask("alice", DEMO_SKU, 2, Some("k-1"))).await;
        assert!(
            matches!(other, Err(Refusal::IdempotencyMismatch)),
            "{other:?}"
        );
        assert_eq!(stored(&f).await, 1);
    }

    #[tokio::test]
    async fn the_limit_holds_and_a_sold_out_sku_is_marked_for_keyless_requests_only() {
        let f = fixture().await;
        open(&f);
        assert!(try_demo(&f, ask("alice", DEMO_SKU, 2, None)).await.is_ok());
        let over = try_demo(&f, ask("alice", DEMO_SKU, 1, None)).await;
        assert!(matches!(over, Err(Refusal::LimitExceeded { limit: 2 })));
        // Sell the rest (100 units, 2 each) to other shoppers.
        for i in 0..49 {
            let user = format!("s{i}");
            assert!(try_demo(&f, ask(&user, DEMO_SKU, 2, None)).await.is_ok());
        }
        let round = f
            .app
            .live_catalog()
            .get(DEMO_DROP)
            .unwrap()
            .round_at(f.clock.now());
        assert!(!f.app.sold_out.refuses(&round.id, DEMO_SKU));
        let two = try_demo(&f, ask("bob", DEMO_SKU, 2, None)).await;
        assert!(matches!(two, Err(Refusal::SoldOut)));
        assert!(
            !f.app.sold_out.refuses(&round.id, DEMO_SKU),
            "refused for two units says nothing about one"
        );
        let one = try_demo(&f, ask("bob", DEMO_SKU, 1, None)).await;
        assert!(matches!(one, Err(Refusal::SoldOut)));
        assert!(f.app.sold_out.refuses(&round.id, DEMO_SKU));
    }
}
