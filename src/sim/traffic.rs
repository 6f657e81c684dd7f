//! The traffic model: simulated requests at the weights the engine chose, and the built-in
//! metrics computed from them as a metrics server would.
//!
//! Time is cut into one-second buckets. For each second the model draws how many requests the
//! canary served (Poisson around `rps × canary share + testRps`) and how many of them failed
//! (binomial with the canary's error rate at that second), so a canary at 5% of 10 rps sees about
//! 30 requests a minute and its measured error rate is as noisy as the real one. The primary's
//! requests are drawn the same way for the totals users would have seen.
//!
//! Latency is never drawn request by request. A window's p99 is the order statistic of rank
//! ⌈0.99·n⌉ of its n requests; the model generates, per bucket and only when a query needs them,
//! the bucket's largest latencies from the top down (Rényi's representation of uniform order
//! statistics, mapped through the lognormal quantile function). A query takes the r-th largest
//! over the window's buckets, so it costs about r = n − ⌈0.99·n⌉ + 1 draws, not n. Each bucket
//! has its own random stream, so overlapping windows (a 1m success rate and a 30s p99, or the
//! fail-fast checks every few seconds) see the same requests, as real queries would.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;

use super::random::{SplitMix64, derive_seed};
use super::scenario::{Behaviour, LogNormal, Scenario};

/// How requests flow during the seconds being generated; constant between two changes of the
/// simulated cluster.
#[derive(Clone, Copy, Debug)]
pub struct Routing<'a> {
    /// Share (0..=1) of the service's requests routed to the canary.
    pub canary_share: f64,
    /// The canary has pods serving (requests routed to it otherwise fail with 503).
    pub canary_serving: bool,
    /// The behaviour of the revision the canary pods run.
    pub canary: &'a Behaviour,
    /// The behaviour of the revision the primary pods run.
    pub primary: &'a Behaviour,
}

/// Requests served and failed, by version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub primary_requests: u64,
    pub primary_errors: u64,
}

/// A measurement and the number of requests it was computed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// `None` when no request reached the canary in the window.
    pub value: Option<f64>,
    pub requests: u64,
}

/// One second of canary traffic.
#[derive(Clone, Debug)]
struct Bucket {
    requests: u64,
    errors: u64,
    latency: LogNormal,
    /// The bucket's own stream for its latencies.
    rng: SplitMix64,
    /// ln of the uniform order statistic behind the smallest latency generated so far.
    log_u: f64,
    /// The largest latencies (ms), in descending order, generated on demand.
    largest: Vec<f64>,
}

impl Bucket {
    /// The `j`-th largest latency (0-based) of the bucket's requests; `j < requests`.
    fn largest(&mut self, j: usize) -> f64 {
        while self.largest.len() <= j {
            // U(k) = U(k+1) · V^(1/k) for the uniform order statistics of k = n, n−1, ...
            let k = self.requests - self.largest.len() as u64;
            self.log_u += self.rng.uniform().ln() / k as f64;
            let exceeded = -self.log_u.exp_m1();
            self.largest.push(self.latency.upper_quantile(exceeded));
        }
        self.largest[j]
    }
}

/// The simulated requests so far.
#[derive(Clone, Debug)]
pub struct Traffic {
    seed: u64,
    rng: SplitMix64,
    buckets: Vec<Bucket>,
    totals: Totals,
}

#[derive(PartialEq)]
struct Candidate {
    latency: f64,
    bucket: usize,
    rank: usize,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.latency
            .total_cmp(&other.latency)
            .then(other.bucket.cmp(&self.bucket))
    }
}

impl Traffic {
    pub fn new(seed: u64) -> Traffic {
        Traffic {
            seed,
            rng: SplitMix64::new(derive_seed(seed, u64::MAX)),
            buckets: Vec::new(),
            totals: Totals::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Generates every whole second before `until_ms` not generated yet, with this routing.
    pub fn advance_to(&mut self, until_ms: i64, scenario: &Scenario, routing: Routing<'_>) {
        let until = until_ms.div_euclid(1000);
        while (self.buckets.len() as i64) < until {
            let second = self.buckets.len() as i64;
            let t = second * 1000;
            let rps = *scenario.rps.at(t);
            let routed = rps * routing.canary_share;
            let (canary_rate, canary_error) = if routing.canary_serving {
                let test = *scenario.test_rps.at(t);
                (routed + test, *routing.canary.error_rate.at(t))
            } else {
                (routed, 1.0)
            };
            let requests = self.rng.poisson(canary_rate);
            let errors = self.rng.binomial(requests, canary_error);
            let primary_requests = self.rng.poisson(rps - routed);
            let primary_errors = self
                .rng
                .binomial(primary_requests, *routing.primary.error_rate.at(t));
            self.totals.canary_requests += requests;
            self.totals.canary_errors += errors;
            self.totals.primary_requests += primary_requests;
            self.totals.primary_errors += primary_errors;
            self.buckets.push(Bucket {
                requests,
                errors,
                latency: *routing.canary.latency.at(t),
                rng: SplitMix64::new(derive_seed(self.seed, second as u64)),
                log_u: 0.0,
                largest: Vec::new(),
            });
        }
    }

    /// Indices of the generated buckets in the window of `window_ms` ending at `now_ms`.
    fn window(&self, now_ms: i64, window_ms: i64) -> std::ops::Range<usize> {
        let end = (now_ms.div_euclid(1000)).clamp(0, self.buckets.len() as i64);
        let start = (end - (window_ms + 999).div_euclid(1000)).max(0);
        start as usize..end as usize
    }

    /// Percent of canary requests that were not 5xx in the window (`request-success-rate`).
    pub fn success_rate(&self, now_ms: i64, window_ms: i64) -> Measured {
        let range = self.window(now_ms, window_ms);
        let (requests, errors) = self.buckets[range]
            .iter()
            .fold((0, 0), |(n, e), b| (n + b.requests, e + b.errors));
        Measured {
            value: (requests > 0).then(|| 100.0 * (requests - errors) as f64 / requests as f64),
            requests,
        }
    }

    /// The 99th percentile (nearest rank) of canary latency in the window, in milliseconds
    /// (`request-duration`).
    pub fn p99_ms(&mut self, now_ms: i64, window_ms: i64) -> Measured {
        let range = self.window(now_ms, window_ms);
        let requests: u64 = self.buckets[range.clone()].iter().map(|b| b.requests).sum();
        if requests == 0 {
            return Measured {
                value: None,
                requests,
            };
        }
        // The p99 is the request of rank ⌈0.99·n⌉ from the bottom, i.e. rank r from the top.
        let from_top = requests - (requests * 99).div_ceil(100) + 1;
        let mut heap = BinaryHeap::new();
        for i in range {
            if self.buckets[i].requests > 0 {
                let latency = self.buckets[i].largest(0);
                heap.push(Candidate {
                    latency,
                    bucket: i,
                    rank: 0,
                });
            }
        }
        let mut taken = 0;
        while let Some(top) = heap.pop() {
            taken += 1;
            if taken == from_top {
                return Measured {
                    value: Some(top.latency),
                    requests,
                };
            }
            let next = top.rank + 1;
            let bucket = &mut self.buckets[top.bucket];
            if (next as u64) < bucket.requests {
                heap.push(Candidate {
                    latency: bucket.largest(next),
                    bucket: top.bucket,
                    rank: next,
                });
            }
        }
        // Unreachable: the heap holds all `requests` latencies and from_top <= requests.
        Measured {
            value: None,
            requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::ScenarioFile;

    fn scenario(yaml: &str) -> Scenario {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let file: ScenarioFile = serde_json::from_value(value).unwrap();
        let spec = serde_json::from_value(serde_json::json!({
            "targetRef": {"kind": "Deployment", "name": "x"},
            "service": {"port": 80},
        }))
        .unwrap();
        file.resolve(&spec).unwrap()
    }

    fn routing(s: &Scenario, share: f64) -> Routing<'_> {
        Routing {
            canary_share: share,
            canary_serving: true,
            canary: &s.canary,
            primary: &s.primary,
        }
    }

    #[test]
    fn a_canary_at_five_percent_of_ten_rps_sees_about_thirty_requests_a_minute() {
        let s = scenario("traffic: {rps: 10}\ncanary: {errorPercent: 8}");
        let runs = 2_000;
        let (mut requests, mut errors) = (0u64, 0u64);
        let mut success_rates = Vec::new();
        for seed in 0..runs {
            let mut t = Traffic::new(seed);
            t.advance_to(60_000, &s, routing(&s, 0.05));
            let m = t.success_rate(60_000, 60_000);
            requests += m.requests;
            errors += t.totals().canary_errors;
            if let Some(v) = m.value {
                success_rates.push(v);
            }
        }
        let mean_requests = requests as f64 / runs as f64;
        // Poisson(30) per run: the mean of 2,000 runs is within 0.5 of 30 (4 standard errors).
        assert!((mean_requests - 30.0).abs() < 0.5, "{mean_requests}");
        // Binomial mean: 8% of the requests fail.
        let error_share = errors as f64 / requests as f64;
        assert!((error_share - 0.08).abs() < 0.006, "{error_share}");
        // With ~30 requests the measured success rate is noisy: its spread is several points.
        let mean = success_rates.iter().sum::<f64>() / success_rates.len() as f64;
        let sd = (success_rates
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            / success_rates.len() as f64)
            .sqrt();
        assert!(sd > 3.0 && sd < 7.0, "sd {sd}");
    }

    #[test]
    fn no_canary_traffic_is_no_data() {
        let s = scenario("traffic: {rps: 100}");
        let mut t = Traffic::new(1);
        t.advance_to(120_000, &s, routing(&s, 0.0));
        assert_eq!(
            t.success_rate(120_000, 60_000),
            Measured {
                value: None,
                requests: 0
            }
        );
        assert_eq!(t.p99_ms(120_000, 60_000).value, None);
        assert_eq!(t.totals().canary_requests, 0);
        assert!(t.totals().primary_requests > 11_000);
    }

    #[test]
    fn test_traffic_reaches_a_canary_without_weight() {
        let s = scenario("traffic: {rps: 100, testRps: 20}");
        let mut t = Traffic::new(1);
        t.advance_to(60_000, &s, routing(&s, 0.0));
        let m = t.success_rate(60_000, 60_000);
        assert!(m.requests > 1_000 && m.requests < 1_400, "{m:?}");
    }

    #[test]
    fn routed_requests_to_a_canary_without_pods_fail() {
        let s = scenario("traffic: {rps: 100}");
        let mut t = Traffic::new(1);
        let r = Routing {
            canary_serving: false,
            ..routing(&s, 0.5)
        };
        t.advance_to(10_000, &s, r);
        assert_eq!(t.success_rate(10_000, 10_000).value, Some(0.0));
    }

    #[test]
    fn p99_estimates_the_distribution_quantile_with_sampling_noise() {
        let s = scenario("traffic: {rps: 100}\ncanary: {latency: {p50: 50ms, p99: 400ms}}");
        let mut estimates = Vec::new();
        for seed in 0..300 {
            let mut t = Traffic::new(seed);
            t.advance_to(60_000, &s, routing(&s, 1.0));
            estimates.push(t.p99_ms(60_000, 60_000).value.unwrap());
        }
        estimates.sort_by(f64::total_cmp);
        let median = estimates[estimates.len() / 2];
        assert!((median - 400.0).abs() < 20.0, "median {median}");
        assert!(estimates[0] < median && estimates[299] > median);

        // With few requests the estimate spreads much more.
        let mut few = Vec::new();
        for seed in 0..300 {
            let mut t = Traffic::new(seed);
            t.advance_to(30_000, &s, routing(&s, 0.01));
            if let Some(v) = t.p99_ms(30_000, 30_000).value {
                few.push(v);
            }
        }
        few.sort_by(f64::total_cmp);
        let spread = |v: &[f64]| v[v.len() * 9 / 10] / v[v.len() / 10];
        assert!(spread(&few) > 2.0 * spread(&estimates), "{}", spread(&few));
    }

    #[test]
    fn overlapping_windows_see_the_same_requests() {
        let s = scenario("traffic: {rps: 50}");
        let mut t = Traffic::new(9);
        t.advance_to(60_000, &s, routing(&s, 0.2));
        let whole = t.p99_ms(60_000, 60_000);
        // Asking for a sub-window first must not change what the whole window reports.
        let mut u = Traffic::new(9);
        u.advance_to(60_000, &s, routing(&s, 0.2));
        u.p99_ms(60_000, 30_000);
        assert_eq!(u.p99_ms(60_000, 60_000), whole);
    }

    #[test]
    fn p99_nearest_rank_for_tiny_samples_is_the_maximum() {
        let s = scenario("traffic: {rps: 1}");
        let mut t = Traffic::new(2);
        t.advance_to(30_000, &s, routing(&s, 0.1));
        let m = t.p99_ms(30_000, 30_000);
        // With fewer than 100 requests rank ⌈0.99·n⌉ is n: the slowest request.
        let slowest = t
            .buckets
            .iter_mut()
            .filter(|b| b.requests > 0)
            .map(|b| b.largest(0))
            .fold(0.0, f64::max);
        assert_eq!(m.value, Some(slowest));
    }
}
