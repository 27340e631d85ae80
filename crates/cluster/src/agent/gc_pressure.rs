//! The agent's disk-pressure gc: every interval, the node crate's [`NodeCache::gc_pressure`]
//! (kubelet-style thresholds, least recently used first, never an environment in use or
//! pre-pulled), its runs counted in the metrics.
use std::sync::Arc;
use std::time::Duration;

use imageless_core::system::System;
use imageless_node::cache::NodeCache;

use super::Shared;

pub async fn run(shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pinned = shared.pinned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let config = shared.config.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let system = System::host().map_err(|e| e.to_string())?;
            NodeCache::new(config, system).gc_pressure(&pinned).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match outcome {
            Ok(report) => {
                if report.still_over {
                    tracing::warn!(
                        used_percent = format!("{:.1}", report.after.used_percent()),
                        "disk pressure: still over the low threshold; everything left is in use or pre-pulled"
                    );
                }
                shared.metrics.observe_gc(&report);
            }
            Err(e) => {
                tracing::warn!("disk-pressure gc: {e}");
                shared.metrics.error("gc");
            }
        }
    }
}
