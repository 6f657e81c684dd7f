//! Outages of every provider: connection refused, HTTP 500, no answer in time, an answer that
//! is not what the protocol promises, and a series that vanishes. Each check fails (or holds,
//! when the metric says `onNoData: hold`) with a message that names the provider and the
//! error; none passes and none panics.

#[path = "support/cloudwatch.rs"]
mod cloudwatch;
#[path = "support/fake_prometheus.rs"]
mod fake_prometheus;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::config::Credentials;
use cloudwatch::{CloudWatchStandIn, Fault};
use fake_prometheus::{Answer, FakePrometheus, refused_address};
use futures::FutureExt;
use futures::future::BoxFuture;
use serin::analysis::judge;
use serin::api::{
    CanaryMetric, MetricProvider, MetricProviderType, MetricTemplateSpec, NoDataPolicy, Provider,
    ThresholdRange, Verdict,
};
use serin::engine::MetricResult;
use serin::metrics::{Metrics, MetricsConfig, Pod, PodSource, ResolvedTemplate, Target};

const TIMEOUT: Duration = Duration::from_millis(500);

fn target() -> Target<'static> {
    Target {
        canary: "podinfo",
        namespace: "test",
        target: "podinfo",
        service: "podinfo",
        provider: Provider::AppMesh,
    }
}

fn success_rate() -> CanaryMetric {
    CanaryMetric {
        name: "request-success-rate".into(),
        interval: Some("1m".into()),
        threshold_range: Some(ThresholdRange {
            min: Some(99.0),
            max: None,
        }),
        ..Default::default()
    }
}

/// The check did not pass under the default policy, nor under `hold`; no data holds under
/// `hold`; the message names the provider and contains `needle`.
fn assert_not_passing(r: &MetricResult, provider: &str, needle: &str) {
    let msg = match r {
        MetricResult::Value(v) => panic!("{provider}: outage gave a value {v}"),
        MetricResult::NoData(m) | MetricResult::Error(m) => m,
    };
    assert!(
        msg.contains(provider) && msg.contains(needle),
        "message should name {provider} and '{needle}': {msg}"
    );
    let mut m = success_rate();
    assert!(
        matches!(judge(&m, r).verdict, Verdict::Fail | Verdict::Error),
        "{provider}: {msg}"
    );
    m.on_no_data = Some(NoDataPolicy::Hold);
    let held = judge(&m, r).verdict;
    match r {
        MetricResult::NoData(_) => assert_eq!(held, Verdict::Hold, "{msg}"),
        _ => assert_eq!(held, Verdict::Error, "{msg}"),
    }
}

struct NoPods;

impl PodSource for NoPods {
    fn pods<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        async { Ok(vec![]) }.boxed()
    }
}

fn config() -> MetricsConfig {
    MetricsConfig {
        timeout: TIMEOUT,
        ..MetricsConfig::default()
    }
}

#[tokio::test]
async fn prometheus_outages() {
    let metrics = Metrics::new(config()).unwrap();
    let m = success_rate();
    let check = |server: String| {
        let metrics = &metrics;
        let m = m.clone();
        async move {
            metrics
                .query(&target(), &m, None, &NoPods, Some(&server))
                .await
        }
    };

    let r = check(refused_address()).await;
    assert_not_passing(&r, "prometheus", "refused");

    let prom = FakePrometheus::start(Answer::status(500, "internal error: storage is full")).await;
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "HTTP 500");
    assert!(matches!(&r, MetricResult::Error(m) if m.contains("storage is full")));
    assert_eq!(prom.requests().len(), 1, "HTTP errors are not retried");

    prom.answer(Answer::status(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#,
    ));
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "bad_data: 1:5: parse error");

    prom.answer(Answer::value("99.9").delayed(Duration::from_secs(3)));
    let before = prom.requests().len();
    let started = Instant::now();
    let r = check(prom.url()).await;
    println!("prometheus timeout reported after {:?}", started.elapsed());
    assert_not_passing(&r, "prometheus", "no answer within");
    assert_eq!(
        prom.requests().len(),
        before + 1,
        "timeouts are not retried"
    );

    prom.answer(Answer::ok("<html>502 Bad Gateway</html>"));
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "not Prometheus API JSON");
    prom.answer(Answer::ok(
        r#"{"status":"success","data":{"resultType":"vector","result":[{"value":"x"}]}}"#,
    ));
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "malformed vector result");

    // the series is there, then vanishes (the canary's pods stopped receiving traffic)
    prom.answer(Answer::value("100"));
    assert_eq!(check(prom.url()).await, MetricResult::Value(100.0));
    prom.answer(Answer::empty());
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "an empty result");
    prom.answer(Answer::value("NaN"));
    let r = check(prom.url()).await;
    assert_not_passing(&r, "prometheus", "NaN");
}

#[tokio::test]
async fn prometheus_transport_errors_are_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // a server that closes the first two connections without answering, then answers
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0u32));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut a = counter.lock().unwrap();
                *a += 1;
                *a
            };
            if n <= 2 {
                drop(stream);
                continue;
            }
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => request.extend_from_slice(&buf[..k]),
                }
            }
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"99.5"]}]}}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let metrics = Metrics::new(config()).unwrap();
    let server = format!("http://{addr}");
    let r = metrics
        .query(&target(), &success_rate(), None, &NoPods, Some(&server))
        .await;
    task.abort();
    assert_eq!(r, MetricResult::Value(99.5));
    assert_eq!(
        *accepted.lock().unwrap(),
        3,
        "two retries after two dropped connections"
    );
}

struct Pods(Mutex<Vec<Pod>>);

impl PodSource for Pods {
    fn pods<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        let pods = self.0.lock().unwrap().clone();
        async move { Ok(pods) }.boxed()
    }
}

struct FailingPods;

impl PodSource for FailingPods {
    fn pods<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        async { Err("deployments.apps \"podinfo\" is forbidden".to_string()) }.boxed()
    }
}

#[tokio::test]
async fn scrape_outages() {
    let pod = |name: &str| Pod {
        name: name.into(),
        ip: "127.0.0.1".into(),
    };
    let check = |port: u16, pods: &'static dyn PodSource| async move {
        let metrics = Metrics::new(MetricsConfig {
            scrape_port: port,
            ..config()
        })
        .unwrap();
        metrics
            .query(&target(), &success_rate(), None, pods, None)
            .await
    };
    let pods: &'static Pods = Box::leak(Box::new(Pods(Mutex::new(vec![pod("podinfo-abc-1")]))));

    let refused = refused_address();
    let port: u16 = refused.rsplit(':').next().unwrap().parse().unwrap();
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "refused");
    assert!(
        matches!(&r, MetricResult::Error(m) if m.contains("podinfo-abc-1")),
        "{r:?}"
    );

    let envoy = FakePrometheus::start(Answer::status(500, "admin is down")).await;
    let port = envoy.addr.port();
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "HTTP 500");

    envoy.answer(
        Answer::ok("# TYPE envoy_cluster_upstream_rq counter\n").delayed(Duration::from_secs(3)),
    );
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "no answer within");

    envoy.answer(Answer::ok("<html>this is not an exposition</html>"));
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "no Envoy request metrics");

    // counters present but no requests yet: no data
    envoy.answer(Answer::ok(
        "# TYPE envoy_cluster_upstream_rq counter\nenvoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"local\"} 0\n",
    ));
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "no requests in the window");

    // the pods vanish (scaled to zero), or cannot be listed
    pods.0.lock().unwrap().clear();
    let r = check(port, pods).await;
    assert_not_passing(&r, "scrape", "no running pods");
    let r = check(port, &FailingPods).await;
    assert_not_passing(&r, "scrape", "forbidden");
}

fn cloudwatch_template() -> MetricTemplateSpec {
    MetricTemplateSpec {
        provider: MetricProvider {
            type_: MetricProviderType::CloudWatch,
            address: None,
            secret_ref: None,
            region: Some("eu-west-1".into()),
            headers: None,
            insecure_skip_verify: None,
        },
        query: r#"[{"Id":"m1","MetricStat":{"Metric":{"Namespace":"AWS/ApplicationELB","MetricName":"RequestCount"},"Period":60,"Stat":"Sum"}}]"#.into(),
    }
}

#[tokio::test]
async fn cloudwatch_outages() {
    let check = |endpoint: String| async move {
        let metrics = Metrics::new(MetricsConfig {
            cloudwatch_endpoint: Some(endpoint),
            aws_credentials: Some(Credentials::new("test", "test", None, None, "test")),
            ..config()
        })
        .unwrap();
        let spec = cloudwatch_template();
        let t = ResolvedTemplate {
            spec: &spec,
            secret: None,
        };
        metrics
            .query(&target(), &success_rate(), Some(&t), &NoPods, None)
            .await
    };

    let r = check(refused_address()).await;
    assert_not_passing(&r, "cloudwatch", "refused");

    let cw = CloudWatchStandIn::start().await;
    cw.set_fault(Some(Fault::Status(500)));
    let r = check(cw.url()).await;
    assert_not_passing(&r, "cloudwatch", "500");

    cw.set_fault(Some(Fault::Delay(Duration::from_secs(3))));
    let started = Instant::now();
    let r = check(cw.url()).await;
    println!("cloudwatch timeout reported after {:?}", started.elapsed());
    assert_not_passing(&r, "cloudwatch", "no answer within");

    cw.set_fault(Some(Fault::NotCbor));
    let r = check(cw.url()).await;
    assert_not_passing(&r, "cloudwatch", "not CloudWatch's protocol");

    // the series has a datapoint, then none in the window
    cw.set_fault(None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    cw.put("AWS/ApplicationELB", "RequestCount", &[], now - 30.0, 7.0);
    assert_eq!(check(cw.url()).await, MetricResult::Value(7.0));
    cw.clear_data();
    let r = check(cw.url()).await;
    assert_not_passing(&r, "cloudwatch", "no datapoints for 'm1'");
}
