//! Replication over plain TCP and over mutual TLS, side by side in one run:
//! throughput (64 B and 1 KiB) and the round trip of a synchronous append.
//! Primary and secondary run in this one process over real TCP on loopback,
//! on the daemon's own code paths: `serve_registry_with` (with the identity
//! check under TLS) on the accepting side, `secondary::session_on` on the
//! following side, `repliq_node::tls::Tls` for the handshakes (rustls, ring,
//! certificates made by the code behind `repliq cert`). Each measurement
//! alternates plain and TLS runs (5 each for throughput, 3 each for the
//! round trip), prints every run, then a summary: the median throughput
//! and the round trip percentiles over all runs of a transport.
//!
//! `cargo run --release -p repliq-node --example tls_bench [DIR]`
//! (DIR defaults to /dev/shm, else the temp dir).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use repliq::replication::dispatch::serve_registry_with;
use repliq::replication::sync::{record_end, wait_replicated};
use repliq::replication::{secondary, PrimaryConfig, SecondaryConfig};
use repliq::store::{Durability, Store, StoreOptions};
use repliq_node::config::{TlsMode, TlsSettings};
use repliq_node::tls::{certificate_names, generate_ca, generate_node, Alpn, Tls};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn opts() -> StoreOptions {
    StoreOptions::create()
        .segment_size(256 << 20)
        .capacity(1 << 40)
        .durability(Durability::None)
}

fn pct(h: &Histogram<u64>) -> String {
    let us = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us  ({} samples)",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        h.len()
    )
}

/// The TLS identities of the primary `a` and the secondary `b`.
fn identities(dir: &std::path::Path) -> Res<(Arc<Tls>, Arc<Tls>)> {
    let (ca, ca_key) = generate_ca("bench CA")?;
    let mut out = Vec::new();
    for n in ["a", "b"] {
        let (c, k) = generate_node(&[n.to_string()], &ca, &ca_key)?;
        let d = dir.join(n);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("tls.crt"), c)?;
        std::fs::write(d.join("tls.key"), k)?;
        std::fs::write(d.join("ca.crt"), &ca)?;
        let t = Tls::from_settings(&TlsSettings {
            mode: TlsMode::Required,
            cert: Some(d.join("tls.crt")),
            key: Some(d.join("tls.key")),
            ca: Some(d.join("ca.crt")),
        })?
        .ok_or("tls disabled")?;
        out.push(t);
    }
    let b = out.pop().ok_or("no b")?;
    let a = out.pop().ok_or("no a")?;
    Ok((a, b))
}

struct Pair {
    p: Store,
    s: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Pair {
    /// Ends the sessions, so that their stores (mapped segments of deleted
    /// files on /dev/shm) are released before the next run.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A primary serving `name` and a secondary following it, over TLS when
/// `tls` is given.
async fn pair(base: &std::path::Path, name: &str, tls: Option<(Arc<Tls>, Arc<Tls>)>) -> Res<Pair> {
    let dir = tempfile::Builder::new()
        .prefix("repliq-tls-bench")
        .tempdir_in(base)?;
    let p = Store::open(dir.path().join("p"), &opts())?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let mut cfg = PrimaryConfig::new("a", name);
    cfg.min_acks = 1;
    let cfg = Arc::new(cfg);
    let ps = p.clone();
    let server_tls = tls.as_ref().map(|(a, _)| a.clone());
    let acceptor = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        while let Ok((c, _)) = l.accept().await {
            let _ = c.set_nodelay(true);
            let (ps, cfg, server_tls) = (ps.clone(), cfg.clone(), server_tls.clone());
            sessions.spawn(async move {
                let lookup = move |_: &str, _: &str| Some((ps.clone(), cfg.clone()));
                let r = match server_tls {
                    None => serve_registry_with(lookup, |_| Ok(()), c).await,
                    Some(t) => {
                        let Ok((s, _)) = t.accept(c).await else {
                            return;
                        };
                        let certs: Vec<_> = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let authorize = move |n: &str| {
                            if certificate_names(&certs, n) {
                                Ok(())
                            } else {
                                Err(format!("certificate does not name {n:?}"))
                            }
                        };
                        serve_registry_with(lookup, authorize, s).await
                    }
                };
                if let Err(e) = r {
                    eprintln!("session ended: {e}");
                }
            });
        }
    });
    let sdir = dir.path().join("s");
    let sc = SecondaryConfig::new("b", name, &sdir, &addr);
    let client_tls = tls.map(|(_, b)| b);
    let follower = tokio::spawn(async move {
        let mut store = None;
        loop {
            let r = match &client_tls {
                None => match tokio::net::TcpStream::connect(&sc.primary).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        secondary::session_on(&sc, &mut store, None, s).await
                    }
                    Err(e) => Err(e.into()),
                },
                Some(t) => match t.dial(&sc.primary, Some("a"), Alpn::Replication).await {
                    Ok(s) => secondary::session_on(&sc, &mut store, None, s).await,
                    Err(e) => Err(e.into()),
                },
            };
            if let Err(e) = r {
                eprintln!("follower: {e}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
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
    Ok(Pair {
        p,
        s,
        tasks: vec![acceptor, follower],
        _dir: dir,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
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
    let pki = tempfile::tempdir()?;
    let ids = identities(pki.path())?;
    println!(
        "replication on loopback, plain TCP vs mutual TLS, queues under {}",
        base.display()
    );
    // Throughput runs per transport: TLS_BENCH_RUNS, default 5 (the round
    // trip always takes 3).
    let runs: usize = std::env::var("TLS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let alternate = |n: usize| {
        (0..n)
            .flat_map(|_| [("plain", false), ("tls", true)])
            .collect::<Vec<_>>()
    };
    let mut summary = Vec::new();

    // 1. Throughput: append a batch as fast as possible, time until the
    //    secondary holds all of it.
    for (size, count) in [(1024usize, 800_000u64), (64, 4_000_000)] {
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for (label, use_tls) in alternate(runs) {
            let pr = pair(&base, &format!("tput{size}"), use_tls.then(|| ids.clone())).await?;
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
            rates[usize::from(use_tls)].push(count as f64 / dt);
            println!(
                "throughput {size:>5} B {label:>5}: {count} messages in {dt:.2} s: {:.3} M msg/s, {:.0} MB/s of payload",
                count as f64 / dt / 1e6,
                (count as f64 * size as f64) / dt / 1e6,
            );
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let (plain, tls) = (med(&mut rates[0]), med(&mut rates[1]));
        summary.push(format!(
            "throughput {size:>5} B, median of {runs}: plain {:.3} M msg/s ({:.0} MB/s), tls {:.3} M msg/s ({:.0} MB/s): tls/plain {:.1} %",
            plain / 1e6,
            plain * size as f64 / 1e6,
            tls / 1e6,
            tls * size as f64 / 1e6,
            100.0 * tls / plain
        ));
    }

    // 2. Synchronous append: append, then wait for the secondary's ack.
    for size in [64usize, 1024] {
        let mut all = [
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?,
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?,
        ];
        for (label, use_tls) in alternate(3) {
            let pr = pair(&base, &format!("sync{size}"), use_tls.then(|| ids.clone())).await?;
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let payload = vec![1u8; size];
            for i in 0..11_000 {
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
            println!("sync round trip {size:>5} B {label:>5}: {}", pct(&h));
            all[usize::from(use_tls)].add(&h)?;
        }
        for (label, h) in [("plain", &all[0]), ("tls", &all[1])] {
            summary.push(format!(
                "sync round trip {size:>5} B {label:>5}, 3 runs: {}",
                pct(h)
            ));
        }
    }
    println!("\nsummary");
    for l in summary {
        println!("{l}");
    }
    Ok(())
}
