//! Which post an operation picks: uniform, Zipf(θ) (a few hot posts, a long tail) or latest
//! (Zipf over recency: the newest posts are the hottest, as in a feed).

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// How reads and writes pick among the seeded posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    /// Every post equally.
    Uniform,
    /// Zipf(θ) over the seeding order: the first posts are the hottest.
    Zipf,
    /// Zipf(θ) over recency: the last seeded posts are the hottest.
    Latest,
}

/// Picks indexes in `0..n`.
pub(crate) struct Picker {
    n: usize,
    kind: KeyDist,
    zipf: Option<Zipf<f64>>,
}

impl Picker {
    pub(crate) fn new(n: usize, kind: KeyDist, theta: f64) -> Result<Picker, String> {
        if !(theta >= 0.0 && theta.is_finite()) {
            return Err(format!("--zipf-theta must be 0 or more, not {theta}"));
        }
        let zipf = match kind {
            KeyDist::Uniform => None,
            KeyDist::Zipf | KeyDist::Latest => {
                Some(Zipf::new(n.max(1) as f64, theta).map_err(|e| format!("--zipf-theta: {e}"))?)
            }
        };
        Ok(Picker { n, kind, zipf })
    }

    pub(crate) fn pick(&self, rng: &mut impl Rng) -> usize {
        if self.n == 0 {
            return 0;
        }
        let rank = match &self.zipf {
            // Zipf draws ranks 1..=n.
            Some(zipf) => (zipf.sample(rng) as usize).clamp(1, self.n) - 1,
            None => rng.random_range(0..self.n),
        };
        match self.kind {
            KeyDist::Latest => self.n - 1 - rank,
            KeyDist::Uniform | KeyDist::Zipf => rank,
        }
    }
}

/// A short name for reports: `uniform`, `zipf(0.99)`, `latest(0.99)`.
pub(crate) fn describe(kind: KeyDist, theta: f64) -> String {
    match kind {
        KeyDist::Uniform => "uniform".into(),
        KeyDist::Zipf => format!("zipf({theta})"),
        KeyDist::Latest => format!("latest({theta})"),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn histogram(kind: KeyDist, theta: f64) -> Vec<usize> {
        let picker = Picker::new(100, kind, theta).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut hits = vec![0; 100];
        for _ in 0..100_000 {
            hits[picker.pick(&mut rng)] += 1;
        }
        hits
    }

    #[test]
    fn zipf_favours_the_first_posts_and_latest_the_last() {
        let zipf = histogram(KeyDist::Zipf, 0.99);
        assert!(zipf[0] > 10 * zipf[99], "{zipf:?}");
        let latest = histogram(KeyDist::Latest, 0.99);
        assert!(latest[99] > 10 * latest[0], "{latest:?}");
    }

    #[test]
    fn uniform_and_theta_zero_spread_evenly() {
        for (kind, theta) in [(KeyDist::Uniform, 0.99), (KeyDist::Zipf, 0.0)] {
            let hits = histogram(kind, theta);
            let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
            assert!(*min > 800 && *max < 1200, "{kind:?}: {min}..{max}");
        }
    }

    #[test]
    fn a_negative_theta_is_refused() {
        assert!(Picker::new(10, KeyDist::Zipf, -1.0).is_err());
    }
}
