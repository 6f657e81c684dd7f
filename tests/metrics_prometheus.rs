//! The Prometheus provider's protocol against a scripted Prometheus API: what is sent (the
//! rendered query, auth from the template's secret, headers, SigV4 for Amazon Managed
//! Prometheus, range parameters) and how answers become values.

#[path = "support/fake_prometheus.rs"]
mod fake_prometheus;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::config::{Credentials, SharedCredentialsProvider};
use chrono::{TimeZone, Utc};
use fake_prometheus::{Answer, FakePrometheus};
use futures::FutureExt;
use futures::future::BoxFuture;
use serin::api::{CanaryMetric, MetricProvider, MetricProviderType, MetricTemplateSpec, Provider};
use serin::engine::MetricResult;
use serin::metrics::{
    Metrics, MetricsConfig, MetricsProvider, Pod, PodSource, Prometheus, ResolvedTemplate, Target,
    TimeRange,
};

struct NoPods;

impl PodSource for NoPods {
    fn pods<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        async { Ok(vec![]) }.boxed()
    }
}

fn target(provider: Provider) -> Target<'static> {
    Target {
        canary: "podinfo",
        namespace: "test",
        target: "podinfo",
        service: "podinfo-svc",
        provider,
    }
}

fn prometheus_template(address: &str, query: &str) -> MetricTemplateSpec {
    MetricTemplateSpec {
        provider: MetricProvider {
            type_: MetricProviderType::Prometheus,
            address: Some(address.into()),
            secret_ref: None,
            region: None,
            headers: None,
            insecure_skip_verify: None,
        },
        query: query.into(),
    }
}

fn metrics() -> Metrics {
    Metrics::new(MetricsConfig::default()).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn templates_send_the_rendered_query_with_auth_and_headers() {
    let prom = FakePrometheus::start(Answer::value("99.5")).await;
    let mut spec = prometheus_template(
        &format!("{}/prometheus/", prom.url()),
        "sum(rate(http_requests{ns=\"{{ namespace }}\",\n   svc=\"{{ service }}\", route=\"{{ variables.route }}\"}[{{ interval }}]))",
    );
    spec.provider.headers = Some(map(&[("X-Scope-OrgID", "team-a")]));
    let secret = map(&[("token", "s3cret-token")]);
    let m = CanaryMetric {
        name: "requests".into(),
        interval: Some("2m".into()),
        template_variables: Some(map(&[("route", "/api")])),
        ..Default::default()
    };
    let t = ResolvedTemplate {
        spec: &spec,
        secret: Some(&secret),
    };
    let r = metrics()
        .query(&target(Provider::AppMesh), &m, Some(&t), &NoPods, None)
        .await;
    assert_eq!(r, MetricResult::Value(99.5));
    let req = &prom.requests()[0];
    assert_eq!(req.path, "/prometheus/api/v1/query");
    assert_eq!(
        req.params["query"],
        r#"sum(rate(http_requests{ns="test", svc="podinfo-svc", route="/api"}[2m]))"#
    );
    assert_eq!(req.headers["authorization"], "Bearer s3cret-token");
    assert_eq!(req.headers["x-scope-orgid"], "team-a");

    // basic auth from username and password
    let secret = map(&[("username", "admin"), ("password", "pw")]);
    let t = ResolvedTemplate {
        spec: &spec,
        secret: Some(&secret),
    };
    metrics()
        .query(&target(Provider::AppMesh), &m, Some(&t), &NoPods, None)
        .await;
    // base64("admin:pw")
    assert_eq!(
        prom.requests()[1].headers["authorization"],
        "Basic YWRtaW46cHc="
    );

    // a secret with only a username is refused before anything is sent
    let secret = map(&[("username", "admin")]);
    let t = ResolvedTemplate {
        spec: &spec,
        secret: Some(&secret),
    };
    let r = metrics()
        .query(&target(Provider::AppMesh), &m, Some(&t), &NoPods, None)
        .await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.starts_with("prometheus") && msg.contains("password")),
        "{r:?}"
    );
    assert_eq!(prom.requests().len(), 2);
}

#[tokio::test]
async fn builtins_and_inline_queries_go_to_the_metrics_server() {
    let prom = FakePrometheus::start(Answer::value("12.5")).await;
    let url = prom.url();
    let m = CanaryMetric {
        name: "request-duration".into(),
        ..Default::default()
    };
    let r = metrics()
        .query(&target(Provider::AppMesh), &m, None, &NoPods, Some(&url))
        .await;
    assert_eq!(r, MetricResult::Value(12.5));
    assert_eq!(
        prom.requests()[0].params["query"],
        r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{kubernetes_namespace="test",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) by (le))"#,
        "an unset interval is 1m"
    );

    // the controller's default Prometheus serves Canaries without metricsServer
    let with_default = Metrics::new(MetricsConfig {
        default_prometheus: Some(url.clone()),
        ..MetricsConfig::default()
    })
    .unwrap();
    let inline = CanaryMetric {
        name: "errors".into(),
        query: Some("sum(rate(errors{namespace=\"{{ namespace }}\"}[{{ interval }}]))".into()),
        interval: Some("30s".into()),
        ..Default::default()
    };
    let r = with_default
        .query(&target(Provider::AppMesh), &inline, None, &NoPods, None)
        .await;
    assert_eq!(r, MetricResult::Value(12.5));
    assert_eq!(
        prom.requests()[1].params["query"],
        r#"sum(rate(errors{namespace="test"}[30s]))"#
    );

    // an inline query with no Prometheus anywhere says what to set
    let r = metrics()
        .query(&target(Provider::AppMesh), &inline, None, &NoPods, None)
        .await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("metricsServer")),
        "{r:?}"
    );
    // Gateway API has no built-in query: the message points to MetricTemplates
    let sr = CanaryMetric {
        name: "request-success-rate".into(),
        ..Default::default()
    };
    let r = metrics()
        .query(
            &target(Provider::GatewayApi),
            &sr,
            None,
            &NoPods,
            Some(&url),
        )
        .await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("gatewayapi") && msg.contains("MetricTemplate")),
        "{r:?}"
    );
    assert_eq!(prom.requests().len(), 2);
}

#[tokio::test]
async fn several_series_are_an_error_naming_them() {
    let prom = FakePrometheus::start(Answer::ok(
        r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"podinfo-a"},"value":[1,"99"]},
            {"metric":{"pod":"podinfo-b"},"value":[1,"42"]}]}}"#,
    ))
    .await;
    let m = CanaryMetric {
        name: "request-success-rate".into(),
        ..Default::default()
    };
    let url = prom.url();
    let r = metrics()
        .query(&target(Provider::AppMesh), &m, None, &NoPods, Some(&url))
        .await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("2 series") && msg.contains(r#"pod="podinfo-a""#) && msg.contains(r#"pod="podinfo-b""#)),
        "{r:?}"
    );
}

#[tokio::test]
async fn amazon_managed_prometheus_requests_are_signed() {
    let prom = FakePrometheus::start(Answer::value("1")).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let creds = Credentials::new("AKIDEXAMPLE", "secret-key", None, None, "test");
    let p = Prometheus::new(reqwest::Client::new(), &prom.url(), &BTreeMap::new(), None)
        .unwrap()
        .with_sigv4("us-east-1".into(), SharedCredentialsProvider::new(creds));
    assert_eq!(p.query("vector(1)").await.unwrap(), 1.0);
    let req = &prom.requests()[0];
    let auth = &req.headers["authorization"];
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/aps/aws4_request"), "{auth}");
    assert!(auth.contains("SignedHeaders=host;x-amz-date"), "{auth}");
    assert!(req.headers.contains_key("x-amz-date"));
}

#[tokio::test]
async fn range_queries_return_the_series_oldest_first() {
    let prom = FakePrometheus::start(Answer::ok(
        r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1700000000,"1"],[1700000060,"NaN"],[1700000120,"3"]]}]}}"#,
    ))
    .await;
    let p = metrics().prometheus(&prom.url(), None, None).await.unwrap();
    let range = TimeRange {
        start: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        end: Utc.timestamp_opt(1_700_000_120, 0).unwrap(),
        step: Duration::from_secs(60),
    };
    let points = p.range("up", range).await.unwrap();
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    assert_eq!(values, vec![1.0, 3.0], "NaN points are left out");
    assert_eq!(points[1].time, range.end);
    let req = &prom.requests()[0];
    assert_eq!(req.path, "/api/v1/query_range");
    assert_eq!(req.params["start"], "1700000000");
    assert_eq!(req.params["end"], "1700000120");
    assert_eq!(req.params["step"], "60");
}
