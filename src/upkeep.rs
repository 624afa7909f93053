//! Background upkeep, once a second: pick up drops that operators created
//! and promotions they added or ended on other instances; and every few
//! seconds retire rounds that are over, forget idle rate-limit keys and
//! expired tokens, and fold the metrics' histogram buckets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::app::App;
use crate::telemetry;

/// How soon a drop created on another instance is on sale here too.
pub const DROP_PICKUP: Duration = Duration::from_secs(1);
/// How often idle keys leave the keyed limiters. At 30,000 new shoppers a
/// second this bounds them to about 150,000 keys (a few MB) between prunes.
const PRUNE_EVERY: u32 = 5;

pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DROP_PICKUP);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        ticks = ticks.wrapping_add(1);
        let started = std::time::Instant::now();
        if let Err(e) = app.load_saved_drops().await {
            tracing::warn!(error = %e, "could not read operators' drops; will retry");
        }
        if let Err(e) = app.reload_promotions().await {
            tracing::warn!(error = %e, "could not read operators' promotions; will retry");
        }
        if ticks.is_multiple_of(PRUNE_EVERY) {
            match app.retire_rounds().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rounds = n, "rounds retired"),
                Err(e) => tracing::warn!(error = %e, "could not retire rounds; will retry"),
            }
            app.admission.prune();
            app.tokens.forget_expired();
            telemetry::recorder().run_upkeep();
        }
        tracing::debug!(took = ?started.elapsed(), "upkeep");
    }
}
