//! Model-based tests of a reservation's life (proptest-state-machine):
//! random sequences of reserve (with and without keys, within and beyond
//! the limit), replay, cancel, an address confirmed, a coupon put on and
//! taken off, a payment intent (online or cash on delivery), pay (on a
//! presale drop: the deposit, then the balance in its window), expiry and
//! forfeit as the clock moves, restock and restart
//! run against a real server in each engine, and against a model of what
//! should happen. Every answer must match the model; after every step the
//! drop's remaining stock must match and the order store must hold no
//! oversold unit (I1), no shopper above the limit (I2), no coupon on two
//! live orders, and every paid order paid exactly what it asked; at the
//! end, after a graceful stop, the store must hold exactly the model's
//! orders with the model's fates and amounts (I3, I4, I5). A failure prints its minimal sequence, and proptest records its
//! seed under `tests/proptest-regressions/`, which every
//! later run replays first. `MODEL_CASES` and `MODEL_CASES_REDIS` set the
//! number of cases (1,000 and 300 by default).

use std::collections::HashMap;
use std::time::Duration;

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use serde_json::json;
use tempfile::TempDir;

use dropgate::EngineChoice;

use crate::support::*;

const DROP: &str = "mdl";
const SKU: &str = "sku";
const LIMIT: u32 = 2;
const USERS: [&str; 3] = ["ann", "ben", "cat"];
const PRICE_CENTS: u32 = 199_900;
/// Each shopper holds one coupon of this much off.
const COUPON_CENTS: u32 = 10_000;
/// Cash on delivery is refused above this (one unit passes, two do not).
const COD_MAX: &str = "3000.00";
/// Shoppers with a default address; the others have none.
const WITH_ADDRESS: [bool; 3] = [true, true, false];
/// A presale's deposit per unit.
const DEPOSIT_CENTS: u32 = 50_000;
/// A presale's balance window, in minutes of the test's clock (the round
/// opened an hour before it started): from 10 until 40.
const BALANCE_FROM_MIN: i64 = 10;
const BALANCE_UNTIL_MIN: i64 = 40;
/// How far each `Expire` step moves the clock (past every `pay_by`).
const STEP_MIN: i64 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pending,
    Paid,
    /// Cash on delivery: keeps its units, paid at the door.
    AwaitingDelivery,
    /// A presale's deposit is paid; the balance is due in its window.
    DepositPaid,
    Cancelled,
    Expired,
    /// The balance was not paid in its window: the deposit is kept.
    Forfeited,
}

impl Fate {
    fn live(self) -> bool {
        matches!(
            self,
            Fate::Pending | Fate::Paid | Fate::AwaitingDelivery | Fate::DepositPaid
        )
    }

    fn stored(self) -> &'static str {
        match self {
            Fate::Pending => "pending_payment",
            Fate::Paid => "paid",
            Fate::AwaitingDelivery => "awaiting_delivery",
            Fate::DepositPaid => "deposit_paid",
            Fate::Cancelled => "cancelled",
            Fate::Expired => "expired",
            Fate::Forfeited => "forfeited",
        }
    }
}

#[derive(Clone, Debug)]
struct ModelOrder {
    user: usize,
    units: u32,
    fate: Fate,
    /// The owner's coupon is on it.
    coupon: bool,
}

impl ModelOrder {
    fn due_cents(&self) -> u32 {
        self.units * PRICE_CENTS - if self.coupon { COUPON_CENTS } else { 0 }
    }

    fn deposit_cents(&self) -> u32 {
        (self.units * DEPOSIT_CENTS).min(self.due_cents())
    }
}

fn money(cents: u32) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[derive(Clone, Debug)]
enum Step {
    Reserve {
        user: usize,
        units: u32,
        key: Option<u8>,
    },
    /// The n-th order so far (modulo their number), by its owner.
    Cancel(usize),
    /// A signed notification for the n-th order, with its exact amount.
    Pay(usize),
    /// The n-th order's owner puts their coupon on it.
    UseCoupon(usize),
    /// The n-th order's owner takes the coupon off it.
    DropCoupon(usize),
    /// The n-th order's owner asks to pay: Alipay, or cash on delivery.
    Intent {
        order: usize,
        cod: bool,
    },
    /// The n-th order's owner confirms their address on it.
    Confirm(usize),
    /// The clock passes every pending order's pay-by time.
    Expire,
    Restock(u32),
    Restart,
}

/// What the server must answer to the last step.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Nothing,
    Created,
    Replayed(usize),
    Status(u16, &'static str),
    /// Both the limit and the stock refuse: either reason is right (the
    /// sold-out mark answers before the engine would see the limit).
    LimitOrSoldOut,
}

#[derive(Clone, Debug)]
struct Model {
    stock: u32,
    orders: Vec<ModelOrder>,
    /// (user, key) → the order it made and the units it asked for.
    keys: HashMap<(usize, u8), (usize, u32)>,
    /// Per shopper: the order their coupon is on.
    coupon_on: [Option<usize>; 3],
    /// The drop takes a deposit now and the balance in a window.
    presale: bool,
    /// Minutes the clock has moved since the test started.
    minutes: i64,
    expect: Expect,
}

impl Model {
    fn live_units(&self) -> u32 {
        self.orders
            .iter()
            .filter(|o| o.fate.live())
            .map(|o| o.units)
            .sum()
    }

    fn held_by(&self, user: usize) -> u32 {
        self.orders
            .iter()
            .filter(|o| o.user == user && o.fate.live())
            .map(|o| o.units)
            .sum()
    }

    fn remaining(&self) -> u32 {
        self.stock - self.live_units()
    }

    /// A presale's balance may be paid now.
    fn balance_open(&self) -> bool {
        (BALANCE_FROM_MIN..BALANCE_UNTIL_MIN).contains(&self.minutes)
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        (1u32..=4, any::<bool>())
            .prop_map(|(stock, presale)| Model {
                stock,
                orders: Vec::new(),
                keys: HashMap::new(),
                coupon_on: [None; 3],
                presale,
                minutes: 0,
                expect: Expect::Nothing,
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let reserve = (0..USERS.len(), 1..=LIMIT + 1, prop::option::of(0u8..3))
            .prop_map(|(user, units, key)| Step::Reserve { user, units, key });
        if state.orders.is_empty() {
            return prop_oneof![4 => reserve, 1 => (1u32..3).prop_map(Step::Restock)].boxed();
        }
        prop_oneof![
            8 => reserve,
            2 => any::<usize>().prop_map(Step::Cancel),
            2 => any::<usize>().prop_map(Step::Pay),
            2 => any::<usize>().prop_map(Step::UseCoupon),
            1 => any::<usize>().prop_map(Step::DropCoupon),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(order, cod)| Step::Intent { order, cod }),
            1 => any::<usize>().prop_map(Step::Confirm),
            1 => Just(Step::Expire),
            1 => (1u32..3).prop_map(Step::Restock),
            1 => Just(Step::Restart),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::Cancel(_)
            | Step::Pay(_)
            | Step::UseCoupon(_)
            | Step::DropCoupon(_)
            | Step::Intent { .. }
            | Step::Confirm(_) => !state.orders.is_empty(),
            _ => true,
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        state.expect = match *step {
            Step::Reserve { user, units, key } => reserve(&mut state, user, units, key),
            Step::Cancel(n) => {
                let n = n % state.orders.len();
                if state.orders[n].fate == Fate::Pending {
                    state.orders[n].fate = Fate::Cancelled;
                    give_back(&mut state, n);
                    Expect::Status(200, "")
                } else {
                    Expect::Status(409, "not_cancellable")
                }
            }
            Step::UseCoupon(n) => {
                let n = n % state.orders.len();
                let user = state.orders[n].user;
                match (state.orders[n].fate, state.coupon_on[user]) {
                    (Fate::Pending, Some(on)) if on != n => Expect::Status(409, "coupon_used"),
                    (Fate::Pending, _) => {
                        state.orders[n].coupon = true;
                        state.coupon_on[user] = Some(n);
                        Expect::Status(200, "")
                    }
                    _ => Expect::Status(409, "not_editable"),
                }
            }
            Step::DropCoupon(n) => {
                let n = n % state.orders.len();
                if state.orders[n].fate == Fate::Pending {
                    state.orders[n].coupon = false;
                    give_back(&mut state, n);
                    Expect::Status(200, "")
                } else {
                    Expect::Status(409, "not_editable")
                }
            }
            Step::Intent { order: n, cod } => {
                let n = n % state.orders.len();
                let in_window = state.balance_open();
                let balance_over = state.minutes >= BALANCE_UNTIL_MIN;
                let presale = state.presale;
                let order = &mut state.orders[n];
                let over_cap = order.due_cents() > 300_000;
                let payable = match order.fate {
                    Fate::Pending => !(presale && balance_over),
                    Fate::DepositPaid => in_window,
                    _ => false,
                };
                if !payable {
                    Expect::Status(409, "not_payable")
                } else if cod && (over_cap || presale) {
                    Expect::Status(409, "method_not_allowed")
                } else if !WITH_ADDRESS[order.user] {
                    Expect::Status(409, "address_required")
                } else {
                    if cod {
                        order.fate = Fate::AwaitingDelivery;
                    }
                    Expect::Status(200, "")
                }
            }
            Step::Confirm(n) => {
                let n = n % state.orders.len();
                let order = &state.orders[n];
                if order.fate != Fate::Pending {
                    Expect::Status(409, "not_editable")
                } else if !WITH_ADDRESS[order.user] {
                    Expect::Status(400, "invalid_request")
                } else {
                    Expect::Status(200, "")
                }
            }
            Step::Pay(n) => {
                let n = n % state.orders.len();
                let in_window = state.balance_open();
                let presale = state.presale;
                let order = &mut state.orders[n];
                match order.fate {
                    // Too late for a deposit: the balance could no longer
                    // be paid, so the notice expires the order instead.
                    Fate::Pending if presale && state.minutes >= BALANCE_UNTIL_MIN => {
                        order.fate = Fate::Expired;
                        give_back(&mut state, n);
                        Expect::Status(409, "not_payable")
                    }
                    Fate::Pending if presale => {
                        order.fate = Fate::DepositPaid;
                        Expect::Status(200, "")
                    }
                    Fate::DepositPaid if in_window => {
                        order.fate = Fate::Paid;
                        Expect::Status(200, "")
                    }
                    Fate::Pending | Fate::Paid => {
                        order.fate = Fate::Paid;
                        Expect::Status(200, "")
                    }
                    Fate::DepositPaid
                    | Fate::AwaitingDelivery
                    | Fate::Cancelled
                    | Fate::Expired
                    | Fate::Forfeited => Expect::Status(409, "not_payable"),
                }
            }
            Step::Expire => {
                state.minutes += STEP_MIN;
                let past_window = state.minutes >= BALANCE_UNTIL_MIN;
                for n in 0..state.orders.len() {
                    match state.orders[n].fate {
                        Fate::Pending => {
                            state.orders[n].fate = Fate::Expired;
                            give_back(&mut state, n);
                        }
                        // The deposit is kept, and so is the coupon's use.
                        Fate::DepositPaid if past_window => {
                            state.orders[n].fate = Fate::Forfeited;
                        }
                        _ => {}
                    }
                }
                Expect::Nothing
            }
            Step::Restock(units) => {
                state.stock += units;
                Expect::Status(200, "")
            }
            Step::Restart => Expect::Nothing,
        };
        state
    }
}

/// The n-th order's coupon, if on it, is free again (the order keeps its
/// discount on record when it ended; a pending order's is taken off).
fn give_back(state: &mut Model, n: usize) {
    let user = state.orders[n].user;
    if state.coupon_on[user] == Some(n) {
        state.coupon_on[user] = None;
    }
}

fn reserve(state: &mut Model, user: usize, units: u32, key: Option<u8>) -> Expect {
    if let Some(key) = key {
        if let Some(&(order, asked)) = state.keys.get(&(user, key)) {
            return if asked == units {
                Expect::Replayed(order)
            } else {
                Expect::Status(422, "idempotency_mismatch")
            };
        }
    }
    match (
        state.held_by(user) + units > LIMIT,
        state.remaining() < units,
    ) {
        (true, true) => return Expect::LimitOrSoldOut,
        (true, false) => return Expect::Status(409, "limit_exceeded"),
        (false, true) => return Expect::Status(409, "sold_out"),
        (false, false) => {}
    }
    state.orders.push(ModelOrder {
        user,
        units,
        fate: Fate::Pending,
        coupon: false,
    });
    if let Some(key) = key {
        state
            .keys
            .insert((user, key), (state.orders.len() - 1, units));
    }
    Expect::Created
}

/// Which engine a model test runs against.
trait Engine {
    /// A Redis server when the engine needs one, and the engine choice.
    fn start() -> (Option<RedisServer>, EngineChoice);
}

struct Embedded;
struct WithRedis;

impl Engine for Embedded {
    fn start() -> (Option<RedisServer>, EngineChoice) {
        (None, EngineChoice::Embedded)
    }
}

impl Engine for WithRedis {
    fn start() -> (Option<RedisServer>, EngineChoice) {
        let redis = RedisServer::start();
        let engine = redis.engine();
        (Some(redis), engine)
    }
}

struct Sut {
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
    server: Option<TestServer>,
    config: String,
    engine: EngineChoice,
    _redis: Option<RedisServer>,
    dir: TempDir,
    now: Timestamp,
    /// The server's id of each order, in the model's order.
    ids: Vec<String>,
    /// Each shopper's coupon.
    coupons: Vec<String>,
    /// Each shopper's address, if they have one.
    addresses: Vec<Option<String>>,
}

impl Sut {
    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("a running server")
    }

    async fn start(&mut self) {
        let db = self.dir.path().join("orders.db");
        self.server = Some(TestServer::start_on(&self.config, &db, self.now, &self.engine).await);
    }
}

struct ModelTest<E>(std::marker::PhantomData<E>);

impl<E: Engine> StateMachineTest for ModelTest<E> {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(model: &Model) -> Sut {
        let (redis, engine) = E::start();
        let now = Timestamp::now();
        let mut drop = window_drop(
            DROP,
            SKU,
            i64::from(model.stock),
            i64::from(LIMIT),
            now - hours(1),
            now + hours(24 * 30),
        );
        if model.presale {
            let terms = format!(
                "pay_within = \"15m\"\npresale = true\nbalance_from = \"{}m\"\nbalance_until = \"{}m\"",
                60 + BALANCE_FROM_MIN,
                60 + BALANCE_UNTIL_MIN
            );
            drop = drop.replace("pay_within = \"15m\"", &terms).replace(
                &format!("stock = {}", model.stock),
                &format!(
                    "stock = {}\ndeposit = \"{}\"",
                    model.stock,
                    money(DEPOSIT_CENTS)
                ),
            );
        }
        let config =
            config_head("") + &format!("[payments]\ncod_max_amount = \"{COD_MAX}\"\n") + &drop;
        let mut sut = Sut {
            runtime: std::sync::Arc::new(tokio::runtime::Runtime::new().unwrap()),
            server: None,
            config,
            engine,
            _redis: redis,
            dir: tempfile::tempdir().unwrap(),
            now,
            ids: Vec::new(),
            coupons: Vec::new(),
            addresses: Vec::new(),
        };
        let runtime = sut.runtime.clone();
        runtime.block_on(async {
            sut.start().await;
            (sut.coupons, sut.addresses) = checkout_setup(sut.server(), now).await;
        });
        sut
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        let runtime = sut.runtime.clone();
        runtime.block_on(apply_step(&mut sut, model, step));
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let db = sut.server().db();
        let live = live_units(&db, "mdl@%");
        assert!(
            live <= i64::from(model.stock),
            "I1: {live} live units of {}",
            model.stock
        );
        let most = max_units_per_user(&db);
        assert!(
            most <= i64::from(LIMIT),
            "I2: a shopper holds {most} of {LIMIT}"
        );
        let scalar = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
        let shared = scalar(
            "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM orders \
             WHERE coupon_id IS NOT NULL \
             AND status IN ('pending_payment', 'paid', 'awaiting_delivery') GROUP BY coupon_id)",
        );
        assert!(shared <= 1, "a coupon is on {shared} live orders");
        let misplaced = scalar(
            "SELECT COUNT(*) FROM coupons c JOIN orders o ON o.id = c.order_id \
             WHERE o.coupon_id IS NOT c.id",
        );
        assert_eq!(
            misplaced, 0,
            "a coupon marks an order that does not carry it"
        );
        let short = scalar(
            "SELECT COUNT(*) FROM orders WHERE status = 'paid' AND paid_amount <> amount_due",
        );
        assert_eq!(short, 0, "a paid order paid other than what it asked");
    }

    fn teardown(mut sut: Sut, model: Model) {
        let runtime = sut.runtime.clone();
        runtime.block_on(sut.server.as_mut().unwrap().stop());
        let db = sut.server().db();
        let stored: HashMap<String, (String, String, i64, String)> = {
            let mut query = db
                .prepare("SELECT id, user_id, status, quantity, amount_due FROM orders")
                .unwrap();
            let rows = query
                .query_map([], |r| {
                    Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                })
                .unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(stored.len(), model.orders.len(), "I3/I4: one row per 201");
        for (order, id) in model.orders.iter().zip(&sut.ids) {
            let row = stored
                .get(id)
                .unwrap_or_else(|| panic!("I3: order {id} lost"));
            let expected = (
                USERS[order.user].to_owned(),
                order.fate.stored().to_owned(),
                i64::from(order.units),
                money(order.due_cents()),
            );
            assert_eq!(row, &expected, "I5: order {id}");
        }
    }
}

async fn apply_step(sut: &mut Sut, model: &Model, step: Step) {
    let reply = match step {
        Step::Reserve { user, units, key } => {
            let body = format!(
                r#"{{"sku": "{SKU}", "quantity": {units}, "accept_presale_terms": {}}}"#,
                model.presale
            );
            let path = format!("/api/v1/drops/{DROP}/reserve");
            let key = key.map(|k| format!("key-{k}"));
            let extra: Vec<(&str, &str)> = key
                .iter()
                .map(|k| ("idempotency-key", k.as_str()))
                .collect();
            let token = token(USERS[user]);
            Some(
                sut.server()
                    .http
                    .post_with(&path, Some(&token), &extra, &body)
                    .await,
            )
        }
        Step::Cancel(n) => {
            let n = n % sut.ids.len();
            let owner = USERS[model.orders[n].user];
            Some(sut.server().http.cancel(&sut.ids[n], owner).await)
        }
        Step::Pay(n) => {
            let n = n % sut.ids.len();
            let order = &model.orders[n];
            // A presale is paid twice: the deposit while pending, then the
            // balance; which one this is, the order's status says.
            let owner = token(USERS[order.user]);
            let path = format!("/api/v1/orders/{}", sut.ids[n]);
            let status = sut.server().http.get(&path, Some(&owner)).await.body["status"].clone();
            let (transaction, cents) = match status.as_str() {
                Some("pending_payment") if model.presale => ("deposit", order.deposit_cents()),
                _ if model.presale => ("balance", order.due_cents() - order.deposit_cents()),
                _ => ("whole", order.due_cents()),
            };
            let notice = json!({
                "order_id": sut.ids[n],
                "transaction_id": format!("tx-{}-{transaction}", sut.ids[n]),
                "amount": money(cents),
                "method": "alipay",
            })
            .to_string();
            Some(sut.server().http.notify_payment(&notice).await)
        }
        Step::Confirm(n) => {
            let n = n % sut.ids.len();
            let user = model.orders[n].user;
            let address = sut.addresses[user]
                .clone()
                .unwrap_or_else(|| "no-address".into());
            let body = json!({ "address_id": address }).to_string();
            let http = &sut.server().http;
            Some(http.edit_order(USERS[user], &sut.ids[n], &body).await)
        }
        Step::UseCoupon(n) | Step::DropCoupon(n) => {
            let n = n % sut.ids.len();
            let user = model.orders[n].user;
            let coupon = match step {
                Step::UseCoupon(_) => json!(sut.coupons[user]),
                _ => serde_json::Value::Null,
            };
            let body = json!({ "coupon_id": coupon }).to_string();
            let http = &sut.server().http;
            Some(http.edit_order(USERS[user], &sut.ids[n], &body).await)
        }
        Step::Intent { order, cod } => {
            let n = order % sut.ids.len();
            let method = if cod { "cash_on_delivery" } else { "alipay" };
            let body = json!({ "method": method }).to_string();
            let path = format!("/api/v1/orders/{}/pay", sut.ids[n]);
            let owner = token(USERS[model.orders[n].user]);
            Some(sut.server().http.post(&path, Some(&owner), &body).await)
        }
        Step::Expire => {
            sut.now += SignedDuration::from_mins(STEP_MIN);
            sut.server()
                .clock
                .advance(SignedDuration::from_mins(STEP_MIN));
            None
        }
        Step::Restock(units) => {
            let body = format!(r#"{{"sku": "{SKU}", "units": {units}}}"#);
            let path = format!("/admin/v1/drops/{DROP}/restock");
            Some(sut.server().http.admin(Method::POST, &path, &body).await)
        }
        Step::Restart => {
            sut.server.as_mut().unwrap().stop().await;
            sut.start().await;
            None
        }
    };
    if let Some(reply) = reply {
        match &model.expect {
            Expect::Created => {
                assert_eq!(reply.status, 201, "{step:?}: {:?}", reply.body);
                sut.ids.push(reply.body["id"].as_str().unwrap().to_owned());
            }
            Expect::Replayed(n) => {
                assert_eq!(reply.status, 200, "{step:?}: {:?}", reply.body);
                assert_eq!(reply.body["id"].as_str(), Some(sut.ids[*n].as_str()));
            }
            Expect::Status(status, error) => {
                assert_eq!(
                    (reply.status, reply.error()),
                    (*status, *error),
                    "{step:?}: {:?}",
                    reply.body
                );
            }
            Expect::LimitOrSoldOut => {
                assert!(
                    reply.status == 409 && ["limit_exceeded", "sold_out"].contains(&reply.error()),
                    "{step:?}: {} {:?}",
                    reply.status,
                    reply.body
                );
            }
            Expect::Nothing => unreachable!("{step:?} answers nothing"),
        }
    }
    // Expiry is the sweeper's work (every 50 ms here): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let remaining = sut.server().http.remaining(DROP).await;
        if remaining == u64::from(model.remaining()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {step:?}: {remaining} units on sale, the model has {}",
            model.remaining()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each shopper claims one coupon; those in `WITH_ADDRESS` add a default
/// address. Returns the coupons' and the addresses' ids, by shopper.
async fn checkout_setup(server: &TestServer, now: Timestamp) -> (Vec<String>, Vec<Option<String>>) {
    let batch = json!({
        "id": "mdl-coupons", "kind": "amount", "value": money(COUPON_CENTS),
        "valid_from": (now - hours(1)).to_string(), "valid_until": (now + hours(24 * 60)).to_string(),
        "total": USERS.len(), "per_user": 1
    });
    let created = server
        .http
        .admin(Method::POST, "/admin/v1/coupons", &batch.to_string())
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let mut coupons = Vec::new();
    let mut addresses = Vec::new();
    for (user, with_address) in USERS.iter().zip(WITH_ADDRESS) {
        let claimed = server
            .http
            .post("/api/v1/coupons/mdl-coupons/claim", Some(&token(user)), "")
            .await;
        assert_eq!(claimed.status, 201, "{:?}", claimed.body);
        coupons.push(claimed.body["id"].as_str().unwrap().to_owned());
        if with_address {
            let address = json!({"name": "收件人", "phone": "13800138000", "region": "上海市", "detail": "浦东新区"});
            let added = server
                .http
                .post(
                    "/api/v1/addresses",
                    Some(&token(user)),
                    &address.to_string(),
                )
                .await;
            assert_eq!(added.status, 201);
            addresses.push(Some(added.body["id"].as_str().unwrap().to_owned()));
        } else {
            addresses.push(None);
        }
    }
    (coupons, addresses)
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: cases("MODEL_CASES", 1000),
        .. Config::default()
    })]
    #[test]
    fn the_embedded_engine_follows_the_model(sequential 1..24 => ModelTest<Embedded>);
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: cases("MODEL_CASES_REDIS", 300),
        .. Config::default()
    })]
    #[test]
    fn the_redis_engine_follows_the_model(sequential 1..24 => ModelTest<WithRedis>);
}

/// Cases to run: the default, or more from the environment for a long run.
fn cases(variable: &str, default: u32) -> u32 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
