//! An order's life after the win: cancelled by the shopper, paid through the
//! gateway, or expired unpaid; then shipped, delivered, refunded, returned.
//! The order store decides each transition in one transaction (so an order
//! has one fate, I5); only an order that this call moved into a status that
//! gives units back returns them (exactly once).

use std::time::Instant;

use crate::after_sale::Request;
use crate::app::App;
use crate::domain::{OrderId, UserId};
use crate::order::Order;
use crate::payment::PaymentNotice;
use crate::payment_rules::PaymentChoice;
use crate::shipping::ShipPlan;
use crate::store::{
    AfterSaleOutcome, CancelOutcome, EditOutcome, IntentOutcome, IntentRequest, PayOutcome,
    StoreError,
};
use crate::telemetry;

pub enum Cancelled {
    Now(Order),
    NotFound,
    NotCancellable(Order),
}

/// Orders expired per store transaction by the sweeper.
const EXPIRE_BATCH: usize = 512;

/// Where an order was found.
pub enum Found {
    /// In the order store.
    Stored(Order),
    /// Only in the engine: a win the Redis order writer has not stored yet.
    Fresh(Order),
    Missing,
}

/// Finds an order, fresh or stored: the store first, then the engine (in
/// Redis mode a win reaches the store through the order writer, which may
/// lag). While the store does not answer, a fresh win is still found; the
/// store's error comes back only if the engine lacks the order too.
pub async fn find_order(app: &App, id: &OrderId) -> Result<Found, StoreError> {
    let stored = app.store.get(id.clone()).await;
    if let Ok(Some(order)) = stored {
        return Ok(Found::Stored(order));
    }
    match (stored, app.engine.recent_order(id).await) {
        (_, Ok(Some(order))) => Ok(Found::Fresh(order)),
        (Err(e), _) => Err(e),
        (Ok(_), Ok(None)) => Ok(Found::Missing),
        (Ok(_), Err(e)) => Err(StoreError::database(e)),
    }
}

/// An order the store lacks but the engine knows is stored first, so its
/// fate is decided in the store like any other. The order as found, if any.
async fn catch_up(app: &App, id: &OrderId) -> Result<Option<Order>, StoreError> {
    let order = match find_order(app, id).await? {
        Found::Stored(order) => return Ok(Some(order)),
        Found::Missing => return Ok(None),
        Found::Fresh(order) => order,
    };
    let refused = app.store.insert_many(vec![(order.clone(), None)]).await?;
    match refused.first() {
        Some(id) => Err(StoreError::Conflict(id.to_string())),
        None => Ok(Some(order)),
    }
}

pub async fn cancel(app: &App, id: OrderId, user: UserId) -> Result<Cancelled, StoreError> {
    catch_up(app, &id).await?;
    Ok(match app.store.cancel(id, user, app.clock.now()).await? {
        CancelOutcome::Cancelled(order) => {
            return_stock(app, &order).await;
            Cancelled::Now(order)
        }
        CancelOutcome::NotFound => Cancelled::NotFound,
        CancelOutcome::NotCancellable(order) => Cancelled::NotCancellable(order),
    })
}

/// Copies one of the shopper's addresses into their pending order.
pub async fn set_address(
    app: &App,
    id: OrderId,
    user: UserId,
    address_id: String,
) -> Result<EditOutcome, StoreError> {
    catch_up(app, &id).await?;
    app.store.set_order_address(id, user, address_id).await
}

/// Puts one of the shopper's coupons on their pending order, or takes the
/// order's coupon off. A coupon another instance took between this
/// change's read and its write fails the change whole; the one retry then
/// finds it used.
pub async fn set_coupon(
    app: &App,
    id: OrderId,
    user: UserId,
    coupon_id: Option<String>,
) -> Result<EditOutcome, StoreError> {
    catch_up(app, &id).await?;
    let set = || {
        app.store
            .set_order_coupon(id.clone(), user.clone(), coupon_id.clone(), app.clock.now())
    };
    match set().await {
        Err(StoreError::Raced(_)) => set().await,
        outcome => outcome,
    }
}

/// Issues a payment intent under the rules of the order's drop.
pub async fn pay_intent(
    app: &App,
    id: OrderId,
    user: UserId,
    choice: PaymentChoice,
) -> Result<IntentOutcome, StoreError> {
    // Read only for its drop: the store checks the order itself, locked.
    let Some(order) = catch_up(app, &id).await? else {
        return Ok(IntentOutcome::NotFound);
    };
    // A drop is never removed from the catalog; the store's rules are the
    // fallback all the same.
    let catalog = app.catalog();
    let drop = catalog.get(order.drop_id.as_str());
    let request = IntentRequest {
        choice,
        rules: drop.map_or_else(
            || app.payments.clone(),
            |d| app.payments.for_drop(&d.payments),
        ),
        shipping: shipping_of(app, &order),
    };
    app.store
        .pay_intent(id, user, request, app.clock.now())
        .await
}

/// How the order's drop ships (the store's defaults for an order not found:
/// nothing is shipped for it).
fn shipping_of(app: &App, order: &Order) -> ShipPlan {
    app.catalog()
        .get(order.drop_id.as_str())
        .map(|d| d.shipping.clone())
        .unwrap_or_default()
}

pub async fn pay(app: &App, notice: PaymentNotice) -> Result<PayOutcome, StoreError> {
    let shipping = match catch_up(app, &notice.order_id).await? {
        Some(order) => shipping_of(app, &order),
        None => ShipPlan::default(),
    };
    let outcome = app.store.pay(notice, shipping, app.clock.now()).await?;
    if let PayOutcome::ExpiredNow(order) = &outcome {
        return_stock(app, order).await;
    }
    Ok(outcome)
}

/// Applies an after-sale request (`user`: the shopper asking, None for
/// operators, the carrier and the gateway); an order it refunds before
/// shipping or cancels gives its units back.
pub async fn after_sale(
    app: &App,
    id: OrderId,
    user: Option<UserId>,
    request: Request,
) -> Result<AfterSaleOutcome, StoreError> {
    let Some(order) = catch_up(app, &id).await? else {
        return Ok(AfterSaleOutcome::NotFound);
    };
    let shipping = shipping_of(app, &order);
    let outcome = app
        .store
        .after_sale(id, user, request, shipping, app.clock.now())
        .await?;
    if let AfterSaleOutcome::Changed(order) = &outcome {
        if !order.status.is_live() {
            return_stock(app, order).await;
        }
    }
    Ok(outcome)
}

/// Ends every order past its deadline (unpaid ones expire, presales with
/// the balance unpaid are forfeited, delivered ones past every return
/// window complete) and returns the stock of those that give it back.
pub async fn expire_due(app: &App) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let mut ended = app.store.expire_due(app.clock.now(), EXPIRE_BATCH).await?;
        let count = ended.len();
        ended.retain(|o| !o.status.is_live());
        return_stocks(app, &ended).await;
        total += count;
        if count < EXPIRE_BATCH {
            return Ok(total);
        }
    }
}

/// Gives an ended order's units back to the engine. The transaction that
/// ended the order recorded the release as due; it is cleared once the
/// engine has applied it. Should the engine fail here (Redis stalled, say),
/// the release stays due and [`retry_releases`] applies it later: the
/// engine's release is itself once-only, so a retry never returns twice.
async fn return_stock(app: &App, order: &Order) {
    return_stocks(app, std::slice::from_ref(order)).await;
}

async fn return_stocks(app: &App, orders: &[Order]) {
    let mut applied = Vec::with_capacity(orders.len());
    for order in orders {
        if release(app, order).await {
            applied.push(order.id.clone());
        }
    }
    if applied.is_empty() {
        return;
    }
    if let Err(e) = app.store.mark_released(applied).await {
        tracing::warn!(error = %e, "releases applied but not yet marked; they will be retried");
    }
}

/// Asks the engine to take the order's units back; true once it has them.
/// A round no longer on sale takes nothing back: it sells nothing more
/// (once retired, the engine has forgotten it).
async fn release(app: &App, order: &Order) -> bool {
    if !app.is_on_sale(&order.round_id) {
        return true;
    }
    let started = Instant::now();
    let released = app.engine.release(order).await;
    telemetry::engine_call("release", started.elapsed());
    match released {
        Ok(true) => {
            app.sold_out.clear(&order.round_id, order.sku.as_str());
            true
        }
        // Released before (a retry after a lost answer), or never held here.
        Ok(false) => true,
        Err(e) => {
            tracing::error!(order = %order.id, error = %e, "could not return stock; will retry");
            false
        }
    }
}

/// Applies every release still due: those whose first try failed, and
/// those of an instance that died between ending an order and releasing it.
pub async fn retry_releases(app: &App) -> Result<usize, StoreError> {
    let due = app.store.releases_due(EXPIRE_BATCH).await?;
    return_stocks(app, &due).await;
    Ok(due.len())
}
