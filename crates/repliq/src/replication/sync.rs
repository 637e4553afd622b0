//! Synchronous replication: waiting until the secondaries hold a record.
//!
//! The primary's replication sessions record every acknowledgement with
//! [`Store::ack_peer`], which raises the queue's `replicated` watermark (the
//! highest position durable on `min_acks` secondaries) and wakes waiters.
//! [`wait_replicated`] sleeps on that wake-up; no thread spins.

use std::sync::atomic::Ordering::Acquire;
use std::time::Duration;

use crate::replication::error::ReplicationError;
use crate::store::layout::{align_frame, FRAME_HEADER_LEN};
use crate::store::Store;

/// The position just after the record `id` carrying `len` payload bytes:
/// the position a secondary acknowledges once it holds that record.
pub fn record_end(store: &Store, id: u64, len: usize) -> u64 {
    store
        .geometry()
        .advance(id, align_frame(FRAME_HEADER_LEN + len as u64))
}

/// Waits until the replicated watermark of `store` reaches `end`, or
/// `timeout` passes.
///
/// On timeout the record stays in the primary's log (it is neither removed
/// nor acknowledged) and [`ReplicationError::Timeout`] is returned; the
/// secondaries still receive it once they reconnect.
pub async fn wait_replicated(
    store: &Store,
    end: u64,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let ctl = store.control();
    let ready = store.ready_async(|| ctl.replicated().load(Acquire) >= end);
    tokio::time::timeout(timeout, ready)
        .await
        .map_err(|_| ReplicationError::Timeout("replication acknowledgements"))?;
    still_leading(store)
}

/// [`wait_replicated`] for a caller without a runtime (the CLI): sleeps on
/// the queue's shared futex, which acknowledgements wake.
pub fn wait_replicated_blocking(
    store: &Store,
    end: u64,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    if !store.wait_until(Some(timeout), || replicated(store) >= end) {
        return Err(ReplicationError::Timeout("replication acknowledgements"));
    }
    still_leading(store)
}

/// Acknowledged only while this node still leads the queue: a leader that
/// lost its lease (role flipped) may already have been replaced, and the
/// new leader was chosen from replicas' positions as of then.
fn still_leading(store: &Store) -> Result<(), ReplicationError> {
    if !store.takes_appends() {
        return Err(ReplicationError::Refused(format!(
            "this node stopped leading the queue (role {}) before the record was \
             acknowledged; it may or may not survive",
            store.role().name()
        )));
    }
    Ok(())
}

/// The current replicated watermark of `store`.
pub fn replicated(store: &Store) -> u64 {
    store.control().replicated().load(Acquire)
}
