//! Connections the replication port refused before any session began,
//! counted by reason for `repliq_connections_refused_total`.
//!
//! ```
//! use repliq_node::refusals::{Reason, Refusals};
//! let r = Refusals::default();
//! assert_eq!(r.note(Reason::PlainTcp), 1);
//! assert_eq!(r.counts(), vec![("tls_handshake", 0), ("tls_timeout", 0), ("plain_tcp", 1), ("max_connections", 0)]);
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection was closed before its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The TLS handshake failed: no client certificate, one from another
    /// CA, or a malformed handshake.
    TlsHandshake,
    /// The TLS handshake did not finish in time.
    TlsTimeout,
    /// A plain TCP client while `tls.mode` is `required`.
    PlainTcp,
    /// `replication.max_connections` connections were already open.
    MaxConnections,
}

impl Reason {
    /// Every reason, in the order [`Refusals::counts`] lists them.
    pub const ALL: [Reason; 4] = [
        Reason::TlsHandshake,
        Reason::TlsTimeout,
        Reason::PlainTcp,
        Reason::MaxConnections,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::TlsHandshake => "tls_handshake",
            Reason::TlsTimeout => "tls_timeout",
            Reason::PlainTcp => "plain_tcp",
            Reason::MaxConnections => "max_connections",
        }
    }
}

/// Refusal counters of one node.
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; 4]);

impl Refusals {
    /// Counts one refusal; returns how many of this reason so far.
    pub fn note(&self, r: Reason) -> u64 {
        self.0[r as usize].fetch_add(1, Relaxed) + 1
    }

    /// `(label, count)` for every reason.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (r.label(), self.0[*r as usize].load(Relaxed)))
            .collect()
    }
}

/// Whether the `n`th refusal of a kind is logged: the first 100, then every
/// 1000th, so a flood cannot fill the log.
pub fn worth_logging(n: u64) -> bool {
    n <= 100 || n % 1000 == 0
}
