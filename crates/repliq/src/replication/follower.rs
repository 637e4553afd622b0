//! The follower loop: one replication session after another, for as long as
//! the caller's task runs.
//!
//! Every way of following a queue runs this loop: the in-process
//! `with_replication` secondary ([`crate::replication::secondary::follow`]),
//! the daemon's static secondary (which rotates through the candidates its
//! discovery finds) and the cluster daemon's follower of the leader the
//! catalog names. They differ only in what they hand it:
//!
//! * `target`: the address to connect to next (`None` while none is known);
//! * `session`: how one session is run on it (plain TCP here, mutual TLS in
//!   the daemon), always ending in
//!   [`crate::replication::secondary::session_on`];
//! * `opened`: what to do with the local replica once a session has opened
//!   or created it (the daemon shares the handle with its HTTP side).
//!
//! A primary that refuses protocol version 3 (an older build, during a
//! rolling upgrade) is asked again with version 2 at once; after a version 2
//! session ends, or when the target changes, version 3 is offered again.
//!
//! Between sessions it waits with jittered exponential backoff from
//! `cfg.backoff_min` to `cfg.backoff_max`, back to the minimum after any
//! session that got as far as the primary's `Welcome`.
//!
//! ```no_run
//! use repliq::replication::{follower, SecondaryConfig};
//! use repliq::replication::dispatch::FollowStatus;
//! # async fn run() {
//! let cfg = SecondaryConfig::new("node-b", "orders", "/data/orders", "node-a:31337");
//! let primary = cfg.primary.clone();
//! follower::follow_loop(
//!     cfg,
//!     FollowStatus::new(),
//!     None,
//!     follower::Quiet::No,
//!     move || Some(primary.clone()),
//!     follower::PlainTcp,
//!     |_store| {},
//! )
//! .await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::replication::conn::unix_ns;
use crate::replication::dispatch::FollowStatus;
use crate::replication::error::ReplicationError;
use crate::replication::protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::replication::secondary::SecondaryConfig;
use crate::store::Store;

/// How loudly a session's end is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// WARN: a session ending is news (a static secondary's primary).
    No,
    /// DEBUG: sessions end as leaders change (cluster mode); the catalog's
    /// own log says why.
    Yes,
}

/// How one session with `cfg.primary` is run: the transport is the
/// caller's, the protocol [`crate::replication::secondary::session_on`].
pub trait Session: Send {
    /// One session: connect, handshake, records until it fails.
    fn run<'a>(
        &'a mut self,
        cfg: &'a SecondaryConfig,
        store: &'a mut Option<Store>,
        status: &'a FollowStatus,
    ) -> impl Future<Output = Result<(), ReplicationError>> + Send + 'a;
}

/// Sessions over plain TCP
/// ([`crate::replication::secondary::session_with_status`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Session for PlainTcp {
    fn run<'a>(
        &'a mut self,
        cfg: &'a SecondaryConfig,
        store: &'a mut Option<Store>,
        status: &'a FollowStatus,
    ) -> impl Future<Output = Result<(), ReplicationError>> + Send + 'a {
        crate::replication::secondary::session_with_status(cfg, store, Some(status))
    }
}

/// Runs sessions until the task is dropped or aborted; see the module docs.
pub async fn follow_loop(
    mut cfg: SecondaryConfig,
    status: Arc<FollowStatus>,
    mut store: Option<Store>,
    quiet: Quiet,
    mut target: impl FnMut() -> Option<String>,
    mut session: impl Session,
    mut opened: impl FnMut(&Store),
) {
    let mut delay = cfg.backoff_min;
    let mut attempt: u64 = 0;
    loop {
        match target() {
            None => tracing::debug!(queue = %cfg.queue, "no primary address known yet"),
            Some(t) => {
                if t != cfg.primary {
                    cfg.version = PROTOCOL_VERSION;
                }
                cfg.primary = t;
                let before = status.sessions();
                let mut r = session.run(&cfg, &mut store, &status).await;
                if let Err(ReplicationError::Version { offered, .. }) = &r {
                    if *offered > MIN_PROTOCOL_VERSION {
                        // An older primary: ask again in its version.
                        tracing::info!(queue = %cfg.queue, primary = %cfg.primary, "primary refuses protocol version {offered}; following with version {MIN_PROTOCOL_VERSION} (no consumer-group replication)");
                        cfg.version = MIN_PROTOCOL_VERSION;
                        r = session.run(&cfg, &mut store, &status).await;
                    }
                }
                status.disconnected();
                if status.sessions() > before {
                    delay = cfg.backoff_min;
                    // The primary may have been upgraded by its next session.
                    cfg.version = PROTOCOL_VERSION;
                }
                if let Some(s) = &store {
                    opened(s);
                }
                if let Err(e) = r {
                    match quiet {
                        Quiet::No => {
                            tracing::warn!(queue = %cfg.queue, primary = %cfg.primary, "replication session ended: {e}")
                        }
                        Quiet::Yes => {
                            tracing::debug!(queue = %cfg.queue, primary = %cfg.primary, "replication session ended: {e}")
                        }
                    }
                }
            }
        }
        attempt = attempt.wrapping_add(1);
        // 0.5 to 1.5 times the delay, so that followers do not reconnect in
        // step.
        let jitter = ((unix_ns() ^ attempt.wrapping_mul(0x9E37_79B9)) % 1000) as f64 / 1000.0;
        tokio::time::sleep(delay.mul_f64(0.5 + jitter)).await;
        delay = (delay * 2).min(cfg.backoff_max);
    }
}
