//! `repliq demo`: a short, self-contained tour.
//!
//! Creates a queue in a temporary directory, starts a writer process and a
//! reader process on it (the `repliq bench ipc` machinery), first at a fixed
//! one million 64-byte messages per second, then unthrottled, and explains
//! what it measured; then runs three daemons in cluster mode, kills the
//! queue's leader and shows the failover (`demo_cluster`). Everything is
//! deleted at the end.

use crate::bench::common::{fmt_ns, fmt_rate};
use crate::bench::ipc::{run_ipc, IpcConfig, IpcReport};
use crate::bench::{Hiccup, Idle};

/// Arguments of `repliq demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Seconds of the fixed-rate part.
    #[arg(long, default_value = "2", value_parser = crate::bench::parse_secs)]
    duration: f64,
}

/// Runs the demo and returns the exit code.
pub fn run(a: DemoArgs) -> i32 {
    match tour(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("repliq: error: demo failed: {e}");
            1
        }
    }
}

fn tour(a: &DemoArgs) -> Result<(), String> {
    let cpus = crate::bench::common::allowed_cpus().len();
    println!("repliq demo");
    println!("===========");
    println!();
    println!("A repliq queue is a directory of memory-mapped segment files. Writers in any");
    println!("process append with a few atomic instructions; readers in other processes see");
    println!("each message as soon as it is committed, straight from shared memory.");
    println!();
    println!("This demo creates a queue in a temporary directory (on /dev/shm when present),");
    println!("then starts two more copies of this program: a WRITER process that stamps");
    println!("each message with the time it was meant to be sent, and a READER process");
    println!("(a zero-copy tailer, busy-spinning) that records how long each message took.");
    if cpus >= 2 {
        println!("Writer and reader are pinned to different CPUs ({cpus} available).");
    } else {
        println!(
            "Only {cpus} CPU is available, so writer and reader share it: expect poor latency."
        );
    }
    println!();

    let base = IpcConfig {
        size: 64,
        rate: 1_000_000,
        duration: a.duration,
        warmup: 0.5,
        idle: Idle::Spin,
        // The demo shows latency only; `repliq bench ipc` runs the meter.
        hiccup: Hiccup::Off,
        hiccup_cpu: None,
        // Large enough that this short run never rolls to a new segment;
        // docs/benchmarks.md shows what a roll costs.
        segment_size: 256 << 20,
        dir: None,
        precreate: true,
        pingpong_rounds: 100_000,
    };
    println!(
        "1. Fixed rate: 64-byte messages at 1,000,000 per second for {} s (after a 0.5 s warm-up).",
        a.duration
    );
    let fixed = run_ipc(&base)?;
    show(&fixed);
    println!("   Latency is measured from the *scheduled* send time, so a hiccup in the");
    println!("   writer counts against every message queued behind it (no coordinated omission).");
    println!();

    println!("2. Unthrottled: the writer appends 64-byte messages as fast as it can for 1 s.");
    let max = run_ipc(&IpcConfig {
        rate: 0,
        duration: 1.0,
        warmup: 0.2,
        pingpong_rounds: 0,
        ..base
    })?;
    show(&max);
    println!("   Here latency includes queueing whenever the reader falls behind the writer.");
    println!();
    println!(
        "For reference, one cache line bouncing between the two CPUs takes {} one way",
        fmt_ns(fixed.pingpong_before.p50)
    );
    println!("(median): no cross-process message can be delivered faster than that.");
    println!();
    crate::demo_cluster::act(3)?;
    println!("The temporary queues have been deleted. More: `repliq bench ipc --help`,");
    println!("`repliq bench throughput --help`, and docs/benchmarks.md.");
    Ok(())
}

fn show(r: &IpcReport) {
    let l = &r.latency;
    println!(
        "   delivered {} messages at {} ({:.0} MB/s)",
        l.count,
        fmt_rate(r.throughput_msgs),
        r.throughput_mbs
    );
    println!("   writer -> reader latency percentiles:");
    println!(
        "     p50 {:>9}   p90 {:>9}   p99 {:>9}",
        fmt_ns(l.p50),
        fmt_ns(l.p90),
        fmt_ns(l.p99)
    );
    println!(
        "     p99.9 {:>7}   p99.99 {:>6}   max {:>9}",
        fmt_ns(l.p99_9),
        fmt_ns(l.p99_99),
        fmt_ns(l.max)
    );
}
