//! The waiting room over HTTP: shoppers join and look up their place;
//! reserve on a queued drop checks the ticket (`Queue-Ticket`) before the
//! body is read; operators set the admit rate live.

use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::admin::authorize;
use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::shopper::authenticate;
use crate::app::App;
use crate::catalog::Drop;
use crate::domain::{RoundId, UserId};
use crate::waiting_room::tickets::TicketError;
use crate::waiting_room::{QueueError, QueueView, RoundQueue};

static QUEUE_TICKET: HeaderName = HeaderName::from_static("queue-ticket");

/// The queue of the drop's current round; 404 for a drop that has none.
fn current_queue(app: &App, drop_id: &str) -> Result<RoundQueue, ApiError> {
    let drop = app
        .live_catalog()
        .get(drop_id)
        .ok_or_else(|| ApiError::NotFound(format!("no drop {drop_id:?}")))?;
    RoundQueue::current(app, &drop, app.clock.now()).ok_or_else(|| {
        ApiError::NotFound(format!(
            "drop {drop_id:?} has no waiting room: reserve directly"
        ))
    })
}

/// `POST /api/v1/drops/{id}/queue` (join: 201, or 200 with the entry the
/// shopper has) and `GET` (look: the entry, refreshed).
pub async fn enter(
    app: &App,
    drop_id: &str,
    req: &Request<Incoming>,
    join: bool,
) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let queue = current_queue(app, drop_id)?;
    let now = app.clock.now();
    if now >= queue.closes_at {
        return Err(ApiError::Closed);
    }
    let entry = match app.queues.enter(&queue, &shopper.user, join, now).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(ApiError::NotInQueue),
        Err(QueueError::NotOpen(opens_at)) => return Err(ApiError::QueueNotOpen { opens_at }),
        Err(QueueError::Backend(e)) => return Err(e.into()),
    };
    let status = if entry.joined_now {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &QueueView::of(app, &queue, &shopper.user, &entry, now),
    ))
}

/// Reserve on a queued drop: the caller's admitted ticket for this round,
/// checked before the engine and before the body is read.
pub fn check_ticket(
    app: &App,
    drop: &Drop,
    round: &RoundId,
    user: &UserId,
    req: &Request<Incoming>,
) -> Result<(), ApiError> {
    let ticket = req
        .headers()
        .get(&QUEUE_TICKET)
        .map(|v| v.to_str().unwrap_or(""));
    let now = app.clock.now();
    app.queue_tickets
        .check(ticket, &drop.id, round, user, now)
        .map_err(|e| {
            ApiError::QueueRequired(match e {
                TicketError::Missing => {
                    "this drop has a waiting room: join it, and reserve with the Queue-Ticket it gives once admitted"
                }
                TicketError::Malformed | TicketError::Forged => {
                    "this Queue-Ticket is not one this drop gave this account for this round"
                }
                TicketError::Expired => "this Queue-Ticket has expired: join the queue again",
            })
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    admit_rate: i64,
}

/// `PUT /admin/v1/drops/{id}/queue` `{"admit_rate": N}`: the current
/// round's admit rate, at once, on every instance; answers the queue's
/// figures after an admission step at the new rate.
pub async fn set_rate(
    app: &App,
    drop_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let queue = current_queue(app, drop_id)?;
    let bytes = read_body(req, &app.settings).await?;
    let body: RateBody = parse(&bytes)?;
    let rate = u32::try_from(body.admit_rate)
        .ok()
        .filter(|r| (1..=crate::admission::MAX_RATE).contains(r))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "admit_rate must be 1 to {} shoppers a second",
                crate::admission::MAX_RATE
            ))
        })?;
    app.queues.set_rate(&queue, rate).await?;
    let stats = app.queues.admit(&queue, app.clock.now()).await?;
    Ok(json(StatusCode::OK, &stats))
}
