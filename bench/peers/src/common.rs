//! Shared pieces: clock, pinning, payload layout, histograms, argument parsing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bit 63 of the tag: the message was scheduled after the warm-up and counts.
pub const MEASURED: u64 = 1 << 63;
/// Tag of the last message of a run: the reader stops on it.
pub const DONE: u64 = u64::MAX;

/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until the monotonic time `t` (absolute, so no drift).
pub fn sleep_until(t: u64) {
    let ts = libc::timespec {
        tv_sec: (t / 1_000_000_000) as libc::time_t,
        tv_nsec: (t % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; EINTR just returns early, the caller re-checks.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// Waits until `t`: busy-spinning when `spin`, else sleeping.
#[inline]
pub fn wait_until(t: u64, spin: bool) -> u64 {
    let mut now = now_ns();
    if !spin {
        while now < t {
            sleep_until(t);
            now = now_ns();
        }
        return now;
    }
    while now < t {
        std::hint::spin_loop();
        now = now_ns();
    }
    now
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu` (best effort).
pub fn pin_to(cpu: usize) -> bool {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// (writer cpu, reader cpu): the first two allowed CPUs, as `repliq bench ipc` does.
pub fn cpu_pair() -> (Option<usize>, Option<usize>) {
    let c = allowed_cpus();
    if c.len() >= 2 {
        (Some(c[0]), Some(c[1]))
    } else {
        (None, None)
    }
}

/// Fills a payload: `[0..8)` stamp, `[8..16)` tag, then 0x5a filler.
#[inline]
pub fn fill(buf: &mut [u8], stamp: u64, tag: u64) {
    buf[..8].copy_from_slice(&stamp.to_le_bytes());
    buf[8..16].copy_from_slice(&tag.to_le_bytes());
    buf[16..].fill(0x5a);
}

/// Reads (stamp, tag) off a payload.
#[inline]
pub fn decode(p: &[u8]) -> (u64, u64) {
    let mut s = [0u8; 8];
    let mut t = [0u8; 8];
    s.copy_from_slice(&p[..8]);
    t.copy_from_slice(&p[8..16]);
    (u64::from_le_bytes(s), u64::from_le_bytes(t))
}

/// A latency histogram in ns, 1 ns .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds")
}

/// Percentiles in ns.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// Latency writer's schedule: intended send times `start + i/rate`.
pub struct Schedule {
    pub start: u64,
    pub warm_end: u64,
    pub end: u64,
    pub rate: u64,
    pub spin: bool,
    pub seq: u64,
    pub measured: u64,
    pub max_behind: u64,
}

impl Schedule {
    pub fn new(start: u64, warmup_ns: u64, duration_ns: u64, rate: u64, spin: bool) -> Self {
        Schedule {
            start,
            warm_end: start + warmup_ns,
            end: start + warmup_ns + duration_ns,
            rate,
            spin,
            seq: 0,
            measured: 0,
            max_behind: 0,
        }
    }

    /// Waits for the next slot; returns (stamp, tag), or None at the end.
    /// With a rate the stamp is the intended send time (coordinated omission
    /// corrected); unthrottled (rate 0) it is the actual time.
    #[inline]
    pub fn next(&mut self) -> Option<(u64, u64)> {
        let stamp = if self.rate > 0 {
            let intended =
                self.start + (u128::from(self.seq) * 1_000_000_000 / u128::from(self.rate)) as u64;
            if intended >= self.end {
                return None;
            }
            let now = wait_until(intended, self.spin);
            self.max_behind = self.max_behind.max(now - intended);
            intended
        } else {
            let now = now_ns();
            if now >= self.end {
                return None;
            }
            now
        };
        let counted = stamp >= self.warm_end;
        let tag = self.seq | if counted { MEASURED } else { 0 };
        self.seq += 1;
        self.measured += u64::from(counted);
        Some((stamp, tag))
    }

    pub fn out(&self) -> WriterOut {
        WriterOut {
            sent: self.seq,
            measured: self.measured,
            max_behind_ns: self.max_behind,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WriterOut {
    pub sent: u64,
    pub measured: u64,
    pub max_behind_ns: u64,
}

/// The latency reader's bookkeeping.
pub struct LatRecorder {
    pub hist: Histogram<u64>,
    pub received: u64,
    pub measured: u64,
    pub lost: u64,
    expect: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl LatRecorder {
    pub fn new() -> Self {
        LatRecorder {
            hist: new_histogram(),
            received: 0,
            measured: 0,
            lost: 0,
            expect: 0,
            first_ns: 0,
            last_ns: 0,
        }
    }
    /// Records one message read at `now`; returns false on the DONE message.
    #[inline]
    pub fn record(&mut self, stamp: u64, tag: u64, now: u64) -> bool {
        if tag == DONE {
            return false;
        }
        let seq = tag & !MEASURED;
        if seq != self.expect {
            self.lost += seq.saturating_sub(self.expect);
        }
        self.expect = seq + 1;
        self.received += 1;
        if tag & MEASURED != 0 {
            if self.measured == 0 {
                self.first_ns = now;
            }
            self.last_ns = now;
            self.measured += 1;
            let _ = self.hist.record(now.saturating_sub(stamp).max(1));
        }
        true
    }
    pub fn out(&self) -> ReaderOut {
        ReaderOut {
            received: self.received,
            measured: self.measured,
            lost: self.lost,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            latency: Percentiles::of(&self.hist),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ReaderOut {
    pub received: u64,
    pub measured: u64,
    pub lost: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub latency: Percentiles,
}

/// Throughput reader's counters: first message to the DONE message.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TputOut {
    pub received: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub end_ns: u64,
}

/// `--key value` arguments.
pub struct Args(pub HashMap<String, String>);

impl Args {
    pub fn parse(v: &[String]) -> Result<Args, String> {
        let mut m = HashMap::new();
        let mut i = 0;
        while i < v.len() {
            let k = v[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {:?}", v[i]))?;
            if i + 1 < v.len() && !v[i + 1].starts_with("--") {
                m.insert(k.to_string(), v[i + 1].clone());
                i += 2;
            } else {
                m.insert(k.to_string(), "true".to_string());
                i += 1;
            }
        }
        Ok(Args(m))
    }
    pub fn str(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    pub fn req(&self, k: &str) -> Result<String, String> {
        self.0
            .get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required"))
    }
    pub fn u64(&self, k: &str, d: u64) -> Result<u64, String> {
        match self.0.get(k) {
            None => Ok(d),
            Some(s) => s
                .parse()
                .map_err(|_| format!("--{k}: {s:?} is not an integer")),
        }
    }
    pub fn f64(&self, k: &str, d: f64) -> Result<f64, String> {
        match self.0.get(k) {
            None => Ok(d),
            Some(s) => s
                .parse()
                .map_err(|_| format!("--{k}: {s:?} is not a number")),
        }
    }
}

/// Creates the file `p` (a rendezvous mark).
pub fn touch(p: &Path) {
    let _ = std::fs::write(p, b"1");
}

/// Waits (bounded) for the file `p` to appear.
pub fn wait_file(p: &Path, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while !p.exists() {
        if t0.elapsed() > timeout {
            return Err(format!("timed out waiting for {}", p.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A fresh temporary directory under `parent` (default: the temp dir).
pub fn temp_dir(tag: &str) -> PathBuf {
    let base = std::env::var_os("PEERS_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("peers-{tag}-{}-{}", std::process::id(), now_ns()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// `/proc/<pid>/stat`; `None` if it cannot be read.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the fields that
    // follow start after the last ')'. utime and stime are fields 14 and
    // 15 of the line, the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}
