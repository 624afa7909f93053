//! Routing: one match on method and path segments, then the per-address
//! bucket for shopper-facing endpoints, then the handler; every answer is
//! counted and timed by endpoint and outcome.

use std::net::IpAddr;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::admin_orders::{self, Reviewed};
use super::client_ip::client_ip;
use super::demo::StandIn;
use super::error::ApiError;
use super::json::{error, HttpResponse};
use super::{
    addresses, admin, after_sale, checkout, coupons, demo, live, ops, pages, payments, promotions,
    queue, shopper, storefront,
};
use crate::app::App;
use crate::telemetry;

enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Time,
    Drops,
    Drop(&'a str),
    Reserve(&'a str),
    JoinQueue(&'a str),
    QueueEntry(&'a str),
    SetAdmitRate(&'a str),
    Orders,
    Order(&'a str),
    Cancel(&'a str),
    PaymentNotify,
    GetLimits,
    PutLimits,
    CreateDrop,
    Stats(&'a str),
    Restock(&'a str),
    CreatePromotion,
    Promotions,
    EndPromotion(&'a str),
    AddAddress,
    Addresses,
    DeleteAddress(&'a str),
    EditOrder(&'a str),
    PayOrder(&'a str),
    CreateCouponBatch,
    CouponBatches,
    ClaimCoupon(&'a str),
    Coupons,
    RequestRefund(&'a str),
    RequestReturn(&'a str),
    RequestInvoice(&'a str),
    LogisticsNotify,
    RefundNotify,
    AdminOrders,
    AdminOrder(&'a str),
    AdminCancel(&'a str),
    AdminRefund(&'a str),
    AdminReturn(&'a str),
    Events,
    Live,
    Store,
    Page(&'static str),
    Asset(&'a str),
    Demo(StandIn),
    Unknown,
}

impl Route<'_> {
    fn of<'a>(method: &Method, segments: &[&'a str]) -> Route<'a> {
        match (method, segments) {
            (&Method::GET, [""]) => Route::Page("/"),
            (&Method::GET, ["ops"]) => Route::Page("/ops"),
            (&Method::GET, ["assets", file]) => Route::Asset(file),
            (&Method::GET, ["demo", "gateway"]) => Route::Demo(StandIn::GatewayPage),
            (&Method::POST, ["demo", "v1", "sign-in"]) => Route::Demo(StandIn::SignIn),
            (&Method::POST, ["demo", "v1", "payments"]) => Route::Demo(StandIn::Pay),
            (&Method::POST, ["demo", "v1", "refunds"]) => Route::Demo(StandIn::Refund),
            (&Method::POST, ["demo", "v1", "logistics"]) => Route::Demo(StandIn::Ship),
            (&Method::GET, ["api", "v1", "store"]) => Route::Store,
            (&Method::GET, ["admin", "v1", "live"]) => Route::Live,
            (&Method::GET, ["healthz"]) => Route::Healthz,
            (&Method::GET, ["readyz"]) => Route::Readyz,
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["api", "v1", "time"]) => Route::Time,
            (&Method::GET, ["api", "v1", "drops"]) => Route::Drops,
            (&Method::GET, ["api", "v1", "drops", drop]) => Route::Drop(drop),
            (&Method::POST, ["api", "v1", "drops", drop, "reserve"]) => Route::Reserve(drop),
            (&Method::POST, ["api", "v1", "drops", drop, "queue"]) => Route::JoinQueue(drop),
            (&Method::GET, ["api", "v1", "drops", drop, "queue"]) => Route::QueueEntry(drop),
            (&Method::PUT, ["admin", "v1", "drops", drop, "queue"]) => Route::SetAdmitRate(drop),
            (&Method::GET, ["api", "v1", "orders"]) => Route::Orders,
            (&Method::GET, ["api", "v1", "orders", order]) => Route::Order(order),
            (&Method::POST, ["api", "v1", "orders", order, "cancel"]) => Route::Cancel(order),
            (&Method::PATCH, ["api", "v1", "orders", order]) => Route::EditOrder(order),
            (&Method::POST, ["api", "v1", "orders", order, "pay"]) => Route::PayOrder(order),
            (&Method::GET, ["api", "v1", "coupons"]) => Route::Coupons,
            (&Method::POST, ["api", "v1", "coupons", batch, "claim"]) => Route::ClaimCoupon(batch),
            (&Method::POST, ["admin", "v1", "coupons"]) => Route::CreateCouponBatch,
            (&Method::GET, ["admin", "v1", "coupons"]) => Route::CouponBatches,
            (&Method::POST, ["api", "v1", "addresses"]) => Route::AddAddress,
            (&Method::GET, ["api", "v1", "addresses"]) => Route::Addresses,
            (&Method::DELETE, ["api", "v1", "addresses", id]) => Route::DeleteAddress(id),
            (&Method::POST, ["api", "v1", "payments", "notify"]) => Route::PaymentNotify,
            (&Method::POST, ["api", "v1", "payments", "refund-notify"]) => Route::RefundNotify,
            (&Method::POST, ["api", "v1", "logistics", "notify"]) => Route::LogisticsNotify,
            (&Method::POST, ["api", "v1", "orders", order, "refund"]) => {
                Route::RequestRefund(order)
            }
            (&Method::POST, ["api", "v1", "orders", order, "return"]) => {
                Route::RequestReturn(order)
            }
            (&Method::POST, ["api", "v1", "orders", order, "invoice"]) => {
                Route::RequestInvoice(order)
            }
            (&Method::GET, ["admin", "v1", "orders"]) => Route::AdminOrders,
            (&Method::GET, ["admin", "v1", "orders", order]) => Route::AdminOrder(order),
            (&Method::POST, ["admin", "v1", "orders", order, "cancel"]) => {
                Route::AdminCancel(order)
            }
            (&Method::POST, ["admin", "v1", "orders", order, "refund"]) => {
                Route::AdminRefund(order)
            }
            (&Method::POST, ["admin", "v1", "orders", order, "return"]) => {
                Route::AdminReturn(order)
            }
            (&Method::GET, ["admin", "v1", "events"]) => Route::Events,
            (&Method::GET, ["admin", "v1", "limits"]) => Route::GetLimits,
            (&Method::PUT, ["admin", "v1", "limits"]) => Route::PutLimits,
            (&Method::POST, ["admin", "v1", "drops"]) => Route::CreateDrop,
            (&Method::GET, ["admin", "v1", "drops", drop, "stats"]) => Route::Stats(drop),
            (&Method::POST, ["admin", "v1", "drops", drop, "restock"]) => Route::Restock(drop),
            (&Method::POST, ["admin", "v1", "promotions"]) => Route::CreatePromotion,
            (&Method::GET, ["admin", "v1", "promotions"]) => Route::Promotions,
            (&Method::DELETE, ["admin", "v1", "promotions", id]) => Route::EndPromotion(id),
            _ => Route::Unknown,
        }
    }

    /// The `endpoint` label in metrics.
    fn name(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Time => "time",
            Route::Drops => "list_drops",
            Route::Drop(_) => "get_drop",
            Route::Reserve(_) => "reserve",
            Route::JoinQueue(_) => "join_queue",
            Route::QueueEntry(_) => "queue_entry",
            Route::SetAdmitRate(_) => "admin_set_admit_rate",
            Route::Orders => "list_orders",
            Route::Order(_) => "get_order",
            Route::Cancel(_) => "cancel_order",
            Route::PaymentNotify => "payment_notify",
            Route::GetLimits => "admin_get_limits",
            Route::PutLimits => "admin_put_limits",
            Route::CreateDrop => "admin_create_drop",
            Route::Stats(_) => "admin_stats",
            Route::Restock(_) => "admin_restock",
            Route::CreatePromotion => "admin_create_promotion",
            Route::Promotions => "admin_list_promotions",
            Route::EndPromotion(_) => "admin_end_promotion",
            Route::AddAddress => "add_address",
            Route::Addresses => "list_addresses",
            Route::DeleteAddress(_) => "delete_address",
            Route::EditOrder(_) => "edit_order",
            Route::PayOrder(_) => "pay_order",
            Route::CreateCouponBatch => "admin_create_coupon_batch",
            Route::CouponBatches => "admin_list_coupon_batches",
            Route::ClaimCoupon(_) => "claim_coupon",
            Route::Coupons => "list_coupons",
            Route::RequestRefund(_) => "request_refund",
            Route::RequestReturn(_) => "request_return",
            Route::RequestInvoice(_) => "request_invoice",
            Route::LogisticsNotify => "logistics_notify",
            Route::RefundNotify => "refund_notify",
            Route::AdminOrders => "admin_search_orders",
            Route::AdminOrder(_) => "admin_get_order",
            Route::AdminCancel(_) => "admin_cancel_order",
            Route::AdminRefund(_) => "admin_review_refund",
            Route::AdminReturn(_) => "admin_review_return",
            Route::Events => "admin_events",
            Route::Live => "admin_live",
            Route::Store => "store",
            Route::Page(_) | Route::Asset(_) => "page",
            Route::Demo(_) => "demo",
            Route::Unknown => "unknown",
        }
    }

    /// Endpoints shoppers' apps call, which the per-address bucket guards.
    /// Operators, probes, scrapers and the payment gateway (which signs
    /// its calls) are not shoppers.
    fn shopper_facing(&self) -> bool {
        matches!(
            self,
            Route::Time
                | Route::Drops
                | Route::Drop(_)
                | Route::Reserve(_)
                | Route::JoinQueue(_)
                | Route::QueueEntry(_)
                | Route::Orders
                | Route::Order(_)
                | Route::Cancel(_)
                | Route::AddAddress
                | Route::Addresses
                | Route::DeleteAddress(_)
                | Route::EditOrder(_)
                | Route::PayOrder(_)
                | Route::ClaimCoupon(_)
                | Route::Coupons
                | Route::RequestRefund(_)
                | Route::RequestReturn(_)
                | Route::RequestInvoice(_)
                | Route::Store
                | Route::Demo(StandIn::SignIn)
                | Route::Unknown
        )
    }
}

/// Segments in the longest endpoint's path; a longer path is unknown
/// without being matched.
const MAX_SEGMENTS: usize = 5;

pub async fn handle(app: &App, peer: IpAddr, req: Request<Incoming>) -> HttpResponse {
    let started = Instant::now();
    // A clone of the URI shares hyper's bytes: the route borrows from it
    // while the request moves on to the handler, and nothing is allocated.
    let uri = req.uri().clone();
    let path = uri.path();
    let route = route(req.method(), path);
    let endpoint = route.name();
    let reserved_on = match route {
        Route::Reserve(drop) => Some(drop),
        _ => None,
    };
    let result = match admit(app, &route, peer, &req) {
        Ok(()) => dispatch(app, route, path, req).await,
        Err(e) => Err(e),
    };
    let outcome = match &result {
        Ok(response) => success(endpoint, response.status()),
        Err(e) => e.outcome(),
    };
    let took = started.elapsed();
    telemetry::request(endpoint, outcome, took);
    if let Some(drop) = reserved_on {
        let known = || app.live_catalog().get(drop).is_some();
        app.reserve_tally.record(drop, outcome, took, known);
    }
    result.unwrap_or_else(|e| error(&e))
}

/// Splits the path into segments on the stack and matches them.
fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in path.trim_matches('/').split('/') {
        if count == MAX_SEGMENTS {
            return Route::Unknown;
        }
        segments[count] = segment;
        count += 1;
    }
    Route::of(method, &segments[..count])
}

/// The per-address bucket, before any parsing of the request.
fn admit(
    app: &App,
    route: &Route<'_>,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Result<(), ApiError> {
    if !route.shopper_facing() {
        return Ok(());
    }
    let ip = client_ip(peer, req.headers(), &app.settings.trusted_proxies);
    Ok(app.admission.check_ip(ip)?)
}

fn success(endpoint: &'static str, status: StatusCode) -> &'static str {
    match (endpoint, status) {
        ("reserve", StatusCode::CREATED) => "won",
        ("reserve", _) => "replayed",
        _ => "ok",
    }
}

async fn dispatch(
    app: &App,
    route: Route<'_>,
    path: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    match route {
        Route::Healthz => Ok(ops::healthz()),
        Route::Readyz => ops::readyz(app).await,
        Route::Metrics => Ok(ops::metrics(app).await),
        Route::Time => Ok(ops::time(app)),
        Route::Drops => shopper::list_drops(app).await,
        Route::Drop(drop) => shopper::get_drop(app, drop).await,
        Route::Reserve(drop) => shopper::reserve(app, drop, req).await,
        Route::JoinQueue(drop) => queue::enter(app, drop, &req, true).await,
        Route::QueueEntry(drop) => queue::enter(app, drop, &req, false).await,
        Route::SetAdmitRate(drop) => queue::set_rate(app, drop, req).await,
        Route::Orders => shopper::list_orders(app, &req).await,
        Route::Order(order) => shopper::get_order(app, order, &req).await,
        Route::Cancel(order) => shopper::cancel_order(app, order, &req).await,
        Route::PaymentNotify => payments::notify(app, req).await,
        Route::GetLimits => admin::get_limits(app, &req),
        Route::PutLimits => admin::put_limits(app, req).await,
        Route::CreateDrop => admin::create_drop(app, req).await,
        Route::Stats(drop) => admin::stats(app, drop, &req).await,
        Route::Restock(drop) => admin::restock(app, drop, req).await,
        Route::CreatePromotion => promotions::create(app, req).await,
        Route::Promotions => promotions::list(app, &req).await,
        Route::EndPromotion(id) => promotions::end(app, id, &req).await,
        Route::AddAddress => addresses::add(app, req).await,
        Route::Addresses => addresses::list(app, &req).await,
        Route::DeleteAddress(id) => addresses::delete(app, id, &req).await,
        Route::EditOrder(order) => checkout::edit_order(app, order, req).await,
        Route::PayOrder(order) => checkout::pay(app, order, req).await,
        Route::CreateCouponBatch => coupons::create_batch(app, req).await,
        Route::CouponBatches => coupons::list_batches(app, &req).await,
        Route::ClaimCoupon(batch) => coupons::claim(app, batch, &req).await,
        Route::Coupons => coupons::list(app, &req).await,
        Route::RequestRefund(order) => after_sale::request_refund(app, order, req).await,
        Route::RequestReturn(order) => after_sale::request_return(app, order, req).await,
        Route::RequestInvoice(order) => after_sale::request_invoice(app, order, req).await,
        Route::LogisticsNotify => after_sale::logistics_notify(app, req).await,
        Route::RefundNotify => after_sale::refund_notify(app, req).await,
        Route::AdminOrders => admin_orders::search(app, &req).await,
        Route::AdminOrder(order) => admin_orders::get(app, order, &req).await,
        Route::AdminCancel(order) => admin_orders::cancel(app, order, &req).await,
        Route::AdminRefund(order) => admin_orders::review(app, order, req, Reviewed::Refund).await,
        Route::AdminReturn(order) => admin_orders::review(app, order, req, Reviewed::Return).await,
        Route::Events => admin_orders::events(app, &req).await,
        Route::Live => live::live(app, &req).await,
        Route::Store => Ok(storefront::store(app)),
        Route::Page(page) => pages::serve(page, &req),
        Route::Asset(file) => pages::serve_asset(file, &req),
        Route::Demo(stand_in) => demo::serve(app, stand_in, req).await,
        Route::Unknown => Err(ApiError::NotFound(format!("no endpoint {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_by_segment() {
        assert!(matches!(route(&Method::GET, "/healthz"), Route::Healthz));
        assert!(matches!(route(&Method::GET, "/healthz/"), Route::Healthz));
        assert!(matches!(
            route(&Method::POST, "/api/v1/drops/d1/reserve"),
            Route::Reserve("d1")
        ));
        assert!(matches!(
            route(&Method::GET, "/api/v1/drops/d1/reserve"),
            Route::Unknown
        ));
    }

    #[test]
    fn a_path_longer_than_any_endpoint_is_unknown() {
        let path = "/admin/v1/drops/d1/stats/extra";
        assert!(matches!(route(&Method::GET, path), Route::Unknown));
        let path = "/a/b/c/d/e/f/g/h/i/j";
        assert!(matches!(route(&Method::GET, path), Route::Unknown));
    }
}
