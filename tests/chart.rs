//! The Helm chart's RBAC against what the controller really does: the `serin controller` binary
//! runs a whole rollout against the Kubernetes API server stand-in (initialization, analysis with
//! Prometheus and scrape metrics, a template and an alert provider with Secrets, an HPA, tracked
//! ConfigMaps and Secrets, promotion, deletion with `revertOnDeletion`, leader election), and every
//! request it made must be allowed by `charts/serin/rbac/*.yaml`, the rules the chart grants.

#[path = "support/apiserver/mod.rs"]
mod apiserver;
#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/promapi.rs"]
mod promapi;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use apiserver::{ApiServer, Request};
use e2e::ControllerProcess;
use kubelet::Kubelet;
use promapi::PromApi;
use serde_json::json;

const NS: &str = "test";
/// The release namespace, where the chart puts the leader-election Role.
const RELEASE_NS: &str = "serin-system";
const LEASE: &str = "serin-leader-election";

/// One rule of a Role or ClusterRole.
#[derive(Debug, Default)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

impl Rule {
    fn allows(&self, group: &str, resource: &str, verb: &str, name: &str) -> bool {
        self.groups.iter().any(|g| g == group)
            && self.resources.iter().any(|r| r == resource)
            && self.verbs.iter().any(|v| v == verb)
            && (self.names.is_empty() || self.names.iter().any(|n| n == name))
    }
}

/// Reads a rules file of the chart: YAML list items whose fields are flow lists of quoted strings
/// (`- apiGroups: ["apps"]`), the form `charts/serin/rbac/` keeps so that it reads as JSON too.
fn rules(path: &Path) -> Vec<Rule> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out: Vec<Rule> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (item, field) = match trimmed.strip_prefix("- ") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if item {
            out.push(Rule::default());
        }
        let (key, value) = field.split_once(':').unwrap_or_else(|| {
            panic!(
                "{}:{}: expected `key: [\"...\"]`, got {line:?}",
                path.display(),
                n + 1
            )
        });
        let list: Vec<String> = serde_json::from_str(value.trim()).unwrap_or_else(|e| {
            panic!(
                "{}:{}: {key} must be a flow list of quoted strings: {e}",
                path.display(),
                n + 1
            )
        });
        let rule = out
            .last_mut()
            .unwrap_or_else(|| panic!("{}:{}: field before any rule", path.display(), n + 1));
        match key {
            "apiGroups" => rule.groups = list,
            "resources" => rule.resources = list,
            "resourceNames" => rule.names = list,
            "verbs" => rule.verbs = list,
            other => panic!("{}:{}: unknown rule field {other}", path.display(), n + 1),
        }
    }
    out
}

/// The API group of a request path (`/api/v1/...` is the core group "").
fn group_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    match parts.next() {
        Some("apis") => parts.next().unwrap_or("").to_string(),
        _ => String::new(),
    }
}

fn fixtures(api: &ApiServer, prom: &PromApi) {
    api.create_namespace(NS);
    api.create_namespace(RELEASE_NS);
    api.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "podinfo-env", "namespace": NS},
        "data": {"PODINFO_UI_COLOR": "#34577c"},
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "podinfo-tls", "namespace": NS},
        "type": "Opaque",
        "stringData": {"key": "not-a-real-key"},
    }));
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": NS, "labels": {"app": "podinfo"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}},
                "spec": {
                    "containers": [{
                        "name": "podinfod",
                        "image": "ghcr.io/stefanprodan/podinfo:6.0.0",
                        "envFrom": [{"configMapRef": {"name": "podinfo-env"}}],
                        "volumeMounts": [{"name": "tls", "mountPath": "/tls"}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": "podinfo-tls"}}],
                },
            },
        },
    }));
    api.put(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                 "minReplicas": 2, "maxReplicas": 4},
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "prom-auth", "namespace": NS},
        "stringData": {"token": "test-token"},
    }));
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "error-rate", "namespace": NS},
        "spec": {
            "provider": {"type": "prometheus", "address": prom.url(), "secretRef": {"name": "prom-auth"}},
            "query": "sum(rate(errors{namespace=\"{{ namespace }}\"}[{{ interval }}]))",
        },
    }));
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "envoy-success", "namespace": NS},
        "spec": {
            "provider": {"type": "scrape", "address": ":9901/stats/prometheus"},
            "query": "request-success-rate",
        },
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "alert-address", "namespace": NS},
        "stringData": {"address": "http://127.0.0.1:9/alerts"},
    }));
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "AlertProvider",
        "metadata": {"name": "on-call", "namespace": NS},
        "spec": {"type": "generic", "secretRef": {"name": "alert-address"}},
    }));
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {
            "provider": "appmesh:v1beta2",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo"},
            "progressDeadlineSeconds": 60,
            "revertOnDeletion": true,
            "service": {"port": 9898},
            "analysis": {
                "interval": "10s",
                "threshold": 2,
                "stepWeights": [50],
                "metrics": [
                    {"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "interval": "1m"},
                    {"name": "envoy-success", "templateRef": {"name": "envoy-success"}, "thresholdRange": {"min": 99}, "interval": "1m", "onNoData": "pass"},
                ],
                "alerts": [{"name": "on-call", "severity": "info", "providerRef": {"name": "on-call"}}],
            },
        },
    }));
}

async fn wait_phase(api: &ApiServer, want: &str, timeout: Duration) {
    api.wait_for("serin.dev/v1beta1", "Canary", NS, "podinfo", timeout, |c| {
        c["status"]["phase"] == want
    })
    .await;
}

fn set_image(api: &ApiServer, image: &str) {
    let mut d = api
        .get("apps/v1", "Deployment", NS, "podinfo")
        .expect("the target Deployment exists");
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    if let Some(m) = d["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    api.put(d);
}

/// A request as RBAC sees it: (group, resource[/subresource], verb, namespace, name).
fn access(r: &Request) -> (String, String, String, String, String) {
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    (
        group_of(&r.path),
        resource,
        r.verb.clone(),
        r.namespace.clone(),
        r.name.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_rollout_is_allowed_by_the_charts_rbac() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/serin/rbac");
    let controller_rules = rules(&chart.join("controller.yaml"));
    let lease_rules = rules(&chart.join("leader-election.yaml"));
    assert!(
        !controller_rules.is_empty() && !lease_rules.is_empty(),
        "no rules read from {}",
        chart.display()
    );

    let api = ApiServer::start().await;
    let _kubelet = Kubelet::start(&api);
    let prom = PromApi::start(Some(0.0)).await;
    fixtures(&api, &prom);
    // As the chart runs it: leader election on, the Lease in the release namespace.
    let _controller = ControllerProcess::start(
        &api,
        prom.url(),
        &[
            "--leader-election=true",
            "--leader-election-namespace",
            RELEASE_NS,
        ],
    );

    wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
    set_image(&api, "ghcr.io/stefanprodan/podinfo:6.0.1");
    wait_phase(&api, "Progressing", Duration::from_secs(30)).await;
    wait_phase(&api, "Succeeded", Duration::from_secs(90)).await;
    let lease = api
        .get("coordination.k8s.io/v1", "Lease", RELEASE_NS, LEASE)
        .expect("the controller holds its Lease in the release namespace");
    assert!(
        lease["spec"]["holderIdentity"].is_string(),
        "Lease without holder: {lease}"
    );
    assert!(
        api.delete("serin.dev/v1beta1", "Canary", NS, "podinfo"),
        "the Canary is deleted"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api
        .get("serin.dev/v1beta1", "Canary", NS, "podinfo")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller did not release the Canary's finalizer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let requests = api.requests();
    let mut denied = BTreeSet::new();
    let mut used = BTreeSet::new();
    for r in requests.iter().filter(|r| !r.resource.is_empty()) {
        let (group, resource, verb, ns, name) = access(r);
        let allowed = |verb: &str| {
            controller_rules
                .iter()
                .any(|rule| rule.allows(&group, &resource, verb, &name))
                || (ns == RELEASE_NS
                    && lease_rules
                        .iter()
                        .any(|rule| rule.allows(&group, &resource, verb, &name)))
        };
        if !allowed(&verb) {
            denied.insert(format!("{verb} {group}/{resource} {ns}/{name}"));
        }
        // Server-side apply that creates an object is also authorized as `create`.
        if verb == "patch" && r.status == 201 {
            if !allowed("create") {
                denied.insert(format!("create (by apply) {group}/{resource} {ns}/{name}"));
            }
            used.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        used.insert((group, resource, verb));
    }
    assert!(
        denied.is_empty(),
        "requests the chart's RBAC (charts/serin/rbac/) does not allow; grant them there and \
         in the chart README's RBAC table:\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );
    let kinds = [
        "canaries/status",
        "virtualrouters",
        "virtualnodes",
        "virtualservices",
        "horizontalpodautoscalers",
        "configmaps",
        "secrets",
        "pods",
        "events",
        "leases",
    ];
    for k in kinds {
        assert!(
            used.iter().any(|(_, r, _)| r == k),
            "the rollout never touched {k}, so this test no longer covers its rules; used: {used:?}"
        );
    }
    let granted: BTreeSet<(String, String, String)> = controller_rules
        .iter()
        .chain(&lease_rules)
        .flat_map(|rule| {
            rule.groups.iter().flat_map(move |g| {
                rule.resources.iter().flat_map(move |r| {
                    rule.verbs
                        .iter()
                        .map(move |v| (g.clone(), r.clone(), v.clone()))
                })
            })
        })
        .collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    println!(
        "{} requests, {} distinct (group, resource, verb) used of {} granted; granted but not \
         used in this rollout: {unused:?}",
        requests.len(),
        used.len(),
        granted.len()
    );
}
