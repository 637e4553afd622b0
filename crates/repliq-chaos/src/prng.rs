//! A small seeded generator (SplitMix64), so that a nemesis schedule is a
//! pure function of `--seed` and can be replayed on any build.

/// SplitMix64: fast, deterministic, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Prng;

    #[test]
    fn same_seed_gives_same_sequence_and_other_seed_differs() {
        let a: Vec<u64> = (0..8)
            .scan(Prng::new(7), |p, _| Some(p.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Prng::new(7), |p, _| Some(p.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Prng::new(8), |p, _| Some(p.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn between_stays_in_bounds() {
        let mut p = Prng::new(1);
        for _ in 0..1000 {
            let x = p.between(3, 5);
            assert!((3..=5).contains(&x), "{x}");
        }
    }
}
