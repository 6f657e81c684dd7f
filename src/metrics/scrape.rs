//! The `scrape` provider: no Prometheus needed. It lists the pods of a Deployment, scrapes each
//! pod's metrics endpoint (Envoy's admin `/stats/prometheus` by default), keeps earlier scrapes
//! per pod in memory, and computes the success rate and latency quantiles of Envoy's
//! `envoy_cluster_upstream_rq` counter and `envoy_cluster_upstream_rq_time` histogram from the
//! difference between now and the scrape of about one window ago.
//!
//! A pod seen for the first time counts with its totals since its Envoy started (for a new
//! canary pod that is its whole life); a counter that went down means the pod's Envoy restarted,
//! and its current totals are the difference; pods that are gone are forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::http::{excerpt, transport_error};
use super::{MetricsError, MetricsProvider, PodSource, Point, TimeRange};

pub const KIND: &str = "scrape";

/// Requests by status and the latency histogram of one pod (or a sum of pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// All upstream requests.
    pub total: f64,
    /// Upstream requests answered 5xx.
    pub errors: f64,
    /// Cumulative latency buckets in milliseconds, `(le, count)` sorted by `le`, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Counts {
    /// Reads Envoy's counters from a Prometheus text exposition, keeping series whose labels
    /// include every `(name, value)` of `filter`.
    pub fn from_exposition(text: &str, filter: &[(String, String)]) -> Result<Counts, String> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).map_err(|e| e.to_string())?;
        let mut counts = Counts::default();
        let matches = |labels: &prometheus_parse::Labels| {
            filter
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v.as_str()))
        };
        let mut seen_metric = false;
        for s in &scrape.samples {
            match (s.metric.as_str(), &s.value) {
                (
                    "envoy_cluster_upstream_rq",
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                ) => {
                    seen_metric = true;
                    let Some(code) = s.labels.get("envoy_response_code") else {
                        continue;
                    };
                    if !matches(&s.labels) || !v.is_finite() {
                        continue;
                    }
                    counts.total += v;
                    if code.starts_with('5') {
                        counts.errors += v;
                    }
                }
                ("envoy_cluster_upstream_rq_time", prometheus_parse::Value::Histogram(hs)) => {
                    seen_metric = true;
                    if !matches(&s.labels) {
                        continue;
                    }
                    for h in hs {
                        counts.add_bucket(h.less_than, h.count);
                    }
                }
                _ => {}
            }
        }
        if !seen_metric && !text.contains("envoy_") {
            return Err(format!(
                "no Envoy request metrics (envoy_cluster_upstream_rq) in the answer; it starts with: {}",
                excerpt(text, 80)
            ));
        }
        Ok(counts)
    }

    fn add_bucket(&mut self, le: f64, count: f64) {
        if !count.is_finite() {
            return;
        }
        match self.buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
            Ok(i) => self.buckets[i].1 += count,
            Err(i) => self.buckets.insert(i, (le, count)),
        }
    }

    /// `self − base`, or `self` when any counter went down (the pod's Envoy restarted).
    pub fn since(&self, base: &Counts) -> Counts {
        let bucket_reset = self.buckets.iter().any(|(le, c)| {
            base.buckets
                .iter()
                .find(|(b, _)| b == le)
                .is_some_and(|(_, bc)| c < bc)
        });
        if self.total < base.total || self.errors < base.errors || bucket_reset {
            return self.clone();
        }
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = base
                    .buckets
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, bc)| *bc);
                (*le, c - before)
            })
            .collect();
        Counts {
            total: self.total - base.total,
            errors: self.errors - base.errors,
            buckets,
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.errors += other.errors;
        for (le, c) in &other.buckets {
            self.add_bucket(*le, *c);
        }
    }

    /// Percent of requests that were not 5xx; `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.total > 0.0).then(|| (self.total - self.errors) / self.total * 100.0)
    }

    /// The `q` quantile of the latency histogram, interpolated inside the bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        histogram_quantile(q, &self.buckets)
    }
}

/// Prometheus' `histogram_quantile` over cumulative `(le, count)` buckets sorted by `le`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (last_le, observations) = *buckets.last()?;
    if last_le != f64::INFINITY || buckets.len() < 2 || observations <= 0.0 {
        return None;
    }
    // Counts must not decrease with le (they can when pods are added mid-flush).
    let mut fixed: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    let mut max = 0.0_f64;
    for (le, c) in buckets {
        max = max.max(*c);
        fixed.push((*le, max));
    }
    let observations = fixed[fixed.len() - 1].1;
    let mut rank = q.clamp(0.0, 1.0) * observations;
    let b = fixed.iter().position(|(_, c)| *c >= rank)?;
    if b == fixed.len() - 1 {
        return Some(fixed[fixed.len() - 2].0);
    }
    if b == 0 && fixed[0].0 <= 0.0 {
        return Some(fixed[0].0);
    }
    let (mut start, end, mut count) = (0.0, fixed[b].0, fixed[b].1);
    if b > 0 {
        start = fixed[b - 1].0;
        count -= fixed[b - 1].1;
        rank -= fixed[b - 1].1;
    }
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank / count))
}

/// What a scrape query asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    /// Percent of non-5xx responses.
    SuccessRate,
    /// A latency quantile in milliseconds.
    Duration { quantile: f64 },
}

/// A parsed scrape query: `MEASURE` or `MEASURE{label="value",...}`. Measures:
/// `request-success-rate`, `request-duration` (p99), `request-duration-pNN` (`p50`, `p90`,
/// `p95`, `p999`, …). Labels filter Envoy's series (`envoy_cluster_name="..."`), except
/// `deployment`, which names whose pods are scraped (default: the canary target).
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeQuery {
    pub measure: Measure,
    pub labels: Vec<(String, String)>,
    pub deployment: Option<String>,
}

const MEASURES: &str = "request-success-rate, request-duration, request-duration-p95 (any pNN)";

impl ScrapeQuery {
    pub fn parse(text: &str) -> Result<ScrapeQuery, MetricsError> {
        let text = text.trim();
        let (name, selector) = match text.find('{') {
            Some(i) => {
                let inner = text[i + 1..].strip_suffix('}').ok_or_else(|| {
                    MetricsError::Config(format!(
                        "scrape query '{text}': the label selector is not closed with '}}'"
                    ))
                })?;
                (text[..i].trim(), Some(inner))
            }
            None => (text, None),
        };
        let measure = match name {
            "request-success-rate" => Measure::SuccessRate,
            "request-duration" => Measure::Duration { quantile: 0.99 },
            other => match other.strip_prefix("request-duration-p") {
                Some(digits)
                    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) =>
                {
                    let quantile: f64 = format!("0.{digits}").parse().map_err(|_| {
                        MetricsError::Config(format!("scrape query '{text}': bad quantile"))
                    })?;
                    Measure::Duration { quantile }
                }
                _ => {
                    return Err(MetricsError::Config(format!(
                        "scrape query '{text}' names no known measure; use one of {MEASURES}"
                    )));
                }
            },
        };
        let mut labels = Vec::new();
        let mut deployment = None;
        for part in selector
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                MetricsError::Config(format!(
                    "scrape query '{text}': '{part}' is not label=\"value\""
                ))
            })?;
            let k = k.trim();
            let v = v.trim().trim_matches('"');
            if k.is_empty() || v.is_empty() {
                return Err(MetricsError::Config(format!(
                    "scrape query '{text}': '{part}' is not label=\"value\""
                )));
            }
            if k == "deployment" {
                deployment = Some(v.to_string());
            } else {
                labels.push((k.to_string(), v.to_string()));
            }
        }
        Ok(ScrapeQuery {
            measure,
            labels,
            deployment,
        })
    }
}

/// Where each pod is scraped: `http://<pod ip>:<port><path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeEndpoint {
    pub https: bool,
    pub port: u16,
    pub path: String,
}

impl ScrapeEndpoint {
    pub fn new(port: u16, path: &str) -> ScrapeEndpoint {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        ScrapeEndpoint {
            https: false,
            port,
            path,
        }
    }

    /// Reads a template's address: `:9901/stats/prometheus`, `:15090/stats/prometheus`,
    /// `9901`, or with a scheme, `https://:8443/metrics` (the host is each pod's IP).
    pub fn parse(address: &str) -> Result<ScrapeEndpoint, MetricsError> {
        let bad = || {
            MetricsError::Config(format!(
                "scrape address '{address}' is not ':PORT/PATH' (for example :9901/stats/prometheus; the host is each pod's IP)"
            ))
        };
        let a = address.trim();
        let (https, rest) = if let Some(r) = a.strip_prefix("https://") {
            (true, r)
        } else {
            (false, a.strip_prefix("http://").unwrap_or(a))
        };
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        let (port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/stats/prometheus"),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(ScrapeEndpoint {
            https,
            port,
            path: path.to_string(),
        })
    }

    fn url(&self, ip: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = if ip.contains(':') && !ip.starts_with('[') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Scrapes of one pod, oldest first.
type Kept = VecDeque<(Instant, Counts)>;

/// Earlier scrapes per query and pod.
#[derive(Default)]
pub struct ScrapeState {
    history: Mutex<HashMap<String, HashMap<String, Kept>>>,
}

/// At most this many scrapes are kept per pod and query.
const MAX_KEPT: usize = 256;

impl ScrapeState {
    /// A provider scraping the pods of `deployment` in `namespace`.
    pub fn provider<'a>(
        &'a self,
        client: &'a reqwest::Client,
        pods: &'a dyn PodSource,
        namespace: &'a str,
        deployment: &'a str,
        endpoint: ScrapeEndpoint,
    ) -> Scrape<'a> {
        Scrape {
            state: self,
            client,
            pods,
            namespace,
            deployment,
            endpoint,
            timeout: Duration::from_secs(5),
        }
    }

    /// Records `now` scrapes for the pods of `key` and returns the summed difference from each
    /// pod's scrape of about `window` ago. Pods missing from `scrapes` are forgotten.
    pub fn window(
        &self,
        key: &str,
        scrapes: Vec<(String, Counts)>,
        now: Instant,
        window: Duration,
    ) -> Counts {
        let mut all = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let pods = all.entry(key.to_string()).or_default();
        pods.retain(|name, _| scrapes.iter().any(|(n, _)| n == name));
        let mut sum = Counts::default();
        for (name, counts) in scrapes {
            let kept = pods.entry(name).or_default();
            let base = kept
                .iter()
                .rev()
                .find(|(at, _)| now.saturating_duration_since(*at) >= window)
                .or_else(|| kept.front())
                .map(|(_, c)| c);
            let delta = match base {
                Some(b) => counts.since(b),
                None => counts.clone(),
            };
            sum.add(&delta);
            kept.push_back((now, counts));
            while kept.len() > 2
                && kept
                    .get(1)
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= window)
            {
                kept.pop_front();
            }
            while kept.len() > MAX_KEPT {
                kept.pop_front();
            }
        }
        sum
    }
}

/// The scrape provider for one Deployment.
pub struct Scrape<'a> {
    state: &'a ScrapeState,
    client: &'a reqwest::Client,
    pods: &'a dyn PodSource,
    namespace: &'a str,
    deployment: &'a str,
    endpoint: ScrapeEndpoint,
    timeout: Duration,
}

impl Scrape<'_> {
    /// The HTTP client's timeout, for messages.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn scrape_pod(
        &self,
        pod: &super::Pod,
        filter: &[(String, String)],
    ) -> Result<Counts, MetricsError> {
        let url = self.endpoint.url(&pod.ip);
        let at = format!("pod {} ({url})", pod.name);
        let timeout = self.timeout;
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| transport_error(KIND, &at, timeout, &e))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(KIND, &at, timeout, &e))?;
        if !status.is_success() {
            return Err(MetricsError::Http {
                provider: KIND,
                at,
                status: status.as_u16(),
                body: excerpt(&body, 200),
            });
        }
        Counts::from_exposition(&body, filter).map_err(|detail| MetricsError::BadResponse {
            provider: KIND,
            detail: format!("{at}: {detail}"),
        })
    }

    async fn measure(&self, query: &str, window: Duration) -> Result<f64, MetricsError> {
        let q = ScrapeQuery::parse(query)?;
        let deployment = q.deployment.as_deref().unwrap_or(self.deployment);
        let pods = self
            .pods
            .pods(self.namespace, deployment)
            .await
            .map_err(|e| MetricsError::Transport {
                provider: KIND,
                at: format!("pods of {}/{deployment}", self.namespace),
                detail: e,
            })?;
        let pods: Vec<_> = pods
            .into_iter()
            .filter(|p| !p.ip.trim().is_empty())
            .collect();
        let no_data = |detail: String| MetricsError::NoData {
            provider: KIND,
            query: query.to_string(),
            detail,
        };
        if pods.is_empty() {
            return Err(no_data(format!(
                "no running pods of Deployment {}/{deployment}",
                self.namespace
            )));
        }
        let results =
            futures::future::join_all(pods.iter().map(|p| self.scrape_pod(p, &q.labels))).await;
        let mut scrapes = Vec::with_capacity(pods.len());
        for (pod, r) in pods.iter().zip(results) {
            scrapes.push((pod.name.clone(), r?));
        }
        let key = format!(
            "{}/{deployment}|{}:{}{}|{query}",
            self.namespace, self.endpoint.https, self.endpoint.port, self.endpoint.path
        );
        let delta = self.state.window(&key, scrapes, Instant::now(), window);
        let names = pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match q.measure {
            Measure::SuccessRate => delta
                .success_rate()
                .ok_or_else(|| no_data(format!("no requests in the window (pods: {names})"))),
            Measure::Duration { quantile } => delta.quantile(quantile).ok_or_else(|| {
                no_data(format!(
                    "no request durations in the window (pods: {names})"
                ))
            }),
        }
    }
}

impl MetricsProvider for Scrape<'_> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instant<'a>(
        &'a self,
        query: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<f64, MetricsError>> {
        self.measure(query, window).boxed()
    }

    fn range<'a>(
        &'a self,
        _query: &'a str,
        _range: TimeRange,
    ) -> BoxFuture<'a, Result<Vec<Point>, MetricsError>> {
        async {
            Err(MetricsError::Unsupported {
                provider: KIND,
                what: "range queries: it keeps no history beyond one window; use Prometheus".into(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVOY: &str = r#"# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="local"} 90
envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="local"} 10
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="egress"} 50
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="local"} 10
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="0.5"} 0
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="1"} 0
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="5"} 80
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="100"} 90
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="250"} 100
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="local",le="+Inf"} 100
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="local"} 3000
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="local"} 100
"#;

    fn counts(total: f64, errors: f64, buckets: &[(f64, f64)]) -> Counts {
        Counts {
            total,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn reads_envoy_counters_and_filters_by_label() {
        let all = Counts::from_exposition(ENVOY, &[]).unwrap();
        assert_eq!((all.total, all.errors), (150.0, 10.0));
        let local =
            Counts::from_exposition(ENVOY, &[("envoy_cluster_name".into(), "local".into())])
                .unwrap();
        assert_eq!((local.total, local.errors), (100.0, 10.0));
        assert_eq!(local.success_rate(), Some(90.0));
        assert_eq!(local.buckets.last(), Some(&(f64::INFINITY, 100.0)));
    }

    #[test]
    fn a_page_without_envoy_metrics_is_an_error() {
        let err = Counts::from_exposition("# HELP up\nup 1\n", &[]).unwrap_err();
        assert!(err.contains("no Envoy request metrics"), "{err}");
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [
            (5.0, 80.0),
            (100.0, 90.0),
            (250.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 99 lies in (100, 250]: 100 + 150 × 9/10.
        assert_eq!(histogram_quantile(0.99, &b), Some(235.0));
        // rank 50 lies in the first bucket, which starts at 0.
        assert_eq!(histogram_quantile(0.5, &b), Some(5.0 * 50.0 / 80.0));
        // everything above the last finite bucket: its bound.
        let slow = [(5.0, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &slow), Some(5.0));
        assert_eq!(
            histogram_quantile(0.99, &[(5.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn differences_use_the_scrape_one_window_ago() {
        let state = ScrapeState::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let first = state.window("k", vec![("a".into(), counts(100.0, 0.0, &[]))], t0, w);
        // first sight: the pod's totals
        assert_eq!(first.total, 100.0);
        let at5 = state.window(
            "k",
            vec![("a".into(), counts(150.0, 5.0, &[]))],
            t0 + Duration::from_secs(5),
            w,
        );
        // younger than the window: the oldest kept scrape is the base
        assert_eq!((at5.total, at5.errors), (50.0, 5.0));
        let at12 = state.window(
            "k",
            vec![("a".into(), counts(220.0, 5.0, &[]))],
            t0 + Duration::from_secs(12),
            w,
        );
        // the newest scrape at least 10 s old is t0
        assert_eq!((at12.total, at12.errors), (120.0, 5.0));
        let at16 = state.window(
            "k",
            vec![("a".into(), counts(300.0, 45.0, &[]))],
            t0 + Duration::from_secs(16),
            w,
        );
        // base is now the scrape at 5 s
        assert_eq!((at16.total, at16.errors), (150.0, 40.0));
    }

    #[test]
    fn counter_resets_and_pods_that_come_and_go() {
        let state = ScrapeState::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let b = |n: f64| vec![(10.0, n), (f64::INFINITY, n)];
        state.window(
            "k",
            vec![
                ("a".into(), counts(1000.0, 10.0, &b(1000.0))),
                ("b".into(), counts(500.0, 0.0, &b(500.0))),
            ],
            t0,
            w,
        );
        // a restarted (counters went down), b is gone, c is new.
        let d = state.window(
            "k",
            vec![
                ("a".into(), counts(40.0, 4.0, &b(40.0))),
                ("c".into(), counts(60.0, 0.0, &b(60.0))),
            ],
            t0 + Duration::from_secs(11),
            w,
        );
        assert_eq!((d.total, d.errors), (100.0, 4.0));
        assert_eq!(d.buckets, vec![(10.0, 100.0), (f64::INFINITY, 100.0)]);
        // b comes back: it was forgotten, so its totals count again from its new start.
        let d = state.window(
            "k",
            vec![
                ("a".into(), counts(50.0, 4.0, &b(50.0))),
                ("b".into(), counts(5.0, 5.0, &b(5.0))),
                ("c".into(), counts(60.0, 0.0, &b(60.0))),
            ],
            t0 + Duration::from_secs(22),
            w,
        );
        assert_eq!((d.total, d.errors), (15.0, 5.0));
    }

    #[test]
    fn queries_parse_with_labels_and_deployment() {
        let q = ScrapeQuery::parse(
            r#"request-duration-p95{envoy_cluster_name="local", deployment="podinfo-primary"}"#,
        )
        .unwrap();
        assert_eq!(q.measure, Measure::Duration { quantile: 0.95 });
        assert_eq!(
            q.labels,
            vec![("envoy_cluster_name".into(), "local".into())]
        );
        assert_eq!(q.deployment.as_deref(), Some("podinfo-primary"));
        let err = ScrapeQuery::parse("errors").unwrap_err().to_string();
        assert!(err.contains("request-success-rate"), "{err}");
        assert!(ScrapeQuery::parse("request-success-rate{oops}").is_err());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            ScrapeEndpoint::parse(":15090/stats/prometheus").unwrap(),
            ScrapeEndpoint::new(15090, "/stats/prometheus")
        );
        assert_eq!(
            ScrapeEndpoint::parse("9901").unwrap().path,
            "/stats/prometheus"
        );
        assert!(
            ScrapeEndpoint::parse("https://:8443/metrics")
                .unwrap()
                .https
        );
        let err = ScrapeEndpoint::parse("envoy/stats")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":PORT/PATH"), "{err}");
        assert_eq!(
            ScrapeEndpoint::new(9901, "/s").url("fd00::1"),
            "http://[fd00::1]:9901/s"
        );
    }
}
