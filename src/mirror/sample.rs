//! Per-request sampling by percentage.

/// Per-request sampling with a fractional percentage, e.g. 0.5 %.
///
/// The percentage is turned into a threshold over the 32-bit range, so 100 % always
/// samples, 0 % never does, and anything in between is accurate to 1 in 2^32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    threshold: u64,
}

impl Sampler {
    pub const ALWAYS: Sampler = Sampler { threshold: 1 << 32 };

    /// `percent` must be within 0..=100 (the config layer validates it).
    pub fn from_percent(percent: f64) -> Sampler {
        let clamped = percent.clamp(0.0, 100.0);
        Sampler {
            threshold: (clamped / 100.0 * (1u64 << 32) as f64).round() as u64,
        }
    }

    pub fn percent(&self) -> f64 {
        self.threshold as f64 / (1u64 << 32) as f64 * 100.0
    }

    /// Decide with a caller-supplied uniform 32-bit random number.
    pub fn sample_with(&self, random: u32) -> bool {
        u64::from(random) < self.threshold
    }

    pub fn sample(&self) -> bool {
        self.threshold != 0 && self.sample_with(fastrand::u32(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_bounds() {
        assert!(Sampler::from_percent(100.0).sample_with(u32::MAX));
        assert!(!Sampler::from_percent(0.0).sample_with(0));
        let half = Sampler::from_percent(50.0);
        assert!(half.sample_with(0x7fff_ffff));
        assert!(!half.sample_with(0x8000_0000));
        // Accurate to one step of the 32-bit range.
        let step = 100.0 / (1u64 << 32) as f64;
        assert!((Sampler::from_percent(0.5).percent() - 0.5).abs() <= step);
    }

    #[test]
    fn sampler_is_statistically_accurate() {
        // 200k draws at 10 %: binomial sd = sqrt(n p (1-p)) ≈ 134; allow 5 sd.
        let s = Sampler::from_percent(10.0);
        let n = 200_000;
        let hits = (0..n).filter(|_| s.sample()).count() as f64;
        assert!((hits - 20_000.0).abs() < 5.0 * 134.2, "hits = {hits}");
    }
}
