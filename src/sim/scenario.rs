//! Scenario files for `serin simulate`: the world a Canary is simulated against — traffic, how
//! the primary and canary versions behave over time, webhook answers, custom metric values, pod
//! start delays and when new revisions are pushed.
//!
//! # Format
//!
//! One YAML document; every field is optional. Times (`at`, delays) are durations like `30s`,
//! `5m` or `1m30s`, counted from the start of the simulation (the moment the Canary is applied).
//!
//! ```yaml
//! maxDuration: 1h              # stop after this much simulated time (default 1h, at most 24h)
//! pushes: [2m, 30m]            # when a new revision of the target is pushed (CI changes the
//!                              # image); default: one push right after initialization; [] = none
//! pods:
//!   primaryStartDelay: 30s     # primary pods ready this long after creation or promotion (30s)
//!   canaryStartDelay: 30s      # canary pods ready this long after scale-up or a push (30s)
//! traffic:
//!   rps: 100                   # requests per second to the service, split by the route weights
//!                              # (default 10)
//!   testRps: 20                # requests per second sent straight to the canary while its pods
//!                              # are up, like a load tester (default 0); gives blue/green traffic
//!   matchPercent: 5            # A/B testing: percent of requests that match analysis.match and
//!                              # follow the canary route (default 0)
//! primary:                     # the revision running when the simulation starts
//!   errorPercent: 0.1          # percent of requests answered with a 5xx (default 0)
//!   latency: {p50: 50ms, p99: 200ms}   # lognormal with this median and 99th percentile
//!                                      # (default 50ms / 200ms)
//! canary:                      # every pushed revision; each field defaults to primary's
//!   errorPercent:              # a value that changes over time: steps, the first at 0s
//!     - {at: 0s, value: 0.1}
//!     - {at: 5m, value: 8}     # from 5m on, 8% of canary requests fail
//!   latency:
//!     - {at: 0s, value: {p50: 50ms, p99: 200ms}}
//!     - {at: 7m, value: {p50: 300ms, p99: 1200ms}}
//! webhooks:                    # answers by webhook name: pass (2xx) or fail (non-2xx);
//!   acceptance-test: pass      # `open`/`closed` are accepted for gates. A rollback hook that
//!   approve:                   # passes asks for a rollback.
//!     - {at: 0s, value: closed}
//!     - {at: 5m, value: open}
//! metrics:                     # values of metrics by name; a metric without values here has
//!   error-budget-burn: 0.4     # no data (built-in ones are computed from the traffic instead)
//! ```
//!
//! Unlisted webhooks answer like a healthy load tester: gates are open, checks pass, and rollback
//! hooks do not ask for a rollback. A scenario naming a webhook or metric the Canary does not have
//! is rejected, so typos do not silently change the result.
//!
//! After a promotion the primary runs the promoted revision, so it behaves like `canary`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::api::{CanarySpec, duration};

/// A duration in a scenario file (`30s`, `5m`, `1m30s`, `250ms`), in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub i64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dur, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 30s, 5m or 1m30s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                duration::parse(v)
                    .map(|d| Dur(d.num_milliseconds()))
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurVisitor)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&duration::format(chrono::Duration::milliseconds(self.0)))
    }
}

/// A number in a scenario file (integer or decimal).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Number, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number like 100 or 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// A value that may change over time: either one value, or a list of `{at, value}` steps.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule<T> {
    Constant(T),
    Steps(Vec<Step<T>>),
}

/// One step of a [`Schedule`]: `value` holds from `at` until the next step.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step<T> {
    pub at: Dur,
    pub value: T,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Schedule<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Schedule<T>, D::Error> {
        struct ScheduleVisitor<T>(PhantomData<T>);

        impl<T> ScheduleVisitor<T> {
            fn scalar<'de, E: de::Error, V: IntoDeserializer<'de, de::value::Error>>(
                v: V,
            ) -> Result<Schedule<T>, E>
            where
                T: Deserialize<'de>,
            {
                T::deserialize(v.into_deserializer())
                    .map(Schedule::Constant)
                    .map_err(E::custom)
            }
        }

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ScheduleVisitor<T> {
            type Value = Schedule<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a value, or a list of steps like [{at: 0s, value: ...}, {at: 5m, value: ...}]",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Schedule<T>, A::Error> {
                Vec::<Step<T>>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(Schedule::Steps)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Schedule<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Schedule::Constant)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Schedule<T>, E> {
                Self::scalar(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Schedule<T>, E> {
                Self::scalar(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Schedule<T>, E> {
                Self::scalar(v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Schedule<T>, E> {
                Self::scalar(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Schedule<T>, E> {
                Self::scalar(v.to_string())
            }
        }

        deserializer.deserialize_any(ScheduleVisitor(PhantomData))
    }
}

/// A webhook's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAnswer {
    /// 2xx: a gate is open, a check passes, a rollback hook asks for a rollback.
    #[serde(alias = "open")]
    Pass,
    /// Non-2xx.
    #[serde(alias = "closed")]
    Fail,
}

/// Latency of one version: a lognormal distribution given by two quantiles.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    pub p50: Dur,
    pub p99: Dur,
}

/// The scenario file as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioFile {
    #[serde(default)]
    pub max_duration: Option<Dur>,
    #[serde(default)]
    pub pushes: Option<Vec<Dur>>,
    #[serde(default)]
    pub pods: PodsSpec,
    #[serde(default)]
    pub traffic: TrafficSpec,
    #[serde(default)]
    pub primary: BehaviourSpec,
    #[serde(default)]
    pub canary: BehaviourSpec,
    #[serde(default)]
    pub webhooks: BTreeMap<String, Schedule<HookAnswer>>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Schedule<Number>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodsSpec {
    #[serde(default)]
    pub primary_start_delay: Option<Dur>,
    #[serde(default)]
    pub canary_start_delay: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSpec {
    #[serde(default)]
    pub rps: Option<Schedule<Number>>,
    #[serde(default)]
    pub test_rps: Option<Schedule<Number>>,
    #[serde(default)]
    pub match_percent: Option<Schedule<Number>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BehaviourSpec {
    #[serde(default)]
    pub error_percent: Option<Schedule<Number>>,
    #[serde(default)]
    pub latency: Option<Schedule<LatencySpec>>,
}

/// A checked schedule: steps sorted by time, the first at 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline<T> {
    steps: Vec<(i64, T)>,
}

impl<T> Timeline<T> {
    pub fn constant(value: T) -> Timeline<T> {
        Timeline {
            steps: vec![(0, value)],
        }
    }

    /// The value in effect at `t` (milliseconds since the start).
    pub fn at(&self, t: i64) -> &T {
        let i = self.steps.partition_point(|(at, _)| *at <= t);
        // Invariant: steps is non-empty and starts at 0, and t >= 0, so i >= 1.
        &self.steps[i.saturating_sub(1)].1
    }

    /// When the value next changes after `t`, if it does.
    pub fn next_change_after(&self, t: i64) -> Option<i64> {
        self.steps.iter().map(|(at, _)| *at).find(|at| *at > t)
    }

    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Timeline<U> {
        Timeline {
            steps: self.steps.into_iter().map(|(t, v)| (t, f(v))).collect(),
        }
    }
}

/// Latency as a lognormal distribution in milliseconds: ln(latency) ~ N(mu, sigma²).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogNormal {
    pub mu: f64,
    pub sigma: f64,
}

/// z of the 99th percentile of the standard normal.
const Z99: f64 = 2.326_347_874_040_841;

impl LogNormal {
    pub fn from_p50_p99(p50_ms: f64, p99_ms: f64) -> LogNormal {
        LogNormal {
            mu: p50_ms.ln(),
            sigma: (p99_ms / p50_ms).ln() / Z99,
        }
    }

    /// The latency exceeded by a fraction `q` of requests.
    pub fn upper_quantile(&self, q: f64) -> f64 {
        (self.mu - self.sigma * super::random::inverse_normal_cdf(q)).exp()
    }
}

/// How one version behaves over time.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// Fraction (0..=1) of requests answered with a 5xx.
    pub error_rate: Timeline<f64>,
    pub latency: Timeline<LogNormal>,
}

/// When revisions are pushed.
#[derive(Clone, Debug, PartialEq)]
pub enum Pushes {
    /// One push right after the Canary is initialized.
    AfterInitialization,
    /// At these times (milliseconds since the start, ascending).
    At(Vec<i64>),
}

/// A checked scenario, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub max_duration_ms: i64,
    pub pushes: Pushes,
    pub primary_start_delay_ms: i64,
    pub canary_start_delay_ms: i64,
    pub rps: Timeline<f64>,
    pub test_rps: Timeline<f64>,
    /// Fraction (0..=1) of requests matching the A/B conditions.
    pub match_share: Timeline<f64>,
    pub primary: Behaviour,
    pub canary: Behaviour,
    pub hooks: BTreeMap<String, Timeline<HookAnswer>>,
    pub metrics: BTreeMap<String, Timeline<f64>>,
}

/// A broken rule in a scenario, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Path like `canary.errorPercent[1].value`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

const DEFAULT_MAX_DURATION_MS: i64 = 3_600_000;
const LONGEST_MAX_DURATION_MS: i64 = 24 * 3_600_000;
const DEFAULT_START_DELAY_MS: i64 = 30_000;
const DEFAULT_RPS: f64 = 10.0;
const DEFAULT_P50_MS: i64 = 50;
const DEFAULT_P99_MS: i64 = 200;

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Turns a schedule into a timeline, checking the steps and each value with `check`
    /// (which returns the broken rule, if any).
    fn timeline<T: Clone>(
        &mut self,
        path: &str,
        schedule: &Schedule<T>,
        check: impl Fn(&T) -> Option<String>,
    ) -> Option<Timeline<T>> {
        match schedule {
            Schedule::Constant(v) => match check(v) {
                Some(message) => {
                    self.push(path, message);
                    None
                }
                None => Some(Timeline::constant(v.clone())),
            },
            Schedule::Steps(steps) => {
                let before = self.issues.len();
                if steps.is_empty() {
                    self.push(
                        path,
                        "an empty list; give one value or steps like [{at: 0s, value: ...}]",
                    );
                }
                for (i, step) in steps.iter().enumerate() {
                    if i == 0 && step.at.0 != 0 {
                        self.push(
                            format!("{path}[0].at"),
                            format!(
                                "the first step is at {}, but it must be at 0s (say what holds from the start)",
                                step.at
                            ),
                        );
                    }
                    if i > 0 && step.at <= steps[i - 1].at {
                        self.push(
                            format!("{path}[{i}].at"),
                            format!(
                                "{} is not after the step before ({}); list steps in time order",
                                step.at,
                                steps[i - 1].at
                            ),
                        );
                    }
                    if let Some(message) = check(&step.value) {
                        self.push(format!("{path}[{i}].value"), message);
                    }
                }
                (self.issues.len() == before).then(|| Timeline {
                    steps: steps.iter().map(|s| (s.at.0, s.value.clone())).collect(),
                })
            }
        }
    }

    fn percent_timeline(&mut self, path: &str, s: &Schedule<Number>) -> Option<Timeline<f64>> {
        self.timeline(path, s, |Number(v)| {
            (!(0.0..=100.0).contains(v)).then(|| format!("{v} is not a percentage in 0..=100"))
        })
        .map(|t| t.map(|Number(v)| v / 100.0))
    }

    fn rate_timeline(&mut self, path: &str, s: &Schedule<Number>) -> Option<Timeline<f64>> {
        self.timeline(path, s, |Number(v)| {
            (!v.is_finite() || *v < 0.0).then(|| {
                format!("{v} is not a request rate; use a number of requests per second ≥ 0")
            })
        })
        .map(|t| t.map(|Number(v)| v))
    }

    fn latency_timeline(
        &mut self,
        path: &str,
        s: &Schedule<LatencySpec>,
    ) -> Option<Timeline<LogNormal>> {
        self.timeline(path, s, |l| {
            if l.p50.0 <= 0 {
                Some(format!("p50 is {}; it must be more than 0", l.p50))
            } else if l.p99 < l.p50 {
                Some(format!(
                    "p99 ({}) is below p50 ({}); the 99th percentile cannot be faster than the median",
                    l.p99, l.p50
                ))
            } else {
                None
            }
        })
        .map(|t| t.map(|l| LogNormal::from_p50_p99(l.p50.0 as f64, l.p99.0 as f64)))
    }

    fn behaviour(
        &mut self,
        path: &str,
        spec: &BehaviourSpec,
        defaults: Option<&Behaviour>,
    ) -> Option<Behaviour> {
        let error_rate = match (&spec.error_percent, defaults) {
            (Some(s), _) => self.percent_timeline(&format!("{path}.errorPercent"), s),
            (None, Some(d)) => Some(d.error_rate.clone()),
            (None, None) => Some(Timeline::constant(0.0)),
        };
        let latency = match (&spec.latency, defaults) {
            (Some(s), _) => self.latency_timeline(&format!("{path}.latency"), s),
            (None, Some(d)) => Some(d.latency.clone()),
            (None, None) => Some(Timeline::constant(LogNormal::from_p50_p99(
                DEFAULT_P50_MS as f64,
                DEFAULT_P99_MS as f64,
            ))),
        };
        Some(Behaviour {
            error_rate: error_rate?,
            latency: latency?,
        })
    }
}

impl ScenarioFile {
    /// Checks the scenario against the Canary it will run with, and fills in the defaults.
    pub fn resolve(&self, spec: &CanarySpec) -> Result<Scenario, Vec<Issue>> {
        let mut c = Checker { issues: Vec::new() };

        let max_duration_ms = self.max_duration.map_or(DEFAULT_MAX_DURATION_MS, |d| d.0);
        if self.max_duration.is_some() && !(1..=LONGEST_MAX_DURATION_MS).contains(&max_duration_ms)
        {
            c.push(
                "maxDuration",
                format!("{} is outside 1ms..=24h", Dur(max_duration_ms)),
            );
        }

        let pushes = match &self.pushes {
            None => Pushes::AfterInitialization,
            Some(list) => {
                for (i, at) in list.iter().enumerate() {
                    if i > 0 && *at <= list[i - 1] {
                        c.push(
                            format!("pushes[{i}]"),
                            format!(
                                "{at} is not after the push before ({}); list pushes in time order",
                                list[i - 1]
                            ),
                        );
                    }
                    if at.0 >= max_duration_ms {
                        c.push(
                            format!("pushes[{i}]"),
                            format!("{at} is not before maxDuration ({})", Dur(max_duration_ms)),
                        );
                    }
                }
                Pushes::At(list.iter().map(|d| d.0).collect())
            }
        };

        let delay = |d: Option<Dur>| d.map_or(DEFAULT_START_DELAY_MS, |d| d.0);

        let rps = match &self.traffic.rps {
            Some(s) => c.rate_timeline("traffic.rps", s),
            None => Some(Timeline::constant(DEFAULT_RPS)),
        };
        let test_rps = match &self.traffic.test_rps {
            Some(s) => c.rate_timeline("traffic.testRps", s),
            None => Some(Timeline::constant(0.0)),
        };
        let match_share = match &self.traffic.match_percent {
            Some(s) => c.percent_timeline("traffic.matchPercent", s),
            None => Some(Timeline::constant(0.0)),
        };

        let primary = c.behaviour("primary", &self.primary, None);
        let canary = match &primary {
            Some(p) => c.behaviour("canary", &self.canary, Some(p)),
            None => None,
        };

        let analysis = spec.analysis();
        let hook_names: Vec<&str> = analysis
            .webhooks()
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        let mut hooks = BTreeMap::new();
        for (name, schedule) in &self.webhooks {
            let path = format!("webhooks.{name}");
            if !hook_names.contains(&name.as_str()) {
                c.push(
                    &path,
                    format!(
                        "the Canary has no webhook named '{name}' ({})",
                        known(&hook_names)
                    ),
                );
                continue;
            }
            if let Some(t) = c.timeline(&path, schedule, |_| None) {
                hooks.insert(name.clone(), t);
            }
        }

        let metric_names: Vec<&str> = analysis.metrics().iter().map(|m| m.name.as_str()).collect();
        let mut metrics = BTreeMap::new();
        for (name, schedule) in &self.metrics {
            let path = format!("metrics.{name}");
            if !metric_names.contains(&name.as_str()) {
                c.push(
                    &path,
                    format!(
                        "the Canary has no metric named '{name}' ({})",
                        known(&metric_names)
                    ),
                );
                continue;
            }
            let t = c.timeline(&path, schedule, |Number(v)| {
                (!v.is_finite()).then(|| format!("{v} is not a finite number"))
            });
            if let Some(t) = t {
                metrics.insert(name.clone(), t.map(|Number(v)| v));
            }
        }

        match (rps, test_rps, match_share, primary, canary) {
            (Some(rps), Some(test_rps), Some(match_share), Some(primary), Some(canary))
                if c.issues.is_empty() =>
            {
                Ok(Scenario {
                    max_duration_ms,
                    pushes,
                    primary_start_delay_ms: delay(self.pods.primary_start_delay),
                    canary_start_delay_ms: delay(self.pods.canary_start_delay),
                    rps,
                    test_rps,
                    match_share,
                    primary,
                    canary,
                    hooks,
                    metrics,
                })
            }
            _ => Err(c.issues),
        }
    }
}

fn known(names: &[&str]) -> String {
    if names.is_empty() {
        "it has none".into()
    } else {
        format!("it has: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ScenarioFile, String> {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    fn spec() -> CanarySpec {
        serde_json::from_value(serde_json::json!({
            "targetRef": {"kind": "Deployment", "name": "podinfo"},
            "service": {"port": 9898},
            "analysis": {
                "interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 5,
                "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}],
                "webhooks": [{"name": "approve", "type": "confirm-promotion", "url": "http://a/"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn constants_and_steps() {
        let f = parse(
            "traffic: {rps: 100}\ncanary:\n  errorPercent:\n    - {at: 0s, value: 0.1}\n    - {at: 3m, value: 8}\nwebhooks:\n  approve: [{at: 0s, value: closed}, {at: 5m, value: open}]\n",
        )
        .unwrap();
        let s = f.resolve(&spec()).unwrap();
        assert_eq!(*s.rps.at(0), 100.0);
        assert_eq!(*s.canary.error_rate.at(179_999), 0.001);
        assert_eq!(*s.canary.error_rate.at(180_000), 0.08);
        assert_eq!(s.canary.error_rate.next_change_after(0), Some(180_000));
        assert_eq!(*s.hooks["approve"].at(299_000), HookAnswer::Fail);
        assert_eq!(*s.hooks["approve"].at(300_000), HookAnswer::Pass);
        assert_eq!(s.pushes, Pushes::AfterInitialization);
        // The canary's latency defaults to the primary's.
        assert_eq!(s.canary.latency, s.primary.latency);
    }

    #[test]
    fn latency_parameters_reproduce_the_quantiles() {
        let l = LogNormal::from_p50_p99(50.0, 200.0);
        assert!((l.upper_quantile(0.5) - 50.0).abs() < 1e-6);
        assert!((l.upper_quantile(0.01) - 200.0).abs() < 1e-4);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse("traffic: {rps: lots}").unwrap_err();
        assert!(e.starts_with("traffic.rps: "), "{e}");
        let e = parse("canary: {errorPercent: [{at: 0s, value: high}]}").unwrap_err();
        assert!(e.starts_with("canary.errorPercent[0].value: "), "{e}");
        let e = parse("pods: {canaryStartDelay: 30}").unwrap_err();
        assert!(
            e.contains("pods.canaryStartDelay") && e.contains("30s"),
            "{e}"
        );
        let e = parse("pods: {canaryStartDelay: 30x}").unwrap_err();
        assert!(e.contains("unknown unit 'x'"), "{e}");
        let e = parse("traffic: {rsp: 1}").unwrap_err();
        assert!(e.contains("unknown field `rsp`"), "{e}");
        let e = parse("webhooks: {approve: maybe}").unwrap_err();
        assert!(
            e.starts_with("webhooks.approve: ") && e.contains("pass"),
            "{e}"
        );
    }

    #[test]
    fn broken_rules_name_the_field() {
        let issues = |yaml: &str| {
            parse(yaml)
                .unwrap()
                .resolve(&spec())
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let e = issues("canary: {errorPercent: [{at: 1m, value: 1}, {at: 30s, value: 120}]}");
        assert!(e[0].starts_with("canary.errorPercent[0].at: "), "{e:?}");
        assert!(e[1].starts_with("canary.errorPercent[1].at: "), "{e:?}");
        assert!(
            e[2].starts_with("canary.errorPercent[1].value: 120"),
            "{e:?}"
        );
        let e = issues("primary: {latency: {p50: 300ms, p99: 100ms}}");
        assert!(e[0].starts_with("primary.latency: p99"), "{e:?}");
        let e = issues("webhooks: {aprove: pass}");
        assert!(
            e[0].contains("no webhook named 'aprove'") && e[0].contains("approve"),
            "{e:?}"
        );
        let e = issues("metrics: {latency: 3}");
        assert!(e[0].starts_with("metrics.latency: "), "{e:?}");
        let e = issues("maxDuration: 10m\npushes: [5m, 2m, 20m]");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = issues("traffic: {rps: -1}");
        assert!(e[0].starts_with("traffic.rps: -1"), "{e:?}");
    }
}
