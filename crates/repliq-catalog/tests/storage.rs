//! Durable storage: round trips, truncation, purge, torn tails, vote persistence.

use std::fs::OpenOptions;
use std::io::Write;

use openraft::testing::log_id;
use openraft::{EntryPayload, Vote};
use repliq_catalog::storage::log::LOG_FILE;
use repliq_catalog::storage::snapshot::{read_snapshot, save_snapshot, StoredSnapshot};
use repliq_catalog::storage::LogStore;
use repliq_catalog::types::{Entry, SnapshotMeta};
use repliq_catalog::{Command, StoreError};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Command::SetLiveness {
            name: format!("n{index}"),
            live: true,
        }),
    }
}

fn indexes(log: &LogStore) -> Vec<(u64, u64)> {
    log.entries(..)
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[test]
fn append_read_truncate_purge_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogStore::open(dir.path()).expect("open");
    assert!(log.is_fresh());
    log.append_entries((1..=10).map(|i| entry(1, i)))
        .expect("append");
    assert_eq!(log.entries(3..5).len(), 2);
    assert_eq!(log.state(), (None, Some(log_id(1, 1, 10))));

    // A conflicting suffix: truncate from 8, append term-2 entries.
    log.truncate_from(8).expect("truncate");
    log.append_entries((8..=9).map(|i| entry(2, i)))
        .expect("append");
    assert_eq!(log.state().1, Some(log_id(2, 1, 9)));

    log.purge_upto(log_id(1, 1, 4)).expect("purge");
    assert_eq!(log.entries(..).first().map(|e| e.log_id.index), Some(5));
    log.append_entries([entry(2, 10)])
        .expect("append after purge");
    let before = indexes(&log);
    drop(log);

    let log = LogStore::open(dir.path()).expect("reopen");
    assert!(!log.is_fresh());
    assert_eq!(indexes(&log), before);
    assert_eq!(
        before,
        vec![(1, 5), (1, 6), (1, 7), (2, 8), (2, 9), (2, 10)]
    );
    assert_eq!(log.state(), (Some(log_id(1, 1, 4)), Some(log_id(2, 1, 10))));

    // Purge everything: the last log id is the purged one.
    log.purge_upto(log_id(2, 1, 12)).expect("purge all");
    drop(log);
    let log = LogStore::open(dir.path()).expect("reopen");
    assert!(log.entries(..).is_empty());
    assert_eq!(
        log.state(),
        (Some(log_id(2, 1, 12)), Some(log_id(2, 1, 12)))
    );
}

#[test]
fn torn_last_record_is_dropped_earlier_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    {
        let log = LogStore::open(dir.path()).expect("open");
        log.append_entries((1..=5).map(|i| entry(1, i)))
            .expect("append");
    }
    let full = std::fs::metadata(&path).expect("stat").len();

    // Short: cut the last record in half.
    {
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(full - 5).expect("cut");
    }
    let log = LogStore::open(dir.path()).expect("reopen short");
    assert_eq!(log.state().1, Some(log_id(1, 1, 4)));
    // The torn bytes are gone: appending again and reopening works.
    log.append_entries([entry(1, 5)]).expect("append");
    drop(log);
    let log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(log.entries(..).len(), 5);
    drop(log);

    // CRC mismatch in the last record.
    {
        let mut bytes = std::fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
    }
    let log = LogStore::open(dir.path()).expect("reopen crc");
    assert_eq!(log.state().1, Some(log_id(1, 1, 4)));
    drop(log);

    // A lone partial header.
    {
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[1, 2, 3]).expect("write");
    }
    let log = LogStore::open(dir.path()).expect("reopen header");
    assert_eq!(log.entries(..).len(), 4);
}

#[test]
fn damage_before_the_end_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    {
        let log = LogStore::open(dir.path()).expect("open");
        log.append_entries((1..=3).map(|i| entry(1, i)))
            .expect("append");
    }
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[10] ^= 0xff; // inside the first record's body
    std::fs::write(&path, &bytes).expect("write");
    match LogStore::open(dir.path()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains(LOG_FILE), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn vote_survives_reopen_and_corrupt_vote_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = LogStore::open(dir.path()).expect("open");
        assert_eq!(log.vote(), None);
        log.store_vote(&Vote::new(3, 7)).expect("vote");
        log.store_vote(&Vote::new_committed(4, 7)).expect("vote");
    }
    let log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(log.vote(), Some(Vote::new_committed(4, 7)));
    assert!(!log.is_fresh());
    drop(log);

    let vpath = dir.path().join("vote");
    let mut bytes = std::fs::read(&vpath).expect("read");
    bytes[0] ^= 0xff;
    std::fs::write(&vpath, &bytes).expect("write");
    let err = LogStore::open(dir.path()).expect_err("corrupt vote");
    assert!(err.to_string().contains("vote"), "{err}");
}

#[test]
fn snapshot_file_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(read_snapshot(dir.path()).expect("read").is_none());
    let snap = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 9)),
            snapshot_id: "s".into(),
            ..Default::default()
        },
        data: vec![1, 2, 3],
    };
    save_snapshot(dir.path(), &snap).expect("save");
    let back = read_snapshot(dir.path()).expect("read").expect("some");
    assert_eq!(back.meta, snap.meta);
    assert_eq!(back.data, snap.data);
}
