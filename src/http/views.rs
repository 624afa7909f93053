//! The JSON shape of a drop as shoppers see it, with its current round.

use jiff::Timestamp;
use serde::Serialize;

use crate::app::App;
use crate::catalog::Drop;
use crate::engine::EngineError;
use crate::money::as_cents_string;
use crate::schedule::Phase;

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

impl DropView {
    pub async fn of(app: &App, drop: &Drop, now: Timestamp) -> Result<Self, EngineError> {
        let round = drop.round_at(now);
        let mut skus = Vec::with_capacity(drop.skus.len());
        for sku in &drop.skus {
            let remaining = app.engine.remaining(&round.id, &sku.id, sku.stock).await?;
            skus.push(SkuView {
                id: sku.id.to_string(),
                name: sku.name.clone(),
                price: sku.price,
                deposit: sku.deposit.map(|d| crate::money::with_cents(d).to_string()),
                remaining,
            });
        }
        let state = match round.phase_at(now) {
            Phase::Upcoming => "upcoming",
            Phase::Closed => "closed",
            Phase::Open if skus.iter().all(|s| s.remaining == 0) => "sold_out",
            Phase::Open => "open",
        };
        Ok(Self {
            id: drop.id.to_string(),
            product: drop.product.clone(),
            per_user_limit: drop.per_user_limit,
            presale: drop.presale,
            round: RoundView {
                id: round.id.to_string(),
                opens_at: round.opens_at.to_string(),
                closes_at: round.closes_at.to_string(),
                state,
            },
            skus,
            queue: drop.queue.as_ref().map(|rules| QueueTimes {
                opens_at: round.opens_at - rules.opens_before,
                draw_at: round.opens_at + rules.draw_window,
            }),
        })
    }
}
