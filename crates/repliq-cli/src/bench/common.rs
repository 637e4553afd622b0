//! Shared machinery of the benchmarks: the cross-process clock, CPU pinning,
//! the coordination file, child processes, the queue directory and its
//! clean-up, and the cross-core ping-pong.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::Duration;

use hdrhistogram::Histogram;
use memmap2::MmapMut;
use repliq::store::{Durability, Store, StoreOptions};
use serde::Serialize;

/// A benchmark error: a message for standard error.
pub type BResult<T> = Result<T, String>;

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process on the
/// machine (unlike `std::time::Instant`, whose value cannot be shared).
#[inline]
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to `cpu`; best effort, returns whether it worked.
pub fn pin_to(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// The CPU for role number `i` (0 = writer, 1 = reader, ...), if there are any.
pub fn cpu_for(cpus: &[usize], i: usize) -> Option<usize> {
    if cpus.is_empty() {
        None
    } else {
        Some(cpus[i % cpus.len()])
    }
}

// ---------------------------------------------------------------------------
// Coordination file: a few atomics shared by the parent and its children.
// ---------------------------------------------------------------------------

/// Name of the coordination file, next to (not inside) the queue directory.
pub const COORD_FILE: &str = "bench.coord";
const COORD_SIZE: usize = 64 * 1024;
/// Most reader processes a run may have.
pub const MAX_READERS: usize = 64;

/// Index (in cache lines) of each shared counter.
mod slot {
    /// Children that are ready to start.
    pub const READY: usize = 0;
    /// Start time (monotonic ns), 0 until the parent sets it.
    pub const START: usize = 1;
    /// Non-zero: stop now (a failure elsewhere).
    pub const ABORT: usize = 2;
    /// Writers that have finished.
    pub const WRITERS_DONE: usize = 3;
    /// Messages written, added by each writer when it finishes.
    pub const WRITTEN: usize = 4;
    /// First reader position slot.
    pub const READER_POS: usize = 8;
}

/// The mapped coordination file.
pub struct Coord {
    map: MmapMut,
}

impl Coord {
    /// Creates (zeroed) or opens the coordination file at `path`.
    pub fn open(path: &Path, create: bool) -> BResult<Coord> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if create {
            f.set_len(COORD_SIZE as u64)
                .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
        }
        let len = f
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
            .len();
        if len < COORD_SIZE as u64 {
            return Err(format!("{} is too short", path.display()));
        }
        // SAFETY: the file is ours (a private temporary directory); every
        // access goes through atomics.
        let map = unsafe { MmapMut::map_mut(&f) }
            .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
        Ok(Coord { map })
    }

    fn at(&self, line: usize) -> &AtomicU64 {
        let off = line * 64;
        assert!(off + 8 <= COORD_SIZE);
        // SAFETY: in bounds, 8-aligned (page-aligned mapping), and only ever
        // accessed atomically.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Marks one child ready.
    pub fn ready(&self) {
        self.at(slot::READY).fetch_add(1, SeqCst);
    }
    /// Children ready so far.
    pub fn ready_count(&self) -> u64 {
        self.at(slot::READY).load(SeqCst)
    }
    /// Publishes the start time.
    pub fn set_start(&self, t: u64) {
        self.at(slot::START).store(t, SeqCst);
    }
    /// The published start time, if any.
    pub fn start_time(&self) -> Option<u64> {
        Some(self.at(slot::START).load(SeqCst)).filter(|&t| t != 0)
    }
    /// Asks everyone to stop.
    pub fn abort(&self) {
        self.at(slot::ABORT).store(1, SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn aborted(&self) -> bool {
        self.at(slot::ABORT).load(Relaxed) != 0
    }
    /// Waits for the start time to be published and reached; `None` if aborted.
    pub fn wait_start(&self) -> Option<u64> {
        let t = loop {
            let t = self.at(slot::START).load(Acquire);
            if t != 0 {
                break t;
            }
            if self.aborted() {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        while now_ns() < t {
            std::hint::spin_loop();
        }
        Some(t)
    }
    /// A writer finished after writing `n` messages.
    pub fn writer_done(&self, n: u64) {
        self.at(slot::WRITTEN).fetch_add(n, SeqCst);
        self.at(slot::WRITERS_DONE).fetch_add(1, SeqCst);
    }
    /// `Some(total written)` once all `writers` are done.
    pub fn all_written(&self, writers: u64) -> Option<u64> {
        if self.at(slot::WRITERS_DONE).load(SeqCst) >= writers {
            Some(self.at(slot::WRITTEN).load(SeqCst))
        } else {
            None
        }
    }
    /// Publishes reader `i`'s position (for segment clean-up).
    pub fn set_reader_pos(&self, i: usize, pos: u64) {
        self.at(slot::READER_POS + i).store(pos, Release);
    }
    /// Smallest position of readers `0..n`.
    pub fn min_reader_pos(&self, n: usize) -> u64 {
        (0..n)
            .map(|i| self.at(slot::READER_POS + i).load(Acquire))
            .min()
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// The queue directory
// ---------------------------------------------------------------------------

/// Capacity of benchmark queues: nobody dequeues, so make it unreachable.
pub const CAPACITY: u64 = 1 << 40;

/// A temporary directory holding the queue (`q/`) and the coordination file.
pub struct Workspace {
    _tmp: Option<tempfile::TempDir>,
    /// The directory.
    pub root: PathBuf,
}

impl Workspace {
    /// A fresh temporary workspace under `parent`, or on `/dev/shm` (tmpfs, so
    /// that disk write-back is not measured) when it exists, else the system
    /// temporary directory.
    pub fn new(parent: Option<&Path>) -> BResult<Workspace> {
        let shm = Path::new("/dev/shm");
        let base: PathBuf = match parent {
            Some(p) => p.into(),
            None if shm.is_dir() => shm.into(),
            None => std::env::temp_dir(),
        };
        let mk = |b: &Path| {
            tempfile::Builder::new()
                .prefix("repliq-bench-")
                .tempdir_in(b)
        };
        let tmp = match mk(&base) {
            Ok(t) => t,
            Err(_) if parent.is_none() => mk(&std::env::temp_dir())
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?,
            Err(e) => {
                return Err(format!(
                    "cannot create a directory in {}: {e}",
                    base.display()
                ))
            }
        };
        Ok(Workspace {
            root: tmp.path().into(),
            _tmp: Some(tmp),
        })
    }
    /// The queue directory.
    pub fn queue(&self) -> PathBuf {
        self.root.join("q")
    }
    /// The coordination file.
    pub fn coord(&self) -> PathBuf {
        self.root.join(COORD_FILE)
    }
    /// Creates the queue.
    pub fn create_queue(&self, segment_size: u64) -> BResult<Store> {
        Store::open(
            self.queue(),
            &StoreOptions::create()
                .capacity(CAPACITY)
                .segment_size(segment_size)
                .durability(Durability::None),
        )
        .map_err(|e| format!("cannot create the queue: {e}"))
    }
}

/// Opens the (existing) benchmark queue from a child process.
pub fn open_queue(dir: &Path) -> BResult<Store> {
    Store::open(dir, &StoreOptions::open()).map_err(|e| format!("cannot open the queue: {e}"))
}

/// Deletes segment files every reader has moved past, and creates the next
/// segment ahead of the writers if `precreate`. Returns segments deleted.
///
/// The engine keeps every segment until the default consumer group passes it,
/// and benchmarks only tail; without this an unthrottled run would fill the
/// disk (or RAM, on tmpfs). A mapping of an unlinked file stays valid until
/// the process drops it.
pub struct Janitor {
    store: Store,
    readers: usize,
    next_delete: u64,
    precreate: bool,
}

impl Janitor {
    /// A janitor for `store`, whose `readers` publish positions in the coordination file.
    pub fn new(store: Store, readers: usize, precreate: bool) -> Janitor {
        let next_delete = store.geometry().segment_of(store.first_position());
        Janitor {
            store,
            readers,
            next_delete,
            precreate,
        }
    }

    /// One round of clean-up (and pre-creation).
    pub fn tick(&mut self, coord: &Coord) {
        let geo = self.store.geometry();
        if self.precreate {
            let head = geo.segment_of(self.store.tail_position());
            let id = self.store.queue_id();
            for k in head + 1..=head + 2 {
                if let Err(e) =
                    repliq::store::segment::create_segment(self.store.dir(), k, geo, id, false)
                {
                    eprintln!("repliq bench: warning: cannot pre-create segment {k}: {e}");
                }
            }
        }
        if self.readers == 0 {
            return;
        }
        let min = coord.min_reader_pos(self.readers);
        let below = geo.segment_of(min);
        while self.next_delete < below {
            let p = repliq::store::segment::segment_path(self.store.dir(), self.next_delete);
            let _ = std::fs::remove_file(p);
            self.next_delete += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A running child process of the benchmark.
pub struct Proc {
    /// What it is, for messages ("writer 0").
    pub name: String,
    child: Child,
}

impl Proc {
    /// Kills the process with `SIGKILL` and reaps it.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Starts `repliq bench child <args>` with stdout captured.
pub fn spawn_child(name: &str, args: &[String]) -> BResult<Proc> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the current executable to start the {name}: {e}"))?;
    let child = Command::new(exe)
        .arg("bench")
        .arg("child")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the {name} process: {e}"))?;
    Ok(Proc {
        name: name.into(),
        child,
    })
}

/// Waits for every child while running `tick` every millisecond, releasing
/// them once all `expect_ready` are ready. Aborts everyone if one fails or
/// `timeout` passes. Returns each child's standard output.
pub fn supervise(
    procs: &mut [Proc],
    coord: &Coord,
    expect_ready: u64,
    timeout: Duration,
    mut tick: impl FnMut(),
) -> BResult<Vec<String>> {
    let deadline = now_ns() + timeout.as_nanos() as u64;
    let mut started = false;
    let mut done = vec![false; procs.len()];
    let mut failure: Option<String> = None;
    // Drain stdout in threads so a chatty child can never block on a full pipe.
    let readers: Vec<_> = procs
        .iter_mut()
        .map(|p| {
            let mut out = p.child.stdout.take();
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(o) = out.as_mut() {
                    let _ = o.read_to_string(&mut s);
                }
                s
            })
        })
        .collect();
    while done.iter().any(|d| !d) {
        if !started && coord.ready_count() >= expect_ready {
            // Leave the children a moment to reach their start spin.
            coord.set_start(now_ns() + 20_000_000);
            started = true;
        }
        for (i, p) in procs.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match p.child.try_wait() {
                Ok(Some(st)) => {
                    done[i] = true;
                    if !st.success() && failure.is_none() {
                        failure = Some(format!("the {} process failed ({st})", p.name));
                        coord.abort();
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    done[i] = true;
                    failure.get_or_insert(format!("cannot wait for the {}: {e}", p.name));
                    coord.abort();
                }
            }
        }
        if now_ns() > deadline && failure.is_none() {
            failure = Some("the benchmark did not finish in time; stopping it".into());
            coord.abort();
        }
        if failure.is_some() && now_ns() > deadline + 5_000_000_000 {
            for (i, p) in procs.iter_mut().enumerate() {
                if !done[i] {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    done[i] = true;
                }
            }
        }
        tick();
        std::thread::sleep(Duration::from_millis(1));
    }
    let outs: Vec<String> = readers
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    match failure {
        Some(f) => Err(f),
        None => Ok(outs),
    }
}

/// Parses the last line of a child's output as `T`.
pub fn parse_result<T: serde::de::DeserializeOwned>(name: &str, out: &str) -> BResult<T> {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| format!("the {name} printed no result"))?;
    serde_json::from_str(line).map_err(|e| format!("cannot parse the {name}'s result: {e}"))
}

// ---------------------------------------------------------------------------
// Histograms and the ping-pong
// ---------------------------------------------------------------------------

/// A latency histogram in nanoseconds, up to a minute, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// 99.99th percentile.
    pub p99_99: u64,
    /// Largest value.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles off `h`.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }

    /// The larger of `self` and `o`, figure by figure.
    pub fn max_each(&self, o: &Percentiles) -> Percentiles {
        Percentiles {
            count: self.count.max(o.count),
            p50: self.p50.max(o.p50),
            p90: self.p90.max(o.p90),
            p99: self.p99.max(o.p99),
            p99_9: self.p99_9.max(o.p99_9),
            p99_99: self.p99_99.max(o.p99_99),
            max: self.max.max(o.max),
        }
    }
}

/// Formats nanoseconds for people: `312 ns`, `41.2 us`, `12.3 ms`.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// Formats a rate: `1.23 M msg/s`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M msg/s", r / 1e6)
    } else {
        format!("{:.0} k msg/s", r / 1e3)
    }
}

#[repr(align(128))]
struct Padded(AtomicU64);

/// One-way cross-core latency: two threads pinned to `a` and `b` bounce a
/// counter through one cache line; each round trip is timed and half of it
/// recorded. Returns the percentiles of the one-way figure.
pub fn ping_pong(a: Option<usize>, b: Option<usize>, rounds: u64) -> Percentiles {
    let flag = Padded(AtomicU64::new(0));
    let warm = rounds / 10;
    let total = warm + rounds;
    let h = std::thread::scope(|s| {
        let f = &flag.0;
        s.spawn(move || {
            if let Some(c) = b {
                pin_to(c);
            }
            for i in 0..total {
                while f.load(Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                f.store(2 * i + 2, Release);
            }
        });
        let pinger = s.spawn(move || {
            if let Some(c) = a {
                pin_to(c);
            }
            let mut h = new_histogram();
            for i in 0..total {
                let t0 = now_ns();
                f.store(2 * i + 1, Release);
                while f.load(Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                let rtt = now_ns() - t0;
                if i >= warm {
                    h.saturating_record(rtt / 2);
                }
            }
            h
        });
        pinger.join().unwrap_or_else(|_| new_histogram())
    });
    Percentiles::of(&h)
}

/// Prints a benchmark's report: one JSON line with `json`, else the text
/// `print_report` writes. The one output path of every `repliq bench`.
pub fn emit<T: serde::Serialize>(json: bool, r: &T, print_report: fn(&T)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string(r).map_err(|e| format!("cannot print JSON: {e}"))?
        );
    } else {
        print_report(r);
    }
    Ok(())
}
