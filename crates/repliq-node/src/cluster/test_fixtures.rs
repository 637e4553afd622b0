//! Catalog records shared by the cluster modules' unit tests.

use repliq_catalog::{Durability, QueueEntry, QueueSettings, ReplicationMode};

/// Queue `q` on replicas a, b, c, led by a in epoch 2, all in sync.
pub fn entry() -> QueueEntry {
    QueueEntry {
        name: "q".into(),
        queue_id: 1,
        replicas: vec!["a".into(), "b".into(), "c".into()],
        leader: Some("a".into()),
        epoch: 2,
        epoch_history: vec![(1, 64), (2, 500)],
        in_sync: vec!["a".into(), "b".into(), "c".into()],
        settings: QueueSettings {
            capacity: 10,
            segment_size: 1 << 16,
            durability: Durability::Batch,
            mode: ReplicationMode::Sync,
            min_insync: 2,
        },
        transfer_to: None,
    }
}
