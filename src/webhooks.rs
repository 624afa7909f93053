//! Webhook delivery: every order event is POSTed to each configured
//! webhook, signed (`X-Signature`: hex HMAC-SHA256 of the body with the
//! webhook's secret), at least once, in order per order, retried with
//! exponential backoff for at least 24 h; a 2xx acknowledges.
//!
//! One instance dispatches at a time: the holder of the `webhooks` lease in
//! the store, renewed every round; should it die or stall, another takes
//! over when the lease runs out. Progress is in the store (a cursor per
//! webhook, a row per delivery to retry), so a restart, a crash or a new
//! dispatcher goes on where the last one was, delivering again at worst.
//! An order's events wait behind its first undelivered one, so a consumer
//! never sees `order.shipped` before `order.paid`; other orders go on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::App;
use crate::events::StoredEvent;
use crate::payment::sign;
use crate::store::{Deliveries, Retry, StoreError};

/// A webhook from `[[webhooks]]`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where events are POSTed; also its key in the store.
    pub url: Uri,
    pub secret: String,
}

impl Webhook {
    /// Its name in metrics: the address without the query (which may
    /// hold a token).
    pub fn label(&self) -> String {
        format!(
            "{}{}",
            self.url.authority().map_or("", |a| a.as_str()),
            self.url.path()
        )
    }

    fn key(&self) -> String {
        self.url.to_string()
    }
}

/// An http:// address with a host; https needs a TLS-terminating relay.
pub fn parse_url(raw: &str) -> Result<Uri, String> {
    let url: Uri = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a URL like http://127.0.0.1:9000/events"))?;
    match (url.scheme_str(), url.host()) {
        (Some("http"), Some(_)) => Ok(url),
        (Some("https"), _) => Err(format!(
            "{raw:?}: https is not spoken here; point it at a local relay that adds TLS"
        )),
        _ => Err(format!(
            "{raw:?} is not a URL like http://127.0.0.1:9000/events"
        )),
    }
}

/// How often a dispatch round runs.
const ROUND_EVERY: Duration = Duration::from_millis(200);
/// A dispatcher's lease lasts this long unless renewed (every round).
const LEASE: SignedDuration = SignedDuration::from_secs(5);
/// Events handed over per webhook per round, and retries tried.
const PER_ROUND: usize = 512;
/// Orders delivered to at once.
const IN_FLIGHT: usize = 32;
/// A receiver gets this long to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries go on at least this long after the first failure.
const GIVE_UP_AFTER: SignedDuration = SignedDuration::from_hours(24);
/// The longest wait between two tries.
const MAX_BACKOFF_SECS: i64 = 3600;
/// Events older than the retention period go in batches of this many.
const PRUNE_BATCH: usize = 10_000;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The wait after the `attempts`-th failed try: 1 s, 2 s, 4 s, … one hour.
pub fn backoff(attempts: i64) -> SignedDuration {
    let exponent = attempts.clamp(1, 13) - 1;
    SignedDuration::from_secs((1i64 << exponent).min(MAX_BACKOFF_SECS))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    if app.webhooks.is_empty() && app.settings.events_retention.is_none() {
        return;
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let holder = uuid::Uuid::now_v7().to_string();
    let mut tick = tokio::time::interval(ROUND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = app.clock.now();
        let until = now.saturating_add(LEASE).unwrap_or(now);
        match app
            .store
            .take_lease("webhooks", holder.clone(), until, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the webhook lease; will retry");
                continue;
            }
        }
        let mut behind = false;
        for hook in &app.webhooks {
            match dispatch_round(&app, &client, hook).await {
                Ok(full) => behind |= full,
                Err(e) => {
                    tracing::warn!(webhook = %hook.label(), error = %e, "webhook round failed; will retry")
                }
            }
        }
        if behind {
            // A backlog (the minute after an opening): the next round
            // starts now rather than a tick later.
            tick.reset_immediately();
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            prune(&app).await;
        }
    }
}

/// Deletes events past the retention period (those still to retry stay).
async fn prune(app: &App) {
    let Some(retention) = app.settings.events_retention else {
        return;
    };
    let before = app.clock.now() - retention;
    loop {
        match app.store.prune_events(before, PRUNE_BATCH).await {
            Ok(n) if n as usize == PRUNE_BATCH => continue,
            Ok(n) => {
                if n > 0 {
                    tracing::info!(events = n, "pruned events past their retention");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not prune events; will retry");
                return;
            }
        }
    }
}

/// One try of each due retry and of each new event, in order per order;
/// what happened is recorded in one store write. True when the round took
/// a full page of new events: more are waiting.
async fn dispatch_round(
    app: &App,
    client: &HttpClient,
    hook: &Webhook,
) -> Result<bool, StoreError> {
    let key = hook.key();
    let now = app.clock.now();
    let cursor = app.store.webhook_cursor(key.clone()).await?;
    let fresh = app.store.events_after(cursor, PER_ROUND).await?;
    let full = fresh.len() == PER_ROUND;
    let due = app.store.retries_due(key.clone(), now, PER_ROUND).await?;
    let fresh_orders: Vec<String> = fresh.iter().map(|e| e.order_id.clone()).collect();
    let waiting: HashSet<String> = app
        .store
        .waiting_orders(key.clone(), fresh_orders)
        .await?
        .into_iter()
        .collect();

    let mut deliveries = Deliveries {
        cursor: fresh.last().map(|e| e.id),
        ..Deliveries::default()
    };
    // An order with a retry waiting (due now or not) takes none of its new
    // events now: they queue behind it.
    let mut chains: BTreeMap<String, Vec<Try>> = BTreeMap::new();
    let retried = app
        .store
        .events_by_ids(due.iter().map(|r| r.event_id).collect())
        .await?;
    for retry in due {
        match retried.iter().find(|e| e.id == retry.event_id) {
            Some(event) => chains
                .entry(retry.order_id.clone())
                .or_default()
                .push(Try::Again(retry, event.clone())),
            // Pruned while it waited: nothing left to deliver.
            None => deliveries.done.push(retry.event_id),
        }
    }
    for event in fresh {
        if waiting.contains(&event.order_id) {
            deliveries.retries.push(queued(&event, now));
        } else {
            chains
                .entry(event.order_id.clone())
                .or_default()
                .push(Try::First(event));
        }
    }

    let mut tasks = JoinSet::new();
    let mut chains = chains.into_values();
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some(chain) = chains.next() else { break };
            let (client, hook) = (client.clone(), hook.clone());
            tasks.spawn(async move { deliver_chain(&client, &hook, chain, now).await });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let outcome = done.unwrap_or_default();
        deliveries.done.extend(outcome.done);
        deliveries.retries.extend(outcome.retries);
    }
    let cursor = deliveries.cursor.unwrap_or(cursor);
    app.store.save_deliveries(key.clone(), deliveries).await?;
    report_backlog(app, &key, &hook.label(), cursor).await?;
    Ok(full)
}

/// What one try is of.
enum Try {
    First(StoredEvent),
    Again(Retry, StoredEvent),
}

/// A new event that must wait behind an earlier one of its order.
fn queued(event: &StoredEvent, now: Timestamp) -> Retry {
    Retry {
        event_id: event.id,
        order_id: event.order_id.clone(),
        attempts: 0,
        first_try_at: now,
        next_at: now,
        last_error: None,
    }
}

/// Delivers one order's events in order, stopping at the first failure:
/// the failed one is retried later, the rest wait behind it.
async fn deliver_chain(
    client: &HttpClient,
    hook: &Webhook,
    chain: Vec<Try>,
    now: Timestamp,
) -> Deliveries {
    let mut outcome = Deliveries::default();
    let mut failed = false;
    for attempt in chain {
        // A retry has a row to delete once delivered; a first try has none.
        let (retry, event, stored) = match attempt {
            Try::First(event) => (queued(&event, now), event, false),
            Try::Again(retry, event) => (retry, event, true),
        };
        if failed {
            outcome.retries.push(retry);
            continue;
        }
        match post(client, hook, &event).await {
            Ok(()) => {
                metrics::counter!("dropgate_webhook_deliveries_total", "webhook" => hook.label(), "outcome" => "delivered").increment(1);
                if stored {
                    outcome.done.push(event.id);
                }
            }
            Err(error) => {
                failed = true;
                let attempts = retry.attempts + 1;
                let first_try_at = if retry.attempts == 0 {
                    now
                } else {
                    retry.first_try_at
                };
                if now.duration_since(first_try_at) >= GIVE_UP_AFTER {
                    metrics::counter!("dropgate_webhook_deliveries_total", "webhook" => hook.label(), "outcome" => "given_up").increment(1);
                    tracing::error!(webhook = %hook.label(), event = event.id, order = %event.order_id, attempts, %error,
                        "webhook delivery given up after 24 h; the event stays readable at /admin/v1/events");
                    outcome.done.push(event.id);
                    // The order's later events need not wait any longer.
                    failed = false;
                    continue;
                }
                metrics::counter!("dropgate_webhook_deliveries_total", "webhook" => hook.label(), "outcome" => "failed").increment(1);
                outcome.retries.push(Retry {
                    attempts,
                    first_try_at,
                    next_at: now.saturating_add(backoff(attempts)).unwrap_or(now),
                    last_error: Some(error),
                    ..retry
                });
            }
        }
    }
    outcome
}

/// POSTs one event; Ok on a 2xx answer.
async fn post(client: &HttpClient, hook: &Webhook, event: &StoredEvent) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let request = hyper::Request::post(hook.url.clone())
        .header("content-type", "application/json")
        .header("x-signature", sign(hook.secret.as_bytes(), &body))
        .header("x-dropgate-event-id", event.id.to_string())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request)).await {
        Err(_) => Err(format!("no answer within {DELIVERY_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("cannot reach the receiver: {e}")),
        Ok(Ok(answer)) if answer.status().is_success() => Ok(()),
        Ok(Ok(answer)) => Err(format!("answered {}", answer.status())),
    }
}

/// `dropgate_webhook_pending` and `dropgate_webhook_lag_seconds`: the
/// deliveries waiting, and the age of the oldest event not yet delivered.
async fn report_backlog(app: &App, key: &str, label: &str, cursor: i64) -> Result<(), StoreError> {
    let (retrying, oldest_retry) = app.store.webhook_backlog(key.to_owned()).await?;
    let last = app.store.last_event_id().await?;
    let next_fresh = app.store.events_after(cursor, 1).await?;
    let oldest = [oldest_retry, next_fresh.first().map(|e| e.at)]
        .into_iter()
        .flatten()
        .min();
    let lag = oldest.map_or(0.0, |at| {
        app.clock.now().duration_since(at).as_secs_f64().max(0.0)
    });
    let pending = retrying + (last - cursor).max(0);
    metrics::gauge!("dropgate_webhook_pending", "webhook" => label.to_owned()).set(pending as f64);
    metrics::gauge!("dropgate_webhook_lag_seconds", "webhook" => label.to_owned()).set(lag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_an_hour() {
        let waits: Vec<i64> = (1..=14).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
        );
    }

    #[test]
    fn a_retry_of_24_hours_takes_dozens_of_tries() {
        let (mut waited, mut tries) = (SignedDuration::ZERO, 0);
        while waited < GIVE_UP_AFTER {
            tries += 1;
            waited += backoff(tries);
        }
        assert!((30..40).contains(&tries), "{tries}");
    }

    #[test]
    fn webhook_urls_are_http_with_a_host() {
        assert!(parse_url("http://127.0.0.1:9000/events").is_ok());
        assert!(parse_url("https://example.com/events")
            .unwrap_err()
            .contains("relay"));
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("/events").is_err());
    }
}
