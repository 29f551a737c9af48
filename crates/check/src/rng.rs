//! [`XorShift`]: the workload's seeded randomness. A run is repeatable from its seed (up to the
//! timing of the deployment's answers); no cryptographic quality is needed.

/// xorshift64.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    pub(crate) fn new(seed: u64) -> XorShift {
        // splitmix64 step: nearby seeds give unrelated streams, and the state is never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (`n` > 0; 0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_draws_stay_in_range() {
        let (mut a, mut b) = (XorShift::new(0), XorShift::new(0));
        let drawn: Vec<usize> = (0..1000).map(|_| a.below(7)).collect();
        assert!(drawn.iter().all(|&d| d < 7));
        assert!((0..7).all(|d| drawn.contains(&d)));
        assert_eq!(drawn, (0..1000).map(|_| b.below(7)).collect::<Vec<_>>());
        assert_ne!(XorShift::new(1).next(), XorShift::new(2).next());
    }
}
