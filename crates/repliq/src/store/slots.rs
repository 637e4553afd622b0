//! Named cursors: opening tailers and consumer groups, and allocating their
//! slots in the control file.

use std::sync::atomic::Ordering::*;

use super::dir_lock::DirLock;
use super::layout::*;
use super::{control, Consumer, Result, Store, StoreError, Tailer};

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
}
