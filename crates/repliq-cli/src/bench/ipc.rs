//! `repliq bench ipc`: latency from a writer process to a reader process.
//!
//! The writer stamps each payload with a `CLOCK_MONOTONIC` time (the same
//! clock in every process). With a target rate it stamps the *intended* send
//! time of the schedule `start + i / rate`, not the time it got round to
//! sending, so a stall delays every message queued behind it in the figures
//! too (coordinated omission corrected). Unthrottled, it stamps the actual
//! time just before the append. The reader takes `now - stamp` right after
//! the zero-copy `Tailer::next_with` returns and records it, in nanoseconds,
//! into an HDR histogram.
//!
//! In the same run, unless `--hiccup off`, a thread of the reader process and
//! one of the writer process each run jHiccup's meter beside them over
//! exactly the measured window (see [`super::hiccup`]), and the report gives
//! the latency tail as multiples of the worse meter's. The reader's and the
//! writer's CPU time over the window are reported too, per second and per
//! message.
//!
//! Payload layout: `[0..8)` stamp (ns, LE), `[8..16)` sequence number with
//! bit 63 set when the message is past the warm-up and counts, then filler.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{self, BResult, Coord, Janitor, Percentiles, Workspace};
use super::hiccup::{CpuUse, HiccupReport, TailRatios, Window};
use super::{ChildArgs, Hiccup, Idle, Role};

/// Arguments of `repliq bench ipc`.
#[derive(clap::Args, Debug)]
pub struct IpcArgs {
    /// Payload size(s) in bytes, e.g. 64 or 64,256,1024,4096 (at least 16).
    #[arg(long, value_delimiter = ',', default_value = "64", value_parser = super::parse_size)]
    size: Vec<usize>,
    /// Target rate(s) in messages per second (100000, 1m, 5m), or max (= 0) for unthrottled.
    #[arg(long, value_delimiter = ',', default_value = "1m", value_parser = super::parse_rate)]
    rate: Vec<u64>,
    /// Measured seconds per run.
    #[arg(long, default_value = "5", value_parser = super::parse_secs)]
    duration: f64,
    /// Warm-up seconds before measuring (messages sent but not counted).
    #[arg(long, default_value = "1", value_parser = super::parse_secs)]
    warmup: f64,
    /// How the reader waits for the next message.
    #[arg(long, value_enum, default_value_t = Idle::Spin)]
    idle: Idle,
    /// Run the hiccup meters (a thread in the reader and one in the writer process that sleep
    /// 1 ms at a time and record their oversleep, as jHiccup does) over the measured window.
    #[arg(long, value_enum, default_value_t = Hiccup::On)]
    hiccup: Hiccup,
    /// CPU to pin the reader's hiccup meter to (default: the reader's CPU, so that it sees the
    /// stalls the reader's CPU sees). The writer's meter stays on the writer's CPU.
    #[arg(long)]
    hiccup_cpu: Option<usize>,
    /// Segment size in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Directory to create the temporary queue in (default /dev/shm, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not create segments ahead of the writer from the supervising process.
    #[arg(long)]
    no_precreate: bool,
    /// Round trips of the cross-core ping-pong.
    #[arg(long, default_value_t = 200_000)]
    pingpong_rounds: u64,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    json: bool,
}

/// One latency run's settings.
#[derive(Debug, Clone)]
pub struct IpcConfig {
    /// Payload bytes.
    pub size: usize,
    /// Messages per second, 0 = unthrottled.
    pub rate: u64,
    /// Measured seconds.
    pub duration: f64,
    /// Warm-up seconds.
    pub warmup: f64,
    /// Reader idle strategy.
    pub idle: Idle,
    /// Whether to run the hiccup meters.
    pub hiccup: Hiccup,
    /// The reader-side meter's CPU, if not the reader's.
    pub hiccup_cpu: Option<usize>,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Parent of the temporary directory.
    pub dir: Option<PathBuf>,
    /// Create segments ahead of the writer.
    pub precreate: bool,
    /// Ping-pong round trips (0: skip).
    pub pingpong_rounds: u64,
}

/// The result of one latency run.
#[derive(Debug, Clone, Serialize)]
pub struct IpcReport {
    /// Always "ipc".
    pub bench: &'static str,
    /// Payload bytes.
    pub size: usize,
    /// Target rate (msg/s), 0 = unthrottled.
    pub rate: u64,
    /// Reader idle strategy.
    pub idle: &'static str,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Writer CPU, if pinned.
    pub writer_cpu: Option<usize>,
    /// Reader CPU, if pinned.
    pub reader_cpu: Option<usize>,
    /// Messages sent, warm-up included.
    pub sent: u64,
    /// Latency percentiles (ns) of the measured messages; `count` is their number.
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Measured messages per second received by the reader.
    pub throughput_msgs: f64,
    /// Payload megabytes (1e6) per second received.
    pub throughput_mbs: f64,
    /// Largest delay of an actual send behind its scheduled time (ns); 0 if unthrottled.
    pub writer_max_behind_ns: u64,
    /// The hiccup meter beside the reader (its CPU unless `--hiccup-cpu`) over
    /// the measured window; absent with `--hiccup off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hiccup: Option<HiccupReport>,
    /// The hiccup meter beside the writer (a thread of the writer process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hiccup_writer: Option<HiccupReport>,
    /// Latency p99, p99.9 and max divided by the larger of the two meters'
    /// figures; absent without the meter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_vs_hiccup: Option<TailRatios>,
    /// The reader thread's CPU time over the measured window (`None`: unreadable).
    pub reader_cpu_use: Option<CpuUse>,
    /// The writer thread's CPU time over the measured window.
    pub writer_cpu_use: Option<CpuUse>,
    /// One-way cross-core latency percentiles of the ping-pong before the run.
    pub pingpong_before: Percentiles,
    /// The same, after the run.
    pub pingpong_after: Percentiles,
    /// Where the queue was.
    pub queue_dir: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct WriterOut {
    sent: u64,
    measured: u64,
    max_behind_ns: u64,
    hiccup: Option<HiccupReport>,
    cpu: Option<CpuUse>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReaderOut {
    received: u64,
    measured: u64,
    first_ns: u64,
    last_ns: u64,
    latency: Percentiles,
    hiccup: Option<HiccupReport>,
    cpu: Option<CpuUse>,
}

const MEASURED: u64 = 1 << 63;

/// Runs `repliq bench ipc`.
pub fn run(a: IpcArgs) -> BResult<()> {
    let seg = a
        .segment_mib
        .checked_mul(1 << 20)
        .ok_or("segment size is too large")?;
    for &size in &a.size {
        for &rate in &a.rate {
            let cfg = IpcConfig {
                size,
                rate,
                duration: a.duration,
                warmup: a.warmup,
                idle: a.idle,
                hiccup: a.hiccup,
                hiccup_cpu: a.hiccup_cpu,
                segment_size: seg,
                dir: a.dir.clone(),
                precreate: !a.no_precreate,
                pingpong_rounds: a.pingpong_rounds,
            };
            let r = run_ipc(&cfg)?;
            common::emit(a.json, &r, print_report)?;
        }
    }
    Ok(())
}

/// Prints a report as text.
pub fn print_report(r: &IpcReport) {
    let rate = if r.rate == 0 {
        "unthrottled".to_string()
    } else {
        format!("target {}", common::fmt_rate(r.rate as f64))
    };
    println!(
        "ipc: {} B messages, {rate}, reader idle {}, {} s measured after {} s warm-up",
        r.size, r.idle, r.duration_s, r.warmup_s
    );
    let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("cpu {c}"));
    println!(
        "  writer {} -> reader {}; queue in {}",
        cpu(r.writer_cpu),
        cpu(r.reader_cpu),
        r.queue_dir
    );
    let l = &r.latency;
    println!(
        "  latency  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  ({} messages)",
        common::fmt_ns(l.p50),
        common::fmt_ns(l.p90),
        common::fmt_ns(l.p99),
        common::fmt_ns(l.p99_9),
        common::fmt_ns(l.p99_99),
        common::fmt_ns(l.max),
        l.count
    );
    for (who, h) in [("reader", &r.hiccup), ("writer", &r.hiccup_writer)] {
        let Some(h) = h else { continue };
        let on = h.cpu.map_or("unpinned".to_string(), |c| format!("cpu {c}"));
        let x = &h.hiccups;
        println!(
            "  hiccup   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (beside the {who}: sleep {} on {on}, {} samples)",
            common::fmt_ns(x.p50),
            common::fmt_ns(x.p90),
            common::fmt_ns(x.p99),
            common::fmt_ns(x.p99_9),
            common::fmt_ns(x.p99_99),
            common::fmt_ns(x.max),
            common::fmt_ns(h.interval_ns),
            x.count
        );
    }
    if let Some(t) = &r.tail_vs_hiccup {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
        println!(
            "  latency / worse hiccup  p99 {}  p99.9 {}  max {}",
            f(t.p99),
            f(t.p99_9),
            f(t.max)
        );
    }
    let use_ = |u: &Option<CpuUse>| {
        u.map_or("unknown".to_string(), |u| {
            format!("{:.3} CPU-s/s, {:.0} ns/msg", u.cpu_per_s, u.ns_per_msg)
        })
    };
    println!(
        "  cpu time  reader {}  writer {}",
        use_(&r.reader_cpu_use),
        use_(&r.writer_cpu_use)
    );
    println!(
        "  throughput {}  {:.1} MB/s",
        common::fmt_rate(r.throughput_msgs),
        r.throughput_mbs
    );
    if r.rate != 0 {
        println!(
            "  writer fell behind its schedule by at most {}",
            common::fmt_ns(r.writer_max_behind_ns)
        );
    }
    println!(
        "  cross-core ping-pong one-way p50: {} before, {} after (p99 {} / {})",
        common::fmt_ns(r.pingpong_before.p50),
        common::fmt_ns(r.pingpong_after.p50),
        common::fmt_ns(r.pingpong_before.p99),
        common::fmt_ns(r.pingpong_after.p99)
    );
}

/// Runs one latency measurement with a writer and a reader process.
pub fn run_ipc(cfg: &IpcConfig) -> BResult<IpcReport> {
    let ws = Workspace::new(cfg.dir.as_deref())?;
    let store = ws.create_queue(cfg.segment_size)?;
    let coord = Coord::open(&ws.coord(), true)?;
    let cpus = common::allowed_cpus();
    let (wcpu, rcpu) = if cpus.len() >= 2 {
        (common::cpu_for(&cpus, 0), common::cpu_for(&cpus, 1))
    } else {
        (None, None)
    };
    if let Some(c) = cfg.hiccup_cpu {
        if !cpus.contains(&c) {
            return Err(format!(
                "--hiccup-cpu {c} is not a CPU this process may run on ({cpus:?})"
            ));
        }
    }
    let pp_before = if cfg.pingpong_rounds > 0 {
        common::ping_pong(wcpu, rcpu, cfg.pingpong_rounds)
    } else {
        Percentiles::default()
    };
    let base = ChildArgs {
        role: Role::IpcReader,
        queue: ws.queue(),
        coord: ws.coord(),
        index: 0,
        cpu: rcpu,
        size: cfg.size,
        rate: cfg.rate,
        warmup_ns: (cfg.warmup * 1e9) as u64,
        duration_ns: (cfg.duration * 1e9) as u64,
        count: 0,
        writers: 1,
        idle: cfg.idle,
        hiccup: cfg.hiccup,
        hiccup_cpu: cfg.hiccup_cpu,
    };
    let wargs = ChildArgs {
        role: Role::IpcWriter,
        cpu: wcpu,
        ..base.clone()
    };
    let mut procs = vec![common::spawn_child("reader", &base.to_args())?];
    match common::spawn_child("writer", &wargs.to_args()) {
        Ok(p) => procs.push(p),
        Err(e) => {
            coord.abort();
            let _ = common::supervise(&mut procs, &coord, u64::MAX, Duration::from_secs(10), || {});
            return Err(e);
        }
    }
    let mut janitor = Janitor::new(store.clone(), 1, cfg.precreate);
    let timeout = Duration::from_secs_f64(cfg.warmup + cfg.duration + 30.0);
    let mut ticks = 0u32;
    let outs = common::supervise(&mut procs, &coord, 2, timeout, || {
        // Every 10 ms: wake the supervisor rarely, it shares the CPUs.
        ticks += 1;
        if ticks % 10 == 0 {
            janitor.tick(&coord);
        }
    })?;
    let rout: ReaderOut = common::parse_result("reader", &outs[0])?;
    let wout: WriterOut = common::parse_result("writer", &outs[1])?;
    if rout.measured != wout.measured {
        return Err(format!(
            "the reader got {} measured messages, the writer sent {}",
            rout.measured, wout.measured
        ));
    }
    let pp_after = if cfg.pingpong_rounds > 0 {
        common::ping_pong(wcpu, rcpu, cfg.pingpong_rounds)
    } else {
        Percentiles::default()
    };
    // A stall on either CPU delays messages (the writer's ones count through
    // the coordinated-omission correction): divide by the worse meter.
    let worst = match (&rout.hiccup, &wout.hiccup) {
        (Some(r), Some(w)) => Some(r.hiccups.max_each(&w.hiccups)),
        (Some(h), None) | (None, Some(h)) => Some(h.hiccups),
        (None, None) => None,
    };
    let tail_vs_hiccup = worst.map(|h| TailRatios::of(&rout.latency, &h));
    let span = rout.last_ns.saturating_sub(rout.first_ns).max(1) as f64 / 1e9;
    let msgs = rout.measured.saturating_sub(1) as f64 / span;
    Ok(IpcReport {
        bench: "ipc",
        size: cfg.size,
        rate: cfg.rate,
        idle: cfg.idle.name(),
        duration_s: cfg.duration,
        warmup_s: cfg.warmup,
        writer_cpu: wcpu,
        reader_cpu: rcpu,
        sent: wout.sent,
        latency: rout.latency,
        throughput_msgs: msgs,
        throughput_mbs: msgs * cfg.size as f64 / 1e6,
        writer_max_behind_ns: wout.max_behind_ns,
        hiccup: rout.hiccup,
        hiccup_writer: wout.hiccup,
        tail_vs_hiccup,
        reader_cpu_use: rout.cpu,
        writer_cpu_use: wout.cpu,
        pingpong_before: pp_before,
        pingpong_after: pp_after,
        queue_dir: ws.root.display().to_string(),
    })
}

/// The writer process.
pub fn writer(a: &ChildArgs, coord: &Coord) -> BResult<String> {
    let store = common::open_queue(&a.queue)?;
    let size = a.size;
    if size < 16 {
        return Err("message size must be at least 16 bytes".into());
    }
    // The meter beside the writer: on its CPU, the one the writer's stalls happen on.
    let window = Window::spawn(a.warmup_ns, a.duration_ns, a.hiccup, None)?;
    coord.ready();
    let Some(start) = coord.wait_start() else {
        return Err("aborted before the start".into());
    };
    window.start(start);
    let warm_end = start + a.warmup_ns;
    let end = warm_end + a.duration_ns;
    let (mut seq, mut measured, mut max_behind) = (0u64, 0u64, 0u64);
    loop {
        let stamp = if a.rate > 0 {
            let intended = start + (u128::from(seq) * 1_000_000_000 / u128::from(a.rate)) as u64;
            if intended >= end {
                break;
            }
            let mut now = common::now_ns();
            while now < intended {
                std::hint::spin_loop();
                now = common::now_ns();
            }
            max_behind = max_behind.max(now - intended);
            intended
        } else {
            let now = common::now_ns();
            if now >= end {
                break;
            }
            now
        };
        let counted = stamp >= warm_end;
        let tag = seq | if counted { MEASURED } else { 0 };
        store
            .append_with(size, |b| {
                b[..8].copy_from_slice(&stamp.to_le_bytes());
                b[8..16].copy_from_slice(&tag.to_le_bytes());
                b[16..].fill(0x5a);
            })
            .map_err(|e| format!("append failed: {e}"))?;
        seq += 1;
        measured += u64::from(counted);
        if seq & 0xfff == 0 && coord.aborted() {
            return Err("aborted".into());
        }
    }
    coord.writer_done(seq);
    let (hiccup, cpu) = window.finish()?.report(measured, a.cpu);
    serde_json::to_string(&WriterOut {
        sent: seq,
        measured,
        max_behind_ns: max_behind,
        hiccup,
        cpu,
    })
    .map_err(|e| e.to_string())
}

/// The reader process.
pub fn reader(a: &ChildArgs, coord: &Coord) -> BResult<String> {
    let store = common::open_queue(&a.queue)?;
    let mut tailer = store.tailer();
    let mut hist = common::new_histogram();
    let window = Window::spawn(a.warmup_ns, a.duration_ns, a.hiccup, a.hiccup_cpu)?;
    coord.set_reader_pos(a.index, tailer.position());
    coord.ready();
    let Some(start) = coord.wait_start() else {
        return Err("aborted before the start".into());
    };
    window.start(start);
    let (mut received, mut measured, mut first, mut last) = (0u64, 0u64, 0u64, 0u64);
    let mut expect = 0u64;
    let idle = a.idle;
    let decode = |r: repliq::store::Record<'_>| {
        let p = r.payload;
        let mut s = [0u8; 8];
        let mut t = [0u8; 8];
        s.copy_from_slice(&p[..8]);
        t.copy_from_slice(&p[8..16]);
        (u64::from_le_bytes(s), u64::from_le_bytes(t))
    };
    let mut empty_polls = 0u32;
    loop {
        let got = match idle {
            Idle::Spin => tailer.next_with(decode),
            Idle::Yield | Idle::Futex => {
                tailer.next_wait_with(idle.strategy(), Some(Duration::from_millis(5)), decode)
            }
        }
        .map_err(|e| format!("read failed: {e}"))?;
        match got {
            Some((stamp, tag)) => {
                let now = common::now_ns();
                if tag & !MEASURED != expect {
                    return Err(format!(
                        "message out of order: expected sequence {expect}, got {}",
                        tag & !MEASURED
                    ));
                }
                expect += 1;
                received += 1;
                if tag & MEASURED != 0 {
                    hist.saturating_record(now.saturating_sub(stamp));
                    if measured == 0 {
                        first = now;
                    }
                    measured += 1;
                    last = now;
                }
                if expect & 0xfff == 0 {
                    coord.set_reader_pos(a.index, tailer.position());
                }
            }
            None => {
                empty_polls = empty_polls.wrapping_add(1);
                if idle != Idle::Spin || empty_polls % 1024 == 0 {
                    coord.set_reader_pos(a.index, tailer.position());
                    if coord.all_written(a.writers).is_some_and(|n| expect >= n) {
                        break;
                    }
                    if coord.aborted() {
                        return Err("aborted".into());
                    }
                }
                if idle == Idle::Spin {
                    std::hint::spin_loop();
                }
            }
        }
    }
    coord.set_reader_pos(a.index, tailer.position());
    let (hiccup, cpu) = window.finish()?.report(measured, a.hiccup_cpu.or(a.cpu));
    serde_json::to_string(&ReaderOut {
        received,
        measured,
        first_ns: first,
        last_ns: last,
        latency: Percentiles::of(&hist),
        hiccup,
        cpu,
    })
    .map_err(|e| e.to_string())
}
