//! The API as a user meets it: the committed CRDs match the code, the CEL rules in them reject
//! each invalid Canary with the rule's message (run client-side with kube's CEL interpreter), and
//! `validate_canary` reports the same problems with field paths.

use kube::CustomResourceExt;
use serde_json::{Value, json};
use serin::api::{AlertProvider, Canary, MetricTemplate, validate_canary};

fn schema<T: CustomResourceExt>() -> Value {
    let crd = T::crd();
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRDs have a schema");
    serde_json::to_value(s).expect("schema serializes")
}

fn base() -> Value {
    json!({
        "apiVersion": "serin.dev/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {
            "provider": "appmesh:v1beta2",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "service": {"port": 9898},
            "analysis": {
                "interval": "1m",
                "threshold": 5,
                "maxWeight": 50,
                "stepWeight": 5,
                "metrics": [
                    {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "1m"}
                ],
                "webhooks": [
                    {"name": "load-test", "type": "rollout", "url": "http://loadtester.test/"}
                ]
            }
        }
    })
}

/// Applies a JSON merge patch to the base Canary.
fn with(patch: Value) -> Value {
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    let mut v = base();
    merge(&mut v, patch);
    v
}

fn cel_messages(obj: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema::<Canary>(), obj, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn rust_messages(obj: &Value) -> Vec<String> {
    let canary: Canary = serde_json::from_value(obj.clone()).expect("structurally valid Canary");
    validate_canary(&canary.spec)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Both the admission rules and `validate_canary` reject `obj`, each with `message`.
fn rejected(obj: Value, message: &str) {
    let cel = cel_messages(&obj);
    assert!(
        cel.iter().any(|m| m.contains(message)),
        "CEL did not reject with '{message}': {cel:?}"
    );
    let rust = rust_messages(&obj);
    assert!(
        rust.iter().any(|m| m.contains(message)),
        "validate_canary did not reject with '{message}': {rust:?}"
    );
}

#[test]
fn a_valid_canary_passes_both() {
    assert_eq!(cel_messages(&base()), Vec::<String>::new());
    assert_eq!(rust_messages(&base()), Vec::<String>::new());
}

#[test]
fn exactly_one_strategy_field() {
    let msg = "set exactly one of stepWeight, stepWeights (canary) or iterations";
    rejected(with(json!({"spec": {"analysis": {"iterations": 10}}})), msg);
    rejected(
        with(json!({"spec": {"analysis": {"stepWeight": null}}})),
        msg,
    );
    rejected(
        with(json!({"spec": {"analysis": {"stepWeights": [5, 10]}}})),
        msg,
    );
}

#[test]
fn interval_at_least_ten_seconds() {
    rejected(
        with(json!({"spec": {"analysis": {"interval": "5s"}}})),
        "interval must be at least 10s",
    );
    assert!(cel_messages(&with(json!({"spec": {"analysis": {"interval": "1m30s"}}}))).is_empty());
    assert!(cel_messages(&with(json!({"spec": {"analysis": {"interval": "10s"}}}))).is_empty());
}

#[test]
fn step_weights_strictly_ascending() {
    let msg = "stepWeights must be strictly ascending";
    let ladder =
        |w: Value| with(json!({"spec": {"analysis": {"stepWeight": null, "stepWeights": w}}}));
    rejected(ladder(json!([5, 10, 10, 50])), msg);
    rejected(ladder(json!([50, 10])), msg);
    assert!(cel_messages(&ladder(json!([1, 2, 10, 80]))).is_empty());
    assert!(rust_messages(&ladder(json!([1, 2, 10, 80]))).is_empty());
}

#[test]
fn threshold_range_min_not_above_max() {
    rejected(
        with(json!({"spec": {"analysis": {"metrics": [
            {"name": "request-duration", "thresholdRange": {"min": 500, "max": 100}}
        ]}}})),
        "thresholdRange.min must not be greater than thresholdRange.max",
    );
}

#[test]
fn unknown_metric_without_query_or_template_is_rejected() {
    let msg =
        "is neither built in (request-success-rate, request-duration) nor has query or templateRef";
    let m = |metric: Value| with(json!({"spec": {"analysis": {"metrics": [metric]}}}));
    rejected(
        m(json!({"name": "error-rate", "thresholdRange": {"max": 1}})),
        msg,
    );
    assert!(
        cel_messages(&m(
            json!({"name": "error-rate", "templateRef": {"name": "errors"}})
        ))
        .is_empty()
    );
    assert!(cel_messages(&m(json!({"name": "error-rate", "query": "sum(x)"}))).is_empty());
}

#[test]
fn a_b_match_needs_iterations() {
    rejected(
        with(
            json!({"spec": {"analysis": {"match": [{"headers": {"x-canary": {"exact": "insider"}}}]}}}),
        ),
        "match (A/B testing) needs iterations",
    );
}

#[test]
fn string_match_takes_exactly_one_kind() {
    rejected(
        with(
            json!({"spec": {"analysis": {"stepWeight": null, "iterations": 10, "match": [
                {"headers": {"x-canary": {"exact": "a", "prefix": "b"}}}
            ]}}}),
        ),
        "set exactly one of exact, prefix, suffix or regex",
    );
}

#[test]
fn mirror_is_rejected_with_app_mesh() {
    rejected(
        with(json!({"spec": {"analysis": {"mirror": true}}})),
        "analysis.mirror is not supported by App Mesh",
    );
}

#[test]
fn kubernetes_provider_needs_iterations() {
    rejected(
        with(json!({"spec": {"provider": "kubernetes"}})),
        "the kubernetes provider supports blue/green only",
    );
}

#[test]
fn webhook_urls_must_parse() {
    rejected(
        with(
            json!({"spec": {"analysis": {"webhooks": [{"name": "gate", "url": "loadtester/gate"}]}}}),
        ),
        "must be an absolute http:// or https:// URL",
    );
}

#[test]
fn schema_constraints_cover_ranges_and_enums() {
    // Plain schema constraints (not CEL): the generated schema carries them for the apiserver.
    let s = schema::<Canary>();
    let analysis = &s["properties"]["spec"]["properties"]["analysis"]["properties"];
    assert_eq!(analysis["stepWeight"]["maximum"], json!(100.0));
    assert_eq!(analysis["maxWeight"]["minimum"], json!(1.0));
    assert_eq!(analysis["stepWeights"]["items"]["maximum"], json!(100.0));
    let hook_types = &analysis["webhooks"]["items"]["properties"]["type"]["enum"];
    for t in [
        "confirm-rollout",
        "pre-rollout",
        "rollout",
        "confirm-traffic-increase",
        "confirm-promotion",
        "post-rollout",
        "rollback",
        "event",
    ] {
        assert!(
            hook_types.as_array().is_some_and(|a| a.contains(&json!(t))),
            "{t}"
        );
    }
    let providers = &s["properties"]["spec"]["properties"]["provider"]["enum"];
    assert!(
        providers
            .as_array()
            .is_some_and(|a| a.contains(&json!("appmesh:v1beta2")) && !a.contains(&json!("istio")))
    );
    assert_eq!(
        s["properties"]["spec"]["properties"]["analysis"]["properties"]["metrics"]["items"]["properties"]
            ["onNoData"]["enum"],
        json!(["fail", "pass", "hold", null])
    );
}

#[test]
fn templates_and_providers_have_their_rules() {
    let t = json!({"apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate", "metadata": {"name": "x"},
        "spec": {"provider": {"type": "prometheus"}, "query": "up"}});
    let err = kube::core::cel::Validator::new()
        .validate(&schema::<MetricTemplate>(), &t, None)
        .expect_err("needs address");
    assert!(err.iter().any(|e| e.to_string().contains("needs address")));
    let a = json!({"apiVersion": "serin.dev/v1beta1", "kind": "AlertProvider", "metadata": {"name": "x"},
        "spec": {"type": "slack"}});
    let err = kube::core::cel::Validator::new()
        .validate(&schema::<AlertProvider>(), &a, None)
        .expect_err("needs address");
    assert!(
        err.iter()
            .any(|e| e.to_string().contains("set address, or secretRef"))
    );
}

#[test]
fn committed_crds_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (name, crd) in serin::api::crds::all() {
        let want = serin::api::crds::to_yaml(&crd).expect("CRD serializes");
        let have = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            have == want,
            "crds/{name} is stale: run `cargo run -- crds --dir crds` and commit the result"
        );
    }
}

#[test]
fn flagger_manifest_works_after_changing_api_version() {
    // A Flagger App Mesh Canary (FB §7.5), with only apiVersion changed.
    let yaml = r#"
apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  provider: appmesh:v1beta2
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  progressDeadlineSeconds: 60
  autoscalerRef: {apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler, name: podinfo}
  service:
    port: 9898
    timeout: 15s
    retries: {attempts: 3, perTryTimeout: 5s, retryOn: "gateway-error,client-error,stream-error"}
    match:
      - uri: {prefix: /}
    rewrite: {uri: /}
  analysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 5
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 99}
      interval: 1m
    - name: request-duration
      thresholdRange: {max: 500}
      interval: 30s
    webhooks:
      - name: acceptance-test
        type: pre-rollout
        url: http://flagger-loadtester.test/
        timeout: 30s
        metadata: {type: bash, cmd: "curl -sd 'test' http://podinfo-canary.test:9898/token | grep token"}
      - name: load-test
        url: http://flagger-loadtester.test/
        timeout: 5s
        metadata: {cmd: "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"}
"#;
    let v: Value = serde_saphyr::from_str(yaml).expect("yaml");
    assert!(cel_messages(&v).is_empty(), "{:?}", cel_messages(&v));
    let c: Canary = serde_json::from_value(v).expect("deserializes (unknown fields are ignored)");
    assert!(validate_canary(&c.spec).is_empty());
    assert_eq!(c.spec.analysis().max_weight(), 50);
}
