//! When did the log reach a position? A per-queue record of `(time, tail)`
//! samples, from which replication lag is told in seconds: a peer that has
//! position `p` lags by the age of the first byte after `p`, i.e. the time
//! since the tail first went past `p`.
//!
//! On the primary the tail is the queue's own write position; on a
//! secondary it is the primary's write position as last reported.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples kept per queue; past it, every other sample is dropped, so
/// recent history stays fine-grained and old history coarse.
const MAX_SAMPLES: usize = 4096;

/// How often the daemon samples every queue's tail.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The tail of one queue over time, in increasing order of both.
#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<(Instant, u64)>,
}

impl Track {
    fn record(&mut self, at: Instant, tail: u64) {
        if self.samples.back().is_some_and(|&(_, t)| t >= tail) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0usize;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.samples.push_back((at, tail));
    }

    /// Seconds since the tail first went past `pos` (0 if it has not).
    fn lag(&self, pos: u64, now: Instant) -> f64 {
        let i = self.samples.partition_point(|&(_, t)| t <= pos);
        match self.samples.get(i) {
            // The first sample past `pos`; the tail crossed it at or
            // before then (and after the previous sample).
            Some(&(at, _)) => now.saturating_duration_since(at).as_secs_f64(),
            None => 0.0,
        }
    }
}

/// Tail histories by queue name.
#[derive(Debug, Default)]
pub struct History {
    tracks: Mutex<BTreeMap<String, Track>>,
}

impl History {
    /// Records that `queue`'s tail was `tail` at `at`.
    pub fn record(&self, queue: &str, at: Instant, tail: u64) {
        if let Ok(mut m) = self.tracks.lock() {
            if let Some(t) = m.get_mut(queue) {
                t.record(at, tail);
            } else {
                let mut t = Track::default();
                t.record(at, tail);
                m.insert(queue.to_string(), t);
            }
        }
    }

    /// Seconds since `queue`'s tail first went past `pos`, as of `now`;
    /// 0 when it has not (the peer is caught up) or nothing was recorded.
    pub fn lag_seconds(&self, queue: &str, pos: u64, now: Instant) -> f64 {
        self.tracks
            .lock()
            .ok()
            .and_then(|m| m.get(queue).map(|t| t.lag(pos, now)))
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_first_sample_past_the_position() {
        let h = History::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        h.record("q", s(0), 100);
        h.record("q", s(1), 200);
        h.record("q", s(1), 200); // unchanged: not recorded twice
        h.record("q", s(2), 300);
        h.record("q", s(3), 150); // never goes back
        let now = s(10);
        assert_eq!(h.lag_seconds("q", 300, now), 0.0);
        assert_eq!(h.lag_seconds("q", 400, now), 0.0);
        assert_eq!(h.lag_seconds("q", 250, now), 8.0);
        assert_eq!(h.lag_seconds("q", 200, now), 8.0);
        assert_eq!(h.lag_seconds("q", 199, now), 9.0);
        assert_eq!(h.lag_seconds("q", 0, now), 10.0);
        assert_eq!(h.lag_seconds("other", 0, now), 0.0);
    }

    #[test]
    fn history_stays_bounded_and_keeps_its_span() {
        let h = History::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SAMPLES as u64 * 5) {
            h.record("q", t0 + Duration::from_millis(i), i + 1);
        }
        let m = h.tracks.lock().unwrap();
        let t = &m["q"];
        assert!(t.samples.len() <= MAX_SAMPLES);
        let first = t.samples.front().unwrap().1;
        assert_eq!(first, 1, "the oldest sample is kept");
        let last = t.samples.back().unwrap().1;
        assert_eq!(last, MAX_SAMPLES as u64 * 5);
        assert!(t
            .samples
            .iter()
            .zip(t.samples.iter().skip(1))
            .all(|(a, b)| a.1 < b.1));
    }
}
