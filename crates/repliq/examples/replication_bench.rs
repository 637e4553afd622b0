//! Replication on loopback: throughput, append → visible on the secondary
//! latency, and the round trip of a synchronous append. Primary and secondary
//! run in this one process (so one clock serves both), over real TCP.
//!
//! `cargo run --release -p repliq --example replication_bench [DIR]`
//! (DIR defaults to /dev/shm, else the temp dir).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use repliq::replication::sync::{record_end, wait_replicated};
use repliq::replication::{primary, secondary, PrimaryConfig, SecondaryConfig};
use repliq::store::{Durability, IdleStrategy, Store, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(256 << 20)
        .capacity(1 << 40)
        .durability(Durability::None)
}

fn pct(h: &Histogram<u64>) -> String {
    let us = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  p99.99 {:.1} us  max {:.1} us  ({} samples)",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.value_at_quantile(0.9999)),
        us(h.max()),
        h.len()
    )
}

struct Pair {
    p: Store,
    s: Store,
    _dir: tempfile::TempDir,
}

async fn pair(base: &std::path::Path, name: &str) -> Result<Pair, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("repliq-repl-bench")
        .tempdir_in(base)?;
    let p = Store::open(dir.path().join("p"), &opts())?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let mut cfg = PrimaryConfig::new("a", name);
    cfg.min_acks = 1;
    let cfg = Arc::new(cfg);
    let ps = p.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(primary::serve(ps.clone(), cfg.clone(), c));
        }
    });
    let sdir = dir.path().join("s");
    tokio::spawn(secondary::follow(SecondaryConfig::new(
        "b", name, &sdir, &addr,
    )));
    // Wait for the secondary's queue to exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        if let Ok(s) = Store::open(&sdir, &StoreOptions::open().skip_recovery()) {
            break s;
        }
        if Instant::now() > deadline {
            return Err("secondary never started".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(Pair { p, s, _dir: dir })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let shm = std::path::PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
    println!("replication on loopback, queues under {}", base.display());

    // 1. Throughput: append a batch as fast as possible, time until the
    //    secondary holds all of it.
    for (size, count) in [(64usize, 2_000_000u64), (1024, 400_000)] {
        let pr = pair(&base, &format!("tput{size}")).await?;
        let payload = vec![7u8; size];
        let t0 = Instant::now();
        let p = pr.p.clone();
        let w = std::thread::spawn(move || {
            for _ in 0..count {
                if p.append(&payload).is_err() {
                    return;
                }
            }
        });
        w.join().map_err(|_| "writer panicked")?;
        let end = pr.p.tail_position();
        while pr.s.tail_position() < end {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "throughput {size:>5} B: {count} messages replicated in {dt:.2} s: {:.2} M msg/s, {:.0} MB/s of payload, {:.0} MB/s on the wire",
            count as f64 / dt / 1e6,
            (count as f64 * size as f64) / dt / 1e6,
            end as f64 / dt / 1e6
        );
    }

    // 2. Latency from the primary's append to visibility on the secondary,
    //    at a fixed rate (intended send time stamped: no coordinated omission).
    {
        let pr = pair(&base, "lat").await?;
        let base_t = Instant::now();
        let rate = 100_000u64;
        let secs = 3u64;
        let n = rate * secs;
        let p = pr.p.clone();
        let w = std::thread::spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / rate);
            let start = Instant::now() + Duration::from_millis(200);
            for i in 0..n {
                let due = start + period * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                let stamp = (due - base_t).as_nanos() as u64;
                if p.append(&stamp.to_le_bytes()).is_err() {
                    return;
                }
            }
        });
        let s = pr.s.clone();
        let r = std::thread::spawn(move || -> Option<Histogram<u64>> {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok()?;
            let mut t = s.tailer();
            let mut got = 0;
            while got < n {
                let v = t
                    .next_wait_with(IdleStrategy::Yield, Some(Duration::from_secs(10)), |r| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&r.payload[..8]);
                        u64::from_le_bytes(b)
                    })
                    .ok()??;
                let now = base_t.elapsed().as_nanos() as u64;
                let _ = h.record(now.saturating_sub(v).max(1));
                got += 1;
            }
            Some(h)
        });
        w.join().map_err(|_| "writer panicked")?;
        let h = r
            .join()
            .map_err(|_| "reader panicked")?
            .ok_or("reader failed")?;
        println!(
            "append -> visible on the secondary, 8 B at {rate} msg/s: {}",
            pct(&h)
        );
    }

    // 3. Synchronous append: append, then wait for the secondary's ack.
    {
        let pr = pair(&base, "sync").await?;
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let payload = vec![1u8; 64];
        for i in 0..20_000 {
            let t0 = Instant::now();
            let id = pr.p.append(&payload)?;
            wait_replicated(
                &pr.p,
                record_end(&pr.p, id, payload.len()),
                Duration::from_secs(5),
            )
            .await?;
            if i >= 1000 {
                h.record(t0.elapsed().as_nanos() as u64)?;
            }
        }
        println!(
            "synchronous append round trip, 64 B, one secondary: {}",
            pct(&h)
        );
    }
    Ok(())
}
