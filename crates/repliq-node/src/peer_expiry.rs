//! Expiry of replication-peer slots (`replication.peer_expiry_ms`).
//!
//! A peer slot remembers how far a peer has acknowledged, and retention
//! keeps every segment the slowest peer still needs. A peer that left for
//! good (a node removed, a name that was never a real replica) would pin
//! retention until the disk fills and keep one of the 16 slots. Every
//! minute (or a tenth of the expiry, if shorter) this task frees, on every
//! queue of the node, the slots of peers disconnected for longer than the
//! expiry; a peer that comes back later starts again from the oldest
//! retained record. `repliq peer-remove` does the same at once for one peer.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// Sweeps until the task is aborted.
pub async fn run(shared: Arc<Shared>) {
    let expiry = Duration::from_millis(shared.cfg.peer_expiry_ms);
    if expiry.is_zero() {
        return;
    }
    let every = (expiry / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let sh = shared.clone();
        let swept = tokio::task::spawn_blocking(move || sweep(&sh, expiry)).await;
        if let Err(e) = swept {
            tracing::warn!("peer expiry sweep failed: {e}");
        }
    }
}

/// One pass over the node's queues.
fn sweep(shared: &Shared, expiry: Duration) {
    for (name, q) in shared.queues() {
        let Some(store) = q.store() else { continue };
        match store.expire_peers(expiry) {
            Ok(freed) => {
                for peer in freed {
                    tracing::warn!(queue = %name, %peer, expiry_ms = expiry.as_millis() as u64,
                        "replication peer disconnected for longer than replication.peer_expiry_ms: \
                         its slot is freed and it no longer holds segments back");
                }
            }
            Err(e) => tracing::warn!(queue = %name, "peer expiry: {e}"),
        }
    }
}
