//! The CloudWatch providers: through the real SDK against the CBOR stand-in (MetricStat
//! statistics, metric math, the shipped policies, the 10 × interval window, alarms), and with
//! aws-smithy-mocks for what the SDK hands back (newest datapoint, first series, errors).

#[path = "support/cloudwatch.rs"]
mod cloudwatch;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::config::Credentials;
use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput;
use aws_sdk_cloudwatch::operation::get_metric_data::{GetMetricDataError, GetMetricDataOutput};
use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{CompositeAlarm, MetricAlarm, MetricDataResult, StateValue};
use aws_smithy_mocks::{mock, mock_client};
use cloudwatch::CloudWatchStandIn;
use futures::FutureExt;
use futures::future::BoxFuture;
use serin::analysis::judge;
use serin::api::{
    CanaryMetric, MetricProvider, MetricProviderType, MetricTemplate, MetricTemplateSpec, Provider,
    ThresholdRange, Verdict,
};
use serin::engine::MetricResult;
use serin::metrics::{
    CloudWatch, CloudWatchAlarms, Metrics, MetricsConfig, MetricsProvider, Pod, PodSource,
    ResolvedTemplate, Target,
};

struct NoPods;

impl PodSource for NoPods {
    fn pods<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, String>> {
        async { Ok(vec![]) }.boxed()
    }
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

fn metrics_for(standin: &CloudWatchStandIn) -> Metrics {
    Metrics::new(MetricsConfig {
        cloudwatch_endpoint: Some(standin.url()),
        aws_credentials: Some(Credentials::new("test", "test", None, None, "test")),
        timeout: Duration::from_secs(2),
        ..MetricsConfig::default()
    })
    .unwrap()
}

fn template(type_: MetricProviderType, query: &str) -> MetricTemplateSpec {
    MetricTemplateSpec {
        provider: MetricProvider {
            type_,
            address: None,
            secret_ref: None,
            region: Some("eu-west-1".into()),
            headers: None,
            insecure_skip_verify: None,
        },
        query: query.into(),
    }
}

fn metric(interval: &str, variables: &[(&str, &str)]) -> CanaryMetric {
    let vars: BTreeMap<String, String> = variables
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CanaryMetric {
        name: "cw".into(),
        interval: Some(interval.into()),
        template_variables: (!vars.is_empty()).then_some(vars),
        ..Default::default()
    }
}

async fn run(metrics: &Metrics, spec: &MetricTemplateSpec, m: &CanaryMetric) -> MetricResult {
    let t = ResolvedTemplate { spec, secret: None };
    metrics.query(&target(), m, Some(&t), &NoPods, None).await
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Start of the last complete minute: the newest bucket the tests fill.
fn last_minute() -> f64 {
    (now() / 60.0).floor() * 60.0 - 60.0
}

const ELB: [(&str, &str); 2] = [
    ("LoadBalancer", "app/web/1"),
    ("TargetGroup", "targetgroup/podinfo-canary/2"),
];

fn stat_query(metric: &str, stat: &str) -> String {
    format!(
        r#"[{{"Id":"m1","MetricStat":{{"Metric":{{"Namespace":"AWS/ApplicationELB","MetricName":"{metric}",
            "Dimensions":[{{"Name":"LoadBalancer","Value":"app/web/1"}},{{"Name":"TargetGroup","Value":"{{{{ variables.tg }}}}"}}]}},
            "Period":60,"Stat":"{stat}"}}}}]"#
    )
}

#[tokio::test]
async fn metric_stat_statistics_give_the_newest_period() {
    let cw = CloudWatchStandIn::start().await;
    let (older, newest) = (last_minute() - 60.0, last_minute());
    for i in 1..=100 {
        cw.put(
            "AWS/ApplicationELB",
            "TargetResponseTime",
            &ELB,
            newest + 1.0,
            f64::from(i),
        );
        cw.put(
            "AWS/ApplicationELB",
            "TargetResponseTime",
            &ELB,
            older + 1.0,
            1000.0,
        );
    }
    let metrics = metrics_for(&cw);
    let m = metric("1m", &[("tg", "targetgroup/podinfo-canary/2")]);
    for (stat, expected) in [
        ("Sum", 5050.0),
        ("Average", 50.5),
        ("Maximum", 100.0),
        ("SampleCount", 100.0),
        ("p99", 99.0),
        ("p50", 50.0),
    ] {
        let spec = template(
            MetricProviderType::CloudWatch,
            &stat_query("TargetResponseTime", stat),
        );
        let r = run(&metrics, &spec, &m).await;
        assert_eq!(r, MetricResult::Value(expected), "{stat}");
    }
    // the window is 10 × the metric interval, ending now
    let (start, end) = cw.last_window().unwrap();
    assert!((end - start - 600.0).abs() < 1.0, "window {}", end - start);
    assert!((now() - end).abs() < 5.0);
    let spec = template(
        MetricProviderType::CloudWatch,
        &stat_query("TargetResponseTime", "Sum"),
    );
    run(
        &metrics,
        &spec,
        &metric("30s", &[("tg", "targetgroup/podinfo-canary/2")]),
    )
    .await;
    let (start, end) = cw.last_window().unwrap();
    assert!((end - start - 300.0).abs() < 1.0, "window {}", end - start);
}

#[tokio::test]
async fn metric_math_and_the_shipped_policies() {
    let cw = CloudWatchStandIn::start().await;
    let t = last_minute();
    cw.put("AWS/ApplicationELB", "RequestCount", &ELB, t + 1.0, 200.0);
    cw.put(
        "AWS/ApplicationELB",
        "HTTPCode_Target_5XX_Count",
        &ELB,
        t + 1.0,
        10.0,
    );
    for i in 1..=100 {
        cw.put(
            "AWS/ApplicationELB",
            "TargetResponseTime",
            &ELB,
            t + 2.0,
            f64::from(i) / 100.0,
        );
    }
    let metrics = metrics_for(&cw);
    let vars = [
        ("loadBalancer", "app/web/1"),
        ("targetGroup", "targetgroup/podinfo-canary/2"),
    ];
    let policy = |file: &str| -> MetricTemplate {
        let path = format!("{}/policies/{file}", env!("CARGO_MANIFEST_DIR"));
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let sr = policy("alb-cloudwatch/success-rate.yaml");
    assert_eq!(
        run(&metrics, &sr.spec, &metric("1m", &vars)).await,
        MetricResult::Value(95.0)
    );
    let p99 = policy("alb-cloudwatch/latency-p99.yaml");
    assert_eq!(
        run(&metrics, &p99.spec, &metric("1m", &vars)).await,
        MetricResult::Value(990.0)
    );

    // no 5xx datapoints at all (CloudWatch sends none when there were none): FILL makes it 100
    let other = [
        ("LoadBalancer", "app/web/1"),
        ("TargetGroup", "targetgroup/clean/3"),
    ];
    cw.put("AWS/ApplicationELB", "RequestCount", &other, t + 1.0, 50.0);
    let clean = [
        ("loadBalancer", "app/web/1"),
        ("targetGroup", "targetgroup/clean/3"),
    ];
    assert_eq!(
        run(&metrics, &sr.spec, &metric("1m", &clean)).await,
        MetricResult::Value(100.0)
    );

    // Envoy counters shipped by the CloudWatch agent
    let dims = [
        ("ClusterName", "prod"),
        ("Namespace", "test"),
        ("app", "podinfo"),
    ];
    let mut errors = dims.to_vec();
    errors.push(("envoy_response_code_class", "5"));
    cw.put(
        "ContainerInsights/Prometheus",
        "envoy_cluster_upstream_rq_total",
        &dims,
        t + 1.0,
        400.0,
    );
    cw.put(
        "ContainerInsights/Prometheus",
        "envoy_cluster_upstream_rq_xx",
        &errors,
        t + 1.0,
        4.0,
    );
    let envoy = policy("appmesh-cloudwatch/success-rate.yaml");
    assert_eq!(
        run(&metrics, &envoy.spec, &metric("1m", &[("cluster", "prod")])).await,
        MetricResult::Value(99.0)
    );

    // a template variable the metric does not set is an error that names it
    let r = run(&metrics, &envoy.spec, &metric("1m", &[])).await;
    assert!(
        matches!(&r, MetricResult::Error(m) if m.contains("variables.cluster") && m.contains("cloudwatch")),
        "{r:?}"
    );
}

#[tokio::test]
async fn no_datapoints_is_no_data_naming_the_query() {
    let cw = CloudWatchStandIn::start().await;
    let metrics = metrics_for(&cw);
    let spec = template(
        MetricProviderType::CloudWatch,
        &stat_query("RequestCount", "Sum"),
    );
    let m = metric("1m", &[("tg", "targetgroup/none/9")]);
    let r = run(&metrics, &spec, &m).await;
    assert!(
        matches!(&r, MetricResult::NoData(msg) if msg.contains("cloudwatch") && msg.contains("'m1'")),
        "{r:?}"
    );
    // an expression over an id that does not exist is the service's validation error
    let bad = template(
        MetricProviderType::CloudWatch,
        r#"[{"Id":"e1","Expression":"m9 * 2"}]"#,
    );
    let r = run(&metrics, &bad, &m).await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("cloudwatch") && msg.contains("ValidationError") && msg.contains("m9")),
        "{r:?}"
    );
}

#[tokio::test]
async fn alarms_in_alarm_fail_the_check() {
    let cw = CloudWatchStandIn::start().await;
    cw.set_alarm("podinfo-latency", "OK", false);
    cw.set_alarm("podinfo-5xx", "ALARM", false);
    cw.set_alarm("podinfo-health", "ALARM", true);
    let metrics = metrics_for(&cw);
    let mut m = metric("1m", &[]);
    m.threshold_range = Some(ThresholdRange {
        min: None,
        max: Some(0.0),
    });
    let quiet = template(
        MetricProviderType::CloudWatchAlarms,
        r#"["podinfo-latency"]"#,
    );
    let r = run(&metrics, &quiet, &m).await;
    assert_eq!(r, MetricResult::Value(0.0));
    assert_eq!(judge(&m, &r).verdict, Verdict::Pass);
    let firing = template(
        MetricProviderType::CloudWatchAlarms,
        r#"["podinfo-latency", "podinfo-5xx", "podinfo-health"]"#,
    );
    let r = run(&metrics, &firing, &m).await;
    assert_eq!(
        r,
        MetricResult::Value(2.0),
        "the composite alarm counts too"
    );
    assert_eq!(judge(&m, &r).verdict, Verdict::Fail);
    let typo = template(
        MetricProviderType::CloudWatchAlarms,
        r#"["podinfo-latency", "podinfo-5XX"]"#,
    );
    let r = run(&metrics, &typo, &m).await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("cloudwatch-alarms") && msg.contains("podinfo-5XX")),
        "{r:?}"
    );
    let not_json = template(MetricProviderType::CloudWatchAlarms, "podinfo-5xx");
    let r = run(&metrics, &not_json, &m).await;
    assert!(
        matches!(&r, MetricResult::Error(msg) if msg.contains("JSON array")),
        "{r:?}"
    );
}

fn result(id: &str, points: &[(i64, f64)]) -> MetricDataResult {
    MetricDataResult::builder()
        .id(id)
        .set_timestamps(Some(
            points
                .iter()
                .map(|(t, _)| AwsDateTime::from_secs(*t))
                .collect(),
        ))
        .set_values(Some(points.iter().map(|(_, v)| *v).collect()))
        .build()
}

const QUERY: &str = r#"[{"Id":"m1","MetricStat":{"Metric":{"Namespace":"N","MetricName":"M"},"Period":60,"Stat":"Sum"}},
                        {"Id":"m2","Expression":"m1 * 2"}]"#;

#[tokio::test]
async fn mocked_sdk_newest_datapoint_of_the_first_series() {
    let rule = mock!(Client::get_metric_data)
        .match_requests(|req| {
            let span = req.end_time().unwrap().secs() - req.start_time().unwrap().secs();
            let ids: Vec<_> = req
                .metric_data_queries()
                .iter()
                .filter_map(|q| q.id())
                .collect();
            span == 1200
                && ids == ["m1", "m2"]
                && req.metric_data_queries()[1].expression() == Some("m1 * 2")
        })
        .then_output(|| {
            GetMetricDataOutput::builder()
                .metric_data_results(result("m1", &[(100, 1.0), (300, 3.0), (200, 2.0)]))
                .metric_data_results(result("m2", &[(300, 6.0)]))
                .build()
        });
    let client = mock_client!(aws_sdk_cloudwatch, [&rule]);
    let cw = CloudWatch::from_client(client);
    let v = cw.instant(QUERY, Duration::from_secs(120)).await.unwrap();
    assert_eq!(v, 3.0, "newest by timestamp, not by position");
    assert_eq!(rule.num_calls(), 1);
}

#[tokio::test]
async fn mocked_sdk_empty_results_and_errors() {
    let empty = mock!(Client::get_metric_data).then_output(|| {
        GetMetricDataOutput::builder()
            .metric_data_results(result("m1", &[]))
            .build()
    });
    let client = mock_client!(aws_sdk_cloudwatch, [&empty]);
    let err = CloudWatch::from_client(client)
        .instant(QUERY, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(err.label(), "no-data");
    assert!(
        err.to_string()
            .contains("no datapoints for 'm1' in the last 10m"),
        "{err}"
    );

    let denied = mock!(Client::get_metric_data).then_error(|| {
        GetMetricDataError::generic(
            aws_sdk_cloudwatch::error::ErrorMetadata::builder()
                .code("AccessDenied")
                .message("not authorized to perform cloudwatch:GetMetricData")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_cloudwatch, [&denied]);
    let err = CloudWatch::from_client(client)
        .instant(QUERY, Duration::from_secs(60))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cloudwatch") && text.contains("AccessDenied"),
        "{text}"
    );
    assert!(text.contains("cloudwatch:GetMetricData"), "{text}");
}

#[tokio::test]
async fn mocked_sdk_alarm_states() {
    let rule = mock!(Client::describe_alarms)
        .match_requests(|req| req.alarm_types().len() == 2 && req.alarm_names().len() == 2)
        .then_output(|| {
            DescribeAlarmsOutput::builder()
                .metric_alarms(
                    MetricAlarm::builder()
                        .alarm_name("a")
                        .state_value(StateValue::InsufficientData)
                        .build(),
                )
                .composite_alarms(
                    CompositeAlarm::builder()
                        .alarm_name("b")
                        .state_value(StateValue::Alarm)
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_cloudwatch, [&rule]);
    let alarms = CloudWatchAlarms::from_client(client);
    assert_eq!(
        alarms
            .instant(r#"["a","b"]"#, Duration::from_secs(60))
            .await
            .unwrap(),
        1.0
    );
}
