//! The built-in App Mesh metrics against real servers: Debian's Prometheus scraping real Envoys
//! (one per pod, as App Mesh sidecars are) that proxy to backends whose error rate and latency
//! the test sets, and the scrape provider reading the same Envoy directly. The values must be
//! what the backends generated, within sampling error; the time from the canary starting to
//! fail to the check seeing it is printed.

#[path = "support/backends.rs"]
mod backends;
#[path = "support/envoy.rs"]
mod envoy;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::time::{Duration, Instant};

use backends::{Backend, Load};
use envoy::Envoy;
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus::{Prometheus, ScrapeTarget};
use serin::api::{CanaryMetric, MetricTemplate, Provider};
use serin::engine::MetricResult;
use serin::metrics::{Metrics, MetricsConfig, Pod, PodSource, ResolvedTemplate, Target};

const CANARY_POD: &str = "podinfo-6b5f7c9d8-x2x7z";
const PRIMARY_POD: &str = "podinfo-primary-7d9f8c6b5-abcde";

struct StaticPods(Vec<Pod>);

impl PodSource for StaticPods {
    fn pods<'a>(&'a self, _ns: &'a str, _d: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        async move { Ok(self.0.clone()) }.boxed()
    }
}

fn canary_pods() -> StaticPods {
    StaticPods(vec![Pod {
        name: CANARY_POD.into(),
        ip: "127.0.0.1".into(),
    }])
}

fn target() -> Target<'static> {
    Target {
        canary: "podinfo",
        namespace: "test",
        target: "podinfo",
        service: "podinfo",
        provider: Provider::AppMesh,
    }
}

fn metric(name: &str, interval: &str) -> CanaryMetric {
    CanaryMetric {
        name: name.into(),
        interval: Some(interval.into()),
        ..Default::default()
    }
}

fn value(r: &MetricResult) -> Option<f64> {
    match r {
        MetricResult::Value(v) => Some(*v),
        _ => None,
    }
}

fn envoy_target(admin_port: u16, pod: &str) -> ScrapeTarget {
    ScrapeTarget {
        address: format!("127.0.0.1:{admin_port}"),
        path: "/stats/prometheus".into(),
        labels: vec![
            ("kubernetes_namespace".into(), "test".into()),
            ("kubernetes_pod_name".into(), pod.into()),
        ],
    }
}

/// Polls `check` every `every` until it returns true; returns the time taken.
async fn wait_until<F, Fut>(what: &str, limit: Duration, every: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(every).await;
    }
}

/// The shipped App Mesh Prometheus policies, pointed at `address`.
fn policy(file: &str, address: &str) -> MetricTemplate {
    let path = format!("{}/policies/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut t: MetricTemplate = serde_saphyr::from_str(&text).unwrap();
    t.spec.provider.address = Some(address.into());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_builtins_measure_what_the_canary_envoy_served() {
    let canary_backend = Backend::start().await;
    let primary_backend = Backend::start().await;
    canary_backend.set(0.0, Duration::from_millis(2));
    primary_backend.set(0.0, Duration::from_millis(2));
    let canary = Envoy::start("podinfo-canary", canary_backend.addr);
    let primary = Envoy::start("podinfo-primary", primary_backend.addr);
    let prom = Prometheus::start(&[
        envoy_target(canary.admin_port, CANARY_POD),
        envoy_target(primary.admin_port, PRIMARY_POD),
    ]);
    let _load = Load::start(vec![canary.url(), primary.url()], 50);
    let metrics = Metrics::new(MetricsConfig::default()).unwrap();
    let pods = canary_pods();
    let server = Some(prom.url.as_str());
    let sr = metric("request-success-rate", "10s");
    let p99 = metric("request-duration", "10s");
    let query = |m: &CanaryMetric| {
        let m = m.clone();
        let metrics = &metrics;
        let pods = &pods;
        async move { metrics.query(&target(), &m, None, pods, server).await }
    };

    let first = wait_until(
        "first success rate",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async { value(&query(&sr).await).is_some() },
    )
    .await;
    println!(
        "prometheus: first value {:.1} s after start",
        first.as_secs_f64()
    );
    // fill the 10 s window with healthy traffic
    tokio::time::sleep(Duration::from_secs(11)).await;
    let healthy = value(&query(&sr).await).unwrap();
    assert!(healthy > 99.9, "healthy canary success rate {healthy}");
    let fast = value(&query(&p99).await).unwrap();
    // A healthy answer takes a millisecond; a loaded machine may push a few past 100 ms, never
    // into the failing traffic's (250, 500] ms bucket.
    assert!(fast < 250.0, "healthy canary p99 {fast} ms");

    // the canary starts failing: 10 % errors, 400 ms answers
    canary_backend.set(0.1, Duration::from_millis(400));
    let seen = wait_until(
        "prometheus sees the failure",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async { value(&query(&sr).await).is_some_and(|v| v < 99.0) },
    )
    .await;
    println!(
        "prometheus (scrape interval 1s, window 10s): success rate below 99% {:.1} s after the canary started failing",
        seen.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(seen)).await;
    let failing = value(&query(&sr).await).unwrap();
    assert!(
        (failing - 90.0).abs() < 2.0,
        "10 % errors gave success rate {failing}"
    );
    let slow = value(&query(&p99).await).unwrap();
    // all answers take 400 ms, which Envoy counts in its (250, 500] ms bucket
    assert!(
        slow > 250.0 && slow <= 500.0,
        "400 ms answers gave p99 {slow} ms"
    );

    // the built-ins select the canary's pods only: the primary is still healthy
    let p = metrics.prometheus(&prom.url, None, None).await.unwrap();
    let primary_sr = p
        .query(r#"sum(rate(envoy_cluster_upstream_rq{kubernetes_pod_name=~"podinfo-primary-.*",envoy_response_code!~"5.*"}[10s])) / sum(rate(envoy_cluster_upstream_rq{kubernetes_pod_name=~"podinfo-primary-.*"}[10s])) * 100"#)
        .await
        .unwrap();
    assert!(primary_sr > 99.9, "primary success rate {primary_sr}");

    // the shipped policies give the same answers through templates
    for (file, low, high) in [
        ("appmesh-prometheus/success-rate.yaml", 88.0, 92.0),
        ("appmesh-prometheus/latency-p99.yaml", 250.0, 500.0),
    ] {
        let t = policy(file, &prom.url);
        let resolved = ResolvedTemplate {
            spec: &t.spec,
            secret: None,
        };
        let m = metric("from-policy", "10s");
        let r = metrics
            .query(&target(), &m, Some(&resolved), &pods, None)
            .await;
        let v = value(&r).unwrap_or_else(|| panic!("{file}: {r:?}"));
        assert!(v >= low && v <= high, "{file}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_builtins_measure_what_the_canary_envoy_served() {
    let backend = Backend::start().await;
    backend.set(0.0, Duration::from_millis(2));
    let mut envoy = Envoy::start("podinfo-canary", backend.addr);
    let (listen, admin) = (envoy.listen_port, envoy.admin_port);
    let load = Load::start(vec![envoy.url()], 50);
    let metrics = Metrics::new(MetricsConfig {
        scrape_port: admin,
        ..MetricsConfig::default()
    })
    .unwrap();
    let pods = canary_pods();
    let sr = metric("request-success-rate", "10s");
    let p99 = metric("request-duration", "10s");
    let query = |m: &CanaryMetric| {
        let m = m.clone();
        let metrics = &metrics;
        let pods = &pods;
        async move { metrics.query(&target(), &m, None, pods, None).await }
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let healthy = value(&query(&sr).await).unwrap();
    assert_eq!(healthy, 100.0);
    let fast = value(&query(&p99).await).unwrap();
    // A healthy answer takes a millisecond; a loaded machine may push a few past 100 ms, never
    // into the failing traffic's (250, 500] ms bucket.
    assert!(fast < 250.0, "healthy canary p99 {fast} ms");

    backend.set(0.1, Duration::from_millis(400));
    let seen = wait_until(
        "scrape sees the failure",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async { value(&query(&sr).await).is_some_and(|v| v < 99.0) },
    )
    .await;
    println!(
        "scrape (window 10s): success rate below 99% {:.1} s after the canary started failing",
        seen.as_secs_f64()
    );
    // once the window holds only failing traffic, the value is what the backend generated
    tokio::time::sleep(Duration::from_secs(11)).await;
    let failing = value(&query(&sr).await).unwrap();
    assert!(
        (failing - 90.0).abs() < 1.5,
        "10 % errors gave success rate {failing}"
    );
    let slow = value(&query(&p99).await).unwrap();
    assert!(
        slow > 250.0 && slow <= 500.0,
        "400 ms answers gave p99 {slow} ms"
    );

    // a template can filter Envoy's series by label; a filter nothing matches gives no data
    let mut t: MetricTemplate = serde_saphyr::from_str(&format!(
        "apiVersion: serin.dev/v1beta1\nkind: MetricTemplate\nmetadata: {{name: p50}}\nspec:\n  provider: {{type: scrape, address: ':{admin}/stats/prometheus'}}\n  query: 'request-duration-p50{{envoy_cluster_name=\"podinfo-canary\"}}'\n"
    ))
    .unwrap();
    let resolved = ResolvedTemplate {
        spec: &t.spec,
        secret: None,
    };
    let p50 = value(
        &metrics
            .query(
                &target(),
                &metric("p50", "10s"),
                Some(&resolved),
                &pods,
                None,
            )
            .await,
    )
    .unwrap();
    assert!(p50 > 250.0 && p50 <= 500.0, "p50 {p50}");
    t.spec.query = r#"request-success-rate{envoy_cluster_name="elsewhere"}"#.into();
    let resolved = ResolvedTemplate {
        spec: &t.spec,
        secret: None,
    };
    let none = metrics
        .query(
            &target(),
            &metric("other", "10s"),
            Some(&resolved),
            &pods,
            None,
        )
        .await;
    assert!(
        matches!(&none, MetricResult::NoData(m) if m.contains("scrape") && m.contains("no requests")),
        "{none:?}"
    );

    // Envoy restarts (counters start again from zero) and the canary is healthy again: the
    // check reads the new counters instead of a negative difference
    drop(load);
    drop(envoy);
    backend.set(0.0, Duration::from_millis(2));
    envoy = Envoy::start_on("podinfo-canary", backend.addr, listen, admin);
    let _load = Load::start(vec![envoy.url()], 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_restart = value(&query(&sr).await).unwrap();
    assert_eq!(after_restart, 100.0);
}
