//! The JSON shape of a drop as shoppers see it, with its current round,
//! and the rendered views served to the page refresh at the opening.
//!
//! A view changes only when its round, its state or a SKU's units left
//! change, so each request works out just those (the state from the
//! clock, the units from the engine: in memory, or in Redis mode from the
//! engine's reading of at most 250 ms, kept current by its own sales) and
//! serves the bytes rendered for them; it renders only when they moved.
//! `state` therefore turns `open` at `opens_at` exactly.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use crate::app::App;
use crate::catalog::Drop;
use crate::engine::EngineError;
use crate::money::as_cents_string;
use crate::schedule::{Phase, Round};

#[derive(Serialize)]
pub struct DropView {
    id: String,
    product: String,
    per_user_limit: u32,
    presale: bool,
    round: RoundView,
    skus: Vec<SkuView>,
    /// The waiting room, on a drop that has one.
    queue: Option<QueueTimes>,
}

#[derive(Serialize)]
struct QueueTimes {
    /// Joining opens.
    opens_at: Timestamp,
    /// Joins before this are drawn; later ones line up behind.
    draw_at: Timestamp,
}

#[derive(Serialize)]
struct RoundView {
    id: String,
    opens_at: String,
    closes_at: String,
    state: &'static str,
}

#[derive(Serialize)]
struct SkuView {
    id: String,
    name: String,
    #[serde(with = "as_cents_string")]
    price: rust_decimal::Decimal,
    deposit: Option<String>,
    remaining: u64,
}

/// What of a view changes: the round, its state, each SKU's units left.
struct Figures {
    round: Arc<Round>,
    state: &'static str,
    remaining: Vec<u64>,
}

impl PartialEq for Figures {
    fn eq(&self, other: &Self) -> bool {
        (Arc::ptr_eq(&self.round, &other.round) || self.round.id == other.round.id)
            && self.state == other.state
            && self.remaining == other.remaining
    }
}

impl Figures {
    async fn of(app: &App, drop: &Drop, now: Timestamp) -> Result<Self, EngineError> {
        let round = drop.round_at(now);
        let mut remaining = Vec::with_capacity(drop.skus.len());
        for sku in &drop.skus {
            remaining.push(app.engine.remaining(&round.id, &sku.id, sku.stock).await?);
        }
        let state = match round.phase_at(now) {
            Phase::Upcoming => "upcoming",
            Phase::Closed => "closed",
            Phase::Open if remaining.iter().all(|r| *r == 0) => "sold_out",
            Phase::Open => "open",
        };
        Ok(Self {
            round,
            state,
            remaining,
        })
    }
}

impl DropView {
    pub async fn of(app: &App, drop: &Drop, now: Timestamp) -> Result<Self, EngineError> {
        Ok(Self::with(drop, &Figures::of(app, drop, now).await?))
    }

    fn with(drop: &Drop, figures: &Figures) -> Self {
        let round = &figures.round;
        let skus = drop
            .skus
            .iter()
            .zip(&figures.remaining)
            .map(|(sku, remaining)| SkuView {
                id: sku.id.to_string(),
                name: sku.name.clone(),
                price: sku.price,
                deposit: sku.deposit.map(|d| crate::money::with_cents(d).to_string()),
                remaining: *remaining,
            })
            .collect();
        Self {
            id: drop.id.to_string(),
            product: drop.product.clone(),
            per_user_limit: drop.per_user_limit,
            presale: drop.presale,
            round: RoundView {
                id: round.id.to_string(),
                opens_at: round.opens_at.to_string(),
                closes_at: round.closes_at.to_string(),
                state: figures.state,
            },
            skus,
            queue: drop.queue.as_ref().map(|rules| QueueTimes {
                opens_at: round.opens_at - rules.opens_before,
                draw_at: round.opens_at + rules.draw_window,
            }),
        }
    }
}

/// Views rendered for the figures they show.
#[derive(Default)]
pub struct RenderedViews {
    each: DashMap<String, Rendered>,
    list: Mutex<Option<RenderedList>>,
}

struct Rendered {
    drop: Arc<Drop>,
    figures: Figures,
    body: Bytes,
}

struct RenderedList {
    drops: Vec<(Arc<Drop>, Figures)>,
    body: Bytes,
}

fn render(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("drop views serialize"))
}

impl RenderedViews {
    /// `GET /api/v1/drops/{id}`.
    pub async fn one(&self, app: &App, drop: &Arc<Drop>) -> Result<Bytes, EngineError> {
        let figures = Figures::of(app, drop, app.clock.now()).await?;
        if let Some(done) = self.each.get(drop.id.as_str()) {
            if Arc::ptr_eq(&done.drop, drop) && done.figures == figures {
                return Ok(done.body.clone());
            }
        }
        let body = render(&DropView::with(drop, &figures));
        let rendered = Rendered {
            drop: drop.clone(),
            figures,
            body: body.clone(),
        };
        self.each.insert(drop.id.to_string(), rendered);
        Ok(body)
    }

    /// `GET /api/v1/drops`.
    pub async fn list(&self, app: &App) -> Result<Bytes, EngineError> {
        let now = app.clock.now();
        let catalog = app.catalog();
        let mut drops = Vec::with_capacity(catalog.drops().len());
        for drop in catalog.drops() {
            drops.push((drop.clone(), Figures::of(app, drop, now).await?));
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = list.as_ref() {
            let same = done.drops.len() == drops.len()
                && done
                    .drops
                    .iter()
                    .zip(&drops)
                    .all(|((d1, f1), (d2, f2))| Arc::ptr_eq(d1, d2) && f1 == f2);
            if same {
                return Ok(done.body.clone());
            }
        }
        let views: Vec<DropView> = drops.iter().map(|(d, f)| DropView::with(d, f)).collect();
        let body = render(&json!({ "drops": views }));
        *list = Some(RenderedList {
            drops,
            body: body.clone(),
        });
        Ok(body)
    }
}
