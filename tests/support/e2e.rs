//! Helpers for end-to-end tests of the `serin controller` binary against the Kubernetes API
//! server stand-in: the controller as a process (killed on drop, its log shown when the test
//! failed), its `/metrics`, a kubelet loop that makes Deployments ready and keeps one Pod per
//! replica (`<deployment>-<template hash>-<id>`, `status.podIP` 127.0.0.1), and readers of what a
//! user sees: phase, VirtualRouter weights, Events, replicas and images. The test module that
//! includes this one must also include `support/apiserver/mod.rs` as `apiserver`.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Handle};

pub const NS: &str = "test";

/// The controller as a process; killed when dropped, its log printed when the test failed.
pub struct ControllerProcess {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- controller log ({}) ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl ControllerProcess {
    /// `serin controller` against `api`, with `metrics_server` as its default Prometheus
    /// (`scrape` for none) and the extra flags given.
    pub fn start(api: &ApiServer, metrics_server: &str, extra: &[&str]) -> ControllerProcess {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "serin-e2e-controller-{}-{}.log",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log).expect("controller log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_serin"));
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(api.kubeconfig_path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-server")
            .arg(metrics_server)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        ControllerProcess {
            child: cmd.spawn().expect("serin controller starts"),
            log,
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The address the /metrics server bound, read from the log.
    pub async fn address(&self) -> String {
        for _ in 0..200 {
            let text = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
            if let Some(at) = text.find("address=") {
                let rest = &text[at + "address=".len()..];
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the controller did not log its address");
    }

    /// `/metrics` as (series with labels, value) lines.
    pub async fn metrics(&self) -> Vec<(String, f64)> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://{}/metrics", self.address().await);
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

/// Text without terminal colour sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the one series that starts with `name` and has every `label="value"` given.
pub fn series(metrics: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .iter()
        .find(|(s, _)| {
            (s == name || s.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, v)| s.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}

/// Makes Deployments ready the way a kubelet and the Deployment controller would: after a
/// rollout delay, status follows spec (observedGeneration, replicas, updated, available), and
/// the Deployment has one running Pod per replica, labelled as its template says, named
/// `<deployment>-<template hash>-<id>`, with `status.podIP` 127.0.0.1 (where the test's
/// sidecars listen). Pods of an older template, or beyond the replica count, are deleted.
pub fn kubelet(api: &ApiServer, delay: Duration) -> tokio::task::JoinHandle<()> {
    let mut events = api.subscribe("apps/v1", "Deployment", NS);
    let client = api.client();
    let handle = api.handle();
    tokio::spawn(async move {
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, NS);
        while let Some(ev) = events.recv().await {
            let obj = ev.object;
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(0);
            if obj["status"]["observedGeneration"].as_i64() == Some(generation) {
                continue;
            }
            let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let deployments = deployments.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let status = json!({"status": {
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                    ],
                }});
                for _ in 0..20 {
                    let Ok(now) = deployments.get(&name).await else {
                        return;
                    };
                    if now.metadata.generation != Some(generation) {
                        return;
                    }
                    sync_pods(&handle, &obj);
                    let r = deployments
                        .patch_status(
                            &name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(&status),
                        )
                        .await;
                    if r.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    })
}

/// One Pod per replica of `deployment`'s current template, as a ReplicaSet would keep them.
fn sync_pods(api: &Handle, deployment: &Value) {
    let name = deployment["metadata"]["name"].as_str().unwrap_or("");
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let template = &deployment["spec"]["template"];
    let mut hasher = DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    let hash = format!("{:x}", hasher.finish() % 0xff_ffff_ffff);
    let labels = template["metadata"]["labels"].clone();
    let selected = |p: &Value| {
        labels
            .as_object()
            .is_some_and(|ls| ls.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
    };
    let mut current = 0;
    for p in api.list("v1", "Pod", NS).iter().filter(|p| selected(p)) {
        let pod = p["metadata"]["name"].as_str().unwrap_or("");
        if p["metadata"]["labels"]["pod-template-hash"] == hash.as_str() && current < replicas {
            current += 1;
        } else {
            api.delete("v1", "Pod", NS, pod);
        }
    }
    for i in current..replicas {
        let mut pod_labels = labels.clone();
        pod_labels["pod-template-hash"] = json!(hash);
        let mut id = DefaultHasher::new();
        (&hash, i, std::time::SystemTime::now()).hash(&mut id);
        api.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-{hash}-{:05x}", id.finish() % 0xf_ffff), "namespace": NS, "labels": pod_labels},
            "spec": template["spec"].clone(),
            "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]},
        }));
    }
}

pub fn canary(api: &ApiServer) -> Value {
    api.get("serin.dev/v1beta1", "Canary", NS, "podinfo")
        .unwrap_or(Value::Null)
}

pub fn phase(c: &Value) -> &str {
    c["status"]["phase"].as_str().unwrap_or("")
}

pub async fn wait_phase(api: &ApiServer, want: &str, timeout: Duration) -> Value {
    api.wait_for("serin.dev/v1beta1", "Canary", NS, "podinfo", timeout, |c| {
        phase(c) == want
    })
    .await
}

/// Apex router weights (primary, canary).
pub fn weights(api: &Handle) -> Option<(i64, i64)> {
    let vr = api.get("appmesh.k8s.aws/v1beta2", "VirtualRouter", NS, "podinfo")?;
    let targets = vr["spec"]["routes"][0]["httpRoute"]["action"]["weightedTargets"]
        .as_array()?
        .clone();
    let w = |n: &str| {
        targets
            .iter()
            .find(|t| t["virtualNodeRef"]["name"] == n)
            .and_then(|t| t["weight"].as_i64())
    };
    Some((w("podinfo-primary")?, w("podinfo-canary")?))
}

/// Event reasons and messages recorded on the Canary, oldest first.
pub fn events(api: &ApiServer) -> Vec<(String, String)> {
    let mut evs: Vec<Value> = api
        .list("events.k8s.io/v1", "Event", NS)
        .into_iter()
        .filter(|e| e["regarding"]["kind"] == "Canary")
        .collect();
    evs.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    });
    evs.iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["note"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until an Event with this reason was recorded on the Canary.
pub async fn wait_event(api: &ApiServer, reason: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !events(api).iter().any(|(r, _)| r == reason) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} Event; events: {:#?}",
            events(api)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn replicas(api: &ApiServer, name: &str) -> i64 {
    api.get("apps/v1", "Deployment", NS, name)
        .and_then(|d| d["spec"]["replicas"].as_i64())
        .unwrap_or(-1)
}

pub fn image(api: &ApiServer, name: &str) -> String {
    api.get("apps/v1", "Deployment", NS, name)
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_default()
}

/// `kubectl set image` on the target Deployment, as CI would.
pub async fn set_image(api: &ApiServer, image: &str) {
    let out = api
        .kubectl()
        .args([
            "-n",
            NS,
            "set",
            "image",
            "deployment/podinfo",
            &format!("podinfod={image}"),
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl set image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The target Deployment `podinfo` (selector `app: podinfo`, two replicas, a ConfigMap in its
/// env), an `error-rate` MetricTemplate on the Prometheus API at `metrics_address`, optionally
/// an HPA, and the Canary with `analysis`.
pub fn fixtures(api: &ApiServer, metrics_address: &str, analysis: Value, autoscaler: bool) {
    api.create_namespace(NS);
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": NS, "labels": {"app": "podinfo"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}},
                "spec": {"containers": [{"name": "podinfod", "image": "ghcr.io/stefanprodan/podinfo:6.0.0",
                    "envFrom": [{"configMapRef": {"name": "podinfo-env"}}]}]},
            },
        },
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "podinfo-env", "namespace": NS},
        "data": {"PODINFO_UI_COLOR": "#34577c"},
    }));
    if autoscaler {
        api.put(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                 "minReplicas": 2, "maxReplicas": 4},
    }));
    }
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "error-rate", "namespace": NS},
        "spec": {
            "provider": {"type": "prometheus", "address": metrics_address},
            "query": "100 - sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace=\"{{ namespace }}\",envoy_response_code!~\"5.*\"}[{{ interval }}])) / sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace=\"{{ namespace }}\"}[{{ interval }}])) * 100",
        },
    }));
    let mut canary = json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {
            "provider": "appmesh:v1beta2",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 9898, "timeout": "15s"},
            "analysis": analysis,
        },
    });
    if !autoscaler {
        canary["spec"]
            .as_object_mut()
            .map(|s| s.remove("autoscalerRef"));
    }
    api.put(canary);
}

/// Steps of 25 up to 50 every 10s, two failed checks roll back, error rate at most 1%.
pub fn analysis() -> Value {
    json!({
        "interval": "10s",
        "threshold": 2,
        "maxWeight": 50,
        "stepWeight": 25,
        "metrics": [{"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "interval": "1m"}],
    })
}
