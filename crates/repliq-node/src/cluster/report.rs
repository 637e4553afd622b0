//! This node's periodic report to the catalog: that it is alive, and how
//! far its copy of each queue goes. A committed report renews the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use repliq_catalog::{Catalog, Command, Response};

use crate::cluster::lease::Lease;
use crate::state::Shared;

/// Reports every `every` until cancelled.
pub async fn run(shared: Arc<Shared>, catalog: Arc<Catalog>, lease: Arc<Lease>, every: Duration) {
    // Sequence numbers grow across restarts of the same incarnation too.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        << 16;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        n += 1;
        let progress = progress(&shared);
        let seq = base + n;
        let cmd = Command::Report {
            node: shared.cfg.node_name.clone(),
            incarnation: catalog.incarnation(),
            seq,
            progress,
        };
        let sent = Instant::now();
        // A report that takes longer than the lease renews nothing anyway.
        match tokio::time::timeout(lease.length(), catalog.propose(cmd)).await {
            Ok(Ok(Response::None)) => lease.renew(sent, seq),
            Ok(Ok(other)) => tracing::debug!("report refused: {other:?}"),
            Ok(Err(e)) => tracing::debug!("report failed: {e}"),
            Err(_) => tracing::debug!("report timed out"),
        }
    }
}

/// `(queue, epoch of its last record, tail)` for every queue open here.
fn progress(shared: &Shared) -> Vec<(String, u32, u64)> {
    shared
        .queues()
        .into_iter()
        .filter_map(|(name, q)| {
            let s = q.store.lock().ok()?.clone()?;
            Some((name, s.epoch(), s.tail_position()))
        })
        .collect()
}
