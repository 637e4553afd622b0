//! The hiccup meter and per-thread CPU time of `repliq bench ipc`.
//!
//! The meter works the way jHiccup does: a thread sleeps a fixed interval
//! (1 ms) again and again and records, for every sleep, how much longer than
//! the interval it took to come back (`elapsed - interval`) into an HDR
//! histogram, correcting for coordinated omission the same way jHiccup does
//! (`record_correct` with the interval: a 10 ms stall also records the
//! 9, 8, ..., 1 ms that the samples it swallowed would have seen). Whatever
//! stops the whole CPU (the hypervisor taking the vCPU, interrupts, the
//! kernel) shows up there, and nothing of repliq's code does: the meter
//! touches no queue. One meter runs beside the reader and one beside the
//! writer (a stall of the writer's CPU counts in the coordinated-omission
//! corrected latency too); the latency tail divided by the worse meter's, in
//! the same run, is the part the machine does not explain. Not all of it is
//! repliq's: the scheduler lets a waking sleeper in ahead of a thread that
//! has been running, so time a spinning reader or writer loses to other
//! runnable tasks on its CPU is under-reported by the meter.
//!
//! It sleeps rather than spins because a spinning meter needs a CPU of its
//! own: on a 2-vCPU machine the writer (which busy-waits its schedule) and
//! the reader are already pinned one to each CPU, and a third spinning thread
//! would share a CPU with one of them and split it in scheduler slices of
//! milliseconds, the very stalls it is meant to measure. A sleeping meter
//! costs a wake-up per interval (about 1,000 a second of a few microseconds
//! each). Its timer slack is set to 1 ns so that the kernel's default 50 us
//! slack does not become the meter's floor.

use std::num::NonZeroU64;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::common::{self, BResult, Percentiles};
use super::Hiccup;

/// The meter's sleep interval: jHiccup's default resolution, 1 ms.
pub const INTERVAL_NS: u64 = 1_000_000;

/// Records the oversleep of each meter sample that starts inside a window.
pub struct Recorder {
    interval_ns: u64,
    from: u64,
    until: u64,
    hist: Histogram<u64>,
}

impl Recorder {
    /// A recorder for samples of `interval_ns` that start in `[from, until)`.
    pub fn new(interval_ns: u64, from: u64, until: u64) -> Recorder {
        Recorder {
            interval_ns,
            from,
            until,
            hist: common::new_histogram(),
        }
    }

    /// Whether a sample starting at `t` would be past the window.
    pub fn done(&self, t: u64) -> bool {
        t >= self.until
    }

    /// Records the sample that slept from `before` to `after`, if it started
    /// in the window: its oversleep, with the samples a long stall swallowed.
    pub fn sample(&mut self, before: u64, after: u64) {
        if before < self.from || before >= self.until {
            return;
        }
        let over = after
            .saturating_sub(before)
            .saturating_sub(self.interval_ns)
            .min(self.hist.high());
        // In range by the clamp above, so this cannot fail.
        let _ = self.hist.record_correct(over, self.interval_ns);
    }

    /// The histogram recorded so far.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }
}

/// Runs the meter until `rec` is done: `clock` reads the time, `sleep`
/// sleeps about the given nanoseconds. Samples before the window are taken
/// (the meter warms up with the run) but not recorded.
pub fn run_meter(rec: &mut Recorder, clock: &mut impl FnMut() -> u64, sleep: &mut impl FnMut(u64)) {
    loop {
        let before = clock();
        if rec.done(before) {
            return;
        }
        sleep(rec.interval_ns);
        let after = clock();
        rec.sample(before, after);
    }
}

/// Sets the calling thread's timer slack to 1 ns; best effort.
pub fn tight_timer_slack() -> bool {
    rustix::thread::set_current_timer_slack(NonZeroU64::new(1)).is_ok()
}

/// Sleeps until `CLOCK_MONOTONIC` reaches `t` (ns).
pub fn sleep_until(t: u64) {
    loop {
        let now = common::now_ns();
        if now >= t {
            return;
        }
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// CPU time (ns) the calling thread has used.
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time (ns) thread `tid` of this process has used, from
/// `/proc/self/task/<tid>/schedstat`. For a thread running on another CPU the
/// kernel brings the figure up to date at each scheduler tick, so it may lag
/// by one tick (4 ms at `HZ=250`).
pub fn task_cpu_ns(tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_schedstat(&s)
}

/// The first field of a `schedstat` line: time spent on a CPU, in ns.
pub fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The hiccup meter's figures in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HiccupReport {
    /// "sleep": jHiccup's method, oversleep of a fixed interval.
    pub method: String,
    /// The sleep interval (ns).
    pub interval_ns: u64,
    /// The CPU the meter was pinned to, if any.
    pub cpu: Option<usize>,
    /// Oversleep percentiles (ns); `count` includes the coordinated-omission fill-in.
    #[serde(flatten)]
    pub hiccups: Percentiles,
    /// CPU time the meter itself used over the window (ns).
    pub meter_cpu_ns: u64,
}

/// CPU time a thread used over the measured window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CpuUse {
    /// CPU time used (ns).
    pub cpu_ns: u64,
    /// Wall-clock length of the window (ns).
    pub wall_ns: u64,
    /// Measured messages in the window.
    pub messages: u64,
    /// CPU-seconds per second: 1.0 is one CPU kept busy.
    pub cpu_per_s: f64,
    /// CPU nanoseconds per measured message.
    pub ns_per_msg: f64,
}

impl CpuUse {
    /// The figures for `cpu_ns` used in `wall_ns` while `messages` passed.
    pub fn new(cpu_ns: u64, wall_ns: u64, messages: u64) -> CpuUse {
        CpuUse {
            cpu_ns,
            wall_ns,
            messages,
            cpu_per_s: cpu_ns as f64 / wall_ns.max(1) as f64,
            ns_per_msg: cpu_ns as f64 / messages.max(1) as f64,
        }
    }
}

/// The latency tail as multiples of the meter's, same run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TailRatios {
    /// Latency p99 / hiccup p99.
    pub p99: Option<f64>,
    /// Latency p99.9 / hiccup p99.9.
    pub p99_9: Option<f64>,
    /// Latency max / hiccup max.
    pub max: Option<f64>,
}

impl TailRatios {
    /// The ratios of `lat` to `hic`; `None` where the meter saw 0.
    pub fn of(lat: &Percentiles, hic: &Percentiles) -> TailRatios {
        let r = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        TailRatios {
            p99: r(lat.p99, hic.p99),
            p99_9: r(lat.p99_9, hic.p99_9),
            max: r(lat.max, hic.max),
        }
    }
}

/// A benchmark process's second thread, watching the measured window
/// `[start + warmup, start + warmup + duration)`: it reads the CPU time of
/// the thread that spawned it at both ends and, with the meter on, runs the
/// hiccup meter (through the warm-up too, recording only the window).
pub struct Window {
    start: mpsc::Sender<u64>,
    thread: JoinHandle<WindowOut>,
}

/// What the window thread saw over the measured window.
#[derive(Debug, Default)]
pub struct WindowOut {
    /// The watched thread's CPU time and the window's length (ns).
    cpu: Option<(u64, u64)>,
    /// The meter's percentiles and its own CPU time (ns).
    hiccup: Option<(Percentiles, u64)>,
}

impl Window {
    /// Starts the thread for the calling thread; pinned to `cpu` if given,
    /// else on the caller's CPUs.
    pub fn spawn(
        warmup_ns: u64,
        duration_ns: u64,
        meter: Hiccup,
        cpu: Option<usize>,
    ) -> BResult<Window> {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("window".into())
            .spawn(move || watch(&rx, tid, warmup_ns, duration_ns, meter, cpu))
            .map_err(|e| format!("cannot start the window thread: {e}"))?;
        Ok(Window { start: tx, thread })
    }

    /// Tells the thread the run's start time.
    pub fn start(&self, t: u64) {
        // The thread only ends after receiving this or when the sender is
        // dropped, so the send cannot fail.
        let _ = self.start.send(t);
    }

    /// Waits for the end of the window and returns what the thread saw.
    pub fn finish(self) -> BResult<WindowOut> {
        self.thread
            .join()
            .map_err(|_| "the window thread panicked".to_string())
    }
}

impl WindowOut {
    /// The meter's report (the meter pinned to `cpu`) and the watched
    /// thread's CPU use for `messages` measured messages.
    pub fn report(
        self,
        messages: u64,
        cpu: Option<usize>,
    ) -> (Option<HiccupReport>, Option<CpuUse>) {
        let hiccup = self.hiccup.map(|(hiccups, meter_cpu_ns)| HiccupReport {
            method: "sleep".into(),
            interval_ns: INTERVAL_NS,
            cpu,
            hiccups,
            meter_cpu_ns,
        });
        let cpu = self.cpu.map(|(c, wall)| CpuUse::new(c, wall, messages));
        (hiccup, cpu)
    }
}

fn watch(
    start: &mpsc::Receiver<u64>,
    tid: i32,
    warmup_ns: u64,
    duration_ns: u64,
    meter: Hiccup,
    cpu: Option<usize>,
) -> WindowOut {
    if let Some(c) = cpu {
        common::pin_to(c);
    }
    tight_timer_slack();
    let Ok(start) = start.recv() else {
        return WindowOut::default();
    };
    let (from, until) = (start + warmup_ns, start + warmup_ns + duration_ns);
    let mut clock = common::now_ns;
    let mut sleep = |ns| std::thread::sleep(Duration::from_nanos(ns));
    match meter {
        Hiccup::On => run_meter(
            &mut Recorder::new(INTERVAL_NS, start, from),
            &mut clock,
            &mut sleep,
        ),
        Hiccup::Off => sleep_until(from),
    }
    let (w0, c0, m0) = (common::now_ns(), task_cpu_ns(tid), thread_cpu_ns());
    let hist = match meter {
        Hiccup::On => {
            let mut rec = Recorder::new(INTERVAL_NS, w0, until);
            run_meter(&mut rec, &mut clock, &mut sleep);
            Some(Percentiles::of(rec.histogram()))
        }
        Hiccup::Off => {
            sleep_until(until);
            None
        }
    };
    let (w1, c1, m1) = (common::now_ns(), task_cpu_ns(tid), thread_cpu_ns());
    WindowOut {
        cpu: c0
            .zip(c1)
            .map(|(c0, c1)| (c1.saturating_sub(c0), w1.saturating_sub(w0))),
        hiccup: hist.map(|h| (h, m1.saturating_sub(m0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const MS: u64 = 1_000_000;

    /// Runs the meter on a fake clock whose sleeps oversleep by `extra[i]`
    /// (the last value repeats), window `[from, until)`.
    fn meter(extra: &[u64], from: u64, until: u64) -> Percentiles {
        let now = Cell::new(0u64);
        let i = Cell::new(0usize);
        let mut rec = Recorder::new(MS, from, until);
        run_meter(&mut rec, &mut || now.get(), &mut |d| {
            let e = extra[i.get().min(extra.len() - 1)];
            i.set(i.get() + 1);
            now.set(now.get() + d + e);
        });
        Percentiles::of(rec.histogram())
    }

    #[test]
    fn meter_records_oversleep_of_samples_in_the_window_only() {
        // Samples start at 0, 1.5, 3, 4.5 ... ms (0.5 ms oversleep each);
        // the window [3 ms, 9 ms) holds those starting at 3, 4.5, 6, 7.5.
        let p = meter(&[MS / 2], 3 * MS, 9 * MS);
        assert_eq!(p.count, 4);
        assert_eq!(p.p50, p.max);
        assert!(p.max.abs_diff(MS / 2) <= MS / 2 / 1000, "max {}", p.max);
    }

    #[test]
    fn meter_fills_in_the_samples_a_long_stall_swallowed() {
        // One 5 ms oversleep among 1 us ones: jHiccup's correction records
        // 5, 4, 3, 2, 1 ms for it, so the count is 4 more than the samples.
        let mut extra = vec![1_000u64; 3];
        extra.push(5 * MS);
        extra.push(1_000);
        let p = meter(&extra, 0, 20 * MS);
        // Samples start at 0, 1.001, 2.002, 3.003 (the 6 ms one), then
        // 9.003 + k * 1.001 ms for k = 0..=10: 15 samples, and 4 filled in.
        assert_eq!(p.count, 15 + 4, "{p:?}");
        assert!(p.max.abs_diff(5 * MS) <= 5 * MS / 1000, "max {}", p.max);
        assert!(p.p50 <= 1_001 && p.p50 >= 999, "p50 {}", p.p50);
    }

    #[test]
    fn meter_records_nothing_when_the_window_is_empty() {
        assert_eq!(meter(&[0], 5 * MS, 5 * MS).count, 0);
    }

    #[test]
    fn schedstat_first_field_is_the_cpu_time() {
        assert_eq!(parse_schedstat("894257 2933532 2\n"), Some(894_257));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn own_thread_cpu_time_is_readable_from_proc() {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        assert!(
            task_cpu_ns(tid).is_some(),
            "no /proc/self/task/{tid}/schedstat"
        );
    }

    #[test]
    fn ratios_are_absent_where_the_meter_saw_nothing() {
        let lat = Percentiles {
            p99: 10,
            p99_9: 20,
            max: 30,
            ..Percentiles::default()
        };
        let hic = Percentiles {
            p99: 5,
            max: 10,
            ..Percentiles::default()
        };
        let r = TailRatios::of(&lat, &hic);
        assert_eq!(r.p99, Some(2.0));
        assert_eq!(r.p99_9, None);
        assert_eq!(r.max, Some(3.0));
    }
}
