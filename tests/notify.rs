//! Alerts against real HTTP servers on 127.0.0.1: the documented payload of each provider
//! type, addresses and tokens from the Secret, and failures that never reveal them.

#[path = "support/http.rs"]
mod http;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use http::{Reply, TestServer, canary};
use serde_json::{Value, json};
use serin::api::{AlertProviderSpec, Canary, CanaryStatus, MetricStatus, Phase, Severity, Verdict};
use serin::notify::{Alert, Notifier, NotifyError};

/// podinfo rolled back after two failed success-rate checks.
fn failed_canary() -> Canary {
    let mut c =
        canary(json!({"interval": "1m", "threshold": 2, "maxWeight": 50, "stepWeight": 10}));
    let time = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 5, 0)
        .single()
        .expect("time");
    c.status = Some(CanaryStatus {
        phase: Phase::Failed,
        failed_checks: 2,
        canary_weight: 0,
        metrics: vec![
            MetricStatus {
                name: "request-success-rate".into(),
                value: Some(97.5),
                verdict: Verdict::Fail,
                message: "success rate 97.50% < 99%".into(),
                time,
            },
            MetricStatus {
                name: "request-duration".into(),
                value: Some(180.0),
                verdict: Verdict::Pass,
                message: "request duration 180ms within ≤ 500ms".into(),
                time,
            },
        ],
        ..Default::default()
    });
    c
}

fn provider(spec: Value) -> AlertProviderSpec {
    serde_json::from_value(spec).expect("provider parses")
}

fn alert(c: &Canary) -> Alert<'_> {
    Alert {
        cluster: Some("prod-eu-1"),
        canary: c,
        severity: Severity::Error,
        message: "Failed checks threshold reached 2",
    }
}

fn chat_fields() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Cluster", "prod-eu-1"),
        ("Target", "Deployment/podinfo.test"),
        ("Phase", "Failed"),
        ("Failed checks", "2 of 2"),
        ("Canary weight", "0%"),
        ("Traffic routing", "Weight step: 10 max: 50"),
        ("Progress deadline", "10m"),
        ("request-success-rate", "Fail: success rate 97.50% < 99%"),
        (
            "request-duration",
            "Pass: request duration 180ms within ≤ 500ms",
        ),
    ]
}

async fn send(
    p: &AlertProviderSpec,
    secret: Option<&BTreeMap<String, String>>,
    a: &Alert<'_>,
) -> Result<(), NotifyError> {
    Notifier::new().expect("notifier").send(p, secret, a).await
}

#[tokio::test]
async fn slack_gets_an_attachment_with_the_check_values() {
    let server = TestServer::answering(200).await;
    let p = provider(
        json!({"type": "slack", "channel": "deploys", "username": "serin-prod",
                            "address": server.url("/services/T0/B0/x")}),
    );
    let c = failed_canary();
    send(&p, None, &alert(&c)).await.expect("sent");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/services/T0/B0/x");
    assert_eq!(reqs[0].headers["content-type"], "application/json");
    assert!(
        !reqs[0].headers.contains_key("authorization"),
        "no token, no header"
    );
    assert_eq!(
        reqs[0].json(),
        json!({
            "channel": "deploys",
            "username": "serin-prod",
            "icon_emoji": ":rocket:",
            "attachments": [{
                "color": "danger",
                "author_name": "podinfo.test",
                "text": "Failed checks threshold reached 2",
                "mrkdwn_in": ["text"],
                "fields": chat_fields().iter()
                    .map(|(t, v)| json!({"title": t, "value": v, "short": false}))
                    .collect::<Vec<_>>(),
            }]
        })
    );
}

#[tokio::test]
async fn slack_colors_and_defaults_follow_the_severity() {
    let server = TestServer::answering(200).await;
    let p = provider(json!({"type": "slack", "address": server.url("/")}));
    let c = failed_canary();
    for (severity, color) in [
        (Severity::Info, "good"),
        (Severity::Warn, "warning"),
        (Severity::Error, "danger"),
    ] {
        let a = Alert {
            severity,
            ..alert(&c)
        };
        send(&p, None, &a).await.expect("sent");
        let body = server.requests().last().expect("request").json();
        assert_eq!(body["attachments"][0]["color"], color);
        assert_eq!(body["channel"], "general");
        assert_eq!(body["username"], "serin");
    }
}

#[tokio::test]
async fn discord_gets_the_slack_payload_on_its_slack_compatible_path() {
    let server = TestServer::answering(204).await;
    let p = provider(json!({"type": "discord", "channel": "deploys",
                            "address": server.url("/api/webhooks/123/abc")}));
    let c = failed_canary();
    send(&p, None, &alert(&c)).await.expect("sent");
    let reqs = server.requests();
    assert_eq!(reqs[0].path, "/api/webhooks/123/abc/slack");
    assert_eq!(
        reqs[0].json()["attachments"][0]["author_name"],
        "podinfo.test"
    );
}

#[tokio::test]
async fn teams_gets_a_message_card() {
    let server = TestServer::answering(200).await;
    let p = provider(json!({"type": "msteams", "address": server.url("/webhookb2/x")}));
    let c = failed_canary();
    send(&p, None, &alert(&c)).await.expect("sent");
    assert_eq!(
        server.requests()[0].json(),
        json!({
            "@type": "MessageCard",
            "@context": "http://schema.org/extensions",
            "themeColor": "FF0000",
            "summary": "podinfo.test",
            "sections": [{
                "activityTitle": "Failed checks threshold reached 2",
                "activitySubtitle": "podinfo.test",
                "facts": chat_fields().iter()
                    .map(|(t, v)| json!({"name": t, "value": v}))
                    .collect::<Vec<_>>(),
            }]
        })
    );
}

#[tokio::test]
async fn generic_gets_typed_fields_and_the_token_from_the_secret() {
    let server = TestServer::answering(202).await;
    let p = provider(
        json!({"type": "generic", "address": "https://ignored.example/",
                            "secretRef": {"name": "alerts"}}),
    );
    let secret = BTreeMap::from([
        ("address".to_string(), server.url("/hooks/serin")),
        ("token".to_string(), "s3cr3t-token".to_string()),
    ]);
    let c = failed_canary();
    send(&p, Some(&secret), &alert(&c)).await.expect("sent");
    let reqs = server.requests();
    assert_eq!(reqs[0].path, "/hooks/serin", "the Secret's address wins");
    assert_eq!(reqs[0].headers["authorization"], "Bearer s3cr3t-token");
    let mut body = reqs[0].json();
    let ts = body["timestamp"].as_str().expect("timestamp").to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&ts).is_ok(), "{ts}");
    body["timestamp"] = Value::Null;
    assert_eq!(
        body,
        json!({
            "cluster": "prod-eu-1",
            "name": "podinfo",
            "namespace": "test",
            "target": "Deployment/podinfo.test",
            "phase": "Failed",
            "severity": "error",
            "message": "Failed checks threshold reached 2",
            "failedChecks": 2,
            "threshold": 2,
            "canaryWeight": 0,
            "metrics": [
                {"name": "request-success-rate", "value": 97.5, "verdict": "Fail",
                 "message": "success rate 97.50% < 99%"},
                {"name": "request-duration", "value": 180.0, "verdict": "Pass",
                 "message": "request duration 180ms within ≤ 500ms"},
            ],
            "timestamp": null,
        })
    );
}

#[tokio::test]
async fn a_refused_alert_reports_the_status_and_body_but_never_the_token() {
    let server = TestServer::start(|_, _| Reply::status(404).body("no_service")).await;
    let p = provider(json!({"type": "slack", "secretRef": {"name": "slack"}}));
    let secret = BTreeMap::from([
        ("address".to_string(), server.url("/services/T0/B0/s3cr3t")),
        ("token".to_string(), "xoxb-s3cr3t".to_string()),
    ]);
    let c = failed_canary();
    let err = send(&p, Some(&secret), &alert(&c))
        .await
        .expect_err("refused");
    assert_eq!(err.label(), "status");
    assert_eq!(
        err.to_string(),
        "sending notification bad response 404: no_service"
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let secret = BTreeMap::from([(
        "address".to_string(),
        format!("http://127.0.0.1:{port}/services/T0/B0/s3cr3t"),
    )]);
    let err = send(&p, Some(&secret), &alert(&c))
        .await
        .expect_err("unreachable");
    assert_eq!(err.label(), "transport");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[tokio::test]
async fn a_provider_without_a_usable_address_says_where_to_set_one() {
    let c = failed_canary();
    let p = provider(json!({"type": "slack", "secretRef": {"name": "slack"}}));
    let err = send(&p, Some(&BTreeMap::new()), &alert(&c))
        .await
        .expect_err("no address");
    assert_eq!(err.label(), "no_address");
    assert!(err.to_string().contains("spec.address"), "{err}");

    let secret = BTreeMap::from([("address".to_string(), "hooks.slack.com/s3cr3t".to_string())]);
    let err = send(&p, Some(&secret), &alert(&c))
        .await
        .expect_err("bad address");
    assert_eq!(
        err.to_string(),
        "the AlertProvider's Secret key 'address' is not an absolute http:// or https:// URL, for example https://hooks.slack.com/services/…"
    );
    assert!(!err.to_string().contains("s3cr3t"));
}
