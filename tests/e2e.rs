//! End to end: the `serin controller` binary, as a process, against the Kubernetes API server
//! stand-in, with Deployments made ready by a kubelet loop and metrics from a Prometheus API the
//! test controls (helpers in `support/e2e.rs`). Each scenario reads what a user would see:
//! objects, weights, status, Events.

#[path = "support/apiserver/mod.rs"]
mod apiserver;
#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/promapi.rs"]
mod promapi;

use std::time::Duration;

use apiserver::ApiServer;
use e2e::{
    ControllerProcess, NS, analysis, canary, events, fixtures, image, kubelet, phase, replicas,
    series, set_image, wait_event, wait_phase, weights,
};
use promapi::PromApi;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialization_creates_the_object_set_and_scales_the_target_to_zero() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    let c = wait_phase(&api, "Initialized", Duration::from_secs(30)).await;

    // FB §3.1: exactly this object set.
    for (api_version, kind, names) in [
        ("apps/v1", "Deployment", vec!["podinfo", "podinfo-primary"]),
        (
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            vec!["podinfo", "podinfo-primary"],
        ),
        (
            "v1",
            "ConfigMap",
            vec!["podinfo-env", "podinfo-env-primary"],
        ),
        (
            "v1",
            "Service",
            vec!["podinfo", "podinfo-canary", "podinfo-primary"],
        ),
        (
            "appmesh.k8s.aws/v1beta2",
            "VirtualNode",
            vec!["podinfo-canary", "podinfo-primary"],
        ),
        (
            "appmesh.k8s.aws/v1beta2",
            "VirtualRouter",
            vec!["podinfo", "podinfo-canary"],
        ),
        (
            "appmesh.k8s.aws/v1beta2",
            "VirtualService",
            vec!["podinfo", "podinfo-canary"],
        ),
    ] {
        let mut have: Vec<String> = api
            .list(api_version, kind, NS)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        have.sort();
        assert_eq!(have, names, "{kind}");
    }
    assert_eq!(replicas(&api, "podinfo"), 0, "the target is scaled to zero");
    assert_eq!(replicas(&api, "podinfo-primary"), 2);
    assert_eq!(weights(&api), Some((100, 0)));
    let apex = api.get("v1", "Service", NS, "podinfo").unwrap_or_default();
    assert_eq!(apex["spec"]["selector"]["app"], "podinfo-primary");
    let vn = api
        .get(
            "appmesh.k8s.aws/v1beta2",
            "VirtualNode",
            NS,
            "podinfo-primary",
        )
        .unwrap_or_default();
    assert_eq!(vn["metadata"]["ownerReferences"][0]["kind"], "Canary");
    assert_eq!(
        vn["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "serin"
    );
    let primary = api
        .get("apps/v1", "Deployment", NS, "podinfo-primary")
        .unwrap_or_default();
    assert_eq!(
        primary["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        "podinfo-env-primary"
    );
    let conditions = c["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |t: &str| {
        conditions
            .iter()
            .find(|x| x["type"] == t)
            .map(|x| x["status"].clone())
    };
    assert_eq!(cond("Promoted"), Some(json!("True")));
    assert_eq!(cond("Ready"), Some(json!("True")));
    wait_event(&api, "Initialized").await;
    let reasons: Vec<String> = events(&api).into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, vec!["Initializing", "Initialized"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_image_is_analysed_promoted_and_scaled_down() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    wait_phase(&api, "Progressing", Duration::from_secs(15)).await;
    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while phase(&canary(&api)) != "Succeeded" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not promoted; saw {seen:?}; events {:?}",
            events(&api)
        );
        if let Some(w) = weights(&api)
            && seen.last() != Some(&w)
        {
            seen.push(w);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        vec![(100, 0), (75, 25), (50, 50), (100, 0)],
        "weights step as configured"
    );
    assert_eq!(
        image(&api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.1"
    );
    assert_eq!(replicas(&api, "podinfo"), 0);
    let notes: Vec<String> = events(&api).into_iter().map(|(_, n)| n).collect();
    let expected = [
        "New revision detected! Scaling up podinfo.test",
        "Starting canary analysis for podinfo.test",
        "Advance podinfo.test canary weight 25",
        "Advance podinfo.test canary weight 50",
        "Copying podinfo.test template spec to podinfo-primary.test",
        "Routing all traffic to primary podinfo.test",
        "Promotion completed! Scaling down podinfo.test",
    ];
    let mut at = 0;
    for n in &notes {
        if at < expected.len() && n == expected[at] {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "events in order: {notes:#?}");
    assert!(!prom.queries().is_empty());
    assert!(
        prom.queries()[0].contains("kubernetes_namespace=\"test\""),
        "template rendered: {}",
        prom.queries()[0]
    );

    let m = controller.metrics().await;
    let this = [("name", "podinfo"), ("namespace", "test")];
    assert_eq!(series(&m, "serin_canary_status", &this), Some(1.0));
    assert_eq!(series(&m, "serin_canary_weight", &this), Some(0.0));
    assert_eq!(series(&m, "serin_canary_failed_checks", &this), Some(0.0));
    assert_eq!(
        series(&m, "serin_canary_metric_value", &[("metric", "error-rate")]),
        Some(0.0)
    );
    assert_eq!(
        series(
            &m,
            "serin_canary_metric_verdict",
            &[("metric", "error-rate"), ("verdict", "Pass")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "serin_canary_metric_verdict",
            &[("metric", "error-rate"), ("verdict", "Fail")]
        ),
        Some(0.0)
    );
    assert_eq!(
        series(
            &m,
            "serin_rollout_duration_seconds_count",
            &[("outcome", "promoted")]
        ),
        Some(1.0)
    );
    assert!(series(&m, "serin_analysis_duration_seconds_count", &[]).unwrap_or(0.0) >= 2.0);
    assert!(series(&m, "serin_reconciles_total", &[]).unwrap_or(0.0) > 0.0);
    assert!(series(&m, "serin_kube_api_requests_total", &[("verb", "patch")]).unwrap_or(0.0) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_metric_rolls_back_and_the_revision_is_not_retried() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    prom.set(Some(12.5));
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.2").await;
    let c = wait_phase(&api, "Failed", Duration::from_secs(60)).await;
    assert_eq!(c["status"]["failedChecks"], 2);
    wait_event(&api, "RolledBack").await;
    let m = controller.metrics().await;
    let this = [("name", "podinfo"), ("namespace", "test")];
    assert_eq!(series(&m, "serin_canary_status", &this), Some(2.0));
    assert_eq!(series(&m, "serin_canary_failed_checks", &this), Some(2.0));
    assert_eq!(
        series(&m, "serin_canary_metric_value", &[("metric", "error-rate")]),
        Some(12.5)
    );
    assert_eq!(
        series(
            &m,
            "serin_canary_metric_verdict",
            &[("metric", "error-rate"), ("verdict", "Fail")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "serin_rollout_duration_seconds_count",
            &[("outcome", "rolled_back")]
        ),
        Some(1.0)
    );
    assert_eq!(weights(&api), Some((100, 0)));
    assert_eq!(replicas(&api, "podinfo"), 0);
    assert_eq!(
        image(&api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.0"
    );
    let evs = events(&api);
    assert!(
        evs.iter()
            .any(|(r, n)| r == "CheckFailed" && n.contains("error-rate 12.50 > 1")),
        "{evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|(r, n)| r == "RolledBack" && n == "Canary failed! Scaling down podinfo.test"),
        "{evs:#?}"
    );
    // The failed revision is not retried.
    prom.set(Some(0.0));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(phase(&canary(&api)), "Failed");
    assert_eq!(replicas(&api, "podinfo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_revision_mid_analysis_restarts_at_weight_zero() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    api.wait_for(
        "serin.dev/v1beta1",
        "Canary",
        NS,
        "podinfo",
        Duration::from_secs(20),
        |c| c["status"]["canaryWeight"] == 25,
    )
    .await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.3").await;
    api.wait_for(
        "serin.dev/v1beta1",
        "Canary",
        NS,
        "podinfo",
        Duration::from_secs(10),
        |c| c["status"]["canaryWeight"] == 0,
    )
    .await;
    wait_event(&api, "Restarted").await;
    wait_phase(&api, "Succeeded", Duration::from_secs(60)).await;
    assert_eq!(
        image(&api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_from_status() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let mut controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    api.wait_for(
        "serin.dev/v1beta1",
        "Canary",
        NS,
        "podinfo",
        Duration::from_secs(20),
        |c| c["status"]["canaryWeight"] == 25,
    )
    .await;
    controller.kill().await;
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Succeeded", Duration::from_secs(60)).await;
    let advances: Vec<String> = events(&api)
        .into_iter()
        .filter(|(r, _)| r == "WeightAdvanced")
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        advances,
        vec![
            "Advance podinfo.test canary weight 25",
            "Advance podinfo.test canary weight 50"
        ],
        "no step applied twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_conflicts_errors_and_cut_watches_do_not_stop_the_rollout() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    api.fail_next("patch", "virtualrouters", 2, 409);
    api.fail_next("update", "canaries/status", 2, 409);
    api.fail_next("patch", "deployments", 1, 500);
    api.wait_for(
        "serin.dev/v1beta1",
        "Canary",
        NS,
        "podinfo",
        Duration::from_secs(30),
        |c| c["status"]["canaryWeight"] == 25,
    )
    .await;
    assert!(api.cut_watches() > 0);
    wait_phase(&api, "Succeeded", Duration::from_secs(60)).await;
    assert_eq!(api.pending_faults(), 0, "every injected fault was hit");
    assert_eq!(
        image(&api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_only_the_leader_writes_and_a_new_leader_finishes() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let mut first = ControllerProcess::start(&api, prom.url(), &["--instance", "first"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    let _second = ControllerProcess::start(&api, prom.url(), &["--instance", "second"]);
    let lease = api
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "serin-leader-election",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    assert_eq!(lease["spec"]["holderIdentity"], "first");
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    api.wait_for(
        "serin.dev/v1beta1",
        "Canary",
        NS,
        "podinfo",
        Duration::from_secs(20),
        |c| c["status"]["canaryWeight"] == 25,
    )
    .await;
    let writers: std::collections::BTreeSet<String> = api
        .list("events.k8s.io/v1", "Event", NS)
        .iter()
        .filter_map(|e| e["reportingInstance"].as_str().map(String::from))
        .collect();
    assert_eq!(
        writers.into_iter().collect::<Vec<_>>(),
        vec!["first".to_string()],
        "only the leader writes"
    );
    first.kill().await;
    wait_phase(&api, "Succeeded", Duration::from_secs(90)).await;
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "serin-leader-election",
        )
        .unwrap_or_default();
    assert_eq!(lease["spec"]["holderIdentity"], "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_template_stalls_without_touching_traffic_and_resumes_when_created() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let template = api
        .get("serin.dev/v1beta1", "MetricTemplate", NS, "error-rate")
        .unwrap_or_default();
    api.delete("serin.dev/v1beta1", "MetricTemplate", NS, "error-rate");
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    let c = api
        .wait_for(
            "serin.dev/v1beta1",
            "Canary",
            NS,
            "podinfo",
            Duration::from_secs(20),
            |c| {
                c["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "Stalled" && x["status"] == "True")
                })
            },
        )
        .await;
    let stalled = c["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let msg = stalled
        .iter()
        .find(|x| x["type"] == "Stalled")
        .map(|x| x["message"].clone())
        .unwrap_or_default();
    assert!(
        msg.as_str()
            .unwrap_or("")
            .contains("MetricTemplate error-rate.test"),
        "{msg}"
    );
    assert!(
        api.get("apps/v1", "Deployment", NS, "podinfo-primary")
            .is_none(),
        "nothing created"
    );
    assert_eq!(replicas(&api, "podinfo"), 2, "the target still serves");
    wait_event(&api, "MetricTemplateNotFound").await;
    let mut t = template;
    t["metadata"] = json!({"name": "error-rate", "namespace": NS});
    api.put(t);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_canary_with_revert_on_deletion_gives_traffic_back_to_the_target() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let mut c = canary(&api);
    c["spec"]["revertOnDeletion"] = json!(true);
    api.put(c);
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    let c = api
        .wait_for(
            "serin.dev/v1beta1",
            "Canary",
            NS,
            "podinfo",
            Duration::from_secs(10),
            |c| {
                c["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("finalizer.serin.dev")))
            },
        )
        .await;
    assert_eq!(replicas(&api, "podinfo"), 0);
    assert!(c["metadata"]["deletionTimestamp"].is_null());
    api.delete("serin.dev/v1beta1", "Canary", NS, "podinfo");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api
        .get("serin.dev/v1beta1", "Canary", NS, "podinfo")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the finalizer was not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replicas(&api, "podinfo"), 2, "the target serves again");
    let apex = api
        .get("v1", "Service", NS, "podinfo")
        .expect("the apex Service is kept");
    assert_eq!(apex["spec"]["selector"]["app"], "podinfo");
    // Objects owned by the Canary are garbage-collected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        api.get("apps/v1", "Deployment", NS, "podinfo-primary")
            .is_none()
    );
}

/// The condition of this type on the Canary, as (status, reason, message).
fn condition(c: &Value, type_: &str) -> (String, String, String) {
    c["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .map(|x| {
            (
                x["status"].as_str().unwrap_or("").to_string(),
                x["reason"].as_str().unwrap_or("").to_string(),
                x["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_or_one_without_app_labels_stalls_until_fixed() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), true);
    let target = api
        .get("apps/v1", "Deployment", NS, "podinfo")
        .unwrap_or_default();
    api.delete("apps/v1", "Deployment", NS, "podinfo");
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);

    // No target: Stalled, naming it; nothing created.
    let c = api
        .wait_for(
            "serin.dev/v1beta1",
            "Canary",
            NS,
            "podinfo",
            Duration::from_secs(20),
            |c| condition(c, "Stalled").0 == "True",
        )
        .await;
    let (_, reason, message) = condition(&c, "Stalled");
    assert_eq!(reason, "TargetNotFound");
    assert!(
        message.contains("Deployment podinfo.test not found"),
        "{message}"
    );
    wait_event(&api, "TargetNotFound").await;
    assert!(
        api.get("apps/v1", "Deployment", NS, "podinfo-primary")
            .is_none()
    );

    // A target whose selector has none of the app labels: Stalled, naming the labels.
    let mut unlabelled = target.clone();
    unlabelled["metadata"] = json!({"name": "podinfo", "namespace": NS});
    unlabelled["spec"]["selector"] = json!({"matchLabels": {"tier": "web"}});
    unlabelled["spec"]["template"]["metadata"]["labels"] = json!({"tier": "web"});
    unlabelled["status"] = Value::Null;
    api.put(unlabelled);
    let c = api
        .wait_for(
            "serin.dev/v1beta1",
            "Canary",
            NS,
            "podinfo",
            Duration::from_secs(20),
            |c| condition(c, "Stalled").1 == "NoSelectorLabel",
        )
        .await;
    let (_, _, message) = condition(&c, "Stalled");
    assert!(
        message.contains("app, name, app.kubernetes.io/name"),
        "{message}"
    );
    assert!(
        api.get("apps/v1", "Deployment", NS, "podinfo-primary")
            .is_none()
    );
    assert!(
        api.get("appmesh.k8s.aws/v1beta2", "VirtualRouter", NS, "podinfo")
            .is_none(),
        "traffic untouched"
    );

    // Fixing the cause resumes without a restart.
    api.delete("apps/v1", "Deployment", NS, "podinfo");
    let mut fixed = target;
    fixed["metadata"] = json!({"name": "podinfo", "namespace": NS, "labels": {"app": "podinfo"}});
    fixed["status"] = Value::Null;
    api.put(fixed);
    let c = wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    assert_eq!(condition(&c, "Stalled").0, "False");
}
