//! Appends per second and append latency under `Durability::Always`, with N
//! writer threads in one process, on a real disk (not tmpfs: msync must
//! reach the device to be measured).
//!
//! ```text
//! cargo run --release -p repliq --example always_writers -- \
//!     --writers 1,4,16 --duration 3 --size 64 --dir /var/tmp
//! ```
//!
//! Prints one line per writer count: appends/s over the whole run, and the
//! latency of each append (from the call to its return) as HdrHistogram
//! percentiles. Used for the group-commit figures in `docs/benchmarks.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use repliq::store::{Durability, Store, StoreOptions};

struct Args {
    writers: Vec<usize>,
    duration: Duration,
    size: usize,
    dir: std::path::PathBuf,
    label: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        writers: vec![1, 4, 16],
        duration: Duration::from_secs(3),
        size: 64,
        dir: std::env::temp_dir(),
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--writers" => {
                a.writers = v
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--writers {s}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--duration" => {
                a.duration =
                    Duration::from_secs_f64(v.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--size" => a.size = v.parse().map_err(|e| format!("--size: {e}"))?,
            "--dir" => a.dir = v.into(),
            "--label" => a.label = v,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

fn run(a: &Args, writers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::Builder::new()
        .prefix("repliq-always")
        .tempdir_in(&a.dir)?;
    let store = Store::open(
        tmp.path().join("q"),
        &StoreOptions::create()
            .durability(Durability::Always)
            .capacity(1 << 40),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(writers + 1));
    let mut hs = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let stop = stop.clone();
        let start = start.clone();
        let payload = vec![7u8; a.size];
        hs.push(std::thread::spawn(
            move || -> Result<(u64, Histogram<u64>), String> {
                let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let mut n = 0u64;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    store.append(&payload).map_err(|e| e.to_string())?;
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    n += 1;
                }
                Ok((n, h))
            },
        ));
    }
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(a.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
    for j in hs {
        let (n, hh) = j.join().map_err(|_| "a writer panicked")??;
        total += n;
        h.add(hh)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<8} writers {:>2}: {:>9.0} appends/s   latency p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  max {:>8.1} µs",
        a.label,
        writers,
        total as f64 / secs,
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("always_writers: {e}");
            std::process::exit(2);
        }
    };
    for &w in &a.writers {
        if let Err(e) = run(&a, w) {
            eprintln!("always_writers: {w} writers: {e}");
            std::process::exit(1);
        }
    }
}
