//! Criterion benchmarks of the storage hot paths.
//!
//! * `append/1w/{64,1024}`: one thread appending to a [`Store`].
//! * `append/2w/{64,1024}`: two threads appending to the same `Store`; the
//!   reported time is wall time per message of the two together.
//! * `append/role/{standalone,leader-with-lease}`: one thread appending 64 B
//!   to a standalone queue and to a cluster leader's queue (role primary,
//!   a lease deadline in the control file), side by side: the cost of the
//!   lease check on every append.
//! * `append/batch/{1,16,64}`: one thread appending 64 B messages one at a
//!   time (`Store::append`, `1`) and in batches of 16 and 64
//!   (`Store::append_many_with`, one claim per batch), side by side;
//!   throughput counts messages, so the three compare in msg/s.
//! * `read/{64,1024}`: a tailer's zero-copy `next_with` over pre-written
//!   messages (CRC32C checked on every read).
//!
//! Every criterion iteration appends one message, so the queue grows with the
//! run. Each sample (`iter_custom` call) starts from a fresh queue once the
//! previous one holds more than [`RECYCLE_BYTES`], created outside the timed
//! region in a temporary directory (on `/dev/shm` when it exists, so that the
//! figures measure the engine, not disk write-back; override with the
//! `REPLIQ_BENCH_DIR` environment variable). Segment rolls (creating and
//! preallocating the next segment) happen inside the timed region, as they do
//! in real use.
//!
//! The queues use `none` durability; set `REPLIQ_BENCH_DURABILITY=batch` (or
//! `always`) to measure another path under the same benchmark names.
//!
//! Run with `cargo bench -p repliq --bench append`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use repliq::store::{monotonic_now_ns, Durability, Role, Store, StoreOptions};

/// Segment size of the benchmark queues.
const SEGMENT_SIZE: u64 = 64 << 20;
/// Capacity: the default group never dequeues here, so make it unreachable.
const CAPACITY: u64 = 1 << 40;
/// A queue is replaced by a fresh one once this many bytes were appended.
const RECYCLE_BYTES: u64 = 512 << 20;
/// Payload sizes measured.
const SIZES: [usize; 2] = [64, 1024];

fn bench_root() -> PathBuf {
    if let Some(d) = std::env::var_os("REPLIQ_BENCH_DIR") {
        return d.into();
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// The durability of the benchmark queues: `REPLIQ_BENCH_DURABILITY`
/// (`none`, `batch` or `always`), `none` if unset.
fn durability() -> Durability {
    match std::env::var("REPLIQ_BENCH_DURABILITY") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("REPLIQ_BENCH_DURABILITY={v}: {e}")),
        Err(_) => Durability::None,
    }
}

/// A queue in its own temporary directory, removed on drop.
struct TempQueue {
    store: Store,
    _dir: tempfile::TempDir,
    appended: u64,
}

impl TempQueue {
    fn new() -> TempQueue {
        let dir = tempfile::Builder::new()
            .prefix("repliq-bench-")
            .tempdir_in(bench_root())
            .expect("temporary directory");
        let store = Store::open(
            dir.path().join("q"),
            &StoreOptions::create()
                .capacity(CAPACITY)
                .segment_size(SEGMENT_SIZE)
                .durability(durability()),
        )
        .expect("create queue");
        TempQueue {
            store,
            _dir: dir,
            appended: 0,
        }
    }
}

/// Returns a queue with room, replacing `slot`'s if it grew past [`RECYCLE_BYTES`].
fn fresh(slot: &mut Option<TempQueue>) -> &mut TempQueue {
    if slot.as_ref().is_none_or(|q| q.appended > RECYCLE_BYTES) {
        *slot = None; // drop (and delete) the old one first
        *slot = Some(TempQueue::new());
    }
    slot.as_mut().expect("just set")
}

fn append_1w(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/1w");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for size in SIZES {
        let payload = vec![0xa5u8; size];
        let mut q: Option<TempQueue> = None;
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_custom(|iters| {
                let tq = fresh(&mut q);
                let store = &tq.store;
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.append(black_box(&payload)).expect("append"));
                }
                let t = start.elapsed();
                tq.appended += iters * (size as u64 + 16);
                t
            })
        });
    }
    g.finish();
}

fn append_role(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/role");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let payload = vec![0xa5u8; 64];
    for leader in [false, true] {
        let name = if leader {
            "leader-with-lease"
        } else {
            "standalone"
        };
        let mut q: Option<TempQueue> = None;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let tq = fresh(&mut q);
                let store = &tq.store;
                if leader {
                    // A day: the lease never runs out during the run.
                    store.set_lease_until(monotonic_now_ns() + 86_400_000_000_000);
                    store.set_role(Role::Primary);
                }
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.append(black_box(&payload)).expect("append"));
                }
                let t = start.elapsed();
                tq.appended += iters * (64 + 16);
                t
            })
        });
    }
    g.finish();
}

fn append_2w(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/2w");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for size in SIZES {
        let payload = vec![0x5au8; size];
        let mut q: Option<TempQueue> = None;
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            // `iters` messages in total, half per thread; the time is from
            // the common start until the later of the two finishes.
            b.iter_custom(|iters| {
                let tq = fresh(&mut q);
                let store = &tq.store;
                let half = iters / 2;
                let counts = [half, iters - half];
                let barrier = Barrier::new(3);
                let payload = &payload;
                let barrier = &barrier;
                let t = std::thread::scope(|s| {
                    let hs: Vec<_> = counts
                        .iter()
                        .map(|&n| {
                            s.spawn(move || {
                                barrier.wait();
                                for _ in 0..n {
                                    black_box(store.append(black_box(payload)).expect("append"));
                                }
                                Instant::now()
                            })
                        })
                        .collect();
                    barrier.wait();
                    let start = Instant::now();
                    let ends: Vec<Instant> = hs
                        .into_iter()
                        .map(|h| h.join().expect("writer thread"))
                        .collect();
                    ends.into_iter().max().unwrap_or(start) - start
                });
                tq.appended += iters * (size as u64 + 16);
                t
            })
        });
    }
    g.finish();
}

/// Batch sizes of `append/batch` (1: `Store::append`, one at a time).
const BATCHES: [u64; 3] = [1, 16, 64];

fn append_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/batch");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let payload = vec![0xa5u8; 64];
    for batch in BATCHES {
        g.throughput(Throughput::Elements(batch));
        let lens = vec![payload.len(); batch as usize];
        let mut q: Option<TempQueue> = None;
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            // One iteration appends one batch (one message for `1`).
            b.iter_custom(|iters| {
                let tq = fresh(&mut q);
                let store = &tq.store;
                let start = Instant::now();
                for _ in 0..iters {
                    if batch == 1 {
                        black_box(store.append(black_box(&payload)).expect("append"));
                    } else {
                        let ids = store
                            .append_many_with(black_box(&lens), |_, buf| {
                                buf.copy_from_slice(black_box(&payload))
                            })
                            .expect("append batch");
                        black_box(ids);
                    }
                }
                let t = start.elapsed();
                tq.appended += iters * batch * (64 + 16);
                t
            })
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for size in SIZES {
        // About 128 MiB of frames: larger than the last-level cache.
        let n = (128u64 << 20) / (size as u64 + 16);
        let tq = TempQueue::new();
        let payload = vec![0x3cu8; size];
        for _ in 0..n {
            tq.store.append(&payload).expect("append");
        }
        let mut tailer = tq.store.tailer();
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut left = iters;
                let start = Instant::now();
                while left > 0 {
                    match tailer
                        .next_with(|r| black_box(r.payload.len()))
                        .expect("read")
                    {
                        Some(_) => left -= 1,
                        // Wrapped around the pre-written messages (once per
                        // `n` reads): start over.
                        None => tailer.seek_start(),
                    }
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    append_1w,
    append_role,
    append_2w,
    append_batch,
    read
);
criterion_main!(benches);
