//! `repliq bench open`: how long opening a queue takes, right after a writer
//! process was killed with `SIGKILL`, after a clean close, and on a large
//! queue.
//!
//! A child writer process (`repliq bench child --role open-writer`) opens the
//! queue, says it is ready and appends unthrottled until the parent kills it
//! with `SIGKILL`, a few milliseconds later (the delay varies, so that the
//! kill lands anywhere in an append). The parent, which holds no handle on
//! the queue at that moment, then times the first open: by turns
//! [`Store::open`] and [`RepliqQueue::open`], so that each is the first open
//! after a crash in half the rounds and runs recovery. Every time goes into an
//! HDR histogram in nanoseconds, as does the recovery report's own duration
//! (the part of `open` spent walking and repairing the log).
//!
//! Then the same queue is opened and dropped again without a crash (clean
//! open), and a second queue is filled with many segments and opened after
//! crashes and cleanly too: an open whose cost grows with the queue shows up
//! as the large queue's figures departing from the small one's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use repliq::store::{Durability, Store, StoreOptions};
use repliq::RepliqQueue;
use serde::Serialize;

use super::common::{self, BResult, Coord, Percentiles, Workspace};
use super::{ChildArgs, Hiccup, Idle, Role};

/// Arguments of `repliq bench open`.
#[derive(clap::Args, Debug)]
pub struct OpenArgs {
    /// Writer kills per queue (each followed by one timed open).
    #[arg(long, default_value_t = 50)]
    kills: u64,
    /// Clean opens (no crash before them) per queue.
    #[arg(long, default_value_t = 50)]
    clean: u64,
    /// Payload size of the writer's messages in bytes.
    #[arg(long, default_value = "64", value_parser = super::parse_size)]
    size: usize,
    /// Segment size in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Durability of the queues (none, batch, always).
    #[arg(long, default_value = "batch")]
    durability: Durability,
    /// Full segments written into the large queue before its opens are timed (0: skip it).
    #[arg(long, default_value_t = 16)]
    large_segments: u64,
    /// Directory to create the temporary queues in (default /dev/shm, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per queue instead of text.
    #[arg(long)]
    json: bool,
}

/// The figures of one queue.
#[derive(Debug, Clone, Serialize)]
pub struct OpenReport {
    /// Always "open".
    pub bench: &'static str,
    /// "small" (only what the killed writers wrote) or "large" (pre-filled).
    pub queue: &'static str,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Durability of the queue.
    pub durability: String,
    /// Segment files in the queue directory at the end.
    pub segments: u64,
    /// Messages in the queue at the end (its depth: nothing dequeues).
    pub messages: u64,
    /// `Store::open` right after a writer was killed (ns).
    pub store_after_kill: Percentiles,
    /// `RepliqQueue::open` right after a writer was killed (ns).
    pub queue_after_kill: Percentiles,
    /// The recovery part of those opens, as the recovery report says (ns).
    pub recovery_after_kill: Percentiles,
    /// `Store::open` with no crash since the last close (ns).
    pub store_clean: Percentiles,
    /// `RepliqQueue::open` with no crash since the last close (ns).
    pub queue_clean: Percentiles,
    /// Kills that found a frame in flight (padded by recovery).
    pub pending_padded: u64,
    /// Where the queue was.
    pub queue_dir: String,
}

/// Runs `repliq bench open`.
pub fn run(a: OpenArgs) -> BResult<()> {
    let seg = a
        .segment_mib
        .checked_mul(1 << 20)
        .ok_or("segment size is too large")?;
    let mut queues = vec![("small", 0u64)];
    if a.large_segments > 0 {
        queues.push(("large", a.large_segments));
    }
    for (name, fill) in queues {
        let r = run_queue(&a, name, seg, fill)?;
        common::emit(a.json, &r, print_report)?;
    }
    Ok(())
}

/// Prints a report as text.
pub fn print_report(r: &OpenReport) {
    println!(
        "open: {} queue, {} segment(s) of {} MiB, {} messages, durability {}, in {}",
        r.queue,
        r.segments,
        r.segment_size >> 20,
        r.messages,
        r.durability,
        r.queue_dir
    );
    let line = |what: &str, p: &Percentiles| {
        println!(
            "  {what:<28} p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}  ({} opens)",
            common::fmt_ns(p.p50),
            common::fmt_ns(p.p90),
            common::fmt_ns(p.p99),
            common::fmt_ns(p.max),
            p.count
        );
    };
    line("Store::open after kill", &r.store_after_kill);
    line("RepliqQueue::open after kill", &r.queue_after_kill);
    line("  of which recovery", &r.recovery_after_kill);
    line("Store::open clean", &r.store_clean);
    line("RepliqQueue::open clean", &r.queue_clean);
    println!(
        "  {} of the kills left a frame in flight (padded by recovery)",
        r.pending_padded
    );
}

fn options(a: &OpenArgs, seg: u64) -> StoreOptions {
    StoreOptions::create()
        .capacity(common::CAPACITY)
        .segment_size(seg)
        .durability(a.durability)
}

/// A small pseudo-random delay in `[2, 12)` ms, so kills land anywhere.
fn kill_delay(round: u64) -> Duration {
    let mut x = common::now_ns() ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Duration::from_micros(2_000 + x % 10_000)
}

fn path_str(p: &Path) -> BResult<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", p.display()))
}

fn time_open(queue: &Path, repliq_api: bool) -> BResult<(u64, Option<(Duration, u64)>)> {
    if repliq_api {
        let q = path_str(queue)?;
        let t0 = Instant::now();
        let r =
            RepliqQueue::<Vec<u8>>::open(q).map_err(|e| format!("cannot open the queue: {e}"))?;
        let ns = t0.elapsed().as_nanos() as u64;
        let rep = r.store().recovery_report();
        let rec = rep.ran.then_some((rep.duration, rep.pending_padded));
        Ok((ns, rec))
    } else {
        let t0 = Instant::now();
        let s = Store::open(queue, &StoreOptions::open())
            .map_err(|e| format!("cannot open the queue: {e}"))?;
        let ns = t0.elapsed().as_nanos() as u64;
        let rep = s.recovery_report();
        let rec = rep.ran.then_some((rep.duration, rep.pending_padded));
        Ok((ns, rec))
    }
}

fn run_queue(a: &OpenArgs, name: &'static str, seg: u64, fill: u64) -> BResult<OpenReport> {
    let ws = Workspace::new(a.dir.as_deref())?;
    let queue = ws.queue();
    {
        let store = Store::open(&queue, &options(a, seg))
            .map_err(|e| format!("cannot create the queue: {e}"))?;
        if fill > 0 {
            // Fill `fill` segments from this process (nothing timed here).
            let end = store.geometry().first_position(fill);
            let payload = vec![0x5au8; a.size];
            while store.tail_position() < end {
                store
                    .append(&payload)
                    .map_err(|e| format!("cannot fill the queue: {e}"))?;
            }
        }
    }
    let coord = Coord::open(&ws.coord(), true)?;
    let child = ChildArgs {
        role: Role::OpenWriter,
        queue: queue.clone(),
        coord: ws.coord(),
        index: 0,
        cpu: None,
        size: a.size,
        rate: 0,
        warmup_ns: 0,
        duration_ns: 0,
        count: 0,
        writers: 1,
        idle: Idle::Spin,
        hiccup: Hiccup::Off,
        hiccup_cpu: None,
    };
    let (mut h_store, mut h_queue, mut h_rec) = (
        common::new_histogram(),
        common::new_histogram(),
        common::new_histogram(),
    );
    let mut padded = 0u64;
    for round in 0..a.kills * 2 {
        let mut p = common::spawn_child("writer", &child.to_args())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while coord.ready_count() <= round {
            if Instant::now() > deadline || coord.aborted() {
                p.kill_now();
                return Err("the writer did not start appending in time".into());
            }
            if let Some(st) = p.exited() {
                return Err(format!("the writer exited early ({st})"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(kill_delay(round));
        p.kill_now();
        let repliq_api = round % 2 == 1;
        let (ns, rec) = time_open(&queue, repliq_api)?;
        let Some((rec, pend)) = rec else {
            return Err(
                "recovery did not run after the kill (another process has the queue open?)".into(),
            );
        };
        padded += u64::from(pend > 0);
        h_rec.saturating_record(rec.as_nanos() as u64);
        let h: &mut Histogram<u64> = if repliq_api {
            &mut h_queue
        } else {
            &mut h_store
        };
        h.saturating_record(ns);
    }
    let (mut c_store, mut c_queue) = (common::new_histogram(), common::new_histogram());
    for round in 0..a.clean * 2 {
        let repliq_api = round % 2 == 1;
        let (ns, _) = time_open(&queue, repliq_api)?;
        let h: &mut Histogram<u64> = if repliq_api {
            &mut c_queue
        } else {
            &mut c_store
        };
        h.saturating_record(ns);
    }
    let store = Store::open(&queue, &StoreOptions::open())
        .map_err(|e| format!("cannot open the queue: {e}"))?;
    let segments = repliq::store::segment::list_segments(&queue)
        .map_err(|e| format!("cannot list the segments: {e}"))?
        .len() as u64;
    Ok(OpenReport {
        bench: "open",
        queue: name,
        segment_size: seg,
        durability: a.durability.to_string(),
        segments,
        messages: store.depth(),
        store_after_kill: Percentiles::of(&h_store),
        queue_after_kill: Percentiles::of(&h_queue),
        recovery_after_kill: Percentiles::of(&h_rec),
        store_clean: Percentiles::of(&c_store),
        queue_clean: Percentiles::of(&c_queue),
        pending_padded: padded,
        queue_dir: ws.root.display().to_string(),
    })
}

/// The writer process: appends unthrottled until it is killed.
pub fn writer(a: &ChildArgs, coord: &Coord) -> BResult<String> {
    let store = common::open_queue(&a.queue)?;
    if a.size < 16 {
        return Err("message size must be at least 16 bytes".into());
    }
    let mut seq = 0u64;
    loop {
        store
            .append_with(a.size, |b| {
                b[..8].copy_from_slice(&seq.to_le_bytes());
                b[8..].fill(0x5a);
            })
            .map_err(|e| format!("append failed: {e}"))?;
        if seq == 0 {
            coord.ready();
        }
        seq += 1;
        if seq & 0xfff == 0 && coord.aborted() {
            return Err("aborted".into());
        }
    }
}
