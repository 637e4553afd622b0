//! Named cursors: opening tailers and consumer groups, and allocating their
//! slots in the control file; the group table a leader replicates to its
//! followers.

use std::sync::atomic::Ordering::*;

use super::dir_lock::DirLock;
use super::layout::*;
use super::{control, Consumer, Result, Store, StoreError, Tailer};

/// One consumer group's shared state, as a leader ships it to its followers
/// (protocol version 3, `GROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's name ([`DEFAULT_GROUP`] for the founding API's group).
    pub name: String,
    /// The group's cursor: the id of the next message to dequeue.
    pub position: u64,
    /// Messages the group has dequeued in total.
    pub dequeued: u64,
}

impl Store {
    /// An unnamed tailer positioned at the oldest retained record.
    pub fn tailer(&self) -> Tailer {
        Tailer::new(self.clone(), self.first_position(), None)
    }

    /// A named tailer: its position is kept in the control file and resumes
    /// after a restart. A new name starts at the oldest retained record.
    pub fn named_tailer(&self, name: &str) -> Result<Tailer> {
        let slot = self.open_slot(
            "named tailer",
            CTL_TAILERS_OFF,
            TAILER_SLOT_LEN,
            TAILER_SLOTS,
            name,
        )?;
        let pos = self
            .inner
            .ctl
            .slot(CTL_TAILERS_OFF, TAILER_SLOT_LEN, slot)
            .position()
            .load(Acquire);
        Ok(Tailer::new(self.clone(), pos, Some(slot)))
    }

    /// A consumer of the default group (the founding API's `dequeue`).
    pub fn consumer(&self) -> Consumer {
        Consumer::new(self.clone(), 0)
    }

    /// A consumer of the named group, created on first use at the oldest retained record.
    pub fn group_consumer(&self, group: &str) -> Result<Consumer> {
        if group == DEFAULT_GROUP {
            return Ok(self.consumer());
        }
        let slot = self.open_slot(
            "consumer group",
            CTL_GROUPS_OFF,
            GROUP_SLOT_LEN,
            GROUP_SLOTS,
            group,
        )?;
        Ok(Consumer::new(self.clone(), slot))
    }

    pub(crate) fn default_group(&self) -> control::Slot<'_> {
        self.inner.ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, 0)
    }

    pub(super) fn open_slot(
        &self,
        kind: &'static str,
        region: usize,
        len: usize,
        count: usize,
        name: &str,
    ) -> Result<usize> {
        if name.is_empty() || name.len() > SLOT_NAME_MAX {
            return Err(StoreError::InvalidConfig(format!(
                "{kind} name must be 1 to {SLOT_NAME_MAX} bytes, got {}",
                name.len()
            )));
        }
        let ctl = &self.inner.ctl;
        let find = || {
            (0..count).find(|&i| {
                let s = ctl.slot(region, len, i);
                s.state().load(Acquire) == SLOT_ACTIVE && s.name() == name
            })
        };
        if let Some(i) = find() {
            return Ok(i);
        }
        let _lock = DirLock::take(&self.inner.dir)?;
        if let Some(i) = find() {
            return Ok(i);
        }
        for i in 0..count {
            let s = ctl.slot(region, len, i);
            if s.state()
                .compare_exchange(SLOT_FREE, SLOT_BUSY, AcqRel, Relaxed)
                .is_ok()
            {
                s.set_name(name);
                s.position().store(self.first_position(), Release);
                s.count().store(0, Release);
                s.state().store(SLOT_ACTIVE, Release);
                return Ok(i);
            }
        }
        Err(StoreError::NoSlot {
            kind,
            name: name.into(),
            max: count,
        })
    }

    /// Every consumer group of this queue, the default group first. Each
    /// entry's count is read before its cursor, so it never counts a message
    /// beyond the cursor.
    pub fn groups(&self) -> Vec<GroupState> {
        let ctl = &self.inner.ctl;
        (0..GROUP_SLOTS)
            .filter_map(|i| {
                let s = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, i);
                if s.state().load(Acquire) != SLOT_ACTIVE {
                    return None;
                }
                let dequeued = s.count().load(Acquire);
                let position = s.position().load(Acquire);
                let name = s.name();
                if name.is_empty() {
                    return None;
                }
                Some(GroupState {
                    name,
                    position,
                    dequeued,
                })
            })
            .collect()
    }

    /// On a follower: raises each named group's cursor and count to the
    /// leader's (`fetch_max`, never backwards), creating the group if it is
    /// new. An entry whose cursor is beyond this log's write position is not
    /// applied (this log does not hold the records it passed yet) and is
    /// returned, to be applied again once more records have arrived. The
    /// leader's cursor is a record boundary of its log, and this log up to
    /// its write position is a byte-identical prefix of it, so a cursor at
    /// or below the write position is a record boundary here too.
    ///
    /// A group that finds no free slot here is skipped with a warning.
    pub fn apply_replicated_groups(&self, leader: &[GroupState]) -> Vec<GroupState> {
        let tail = self.tail_position();
        let mut pending = Vec::new();
        for g in leader {
            if g.position > tail {
                pending.push(g.clone());
                continue;
            }
            let slot = if g.name == DEFAULT_GROUP {
                Ok(0)
            } else {
                self.open_slot(
                    "consumer group",
                    CTL_GROUPS_OFF,
                    GROUP_SLOT_LEN,
                    GROUP_SLOTS,
                    &g.name,
                )
            };
            match slot {
                Ok(i) => {
                    let s = self.inner.ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, i);
                    s.position().fetch_max(g.position, AcqRel);
                    s.count().fetch_max(g.dequeued, AcqRel);
                }
                Err(e) => {
                    tracing::warn!(queue = %self.inner.dir.display(), group = %g.name, "replicated group not applied: {e}")
                }
            }
        }
        pending
    }
}
