//! The expiry sweeper: every `sweep_interval`, orders unpaid past `pay_by`
//! are expired and presales whose balance is unpaid past `balance_until`
//! forfeited, their stock returned; and releases that could not be applied
//! when their order ended (the engine was unreachable) are retried.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::app::App;
use crate::lifecycle;

pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.settings.sweep_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match lifecycle::expire_due(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired unpaid orders"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will retry"),
        }
        if let Err(e) = lifecycle::retry_releases(&app).await {
            tracing::warn!(error = %e, "could not read the releases due; will retry");
        }
    }
}
