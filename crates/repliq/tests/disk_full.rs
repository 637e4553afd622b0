//! Disk full: appending to a queue on a full filesystem must fail promptly
//! with `StoreError::Io` (ENOSPC), without SIGBUS and without hanging, and
//! must work again, with nothing lost, once space is freed.
//!
//! The parent mounts a 2 MiB tmpfs (the test runs as root in CI) and runs the
//! scenario in a child process, so that a SIGBUS or a hang is reported as a
//! failure instead of killing or blocking the test harness. If mounting is
//! not permitted, the child instead limits its file size with RLIMIT_FSIZE
//! (ignoring SIGXFSZ), and appends must then fail with EFBIG; the test prints
//! which method ran.

mod mp_support;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mp_support::{check_payload, child_exit, make_payload, say, ChildProc, SeqTracker, PATIENCE};
use repliq::store::{Durability, Store, StoreError, StoreOptions};

const ENTRY: &str = "disk_full_child_entry";
const SEGMENT: u64 = 256 * 1024;
const FILLER: usize = 600 * 1024;
const MAX_FILLER: usize = 1200;

/// Unmounts on drop, whatever happened.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> std::io::Result<Mount> {
        let c = |s: &str| CString::new(s).unwrap();
        let target = c(at.to_str().unwrap());
        let opts = c(&format!("size={size}"));
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let r = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r == 0 {
            Ok(Mount(at.to_path_buf()))
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: valid path; MNT_DETACH succeeds even if a file is still open.
        let r = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        if r != 0 {
            eprintln!(
                "umount {}: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Dispatches the child role; a no-op when run as an ordinary test.
#[test]
fn disk_full_child_entry() {
    if mp_support::role().is_none() {
        return;
    }
    let dir = PathBuf::from(std::env::var("DF_DIR").unwrap());
    let method = std::env::var("DF_METHOD").unwrap();
    child_exit(run_child(&dir, &method))
}

fn set_fsize_limit(bytes: u64) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn read_all(store: &Store) -> Result<SeqTracker, String> {
    let mut seqs = SeqTracker::default();
    let mut t = store.tailer();
    while let Some((id, r)) = t
        .next_with(|r| (r.id, check_payload(r.payload)))
        .map_err(|e| format!("read: {e}"))?
    {
        let (w, s) = r.map_err(|e| format!("id {id}: {e}"))?;
        seqs.see(id, w, s)?;
    }
    Ok(seqs)
}

fn run_child(dir: &Path, method: &str) -> Result<(), String> {
    let filler = dir.join("filler");
    let expected_errno = if method == "tmpfs" {
        // Take space that can be given back later.
        std::fs::write(&filler, vec![0xAAu8; FILLER]).map_err(|e| e.to_string())?;
        libc::ENOSPC
    } else {
        // SAFETY: ignoring SIGXFSZ makes writes past the limit fail with EFBIG.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        libc::EFBIG
    };
    let q = dir.join("q");
    let store = Store::open(
        &q,
        &StoreOptions::create()
            .segment_size(SEGMENT)
            .capacity(1_000_000)
            .durability(Durability::None),
    )
    .map_err(|e| format!("open: {e}"))?;
    if method != "tmpfs" {
        // The files that exist stay usable; no new segment can be created.
        set_fsize_limit(SEGMENT - 1)?;
    }

    let mut n = 0u64;
    let err = loop {
        let p = make_payload(0, n, MAX_FILLER);
        let t0 = Instant::now();
        let r = store.append(&p);
        let took = t0.elapsed();
        // "Promptly" means without hanging; speed is not measured here.
        if took > PATIENCE {
            return Err(format!("append {n} took {took:?}: it hangs"));
        }
        match r {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        if n > 100_000 {
            return Err("the filesystem never filled up".into());
        }
    };
    let errno = match &err {
        StoreError::Io { source, .. } => source.raw_os_error(),
        other => return Err(format!("expected StoreError::Io, got {other:?}")),
    };
    if errno != Some(expected_errno) {
        return Err(format!("expected errno {expected_errno}, got {err}"));
    }
    if n == 0 {
        return Err("not even the first segment took appends".into());
    }
    say(&format!("FULL after {n} appends: {err}"));
    // Still full: it keeps failing, promptly, and changes nothing.
    let tail = store.tail_position();
    for _ in 0..20 {
        let t0 = Instant::now();
        if store.append(&make_payload(0, n, MAX_FILLER)).is_ok() {
            return Err("append succeeded on a full filesystem".into());
        }
        if t0.elapsed() > PATIENCE {
            return Err(format!(
                "a failing append took {:?}: it hangs",
                t0.elapsed()
            ));
        }
    }
    if store.tail_position() != tail {
        return Err("failed appends moved the tail".into());
    }
    if store.depth() != n {
        return Err(format!(
            "depth {} after {n} appends (failed appends leaked)",
            store.depth()
        ));
    }
    let seen = read_all(&store)?;
    if seen.total != n {
        return Err(format!("read {} of {n} before freeing space", seen.total));
    }
    // The prefetch thread may still be inside its own failing attempt to
    // create the next segment (its temporary file exists until that attempt
    // gives up), so wait for it; a file that stays is a leak.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(&q)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.contains(".tmp"))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "temporary files left {PATIENCE:?} after ENOSPC: {leftovers:?}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // Free space, and carry on.
    if method == "tmpfs" {
        std::fs::remove_file(&filler).map_err(|e| e.to_string())?;
    } else {
        set_fsize_limit(4 * SEGMENT)?;
    }
    let more = 300u64;
    for i in 0..more {
        store
            .append(&make_payload(0, n + i, MAX_FILLER))
            .map_err(|e| format!("append after freeing space: {e}"))?;
    }
    let seen = read_all(&store)?;
    if seen.total != n + more {
        return Err(format!(
            "read {} of {} after freeing space",
            seen.total,
            n + more
        ));
    }
    if store.geometry().segment_of(store.tail_position()) <= store.geometry().segment_of(tail) {
        return Err("the appends after freeing space did not need a new segment".into());
    }
    drop(store);

    // A fresh, exclusive open recovers cleanly and still has everything.
    let store = Store::open(&q, &StoreOptions::open()).map_err(|e| format!("reopen: {e}"))?;
    let rep = store.recovery_report();
    if !rep.ran || rep.cut_from.is_some() || !rep.corrupt.is_empty() || rep.depth != n + more {
        return Err(format!("unexpected recovery after disk full: {rep:?}"));
    }
    let seen = read_all(&store)?;
    if seen.total != n + more {
        return Err(format!(
            "read {} of {} after reopening",
            seen.total,
            n + more
        ));
    }
    say(&format!("RECOVERED {} records", seen.total));
    Ok(())
}

#[test]
fn append_on_full_disk_fails_with_enospc_and_recovers() {
    if mp_support::role().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // DF_FORCE_RLIMIT=1 exercises the fallback where mounting is allowed.
    let mounted = if std::env::var_os("DF_FORCE_RLIMIT").is_some() {
        Err(std::io::Error::other("DF_FORCE_RLIMIT is set"))
    } else {
        Mount::tmpfs(&mnt, "2m")
    };
    let (method, _mount) = match mounted {
        Ok(m) => ("tmpfs", Some(m)),
        Err(e) => {
            println!("disk full: cannot mount tmpfs ({e}); falling back to RLIMIT_FSIZE");
            ("rlimit", None)
        }
    };
    let started = Instant::now();
    let mut child = ChildProc::spawn(
        ENTRY,
        "disk-full child",
        "disk-full",
        &[
            ("DF_DIR", mnt.to_string_lossy().into_owned()),
            ("DF_METHOD", method.to_string()),
        ],
    );
    // A SIGBUS shows up as a failed exit status, a hang as a timeout.
    child.wait_ok(2 * PATIENCE);
    let full = child.log.iter().find(|l| l.starts_with("FULL")).cloned();
    let rec = child
        .log
        .iter()
        .find(|l| l.starts_with("RECOVERED"))
        .cloned();
    assert!(
        full.is_some() && rec.is_some(),
        "child log: {:?}",
        child.log
    );
    println!(
        "disk full ({method}): {}; {}; in {:?}",
        full.unwrap(),
        rec.unwrap(),
        started.elapsed()
    );
}
