//! Helpers shared by the multi-process integration tests.
//!
//! Child processes are the test binary itself, re-executed with
//! `--exact <entry test> --nocapture` and an environment variable naming the
//! role to play. Protocol lines a child prints start with `@@`; everything
//! else on its stdout (the test harness's own chatter) is ignored.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

mod ports;
#[allow(unused_imports)]
pub use ports::free_port;

/// How long a test waits for a condition that normally holds within a
/// second or two. Generous on purpose: a loaded 2-core machine must never
/// fail a test by being slow, only by the condition never holding.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Environment variable holding a child's role; unset in the parent.
pub const ROLE_ENV: &str = "REPLIQ_MP_ROLE";

/// The role this process was started with, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// Prints a protocol line and flushes it.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@{line}");
    let _ = out.flush();
}

/// Ends a child: prints the reason on failure and exits without running the
/// rest of the test harness.
pub fn child_exit(result: Result<(), String>) -> ! {
    match result {
        Ok(()) => {
            say("OK");
            std::process::exit(0)
        }
        Err(e) => {
            say(&format!("ERROR {e}"));
            eprintln!("child failed: {e}");
            std::process::exit(3)
        }
    }
}

/// A child process with its stdout protocol lines delivered on a channel.
pub struct ChildProc {
    pub name: String,
    pub child: Child,
    lines: Receiver<String>,
    /// Every protocol line received so far (for diagnostics).
    pub log: Vec<String>,
    reaped: bool,
}

impl ChildProc {
    /// Starts the test binary as a child playing `role`; `entry` is the name
    /// of the test function that dispatches on the role.
    pub fn spawn(entry: &str, name: &str, role: &str, envs: &[(&str, String)]) -> ChildProc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", entry, "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().expect("child stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix("@@") {
                    if tx.send(p.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProc {
            name: name.to_string(),
            child,
            lines: rx,
            log: Vec::new(),
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next protocol line, up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.log.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a protocol line starting with `prefix`, failing on `ERROR`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(l) if l.starts_with("ERROR") => panic!("{}: {l}", self.name),
                Some(_) => {}
                None => panic!(
                    "{}: no {prefix:?} line within {timeout:?}; status {:?}; lines {:?}",
                    self.name,
                    self.child.try_wait(),
                    self.log
                ),
            }
        }
    }

    /// SIGKILLs the child and reaps it, so that its pid is no longer alive
    /// (an unreaped zombie still answers `kill(pid, 0)`).
    pub fn kill9(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// True if the child has exited (reaping it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let s = self.child.try_wait().expect("try_wait");
        if s.is_some() {
            self.reaped = true;
        }
        s
    }

    /// Collects the lines of an exited child up to the end of its stdout.
    /// The reader thread may still hold lines the child wrote just before
    /// it exited, so a short poll would lose them on a busy machine; the
    /// channel disconnects once the reader sees end of file. Bounded, in
    /// case a grandchild keeps the pipe open.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(_) => return,
            }
        }
    }

    /// Waits for the child to exit successfully within `timeout`.
    pub fn wait_ok(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.reaped = true;
                self.drain();
                assert!(
                    s.success(),
                    "{} failed: {s:?}; lines {:?}",
                    self.name,
                    self.log
                );
                return;
            }
            if Instant::now() >= deadline {
                self.kill9();
                self.drain();
                panic!(
                    "{} did not finish within {timeout:?}; lines {:?}",
                    self.name, self.log
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Never leave children behind, whatever happened to the test.
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// Self-checking payloads
// ---------------------------------------------------------------------------

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn filler_byte(writer: u32, seq: u64, i: usize) -> u8 {
    (writer as u64)
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7))
        .wrapping_add(i as u64) as u8
}

/// Length of the payload for `(writer, seq)` with `max_filler` filler bytes at most.
pub fn payload_len(writer: u32, seq: u64, max_filler: usize) -> usize {
    14 + filler_len(writer, seq, max_filler) + 8
}

fn filler_len(writer: u32, seq: u64, max_filler: usize) -> usize {
    if max_filler == 0 {
        0
    } else {
        ((seq.wrapping_mul(13) ^ u64::from(writer)) % (max_filler as u64 + 1)) as usize
    }
}

/// Writes the payload for `(writer, seq)` into `buf` (of `payload_len` bytes):
/// `writer:u32 | seq:u64 | filler_len:u16 | filler | fnv1a64 of all before`.
pub fn fill_payload(buf: &mut [u8], writer: u32, seq: u64) {
    let n = buf.len() - 22;
    buf[0..4].copy_from_slice(&writer.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..14].copy_from_slice(&(n as u16).to_le_bytes());
    for i in 0..n {
        buf[14 + i] = filler_byte(writer, seq, i);
    }
    let h = fnv1a(&buf[..14 + n]);
    buf[14 + n..].copy_from_slice(&h.to_le_bytes());
}

/// Builds the payload for `(writer, seq)`.
pub fn make_payload(writer: u32, seq: u64, max_filler: usize) -> Vec<u8> {
    let mut v = vec![0u8; payload_len(writer, seq, max_filler)];
    fill_payload(&mut v, writer, seq);
    v
}

/// Checks a payload's own checksum and structure; returns `(writer, seq)`.
pub fn check_payload(p: &[u8]) -> Result<(u32, u64), String> {
    if p.len() < 22 {
        return Err(format!("payload of {} bytes is too short", p.len()));
    }
    let n = u16::from_le_bytes([p[12], p[13]]) as usize;
    if p.len() != 22 + n {
        return Err(format!(
            "payload length {} does not match filler {n}",
            p.len()
        ));
    }
    let h = u64::from_le_bytes(p[14 + n..].try_into().unwrap());
    if fnv1a(&p[..14 + n]) != h {
        return Err("payload self-checksum mismatch".into());
    }
    let writer = u32::from_le_bytes(p[0..4].try_into().unwrap());
    let seq = u64::from_le_bytes(p[4..12].try_into().unwrap());
    for i in 0..n {
        if p[14 + i] != filler_byte(writer, seq, i) {
            return Err(format!(
                "filler byte {i} wrong for writer {writer} seq {seq}"
            ));
        }
    }
    Ok((writer, seq))
}

/// Per-writer sequence tracking: each writer's sequence numbers must start
/// at 0 and be contiguous (no duplicate, no gap, no reordering).
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    pub next: HashMap<u32, u64>,
    pub total: u64,
}

impl SeqTracker {
    pub fn see(&mut self, id: u64, writer: u32, seq: u64) -> Result<(), String> {
        let e = self.next.entry(writer).or_insert(0);
        if seq != *e {
            return Err(format!(
                "id {id}: writer {writer} seq {seq}, expected {} ({})",
                *e,
                if seq < *e {
                    "duplicate or reordered"
                } else {
                    "gap"
                }
            ));
        }
        *e += 1;
        self.total += 1;
        Ok(())
    }
    /// Messages seen from `writer`.
    pub fn count(&self, writer: u32) -> u64 {
        self.next.get(&writer).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Process resources
// ---------------------------------------------------------------------------

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Lines of /proc/self/maps mentioning `dir`.
pub fn maps_mentioning(dir: &Path) -> usize {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().filter(|l| l.contains(&d)).count())
        .unwrap_or(0)
}

/// A tiny xorshift generator (no dev-dependency needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn from_time() -> (Rng, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        (Rng::new(seed), seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Serialises the multi-process tests of one test binary: a child spawned
/// by one test inherits, between its fork and its exec, every descriptor of
/// the parent, another test's queue `flock` among them, and would make that
/// test's exclusive open (recovery) fail.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A reader child of the crash tests: follows the log from the start,
/// checking every payload and each writer's sequence, until the stop file
/// names a position it has reached; a torn record is an error.
pub fn run_reader(dir: &Path, stop: &Path) -> Result<(), String> {
    let store = repliq::store::Store::open(dir, &repliq::store::StoreOptions::open())
        .map_err(|e| e.to_string())?;
    let mut t = store.tailer();
    let mut seqs = SeqTracker::default();
    say("READY");
    loop {
        let r = t
            .next_wait_with(
                repliq::store::IdleStrategy::Block,
                Some(Duration::from_millis(20)),
                |r| (r.id, check_payload(r.payload)),
            )
            .map_err(|e| format!("reader: {e}"))?;
        match r {
            Some((id, Ok((w, s)))) => seqs.see(id, w, s).map_err(|e| format!("reader: {e}"))?,
            Some((id, Err(e))) => return Err(format!("reader: torn record at id {id}: {e}")),
            None => {
                if let Ok(s) = std::fs::read_to_string(stop) {
                    let end: u64 = s.trim().parse().unwrap();
                    if t.position() >= end {
                        say(&format!("DONE {}", seqs.total));
                        return Ok(());
                    }
                }
            }
        }
    }
}
