//! Deterministic randomness for the simulator: a splitmix64 generator and the few distributions
//! the traffic model draws from (Poisson request counts, binomial failure counts, normal and
//! uniform variates), plus the inverse normal CDF used for latency quantiles.

/// The splitmix64 generator: tiny, fast, and good enough for simulation; every stream is fully
/// determined by its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

/// Above this many expected events the normal approximation replaces exact sampling.
const EXACT_BELOW: f64 = 30.0;

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.state)
    }

    /// Uniform in the open interval (0, 1): never exactly 0 or 1, so logarithms are finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson with the given mean: exact (inversion) for small means, normal approximation
    /// (rounded, floored at 0) for large ones.
    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean.is_nan() || mean <= 0.0 {
            return 0;
        }
        if mean >= EXACT_BELOW {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let u = self.uniform();
        let mut k = 0u64;
        let mut p = (-mean).exp();
        let mut cumulative = p;
        // The tail beyond mean + 40 sd is below float resolution; the bound only stops rounding
        // errors from looping.
        let limit = (mean + 40.0 * mean.sqrt() + 40.0) as u64;
        while u > cumulative && k < limit {
            k += 1;
            p *= mean / k as f64;
            cumulative += p;
        }
        k
    }

    /// Binomial(n, p): exact (inversion) when the expected number of the rarer outcome is small,
    /// normal approximation (rounded, clamped to 0..=n) otherwise.
    ///
    /// The switch is on `n·min(p, 1−p)`, not on `n` alone: 6,000 requests at a 0.1% error rate
    /// expect 6 failures, where a normal approximation would be poor, so they are drawn exactly.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p.is_nan() || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let nf = n as f64;
        let mean = nf * p;
        if mean >= EXACT_BELOW {
            let sd = (mean * (1.0 - p)).sqrt();
            return (mean + sd * self.normal()).round().clamp(0.0, nf) as u64;
        }
        let u = self.uniform();
        let odds = p / (1.0 - p);
        let mut k = 0u64;
        let mut prob = (nf * (-p).ln_1p()).exp();
        let mut cumulative = prob;
        while u > cumulative && k < n {
            prob *= (nf - k as f64) / (k as f64 + 1.0) * odds;
            k += 1;
            cumulative += prob;
        }
        k
    }
}

/// The splitmix64 output function; also a good 64-bit mixer for deriving stream seeds.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for an independent stream derived from a parent seed and a stream number.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    finalize(finalize(seed ^ 0x5EED_5EED_5EED_5EED).wrapping_add(finalize(stream)))
}

/// The standard normal quantile Φ⁻¹(p) for p in (0, 1) (Acklam's rational approximation,
/// relative error below 1.2e-9). Returns ±infinity at the ends.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_variance(samples: &[f64]) -> (f64, f64) {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SplitMix64::new(7).next_u64(), SplitMix64::new(8).next_u64());
    }

    #[test]
    fn uniform_stays_inside_the_open_interval() {
        let mut r = SplitMix64::new(1);
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!(u > 0.0 && u < 1.0);
        }
    }

    #[test]
    fn binomial_moments_in_the_exact_and_approximate_regimes() {
        let mut r = SplitMix64::new(3);
        // (n, p): exact small-count, exact rare-event with large n, normal approximation,
        // and p > 0.5 (mirrored).
        for (n, p) in [(30u64, 0.08), (6_000, 0.001), (10_000, 0.2), (200, 0.97)] {
            let samples: Vec<f64> = (0..20_000).map(|_| r.binomial(n, p) as f64).collect();
            let (mean, var) = mean_and_variance(&samples);
            let (want_mean, want_var) = (n as f64 * p, n as f64 * p * (1.0 - p));
            assert!(
                (mean - want_mean).abs() < 4.0 * (want_var / 20_000.0).sqrt() + 1e-9,
                "n={n} p={p}: mean {mean} vs {want_mean}"
            );
            assert!(
                (var / want_var - 1.0).abs() < 0.1,
                "n={n} p={p}: variance {var} vs {want_var}"
            );
            assert!(samples.iter().all(|&k| k >= 0.0 && k <= n as f64));
        }
        assert_eq!(r.binomial(0, 0.5), 0);
        assert_eq!(r.binomial(10, 0.0), 0);
        assert_eq!(r.binomial(10, 1.0), 10);
    }

    #[test]
    fn poisson_moments() {
        let mut r = SplitMix64::new(4);
        for mean in [0.3, 3.0, 29.0, 30.0, 500.0] {
            let samples: Vec<f64> = (0..20_000).map(|_| r.poisson(mean) as f64).collect();
            let (m, v) = mean_and_variance(&samples);
            assert!(
                (m - mean).abs() < 4.0 * (mean / 20_000.0).sqrt(),
                "mean {mean}: {m}"
            );
            assert!((v / mean - 1.0).abs() < 0.1, "mean {mean}: variance {v}");
        }
        assert_eq!(r.poisson(0.0), 0);
    }

    #[test]
    fn inverse_normal_cdf_known_points() {
        assert!(inverse_normal_cdf(0.5).abs() < 1e-9);
        assert!((inverse_normal_cdf(0.99) - 2.326_347_874).abs() < 1e-6);
        assert!((inverse_normal_cdf(0.01) + 2.326_347_874).abs() < 1e-6);
        assert!((inverse_normal_cdf(1e-10) + 6.361_340_902).abs() < 1e-5);
    }
}
