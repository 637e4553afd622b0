//! `repliq bench throughput`: N writer processes append as fast as they can
//! while M reader processes tail everything; reports messages and bytes per
//! second, and the ratio to a plain single-threaded `memcpy` of the same
//! bytes in message-sized chunks, measured in the same run.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{self, BResult, Coord, Janitor, Workspace};
use super::{ChildArgs, Hiccup, Idle, Role};

/// Arguments of `repliq bench throughput`.
#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    /// Writer processes.
    #[arg(long, default_value_t = 1)]
    writers: u64,
    /// Reader (tailer) processes; each reads every message.
    #[arg(long, default_value_t = 1)]
    readers: usize,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value = "64", value_parser = super::parse_size)]
    size: usize,
    /// Seconds the writers write (ignored with --count).
    #[arg(long, default_value = "3", value_parser = super::parse_secs)]
    duration: f64,
    /// Total messages to write, split between the writers, instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// How readers wait when they have caught up.
    #[arg(long, value_enum, default_value_t = Idle::Yield)]
    idle: Idle,
    /// Segment size in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Directory to create the temporary queue in (default /dev/shm, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not create segments ahead of the writers from the supervising process.
    #[arg(long)]
    no_precreate: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The result of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Always "throughput".
    pub bench: &'static str,
    /// Writer processes.
    pub writers: u64,
    /// Reader processes.
    pub readers: usize,
    /// Payload bytes.
    pub size: usize,
    /// CPUs available.
    pub cpus: usize,
    /// Messages written in total.
    pub messages: u64,
    /// Appends per second, all writers together (first start to last finish).
    pub write_msgs: f64,
    /// Payload GB (1e9) per second appended.
    pub write_gbs: f64,
    /// Messages per second delivered to the slowest reader (start to its last message).
    pub read_msgs: f64,
    /// Payload GB per second delivered to the slowest reader.
    pub read_gbs: f64,
    /// Single-thread memcpy of the same payload bytes, same chunk size, GB/s.
    pub memcpy_gbs: f64,
    /// write_gbs / memcpy_gbs.
    pub write_vs_memcpy: f64,
    /// read_gbs / memcpy_gbs (each reader reads all bytes).
    pub read_vs_memcpy: f64,
    /// Reader idle strategy.
    pub idle: &'static str,
}

#[derive(Debug, Serialize, Deserialize)]
struct WriterOut {
    sent: u64,
    end_ns: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReaderOut {
    received: u64,
    bytes: u64,
    end_ns: u64,
}

/// Runs `repliq bench throughput`.
pub fn run(a: ThroughputArgs) -> BResult<()> {
    if a.writers == 0 || a.writers > 64 {
        return Err("--writers must be between 1 and 64".into());
    }
    if a.readers > common::MAX_READERS {
        return Err(format!("--readers must be at most {}", common::MAX_READERS));
    }
    if a.count == Some(0) {
        return Err("--count must be at least 1".into());
    }
    let r = run_throughput(&a)?;
    common::emit(a.json, &r, print_report)?;
    Ok(())
}

fn print_report(r: &ThroughputReport) {
    println!(
        "throughput: {} writer(s), {} reader(s), {} B messages, {} CPUs",
        r.writers, r.readers, r.size, r.cpus
    );
    println!(
        "  write  {}  {:.2} GB/s  ({} messages)  = {:.2} x memcpy",
        common::fmt_rate(r.write_msgs),
        r.write_gbs,
        r.messages,
        r.write_vs_memcpy
    );
    if r.readers > 0 {
        println!(
            "  read   {}  {:.2} GB/s per reader (slowest of {}, idle {})  = {:.2} x memcpy",
            common::fmt_rate(r.read_msgs),
            r.read_gbs,
            r.readers,
            r.idle,
            r.read_vs_memcpy
        );
    }
    println!(
        "  memcpy {:.2} GB/s (one thread, {} B chunks into a 64 MiB ring)",
        r.memcpy_gbs, r.size
    );
}

fn run_throughput(a: &ThroughputArgs) -> BResult<ThroughputReport> {
    let seg = a
        .segment_mib
        .checked_mul(1 << 20)
        .ok_or("segment size is too large")?;
    let ws = Workspace::new(a.dir.as_deref())?;
    let store = ws.create_queue(seg)?;
    let coord = Coord::open(&ws.coord(), true)?;
    let cpus = common::allowed_cpus();
    let per_writer = a.count.map(|c| c.div_ceil(a.writers));
    let base = ChildArgs {
        role: Role::TputReader,
        queue: ws.queue(),
        coord: ws.coord(),
        index: 0,
        cpu: None,
        size: a.size,
        rate: 0,
        warmup_ns: 0,
        duration_ns: (a.duration * 1e9) as u64,
        count: 0,
        writers: a.writers,
        idle: a.idle,
        hiccup: Hiccup::Off,
        hiccup_cpu: None,
    };
    let mut procs = Vec::new();
    let spawn = |name: String, args: ChildArgs, procs: &mut Vec<common::Proc>| {
        common::spawn_child(&name, &args.to_args()).map(|p| procs.push(p))
    };
    let mut result = Ok(());
    // Spread processes over the CPUs: writers first, then readers.
    let nproc = a.writers as usize + a.readers;
    for i in 0..a.readers {
        let args = ChildArgs {
            index: i,
            cpu: (nproc <= cpus.len())
                .then(|| common::cpu_for(&cpus, a.writers as usize + i))
                .flatten(),
            ..base.clone()
        };
        result = result.and_then(|()| spawn(format!("reader {i}"), args, &mut procs));
    }
    for i in 0..a.writers as usize {
        let args = ChildArgs {
            role: Role::TputWriter,
            index: i,
            cpu: (nproc <= cpus.len())
                .then(|| common::cpu_for(&cpus, i))
                .flatten(),
            count: per_writer.unwrap_or(0),
            ..base.clone()
        };
        result = result.and_then(|()| spawn(format!("writer {i}"), args, &mut procs));
    }
    if let Err(e) = result {
        coord.abort();
        let _ = common::supervise(&mut procs, &coord, u64::MAX, Duration::from_secs(10), || {});
        return Err(e);
    }
    let mut janitor = Janitor::new(store.clone(), a.readers, !a.no_precreate);
    let timeout = Duration::from_secs_f64(a.duration + 60.0);
    let mut ticks = 0u32;
    let outs = common::supervise(&mut procs, &coord, nproc as u64, timeout, || {
        ticks += 1;
        if ticks % 5 == 0 {
            janitor.tick(&coord);
        }
    })?;
    let start = coord.start_time().ok_or("the run never started")?;
    let mut messages = 0;
    let mut w_end = start;
    let mut r_end = start;
    let mut r_min: Option<u64> = None;
    for (i, out) in outs.iter().enumerate() {
        if i < a.readers {
            let r: ReaderOut = common::parse_result(&format!("reader {i}"), out)?;
            r_end = r_end.max(r.end_ns);
            r_min = Some(r_min.map_or(r.received, |m: u64| m.min(r.received)));
        } else {
            let w: WriterOut = common::parse_result(&format!("writer {}", i - a.readers), out)?;
            messages += w.sent;
            w_end = w_end.max(w.end_ns);
        }
    }
    if let Some(m) = r_min {
        if m != messages {
            return Err(format!("a reader got {m} messages of {messages} written"));
        }
    }
    let bytes = messages as f64 * a.size as f64;
    let w_secs = (w_end - start).max(1) as f64 / 1e9;
    let r_secs = (r_end - start).max(1) as f64 / 1e9;
    let memcpy_gbs = memcpy_rate(a.size, messages);
    let write_gbs = bytes / w_secs / 1e9;
    let read_gbs = if a.readers > 0 {
        bytes / r_secs / 1e9
    } else {
        0.0
    };
    Ok(ThroughputReport {
        bench: "throughput",
        writers: a.writers,
        readers: a.readers,
        size: a.size,
        cpus: cpus.len(),
        messages,
        write_msgs: messages as f64 / w_secs,
        write_gbs,
        read_msgs: if a.readers > 0 {
            messages as f64 / r_secs
        } else {
            0.0
        },
        read_gbs,
        memcpy_gbs,
        write_vs_memcpy: write_gbs / memcpy_gbs,
        read_vs_memcpy: read_gbs / memcpy_gbs,
        idle: a.idle.name(),
    })
}

/// GB/s of copying `count` chunks of `size` bytes into a 64 MiB ring (prefaulted).
fn memcpy_rate(size: usize, count: u64) -> f64 {
    const RING: usize = 64 << 20;
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![1u8; RING];
    let stride = size.next_multiple_of(8);
    let count = count.max(1);
    let t0 = common::now_ns();
    let mut off = 0;
    for _ in 0..count {
        if off + size > RING {
            off = 0;
            black_box(&mut dst);
        }
        dst[off..off + size].copy_from_slice(black_box(&src));
        off += stride;
    }
    black_box(&mut dst);
    let t = (common::now_ns() - t0).max(1) as f64;
    (count as f64 * size as f64) / t
}

/// A throughput writer process.
pub fn writer(a: &ChildArgs, coord: &Coord) -> BResult<String> {
    let store = common::open_queue(&a.queue)?;
    let payload: Vec<u8> = (0..a.size).map(|i| i as u8).collect();
    coord.ready();
    let Some(start) = coord.wait_start() else {
        return Err("aborted before the start".into());
    };
    let end = start + a.duration_ns;
    let mut sent = 0u64;
    loop {
        if a.count > 0 {
            if sent >= a.count {
                break;
            }
        } else if sent & 0xff == 0 && common::now_ns() >= end {
            break;
        }
        store
            .append(&payload)
            .map_err(|e| format!("append failed: {e}"))?;
        sent += 1;
        if sent & 0xfff == 0 && coord.aborted() {
            return Err("aborted".into());
        }
    }
    let end_ns = common::now_ns();
    coord.writer_done(sent);
    serde_json::to_string(&WriterOut { sent, end_ns }).map_err(|e| e.to_string())
}

/// A throughput reader process.
pub fn reader(a: &ChildArgs, coord: &Coord) -> BResult<String> {
    let store = common::open_queue(&a.queue)?;
    let mut tailer = store.tailer();
    coord.set_reader_pos(a.index, tailer.position());
    coord.ready();
    if coord.wait_start().is_none() {
        return Err("aborted before the start".into());
    }
    let (mut received, mut bytes, mut end_ns) = (0u64, 0u64, common::now_ns());
    let mut empty = 0u32;
    let mut was_empty = true;
    loop {
        let got = match a.idle {
            Idle::Spin => tailer.next_with(|r| r.payload.len()),
            Idle::Yield | Idle::Futex => {
                tailer.next_wait_with(a.idle.strategy(), Some(Duration::from_millis(5)), |r| {
                    r.payload.len()
                })
            }
        }
        .map_err(|e| format!("read failed: {e}"))?;
        match got {
            Some(n) => {
                received += 1;
                bytes += n as u64;
                if was_empty || received & 0xff == 0 {
                    end_ns = common::now_ns();
                    was_empty = false;
                }
                if received & 0xfff == 0 {
                    coord.set_reader_pos(a.index, tailer.position());
                }
            }
            None => {
                empty = empty.wrapping_add(1);
                if !was_empty {
                    // Caught up: this is (within an empty poll) when the
                    // last message arrived.
                    end_ns = common::now_ns();
                    was_empty = true;
                }
                if a.idle != Idle::Spin || empty % 1024 == 0 {
                    coord.set_reader_pos(a.index, tailer.position());
                    if coord.all_written(a.writers).is_some_and(|n| received >= n) {
                        break;
                    }
                    if coord.aborted() {
                        return Err("aborted".into());
                    }
                }
                std::hint::spin_loop();
            }
        }
    }
    coord.set_reader_pos(a.index, tailer.position());
    serde_json::to_string(&ReaderOut {
        received,
        bytes,
        end_ns,
    })
    .map_err(|e| e.to_string())
}
