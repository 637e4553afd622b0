//! The replication role of a queue, kept in its control file so that every
//! process mapping the queue sees it.
//!
//! A replica must hold exactly the primary's records. The per-handle
//! read-only flag ([`Store::set_read_only`](super::Store::set_read_only))
//! protects only the replication layer's own handle: `repliq append`, or
//! any other process opening the directory, could still append and diverge
//! the replica for good. The role word closes that: while it says
//! [`Role::Secondary`], [`Store::append`](super::Store::append) fails with
//! [`StoreError::ReadOnly`](super::StoreError::ReadOnly) in every process,
//! and survives restarts. Only the replication receiver's path
//! (`append_replicated`) writes a secondary's log.
//!
//! [`Role::Changing`] is a transition (an epoch starting, a lease not yet
//! held, a planned transfer): an append that meets it waits, bounded, for
//! the word to settle instead of failing at once, as a Kafka producer
//! retries `NOT_LEADER` during an election.
//!
//! The word is checked once per append, before the claim. An append that
//! claimed its space before the word changed may still complete; the
//! replication layer sets the role before it starts receiving, so that
//! window closes before the first replicated record is written.

use super::layout::{ROLE_CHANGING, ROLE_PRIMARY, ROLE_SECONDARY, ROLE_STANDALONE};

/// Who may append to a queue.
///
/// ```
/// use repliq::store::{Role, Store, StoreError, StoreOptions};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
/// store.set_role(Role::Secondary);
/// // Another handle, as another process would open it, is refused too.
/// let other = Store::open(dir.path().join("q"), &StoreOptions::open())?;
/// assert!(matches!(other.append(b"x"), Err(StoreError::ReadOnly(_))));
/// store.set_role(Role::Primary);
/// other.append(b"x")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// No replication layer has claimed the queue: appends are allowed.
    Standalone,
    /// A primary's queue: appends are allowed and replicated.
    Primary,
    /// A replica: only the replication receiver writes it.
    Secondary,
    /// This node is taking or handing over the queue's leadership: appends
    /// wait (bounded by [`ROLE_CHANGE_WAIT_MS`](super::layout::ROLE_CHANGE_WAIT_MS))
    /// for the role to settle, then go on or fail as the new role says.
    Changing,
    /// A code this build does not know (a newer writer): treated as a replica.
    Unknown(u32),
}

impl Role {
    /// The control-file code of this role.
    pub fn code(self) -> u32 {
        match self {
            Role::Standalone => ROLE_STANDALONE,
            Role::Primary => ROLE_PRIMARY,
            Role::Secondary => ROLE_SECONDARY,
            Role::Changing => ROLE_CHANGING,
            Role::Unknown(c) => c,
        }
    }

    /// The role for a control-file code.
    pub fn from_code(code: u32) -> Role {
        match code {
            ROLE_STANDALONE => Role::Standalone,
            ROLE_PRIMARY => Role::Primary,
            ROLE_SECONDARY => Role::Secondary,
            ROLE_CHANGING => Role::Changing,
            c => Role::Unknown(c),
        }
    }

    /// Whether applications may append under this role.
    pub fn accepts_appends(self) -> bool {
        matches!(self, Role::Standalone | Role::Primary)
    }

    /// A lower-case name for logs and tools.
    pub fn name(self) -> String {
        match self {
            Role::Standalone => "standalone".into(),
            Role::Primary => "primary".into(),
            Role::Secondary => "secondary".into(),
            Role::Changing => "changing".into(),
            Role::Unknown(c) => format!("unknown({c})"),
        }
    }
}

/// Writes the leader hint ([`LEADER_FILE`](super::layout::LEADER_FILE)) of
/// the queue in `dir`: `leader` leads it in `epoch`, as the catalog says.
pub(super) fn write_leader_hint(
    dir: &std::path::Path,
    leader: &str,
    epoch: u32,
) -> std::io::Result<()> {
    let path = dir.join(super::layout::LEADER_FILE);
    let tmp = dir.join(format!("{}.tmp", super::layout::LEADER_FILE));
    std::fs::write(&tmp, format!("{leader} {epoch}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// The leader hint of the queue in `dir`, as `(leader, epoch)`, if there is
/// a well-formed one.
pub(super) fn read_leader_hint(dir: &std::path::Path) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(dir.join(super::layout::LEADER_FILE)).ok()?;
    let mut it = text.split_whitespace();
    let name = it.next()?;
    let epoch = it.next()?.parse().ok()?;
    let printable = name.len() <= 253 && name.chars().all(|c| c.is_ascii_graphic());
    (printable && it.next().is_none()).then(|| (name.to_string(), epoch))
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the lease deadline
/// ([`Store::set_lease_until`](super::Store::set_lease_until)). The same in
/// every process of the host.
pub fn monotonic_now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_standalone_and_primary_accept_appends() {
        for r in [
            Role::Standalone,
            Role::Primary,
            Role::Secondary,
            Role::Changing,
            Role::Unknown(9),
        ] {
            assert_eq!(Role::from_code(r.code()), r);
        }
        assert!(Role::Standalone.accepts_appends());
        assert!(Role::Primary.accepts_appends());
        assert!(!Role::Secondary.accepts_appends());
        assert!(!Role::Changing.accepts_appends());
        assert!(!Role::Unknown(9).accepts_appends());
    }
}
