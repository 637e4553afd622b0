//! Power-loss simulator: crash images built from the msyncs the store made.
//!
//! `kill -9` leaves the page cache intact; a power loss does not. After a
//! power loss a file holds, page by page, what the last *completed* msync
//! wrote, or anything newer that the kernel happened to write back, and a
//! page caught in the middle of write-back can be torn at the disk's sector
//! size. This module tests the store against exactly that, in the manner of
//! ALICE (Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014:
//! record the persistence points, then construct every state a crash could
//! leave and check the application's invariants on it) and CrashMonkey
//! (Mohan et al., "Finding Crash-Consistency Bugs with Bounded Black-Box
//! Crash Testing", OSDI 2018: record the writes and flushes of a workload,
//! build crash states at persistence points, check them automatically).
//!
//! How:
//!
//! * A [`SyncObserver`] sees every msync of the queue's files (segments and
//!   control file). Just before an msync it copies the pages it covers, and
//!   once the msync has returned those copies become the pages' *synced*
//!   content. (A copy taken before the call holds everything written before
//!   the call; the kernel writes that or newer, so this is the weakest state
//!   the disk may hold.) A page never synced holds what creation made
//!   durable: the segment header and zeros.
//! * Writers race in threads; a test hook makes some of them stall between
//!   claiming a frame and committing it, as a descheduled writer would.
//! * At random moments a crash thread builds an image: for every page of
//!   every file, its synced content, its current content (the page cache), or
//!   a torn mix of the two at 512-byte granularity, chosen at random.
//! * It opens the image as a queue (recovery runs) and checks the contract:
//!   the queue opens; no panic; a tailer reads to the end without an error;
//!   every record served is one a writer wrote, intact; and every record
//!   acknowledged before the crash point is there, at its id. What
//!   "acknowledged" means depends on the mode: under `Always`, `append`
//!   returned; under `Batch`, `append` returned before the start of a
//!   `flush()` that completed.
//!
//! The seed (printed, and `REPLIQ_POWER_SEED` to set it) fixes payload sizes
//! and every choice in the images; the thread schedule is not replayable, so
//! a failing seed reproduces the kind of image, not the exact bytes.
//! `REPLIQ_POWER_IMAGES` changes the number of images per mode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::test_hooks::{self, Point, SyncObserver};
use super::*;

const PAGE: u64 = 4096;
const SECTOR: usize = 512;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One page's content as a completed msync left it, with the order of the
/// copy so that a slower msync of older content does not overwrite newer.
#[derive(Clone)]
struct Synced {
    order: u64,
    bytes: Arc<Vec<u8>>,
}

#[derive(Default)]
struct RecState {
    next: u64,
    /// Copies taken before msyncs still running, by ticket.
    running: HashMap<u64, Vec<(PathBuf, u64, Vec<u8>)>>,
    /// The synced content of each page, by (file, page index).
    synced: HashMap<(PathBuf, u64), Synced>,
    msyncs: u64,
}

/// Records, page by page, what completed msyncs of one queue made durable.
struct Recorder {
    dir: PathBuf,
    state: Mutex<RecState>,
}

impl SyncObserver for Recorder {
    fn before(&self, file: &Path, off: u64, len: u64) -> Option<u64> {
        if file.parent() != Some(self.dir.as_path()) {
            return None;
        }
        let lo = off / PAGE * PAGE;
        let hi = (off + len).div_ceil(PAGE) * PAGE;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The copy is taken under the lock, so that copies are ordered as
        // their tickets are.
        let bytes = read_range(file, lo, hi - lo);
        let ticket = st.next;
        st.next += 1;
        let pages = bytes
            .chunks(PAGE as usize)
            .enumerate()
            .map(|(i, c)| (file.to_path_buf(), lo / PAGE + i as u64, c.to_vec()))
            .collect();
        st.running.insert(ticket, pages);
        Some(ticket)
    }

    fn after(&self, ticket: u64, ok: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pages) = st.running.remove(&ticket) else {
            return;
        };
        if !ok {
            return;
        }
        st.msyncs += 1;
        for (file, page, bytes) in pages {
            let e = st.synced.entry((file, page)).or_insert(Synced {
                order: 0,
                bytes: Arc::new(Vec::new()),
            });
            if e.bytes.is_empty() || e.order < ticket {
                *e = Synced {
                    order: ticket,
                    bytes: Arc::new(bytes),
                };
            }
        }
    }
}

/// `len` bytes of `file` from `off` (short at the end of the file).
fn read_range(file: &Path, off: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.truncate(got);
    buf
}

/// The payload of record `seq` of writer `w`: a header naming it, then bytes
/// derived from both, so that any served record can be checked.
fn payload(w: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&w.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    let mut x = u64::from(w) << 32 | u64::from(seq);
    while p.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.push((x >> 56) as u8);
    }
    p.truncate(len.max(8));
    p
}

/// Which writer and record a payload claims to be, if it is intact.
fn check_payload(p: &[u8]) -> Option<(u32, u32)> {
    if p.len() < 8 {
        return None;
    }
    let w = u32::from_le_bytes(p[0..4].try_into().ok()?);
    let seq = u32::from_le_bytes(p[4..8].try_into().ok()?);
    (payload(w, seq, p.len()) == p).then_some((w, seq))
}

/// An acknowledged record: its id, writer and sequence number.
type Ack = (u64, u32, u32);

/// Builds one crash image of `src` in `dst`.
fn build_image(rec: &Recorder, src: &Path, dst: &Path, rng: &mut Rng) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    // Read in this order: the control file's page cache, then what msyncs
    // made durable, then the segments' page cache. Whatever the control
    // file shows as flushed was msynced before it was read, so both the
    // synced state and the segment contents read afterwards hold it. (Any
    // other order can pair a new `flushed` with older segment pages, a state
    // no power loss leaves.)
    let ctl_path = src.join(CONTROL_FILE);
    let mut current = vec![(
        ctl_path.clone(),
        CONTROL_FILE.to_string(),
        false,
        std::fs::read(&ctl_path)?,
    )];
    let synced = rec
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .synced
        .clone();
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if segment::parse_segment_name(name).is_none() {
            continue;
        }
        match std::fs::read(e.path()) {
            Ok(c) => current.push((e.path(), name.to_string(), true, c)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    for (path, name, is_seg, cur) in current {
        let mut out = cur;
        for (pi, page) in out.chunks_mut(PAGE as usize).enumerate() {
            let old: Vec<u8> = match synced.get(&(path.clone(), pi as u64)) {
                Some(s) => s.bytes.to_vec(),
                None if is_seg => {
                    // Never synced: what creation made durable (the header,
                    // written and fsynced before the file was linked).
                    let mut z = vec![0u8; page.len()];
                    if pi == 0 {
                        let h = SEGMENT_HEADER_LEN as usize;
                        z[..h].copy_from_slice(&page[..h]);
                    }
                    z
                }
                None => page.to_vec(),
            };
            if old.len() != page.len() {
                continue;
            }
            match rng.below(3) {
                0 => page.copy_from_slice(&old),
                1 => {}
                _ => {
                    for (si, sector) in page.chunks_mut(SECTOR).enumerate() {
                        if rng.below(2) == 0 {
                            sector.copy_from_slice(&old[si * SECTOR..si * SECTOR + sector.len()]);
                        }
                    }
                }
            }
        }
        if !is_seg {
            // A power loss reboots the machine: the image is opened in
            // another boot than the one its in-use mark names.
            out[CTL_LIVE_BOOT_OFF..CTL_LIVE_BOOT_OFF + 16].fill(0xa5);
        }
        std::fs::write(dst.join(name), &out)?;
    }
    Ok(())
}

/// Opens the image at `dir` and checks the contract against `acked`.
fn check_image(dir: &Path, acked: &[Ack]) -> std::result::Result<usize, String> {
    let store = Store::open(dir, &StoreOptions::open())
        .map_err(|e| format!("the crash image does not open: {e}"))?;
    let rep = store.recovery_report().clone();
    let mut t = store.tailer();
    let mut found: HashMap<u64, (u32, u32)> = HashMap::new();
    loop {
        match t.next() {
            Ok(Some(r)) => match check_payload(&r.payload) {
                Some(ws) => {
                    found.insert(r.id, ws);
                }
                None => {
                    return Err(format!(
                    "record {} served with a payload no writer wrote ({} bytes); recovery: {rep:?}",
                    r.id,
                    r.payload.len()
                ))
                }
            },
            Ok(None) => break,
            Err(e) => {
                return Err(format!(
                    "reading the recovered queue failed: {e}; recovery: {rep:?}"
                ))
            }
        }
    }
    for &(id, w, seq) in acked {
        match found.get(&id) {
            Some(&ws) if ws == (w, seq) => {}
            Some(&ws) => {
                return Err(format!(
                    "acknowledged record {id} (writer {w}, seq {seq}) reads back as writer {}, seq {}; recovery: {rep:?}",
                    ws.0, ws.1
                ))
            }
            None => {
                return Err(format!(
                    "acknowledged record {id} (writer {w}, seq {seq}) is missing after power loss \
                     ({} acknowledged, {} found); recovery: {rep:?}",
                    acked.len(),
                    found.len()
                ))
            }
        }
    }
    Ok(found.len())
}

/// Where the queues and images live: tmpfs when there is one (fast), else
/// the system temporary directory.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("repliq-power")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs rounds of racing writers under `durability` until `images` crash
/// images have been checked. Returns the first failure, with its seed.
fn simulate(
    durability: Durability,
    images: u64,
    seed: u64,
) -> std::result::Result<Summary, String> {
    let mut rng = Rng(seed);
    let tmp = scratch();
    let mut summary = Summary::default();
    let mut round = 0u64;
    while summary.images < images {
        round += 1;
        let dir = tmp.path().join(format!("q{round}"));
        let rec = Arc::new(Recorder {
            dir: dir.clone(),
            state: Mutex::new(RecState::default()),
        });
        let _obs = test_hooks::observe_syncs(rec.clone());
        // Slow writers: some claims stall before their payload is written.
        let stall_seed = AtomicU64::new(rng.next());
        let hook_dir = dir.clone();
        let _hook = test_hooks::install(move |point, at: &Path, _pos| {
            if point == Point::Claimed && at == hook_dir.as_path() {
                let x = stall_seed.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
                let r = Rng(x).next();
                match r % 8 {
                    0 => std::thread::sleep(Duration::from_micros(r >> 54)),
                    1 | 2 => std::thread::yield_now(),
                    _ => {}
                }
            }
        });
        let store = Store::open(
            &dir,
            &StoreOptions::create()
                .segment_size(1 << 15)
                .durability(durability)
                .flush_interval(Duration::from_secs(3600)),
        )
        .map_err(|e| format!("create the queue: {e}"))?;
        let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
        // Under `Batch`: how many of `acked` a completed flush covers.
        let flushed_n = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let writers = 4u32;
        let per_writer = 120u32;
        let mut handles = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let acked = acked.clone();
            let mut wr = Rng(rng.next());
            handles.push(std::thread::spawn(
                move || -> std::result::Result<(), String> {
                    for seq in 0..per_writer {
                        let len = 8 + wr.below(700) as usize;
                        let id = store
                            .append(&payload(w, seq, len))
                            .map_err(|e| format!("append: {e}"))?;
                        acked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, w, seq));
                    }
                    Ok(())
                },
            ));
        }
        let flusher = (durability == Durability::Batch).then(|| {
            let store = store.clone();
            let acked = acked.clone();
            let flushed_n = flushed_n.clone();
            let done = done.clone();
            std::thread::spawn(move || -> std::result::Result<(), String> {
                while !done.load(Acquire) {
                    let n = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
                    store.flush().map_err(|e| format!("flush: {e}"))?;
                    flushed_n.fetch_max(n, AcqRel);
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(())
            })
        });
        // Crash images while the writers run, and one after they finish.
        let mut k = 0;
        loop {
            let finished = handles.iter().all(|h| h.is_finished());
            let required: Vec<Ack> = {
                let a = acked.lock().unwrap_or_else(|p| p.into_inner());
                match durability {
                    Durability::Always => a.clone(),
                    _ => a[..flushed_n.load(Acquire).min(a.len())].to_vec(),
                }
            };
            let img = tmp.path().join(format!("img{round}-{k}"));
            k += 1;
            build_image(&rec, &dir, &img, &mut rng)
                .map_err(|e| format!("build a crash image: {e}"))?;
            let r = check_image(&img, &required);
            let _ = std::fs::remove_dir_all(&img);
            summary.images += 1;
            summary.required += required.len() as u64;
            match r {
                Ok(n) => summary.served += n as u64,
                Err(e) => {
                    done.store(true, Release);
                    return Err(format!("{durability:?}, round {round}, image {k}: {e}"));
                }
            }
            if finished || summary.images >= images {
                break;
            }
            std::thread::sleep(Duration::from_micros(rng.below(300)));
        }
        done.store(true, Release);
        for h in handles {
            h.join().map_err(|_| "a writer panicked".to_string())??;
        }
        if let Some(f) = flusher {
            f.join().map_err(|_| "the flusher panicked".to_string())??;
        }
        summary.msyncs += rec.state.lock().unwrap_or_else(|p| p.into_inner()).msyncs;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(summary)
}

#[derive(Debug, Default)]
struct Summary {
    images: u64,
    required: u64,
    served: u64,
    msyncs: u64,
}

fn run(durability: Durability) {
    let _serial = test_hooks::serial();
    let seed = env_u64("REPLIQ_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let images = env_u64("REPLIQ_POWER_IMAGES").unwrap_or(2000);
    eprintln!(
        "power-loss simulator, {durability:?}: seed {seed} (REPLIQ_POWER_SEED={seed} to replay)"
    );
    match simulate(durability, images, seed) {
        Ok(s) => eprintln!("power-loss simulator, {durability:?}: {s:?}"),
        Err(e) => panic!("power-loss simulator (REPLIQ_POWER_SEED={seed}): {e}"),
    }
}

/// Under `Always`, no power loss at any point loses an acknowledged record
/// or serves a damaged one, with four writers racing and some stalling
/// between claim and commit.
#[test]
fn power_loss_never_loses_an_append_acknowledged_under_always() {
    run(Durability::Always);
}

/// Under `Batch`, no power loss at any point loses a record acknowledged
/// before the last completed flush, or serves a damaged one.
#[test]
fn power_loss_never_loses_what_a_completed_batch_flush_covered() {
    run(Durability::Batch);
}

#[test]
fn payloads_check_themselves() {
    let p = payload(3, 77, 100);
    assert_eq!(check_payload(&p), Some((3, 77)));
    let mut bad = p.clone();
    bad[50] ^= 1;
    assert_eq!(check_payload(&bad), None);
}
