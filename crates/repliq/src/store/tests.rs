//! Unit tests of the store that force rare schedules through
//! [`test_hooks`](super::test_hooks).

use std::sync::{mpsc, Weak};
use std::time::Duration;

use super::test_hooks::{self, Point};
use super::*;

/// The segment files in `dir`, by index.
fn segment_files(dir: &Path) -> Vec<u64> {
    segment::list_segments(dir).expect("list the queue directory")
}

/// The schedule behind the flaky `file_handles` test: the prefetch thread
/// checks the high mark for segment 1, is descheduled, the writer creates
/// segment 1 itself and moves on, a named tailer passes it and retention
/// deletes it; then the prefetch thread resumes and links segment 1 again.
/// Retention never looks below its low mark, so before the fix that file
/// stayed forever. The promise: no segment file below the low mark survives
/// its creator.
#[test]
fn a_segment_created_late_behind_retention_is_removed_by_its_creator() {
    let _serial = test_hooks::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue");
    // Retention waits for every reader: the default group and a named tailer.
    let mut tailer = store.named_tailer("follower").expect("named tailer");
    let mut consumer = store.consumer();

    // Pause the prefetch thread at its first creation; tell the test when it
    // got there and when it finished.
    let (paused_tx, paused_rx) = mpsc::channel::<u64>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let resume_rx = Mutex::new(resume_rx);
    let paused_tx = Mutex::new(paused_tx);
    let once = std::sync::atomic::AtomicBool::new(false);
    // Other unit tests run in parallel in this process with prefetch threads
    // of their own: the hook acts only on this test's queue.
    let own_dir = dir.clone();
    let _hook = test_hooks::install(move |point, at: &Path, index| {
        let prefetch = std::thread::current().name() == Some("repliq-prefetch");
        if point == Point::SegmentCreate
            && prefetch
            && at == own_dir.as_path()
            && !once.swap(true, SeqCst)
        {
            let _ = paused_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(index);
            let rx = resume_rx.lock().unwrap_or_else(|p| p.into_inner());
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    });

    // The first append starts the prefetch thread, which wants segment 1.
    let payload = [7u8; 1000];
    store.append(&payload).expect("append");
    let stale = paused_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the prefetch thread reaches segment creation within 60 s");
    assert_eq!(
        stale, 1,
        "the prefetch thread prepares the segment after the first"
    );

    // The writer rolls through segments 1..=4 on its own; the readers follow
    // and retention deletes everything behind them.
    while store.geometry().segment_of(store.tail_position()) < 4 {
        store.append(&payload).expect("append");
    }
    while tailer.next().expect("read").is_some() {}
    while consumer.dequeue_with(|_| ()).expect("dequeue").is_some() {}
    let low = store.stats().low_segment;
    assert!(
        low > stale,
        "retention passed segment {stale} (low mark {low})"
    );
    assert!(
        !segment_files(&dir).contains(&stale),
        "retention deleted segment {stale}"
    );

    // Resume the stale creator and wait until it has finished its work.
    resume_tx.send(()).expect("resume the prefetch thread");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The thread is done with segment `stale` once it has taken the next
        // job or gone idle; a later append's `Entered` job proves it.
        store.append(&payload).expect("append");
        let files = segment_files(&dir);
        let low = store.stats().low_segment;
        let prepared = inner_prepared(&store);
        if prepared.is_some_and(|p| p > stale) {
            assert!(
                files.iter().all(|&k| k >= low),
                "segment files below the low mark {low} remain: {files:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetch thread prepared nothing past segment {stale} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The index of the segment the prefetch thread last prepared.
fn inner_prepared(store: &Store) -> Option<u64> {
    store
        .inner
        .prepared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.index())
}

/// A segment file below the low mark (a process killed between moving the
/// mark and unlinking) is removed by the next exclusive open.
#[test]
fn recovery_removes_segment_files_below_the_low_mark() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let opts = StoreOptions::create()
        .segment_size(MIN_SEGMENT_SIZE)
        .durability(Durability::None);
    let released = {
        let store = Store::open(&dir, &opts).expect("create the queue");
        let mut consumer = store.consumer();
        while store.geometry().segment_of(store.tail_position()) < 3 {
            store.append(&[1u8; 1000]).expect("append");
        }
        while consumer.dequeue_with(|_| ()).expect("dequeue").is_some() {}
        assert_eq!(store.stats().low_segment, 3, "retention reached segment 3");
        Arc::downgrade(&store.inner)
    };
    // The promise: a dropped handle's background threads let go of it once
    // their current job ends. Until then the prefetch thread may still be
    // finishing a late creation of segment 1, and removing it again since it
    // lies below the low mark, which would take the copy below with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while released.strong_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped handle's background threads still hold it after 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Leave a retired segment behind, as an interrupted retention would.
    std::fs::copy(
        segment::segment_path(&dir, 3),
        segment::segment_path(&dir, 1),
    )
    .expect("copy a segment file");
    let store = Store::open(&dir, &StoreOptions::open()).expect("reopen");
    assert_eq!(
        store.recovery_report().retired_removed,
        1,
        "report {:?}",
        store.recovery_report()
    );
    assert!(
        segment_files(&dir).iter().all(|&k| k >= 3),
        "files left: {:?}",
        segment_files(&dir)
    );
}

/// Records the `DirSync` points reached for `dir`, with `probe` evaluated at
/// each one (what the directory looked like just before its fsync).
fn record_dir_syncs(
    dir: &Path,
    probe: impl Fn(&Path) -> bool + Send + Sync + 'static,
) -> (test_hooks::Installed, Arc<Mutex<Vec<bool>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let own = dir.to_path_buf();
    let s = seen.clone();
    let hook = test_hooks::install(move |point, at: &Path, _| {
        if point == Point::DirSync && at == own.as_path() {
            s.lock().unwrap_or_else(|p| p.into_inner()).push(probe(at));
        }
    });
    (hook, seen)
}

/// Creating a queue fsyncs its directory once the control file has its
/// final name, so the rename survives a power loss.
#[test]
fn creating_a_queue_fsyncs_the_directory_after_the_control_file_is_in_place() {
    let _serial = test_hooks::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (_hook, seen) = record_dir_syncs(&dir, |d| d.join(CONTROL_FILE).exists());
    let _store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::Batch),
    )
    .expect("create the queue");
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        seen.contains(&true),
        "no directory fsync after the control file was renamed in: {seen:?}"
    );
}

/// Retention fsyncs the directory after it unlinks segments (with a
/// durability mode), so deleted segments do not come back after a power loss.
#[test]
fn retention_fsyncs_the_directory_after_unlinking_segments() {
    let _serial = test_hooks::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::Batch),
    )
    .expect("create the queue");
    let payload = [1u8; 1000];
    while store.geometry().segment_of(store.tail_position()) < 3 {
        store.append(&payload).expect("append");
    }
    let (_hook, seen) = record_dir_syncs(&dir, |d| !segment::segment_path(d, 0).exists());
    let mut consumer = store.consumer();
    while consumer.dequeue().expect("dequeue").is_some() {}
    assert!(store.retain().is_ok());
    assert!(
        !segment::segment_path(&dir, 0).exists(),
        "retention removed segment 0"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        seen.contains(&true),
        "no directory fsync after segment 0 was unlinked: {seen:?}"
    );
}

/// The schedule behind a SIGBUS in CI: the test dropped its store and then
/// truncated the control file while the dropped handle's prefetch thread was
/// still preparing the next segment, which reads the control mapping. The
/// promise: once the last application handle is dropped, no background
/// thread of this process touches the queue's files again, so anything may
/// change them.
#[test]
fn dropping_the_last_handle_waits_for_background_work_so_files_may_change_after() {
    let _serial = test_hooks::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue");
    let (paused_tx, paused_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let (paused_tx, resume_rx) = (Mutex::new(paused_tx), Mutex::new(resume_rx));
    let own_dir = dir.clone();
    let _hook = test_hooks::install(move |point, at: &Path, _| {
        if point == Point::SegmentCreate
            && std::thread::current().name() == Some("repliq-prefetch")
            && at == own_dir.as_path()
        {
            let _ = paused_tx.lock().unwrap_or_else(|p| p.into_inner()).send(());
            let rx = resume_rx.lock().unwrap_or_else(|p| p.into_inner());
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    });
    // The first append starts the prefetch thread, which pauses while
    // preparing segment 1.
    store.append(b"one").expect("append");
    paused_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the prefetch thread reaches segment creation within 60 s");

    // Another thread drops the handle, then damages the control file as any
    // other process may once the queue is closed here.
    let (dropped_tx, dropped_rx) = mpsc::channel::<()>();
    let ctl = dir.join(layout::CONTROL_FILE);
    let closer = std::thread::spawn(move || {
        drop(store);
        std::fs::write(&ctl, b"").expect("truncate the control file");
        let _ = dropped_tx.send(());
    });
    // Drop must not return while the job is paused. Waiting a little proves
    // nothing when it passes, but it catches the bug (and, without the fix,
    // the resumed thread then faults on the truncated mapping).
    assert!(
        dropped_rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "dropping the last handle returned while its prefetch job was still running"
    );
    resume_tx.send(()).expect("resume the prefetch thread");
    dropped_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the drop returns once the prefetch job has finished");
    closer.join().expect("closer thread");
}

/// The schedule behind a hung `replication_tcp` test: a queue's directory
/// was removed while the queue was open (a test's temporary directory
/// dropped before the runtime holding the last handle), and the batch
/// flusher then waited forever for a frame in a segment file that no longer
/// existed, holding the job that closing the queue waits for. The promise:
/// a flush reports a missing segment below the write position as an error,
/// and dropping the last handle never waits on such a flush.
#[test]
fn a_missing_segment_fails_a_flush_and_never_blocks_closing_the_queue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue");
    let record = [7u8; 1000];
    while store.tail_position() < 2 * MIN_SEGMENT_SIZE {
        store.append(&record).expect("append");
    }
    drop(store);
    std::fs::remove_file(segment::segment_path(&dir, 0)).expect("remove segment 0");
    // A fresh handle: segment 0 is not mapped anywhere in it.
    let store = Store::open(&dir, &StoreOptions::open().skip_recovery()).expect("reopen");

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let flushed = store.flush();
        drop(store);
        let _ = done_tx.send(flushed);
    });
    let flushed = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("flush and drop returned within 60 s instead of waiting forever");
    match flushed {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("missing"), "{reason}")
        }
        other => panic!("a flush over a missing segment gave {other:?}"),
    }
}

/// Retention moves the low mark before it unlinks a file: a reader that
/// finds a segment file missing must already see the mark and get
/// `NotRetained`, never wait for a file that will not come back. The hook
/// looks at the shared low mark at the moment each file is about to go.
#[test]
fn retention_moves_the_low_mark_before_it_unlinks_a_segment() {
    let _serial = test_hooks::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let store = Store::open(
        &dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue");
    let payload = [7u8; 1000];
    while store.geometry().segment_of(store.tail_position()) < 4 {
        store.append(&payload).expect("append");
    }
    let own = dir.clone();
    let observer = store.clone();
    let seen = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let log = seen.clone();
    let hook = test_hooks::install(move |point, at: &Path, index| {
        if point == Point::SegmentUnlink && at == own.as_path() {
            let low = observer.stats().low_segment;
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((index, low));
        }
    });
    // A tailer left at the first record, in a segment retention removes.
    let mut early = store.tailer();
    let mut consumer = store.consumer();
    while consumer.dequeue().expect("dequeue").is_some() {}
    // The consumer runs retention as it passes segments; run it once more.
    store.retain().expect("retain");
    drop(hook);
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        seen.len() >= 3,
        "retention removed too few segments: {seen:?}"
    );
    assert!(
        !segment::segment_path(&dir, 0).exists(),
        "segment 0 is gone"
    );
    for (index, low) in &seen {
        assert!(
            low > index,
            "segment {index} was unlinked while the low mark was still {low}: {seen:?}"
        );
    }
    // The reader left behind gets NotRetained at once.
    match early.next() {
        Err(StoreError::NotRetained { .. }) => {}
        other => panic!("reading a deleted segment gave {other:?}, not NotRetained"),
    }
}

/// A queue of `MIN_SEGMENT_SIZE` segments filled into segment `to`, and a
/// second handle on it (the way a daemon or a replication sender opens a
/// queue some other process writes).
fn filled_with_a_second_handle(dir: &Path, to: u64) -> (Store, Store) {
    let writer = Store::open(
        dir,
        &StoreOptions::create()
            .segment_size(MIN_SEGMENT_SIZE)
            .durability(Durability::None),
    )
    .expect("create the queue");
    while writer.geometry().segment_of(writer.tail_position()) < to {
        writer.append(&[3u8; 1000]).expect("append");
    }
    let other = Store::open(dir, &StoreOptions::open()).expect("open a second handle");
    (writer, other)
}

/// The replication sender and the follower look a segment up for each batch
/// and let go of it: the store must keep that mapping, or every batch maps
/// the segment again and faults in each page it touches (the cause of a
/// replica falling 30 ms behind at 100 MB/s).
#[test]
fn a_segment_looked_up_and_let_go_stays_mapped_for_the_next_lookup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let (_writer, other) = filled_with_a_second_handle(&dir, 2);
    let seg = other
        .segment(1)
        .expect("look up")
        .expect("segment 1 exists");
    let mapping = Arc::downgrade(&seg);
    drop(seg);
    let again = other
        .segment(1)
        .expect("look up")
        .expect("segment 1 exists");
    assert!(
        mapping.upgrade().is_some_and(|m| Arc::ptr_eq(&m, &again)),
        "segment 1 was mapped afresh on the second lookup"
    );
}

/// Only the two most recently looked-up segments are held: a process that
/// moves along the log does not keep every segment it passed mapped.
#[test]
fn only_the_two_most_recently_looked_up_segments_stay_mapped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let (_writer, other) = filled_with_a_second_handle(&dir, 3);
    let held: Vec<Weak<Segment>> = (0..3)
        .map(|i| {
            let s = other.segment(i).expect("look up").expect("segment exists");
            Arc::downgrade(&s)
        })
        .collect();
    let live: Vec<bool> = held.iter().map(|w| w.upgrade().is_some()).collect();
    assert_eq!(live, [false, true, true], "mapped after looking up 0, 1, 2");
    // Looking 1 up again makes it the most recent: 3 then evicts 2, not 1.
    drop(other.segment(1).expect("look up"));
    let s3 = Arc::downgrade(&other.segment(3).expect("look up").expect("exists"));
    let live: Vec<bool> = [&held[1], &held[2], &s3]
        .iter()
        .map(|w| w.upgrade().is_some())
        .collect();
    assert_eq!(live, [true, false, true], "mapped after 1 again, then 3");
}

/// A handle lets go of its held mapping of a segment that retention (run by
/// another handle or process) deleted, at its next lookup, so the segment's
/// disk space comes back.
#[test]
fn a_held_mapping_of_a_segment_retention_deleted_is_let_go_at_the_next_lookup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("q");
    let (writer, other) = filled_with_a_second_handle(&dir, 3);
    let held = Arc::downgrade(&other.segment(0).expect("look up").expect("exists"));
    assert!(held.upgrade().is_some(), "segment 0 is held after a lookup");
    let mut consumer = writer.consumer();
    // The consumer runs retention in the writer's handle as it passes segments.
    while consumer.dequeue().expect("dequeue").is_some() {}
    assert!(
        !segment::segment_path(&dir, 0).exists(),
        "retention deleted segment 0"
    );
    drop(other.segment(3).expect("look up"));
    assert!(
        held.upgrade().is_none(),
        "the other handle still maps the deleted segment 0"
    );
}
