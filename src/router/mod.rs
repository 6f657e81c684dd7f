//! Routers: the Kubernetes Services every provider needs (apex, `-primary`, `-canary`) and the
//! provider's traffic objects — App Mesh routers (`appmesh`), or the apex Service's selector for
//! blue/green without a mesh (`kubernetes`). Builders here are pure; the controller applies them.

pub mod appmesh;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::{Canary, CustomMetadata};
use crate::engine::Weights;

fn merged(meta: Option<&CustomMetadata>, extra: (&str, &str)) -> (Value, Value) {
    let mut labels: BTreeMap<String, String> =
        meta.and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(extra.0.into(), extra.1.into());
    labels.insert("app.kubernetes.io/managed-by".into(), "serin".into());
    let annotations = meta.and_then(|m| m.annotations.clone()).unwrap_or_default();
    (json!(labels), json!(annotations))
}

fn port(c: &Canary) -> Value {
    let s = &c.spec.service;
    let mut p = json!({
        "name": s.port_name.clone().unwrap_or_else(|| "http".into()),
        "protocol": "TCP",
        "port": s.port,
        "targetPort": match &s.target_port {
            Some(t) => serde_json::to_value(t).unwrap_or(json!(s.port)),
            None => json!(s.port),
        },
    });
    if let Some(a) = &s.app_protocol {
        p["appProtocol"] = json!(a);
    }
    p
}

/// A Service selecting pods whose selector label has `value`.
fn service(
    c: &Canary,
    name: &str,
    ns: &str,
    label: &(String, String),
    value: &str,
    meta: Option<&CustomMetadata>,
    owner: &Value,
) -> Value {
    let (labels, annotations) = merged(meta, (&label.0, name));
    let mut spec = json!({
        "type": "ClusterIP",
        "selector": {label.0.clone(): value},
        "ports": [port(c)],
    });
    if c.spec.service.headless == Some(true) {
        spec["clusterIP"] = json!("None");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": spec,
    })
}

/// The `-canary` and `-primary` Services and the apex Service. The apex selects the primary,
/// or — with the `kubernetes` provider and all traffic on the canary — the canary.
pub fn services(
    c: &Canary,
    ns: &str,
    label: &(String, String),
    owner: &Value,
    apex: Weights,
) -> Vec<Value> {
    let svc = c.spec.service_name();
    let primary = format!("{}-primary", label.1);
    let apex_value = if apex.canary == 100 && kubernetes_router(c) {
        label.1.clone()
    } else {
        primary.clone()
    };
    vec![
        service(
            c,
            &format!("{svc}-canary"),
            ns,
            label,
            &label.1,
            c.spec.service.canary.as_ref(),
            owner,
        ),
        service(
            c,
            &format!("{svc}-primary"),
            ns,
            label,
            &primary,
            c.spec.service.primary.as_ref(),
            owner,
        ),
        service(
            c,
            svc,
            ns,
            label,
            &apex_value,
            c.spec.service.apex.as_ref(),
            owner,
        ),
    ]
}

/// True when the Canary's traffic is moved by the apex Service alone.
pub fn kubernetes_router(c: &Canary) -> bool {
    c.spec.provider.map(crate::api::Provider::router) == Some(crate::api::RouterKind::Kubernetes)
}

/// Weights as the apex Service's selector expresses them (kubernetes provider).
pub fn service_weights(apex: &Value, label: &(String, String)) -> Weights {
    let selected = apex
        .pointer("/spec/selector")
        .and_then(|s| s.get(&label.0))
        .and_then(Value::as_str);
    if selected == Some(label.1.as_str()) {
        Weights::ALL_CANARY
    } else {
        Weights::ALL_PRIMARY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(provider: &str) -> Canary {
        serde_saphyr::from_str(&format!(
            "apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {{name: podinfo, namespace: test}}
spec:
  provider: {provider}
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: podinfo}}
  service:
    port: 9898
    targetPort: http
    apex: {{annotations: {{team: web}}}}
  analysis: {{interval: 1m, iterations: 2}}
"
        ))
        .expect("canary")
    }

    #[test]
    fn three_services_with_selectors_ports_and_metadata() {
        let label = ("app".to_string(), "podinfo".to_string());
        let owner = json!({"kind": "Canary", "name": "podinfo"});
        let s = services(
            &canary("appmesh:v1beta2"),
            "test",
            &label,
            &owner,
            Weights::ALL_CANARY,
        );
        let names: Vec<_> = s
            .iter()
            .map(|x| x["metadata"]["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(names, vec!["podinfo-canary", "podinfo-primary", "podinfo"]);
        assert_eq!(s[0]["spec"]["selector"]["app"], "podinfo");
        assert_eq!(s[1]["spec"]["selector"]["app"], "podinfo-primary");
        assert_eq!(
            s[2]["spec"]["selector"]["app"], "podinfo-primary",
            "App Mesh moves traffic, not the apex"
        );
        assert_eq!(
            s[2]["spec"]["ports"][0],
            json!({"name": "http", "protocol": "TCP", "port": 9898, "targetPort": "http"})
        );
        assert_eq!(s[2]["metadata"]["annotations"]["team"], "web");
        assert_eq!(s[2]["metadata"]["labels"]["app"], "podinfo");
    }

    #[test]
    fn kubernetes_provider_switches_the_apex_selector() {
        let label = ("app".to_string(), "podinfo".to_string());
        let owner = json!({});
        let c = canary("kubernetes");
        let blue = services(&c, "test", &label, &owner, Weights::ALL_PRIMARY);
        let green = services(&c, "test", &label, &owner, Weights::ALL_CANARY);
        assert_eq!(blue[2]["spec"]["selector"]["app"], "podinfo-primary");
        assert_eq!(green[2]["spec"]["selector"]["app"], "podinfo");
        assert_eq!(service_weights(&green[2], &label), Weights::ALL_CANARY);
        assert_eq!(service_weights(&blue[2], &label), Weights::ALL_PRIMARY);
    }
}
