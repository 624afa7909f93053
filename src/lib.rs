//! dropgate: a flash-sale reservation server.
//!
//! Shoppers reserve limited stock at timed drops; the inventory engine decides
//! every reservation in one atomic step and a win is answered only once its
//! order is durable. See `ARCHITECTURE.md` for the map and the invariants.
//!
//! Layout:
//! - [`config`], [`demo`]: the configuration file and the no-config demo.
//! - [`domain`], [`money`], [`catalog`], [`schedule`], [`clock`], [`order`],
//!   [`order_states`]: checked values, the catalog and its rounds, time, the
//!   order and its state machine.
//! - [`pricing`], [`promotions`], [`coupons`], [`address`]: prices at the
//!   win, the live promotions, coupon batches, delivery addresses.
//! - [`engine`]: the inventory engine trait, the embedded engine, and the
//!   Redis engine (scripts in `lua/`, reconciliation, the order writer).
//! - [`store`]: the order store (SQLite or PostgreSQL) and its group-commit writers.
//! - [`reserve`]: the reserve service (window, sold-out marks, pricing, the
//!   engine's decision) that the HTTP handler calls.
//! - [`lifecycle`], [`sweeper`]: cancel, pay, expire, durable releases; the sweeper.
//! - [`admission`], [`sold_out`]: token buckets and the in-flight cap; local sold-out marks.
//! - [`auth`], [`payment`], [`payment_rules`]: shopper tokens; payment
//!   notification signatures; the methods an order may be paid with.
//! - [`presale`]: the balance window of presale drops.
//! - [`http`]: the hyper server, routing and handlers.
//! - [`after_sale`], [`shipping`]: refunds, returns, invoices, the carrier's
//!   notices; ship dates and return windows.
//! - [`events`], [`webhooks`]: order events and their delivery to webhooks.
//! - [`telemetry`], [`reserve_tally`], [`upkeep`]: metrics; reserve outcomes
//!   per drop for the operator page; periodic pruning and drop loading.
//! - [`app`]: the shared state, put together from the configuration.

pub mod address;
pub mod admission;
pub mod after_sale;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod coupons;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod events;
pub mod http;
pub mod lifecycle;
pub mod money;
pub mod order;
pub mod order_states;
pub mod payment;
pub mod payment_rules;
pub mod presale;
pub mod pricing;
pub mod promotions;
pub mod reserve;
pub mod reserve_tally;
pub mod schedule;
pub mod shipping;
pub mod sold_out;
pub mod store;
pub mod sweeper;
pub mod telemetry;
pub mod upkeep;
pub mod waiting_room;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::{App, Database, EngineChoice};

/// The hasher of the maps every request reads (buckets, remembered tokens,
/// sold-out marks, the catalog, metric handles): foldhash costs a fraction
/// of std's SipHash on these short keys, and its per-process random seed
/// keeps where a key lands out of clients' reach.
pub type SeededHasher = foldhash::fast::RandomState;

/// Serves on `listener` until `shutdown` resolves; then drains in-flight
/// requests, stops the sweeper, drains Redis's winners into the store (in
/// Redis mode) and flushes the order writer.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), store::StoreError> {
    let (stop_background, stop) = watch::channel(false);
    telemetry::recorder();
    let sweeper = tokio::spawn(sweeper::run(app.clone(), stop.clone()));
    let webhooks = tokio::spawn(webhooks::run(app.clone(), stop.clone()));
    let queues = tokio::spawn(waiting_room::run(app.clone(), stop.clone()));
    let upkeep = tokio::spawn(upkeep::run(app.clone(), stop));
    http::serve(listener, app.clone(), shutdown).await;
    let _ = stop_background.send(true);
    let _ = sweeper.await;
    let _ = upkeep.await;
    let _ = webhooks.await;
    let _ = queues.await;
    if let Some(writer) = &app.redis_writer {
        writer.drain_and_stop().await;
    }
    let flushed = app.store.flush().await;
    app.engine.shut_down();
    flushed
}
