//! `GET /api/v1/store`: what a shopper's page shows beside the drops — the
//! promotions in force (and announced), each drop's payment rules (so the
//! page states the cash-on-delivery cap and the interest-free periods
//! before the shopper chooses), the regions it delivers to (for the
//! address form), and which demo stand-ins this server runs.
//! Read from memory: promotions are reloaded from the store by the upkeep.

use hyper::StatusCode;
use serde_json::{json, Map};

use super::demo::DemoFeatures;
use super::json::{json, HttpResponse};
use crate::app::App;
use crate::money::with_cents;

pub fn store(app: &App) -> HttpResponse {
    let mut payments = Map::new();
    for drop in app.catalog().drops() {
        let rules = app.payments.for_drop(&drop.payments);
        payments.insert(
            drop.id.to_string(),
            json!({
                "methods": rules.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "cod_max_amount": with_cents(rules.cod_max_amount).to_string(),
                "installment_periods": rules.installment_periods,
            }),
        );
    }
    json(
        StatusCode::OK,
        &json!({
            "currency": "CNY",
            "promotions": *app.promotions.definitions(),
            "payments": payments,
            "regions": crate::address::REGIONS,
            "demo": DemoFeatures::of(app),
        }),
    )
}
