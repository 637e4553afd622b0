//! Recovery's fast path: after writer processes are killed with SIGKILL in
//! the running boot, an exclusive open walks only what changed since the
//! previous recovery, and finds exactly what the full walk finds: every
//! record, the frame a killed writer left pending (padded), the depth. A
//! clean close, or a mark from another boot (a power loss), gets the full
//! walk.
//!
//! Children are this test binary re-executed (see `mp_support`).

mod mp_support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mp_support::{child_exit, say, serial, ChildProc, PATIENCE};
use repliq::store::layout::{CONTROL_FILE, CTL_LIVE_BOOT_OFF};
use repliq::store::{Durability, Store, StoreOptions};

const ENTRY: &str = "fast_open_child_entry";
/// Small segments, so that the writers roll several of them per round.
const SEGMENT: u64 = 1 << 16;

fn opts(durability: Durability) -> StoreOptions {
    StoreOptions::create()
        .segment_size(SEGMENT)
        .capacity(10_000_000)
        .durability(durability)
}

/// Dispatches a child role; a no-op when run as an ordinary test.
///
/// `writer:<n>` appends `n` records, says `WROTE`, then blocks inside the
/// fill closure of one more (claimed, not committed) after saying `STUCK`;
/// `burst` appends until it is killed, saying `READY` after the first.
#[test]
fn fast_open_child_entry() {
    let Some(role) = mp_support::role() else {
        return;
    };
    let dir = PathBuf::from(std::env::var("FO_DIR").expect("FO_DIR"));
    let r = (|| -> Result<(), String> {
        let store = Store::open(&dir, &StoreOptions::open()).map_err(|e| e.to_string())?;
        if let Some(n) = role.strip_prefix("writer:") {
            let n: u64 = n.parse().map_err(|_| "bad count".to_string())?;
            for i in 0..n {
                store
                    .append(&i.to_le_bytes())
                    .map_err(|e| format!("append {i}: {e}"))?;
            }
            say("WROTE");
            store
                .append_with(8, |_| {
                    say("STUCK");
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
                .map_err(|e| e.to_string())?;
            return Err("the stuck append returned".into());
        }
        let mut i = 0u64;
        loop {
            store
                .append(&i.to_le_bytes())
                .map_err(|e| format!("append {i}: {e}"))?;
            if i == 0 {
                say("READY");
            }
            i += 1;
        }
    })();
    child_exit(r)
}

fn spawn(dir: &Path, role: &str) -> ChildProc {
    ChildProc::spawn(ENTRY, role, role, &[("FO_DIR", dir.display().to_string())])
}

/// Every record from the start, read by a tailer.
fn records(s: &Store) -> u64 {
    let mut t = s.tailer();
    let mut n = 0;
    while t.next().expect("tail").is_some() {
        n += 1;
    }
    n
}

/// Dequeues `n` records with the default group.
fn dequeue(s: &Store, n: u64) {
    let mut c = s.consumer();
    for i in 0..n {
        assert!(c.dequeue().expect("dequeue").is_some(), "record {i} there");
    }
}

/// A writer stuck mid-append is killed, round after round, with dequeues in
/// between: each exclusive open takes the fast path, pads the stuck frame,
/// and its depth and end are those a full read finds.
#[test]
fn sigkill_in_this_boot_takes_the_fast_path_and_finds_what_the_full_walk_finds() {
    if mp_support::role().is_some() {
        return;
    }
    let _serial = serial();
    for durability in [Durability::None, Durability::Batch] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        {
            // A named tailer that never moves keeps every segment on disk,
            // so that `records` can count from the start.
            let s = Store::open(&dir, &opts(durability)).unwrap();
            s.named_tailer("keep").unwrap();
        }
        let (mut appended, mut dequeued) = (0u64, 0u64);
        // Dequeue nothing, fewer than the previous recovery saw, more.
        for (round, (n, take)) in [(3000u64, 0u64), (2000, 1000), (500, 4000), (4000, 4500)]
            .into_iter()
            .enumerate()
        {
            let mut w = spawn(&dir, &format!("writer:{n}"));
            w.expect_line("WROTE", PATIENCE);
            w.expect_line("STUCK", PATIENCE);
            w.kill9();
            appended += n;
            let s = Store::open(&dir, &StoreOptions::open()).unwrap();
            let rep = s.recovery_report().clone();
            assert!(rep.ran && rep.fast, "{durability:?} round {round}: {rep:?}");
            assert_eq!(
                rep.pending_padded, 1,
                "{durability:?} round {round}: {rep:?}"
            );
            assert!(rep.corrupt.is_empty() && rep.cut_from.is_none(), "{rep:?}");
            assert_eq!(
                rep.depth,
                appended - dequeued,
                "{durability:?} round {round}"
            );
            assert_eq!(s.depth(), appended - dequeued);
            assert_eq!(records(&s), appended, "{durability:?} round {round}");
            assert_eq!(rep.tail_after, s.tail_position());
            dequeue(&s, take);
            dequeued += take;
            drop(s);
            // Let the next round start from a crash, not a clean close: a
            // writer that is killed at once.
            let mut b = spawn(&dir, "burst");
            b.expect_line("READY", PATIENCE);
            b.kill9();
            let s = Store::open(&dir, &StoreOptions::open()).unwrap();
            let rep = s.recovery_report().clone();
            assert!(
                rep.ran && rep.fast,
                "{durability:?} round {round} burst: {rep:?}"
            );
            let total = records(&s);
            assert!(total > appended);
            assert_eq!(
                rep.depth,
                total - dequeued,
                "{durability:?} round {round} burst"
            );
            appended = total;
            // Closed cleanly here, but the next writer's open marks the
            // queue in use again before it is killed.
            drop(s);
        }
    }
}

/// After a clean close the open takes the full walk (damage done while no
/// process had the queue open must be found); a mark left in another boot
/// (a power loss reboots the machine) does too.
#[test]
fn clean_close_or_another_boot_takes_the_full_walk() {
    if mp_support::role().is_some() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    {
        let s = Store::open(&dir, &opts(Durability::None)).unwrap();
        for i in 0..100u64 {
            s.append(&i.to_le_bytes()).unwrap();
        }
    }
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    let rep = s.recovery_report().clone();
    assert!(rep.ran && !rep.fast, "clean close: {rep:?}");
    assert_eq!(rep.depth, 100);
    drop(s);

    let mut w = spawn(&dir, "writer:50");
    w.expect_line("STUCK", PATIENCE);
    w.kill9();
    // The mark as another boot left it.
    let ctl = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(CONTROL_FILE))
        .unwrap();
    ctl.write_all_at(&[0xa5; 16], CTL_LIVE_BOOT_OFF as u64)
        .unwrap();
    drop(ctl);
    let s = Store::open(&dir, &StoreOptions::open()).unwrap();
    let rep = s.recovery_report().clone();
    assert!(rep.ran && !rep.fast, "another boot: {rep:?}");
    assert_eq!(rep.pending_padded, 1, "{rep:?}");
    assert_eq!(rep.depth, 150);
    assert_eq!(records(&s), 150);
}
