//! Latency histograms kept in the control file, shared by every process.
//!
//! A histogram is [`HIST_BUCKETS`] atomic counters with power-of-two upper
//! bounds starting at [`HIST_FIRST_BOUND_NS`], then a sample count and a sum
//! (see `layout`). Recording is three relaxed `fetch_add`s, so any process
//! may record and any process (the daemon's `/metrics`, `repliq stat`) may
//! read, without locks. Readers see each counter exactly; the three may be
//! momentarily out of step with each other, by at most the samples in flight.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;

use super::control::Control;
use super::layout::LATENCY_SAMPLE_EVERY;
use super::layout::{HIST_BUCKETS, HIST_COUNT_OFF, HIST_FIRST_BOUND_NS, HIST_SUM_OFF};

/// A snapshot of one latency histogram.
///
/// ```
/// use repliq::store::{Store, StoreOptions};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("q"), &StoreOptions::create())?;
/// for _ in 0..1000 {
///     store.append(b"x")?;
/// }
/// let lat = store.stats().enqueue_latency;
/// assert_eq!(lat.count, 16); // the 1st, 65th, ... append of each thread is timed
/// assert_eq!(lat.buckets.iter().map(|b| b.1).sum::<u64>(), lat.count);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyStat {
    /// `(upper bound in ns, samples)` per bucket, **not** cumulative, in
    /// increasing order of bound. A bucket holds the samples below its
    /// bound and at or above the previous one; the last bound is
    /// `u64::MAX` (everything above).
    pub buckets: Vec<(u64, u64)>,
    /// Number of samples.
    pub count: u64,
    /// Sum of the samples in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyStat {
    /// The smallest bucket bound at or below which `q` (0..=1) of the
    /// samples lie, in nanoseconds; `None` without samples.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().map(|b| b.1).sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= want {
                return Some(bound);
            }
        }
        self.buckets.last().map(|b| b.0)
    }
}

/// Upper bound of bucket `i` in nanoseconds (`u64::MAX` for the last).
pub fn bucket_bound(i: usize) -> u64 {
    if i + 1 >= HIST_BUCKETS {
        u64::MAX
    } else {
        HIST_FIRST_BOUND_NS << i
    }
}

/// The bucket a sample of `ns` nanoseconds falls in.
pub fn bucket_of(ns: u64) -> usize {
    let scaled = ns / HIST_FIRST_BOUND_NS;
    let i = (u64::BITS - scaled.leading_zeros()) as usize;
    i.min(HIST_BUCKETS - 1)
}

/// Records one sample of `ns` nanoseconds in the histogram at `region`.
pub(crate) fn record(ctl: &Control, region: usize, ns: u64) {
    ctl.u64_at(region + 8 * bucket_of(ns)).fetch_add(1, Relaxed);
    ctl.u64_at(region + HIST_COUNT_OFF).fetch_add(1, Relaxed);
    ctl.u64_at(region + HIST_SUM_OFF).fetch_add(ns, Relaxed);
}

/// Reads the histogram at `region`.
pub(crate) fn read(ctl: &Control, region: usize) -> LatencyStat {
    LatencyStat {
        buckets: (0..HIST_BUCKETS)
            .map(|i| (bucket_bound(i), ctl.u64_at(region + 8 * i).load(Relaxed)))
            .collect(),
        count: ctl.u64_at(region + HIST_COUNT_OFF).load(Relaxed),
        sum_ns: ctl.u64_at(region + HIST_SUM_OFF).load(Relaxed),
    }
}

thread_local! {
    static APPENDS: Cell<u32> = const { Cell::new(0) };
}

/// True for one call in [`LATENCY_SAMPLE_EVERY`] on this thread, starting
/// with its first (so short-lived processes are sampled too): the append to
/// time.
#[inline]
pub fn sample_this_append() -> bool {
    APPENDS.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n % LATENCY_SAMPLE_EVERY == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_64ns() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(63), 0);
        assert_eq!(bucket_of(64), 1);
        assert_eq!(bucket_of(127), 1);
        assert_eq!(bucket_of(128), 2);
        assert_eq!(bucket_of(1_000_000), 14); // 64 ns << 13 <= 1 ms < 64 ns << 14
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
        for ns in [0, 1, 63, 64, 100, 5_000, 1 << 30, 1 << 40] {
            let i = bucket_of(ns);
            assert!(ns < bucket_bound(i), "{ns} below the bound of bucket {i}");
            if i > 0 {
                assert!(ns >= bucket_bound(i - 1), "{ns} not in bucket {}", i - 1);
            }
        }
    }

    #[test]
    fn quantile_bound_walks_the_buckets() {
        let mut s = LatencyStat {
            buckets: (0..HIST_BUCKETS).map(|i| (bucket_bound(i), 0)).collect(),
            count: 0,
            sum_ns: 0,
        };
        assert_eq!(s.quantile_bound(0.5), None);
        s.buckets[1].1 = 99; // [64, 128)
        s.buckets[10].1 = 1; // [32768, 65536)
        assert_eq!(s.quantile_bound(0.5), Some(128));
        assert_eq!(s.quantile_bound(0.99), Some(128));
        assert_eq!(s.quantile_bound(1.0), Some(65536));
    }
}
