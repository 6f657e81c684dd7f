//! App Mesh (`appmesh.k8s.aws/v1beta2`) objects for a Canary (FB §3.1–3.8): VirtualNodes
//! `<svc>-primary` and `<svc>-canary`, VirtualRouters and VirtualServices `<svc>` and
//! `<svc>-canary`, and the weights of the apex router's first route. Pure builders; the
//! controller applies them with server-side apply, leaving fields the App Mesh controller fills in
//! (`awsName`, `meshRef`) to it.

use serde_json::{Value, json};

use crate::api::{Canary, HttpMatchRequest, StringMatch};
use crate::engine::Weights;

pub const GROUP: &str = "appmesh.k8s.aws";
pub const VERSION: &str = "v1beta2";

/// Listener port and protocol from the Canary's service (FB §3.3).
fn listener(c: &Canary) -> Value {
    let s = &c.spec.service;
    let port = match &s.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) if *p > 0 => *p,
        _ => s.port,
    };
    let grpc = s.port_name.as_deref().is_some_and(|n| n.contains("grpc"));
    json!({"portMapping": {"port": port, "protocol": if grpc { "grpc" } else { "http" }}})
}

fn grpc(c: &Canary) -> bool {
    c.spec
        .service
        .port_name
        .as_deref()
        .is_some_and(|n| n.contains("grpc"))
}

fn timeout_ms(c: &Canary) -> Option<i64> {
    let t = c.spec.service.timeout.as_deref()?;
    crate::api::duration::parse(t)
        .ok()
        .map(|d| d.num_milliseconds())
}

fn metadata(c: &Canary, name: &str, ns: &str, owner: &Value) -> Value {
    let mut labels = serde_json::Map::new();
    let mut annotations = serde_json::Map::new();
    if let Some(apex) = &c.spec.service.apex {
        for (k, v) in apex.labels.iter().flatten() {
            labels.insert(k.clone(), json!(v));
        }
        for (k, v) in apex.annotations.iter().flatten() {
            annotations.insert(k.clone(), json!(v));
        }
    }
    labels.insert("app.kubernetes.io/managed-by".into(), json!("serin"));
    json!({
        "name": name,
        "namespace": ns,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [owner],
    })
}

/// The two VirtualNodes. `label_key` is the target's selector label; pods are selected by the
/// selector label *value* (Flagger used the target name, which breaks when they differ).
pub fn virtual_nodes(c: &Canary, ns: &str, label: &(String, String), owner: &Value) -> Vec<Value> {
    let svc = c.spec.service_name();
    let mut listener = listener(c);
    if let Some(ms) = timeout_ms(c) {
        let key = if grpc(c) { "grpc" } else { "http" };
        listener["timeout"] = json!({key: {"perRequest": {"unit": "ms", "value": ms}}});
    }
    let backends: Vec<Value> = c
        .spec
        .service
        .backends
        .iter()
        .flatten()
        .map(|b| {
            if b.starts_with("arn:aws") {
                json!({"virtualService": {"virtualServiceARN": b}})
            } else {
                json!({"virtualService": {"virtualServiceRef": {"name": b}}})
            }
        })
        .collect();
    [
        ("primary", format!("{}-primary", label.1)),
        ("canary", label.1.clone()),
    ]
    .into_iter()
    .map(|(role, selector)| {
        let name = format!("{svc}-{role}");
        let mut spec = json!({
            "listeners": [listener.clone()],
            "podSelector": {"matchLabels": {label.0.clone(): selector}},
            "serviceDiscovery": {"dns": {"hostname": format!("{name}.{ns}.svc.cluster.local.")}},
        });
        if !backends.is_empty() {
            spec["backends"] = json!(backends);
        }
        if c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("appmesh.serin.dev/accesslog"))
            .is_some_and(|v| v == "enabled")
        {
            spec["logging"] = json!({"accessLog": {"file": {"path": "/dev/stdout"}}});
        }
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "VirtualNode",
            "metadata": metadata(c, &name, ns, owner),
            "spec": spec,
        })
    })
    .collect()
}

fn weighted(svc: &str, w: Weights) -> Value {
    json!([
        {"virtualNodeRef": {"name": format!("{svc}-canary")}, "weight": w.canary},
        {"virtualNodeRef": {"name": format!("{svc}-primary")}, "weight": w.primary},
    ])
}

fn route_common(c: &Canary) -> Value {
    let prefix = c
        .spec
        .service
        .match_
        .as_ref()
        .and_then(|m| m.first())
        .and_then(|m| m.uri.as_ref())
        .and_then(|u| u.prefix.clone())
        .unwrap_or_else(|| "/".into());
    let mut r = json!({"match": {"prefix": prefix}});
    if let Some(ms) = timeout_ms(c) {
        r["timeout"] = json!({"perRequest": {"unit": "ms", "value": ms}});
    }
    if let Some(retry) = &c.spec.service.retries {
        let per_try = retry
            .per_try_timeout
            .as_deref()
            .and_then(|t| crate::api::duration::parse(t).ok())
            .map_or(250, |d| d.num_milliseconds());
        let events: Vec<String> = retry
            .retry_on
            .as_deref()
            .unwrap_or("gateway-error")
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let mut policy = json!({
            "maxRetries": retry.attempts.unwrap_or(1),
            "perRetryTimeout": {"unit": "ms", "value": per_try},
        });
        if grpc(c) {
            policy["grpcRetryEvents"] = json!(events);
        } else {
            policy["httpRetryEvents"] = json!(events);
        }
        r["retryPolicy"] = policy;
    }
    r
}

fn header_matches(m: &[HttpMatchRequest]) -> Vec<Value> {
    fn one(s: &StringMatch) -> Value {
        let mut v = serde_json::Map::new();
        for (k, x) in [
            ("exact", &s.exact),
            ("prefix", &s.prefix),
            ("suffix", &s.suffix),
            ("regex", &s.regex),
        ] {
            if let Some(x) = x {
                v.insert(k.into(), json!(x));
            }
        }
        Value::Object(v)
    }
    m.iter()
        .flat_map(|r| r.headers.iter().flatten())
        .map(|(name, s)| json!({"name": name, "match": one(s)}))
        .collect()
}

fn route(
    c: &Canary,
    name: &str,
    targets: Value,
    priority: Option<i32>,
    headers: &[Value],
) -> Value {
    let mut http = route_common(c);
    if !headers.is_empty() {
        http["match"]["headers"] = json!(headers);
    }
    http["action"] = json!({"weightedTargets": targets});
    let key = if grpc(c) { "grpcRoute" } else { "httpRoute" };
    let mut r = json!({"name": name, key: http});
    if grpc(c) {
        // gRPC routes match on the service name, not a path prefix.
        r[key]["match"] = json!({});
        if let Some(ms) = timeout_ms(c) {
            r[key]["timeout"] = json!({"perRequest": {"unit": "ms", "value": ms}});
        }
    }
    if let Some(p) = priority {
        r["priority"] = json!(p);
    }
    r
}

/// The apex router `<svc>` with the given weights (A/B: a header route first, then the default
/// route to the primary), and the canary router `<svc>-canary` sending everything to the canary.
pub fn virtual_routers(c: &Canary, ns: &str, owner: &Value, apex: Weights) -> Vec<Value> {
    let svc = c.spec.service_name();
    let analysis = c.spec.analysis();
    let headers = header_matches(analysis.match_.as_deref().unwrap_or(&[]));
    let apex_routes = if headers.is_empty() || analysis.iterations.is_none() {
        vec![route(c, svc, weighted(svc, apex), None, &[])]
    } else {
        vec![
            route(
                c,
                &format!("{svc}-a"),
                weighted(svc, apex),
                Some(10),
                &headers,
            ),
            route(
                c,
                &format!("{svc}-b"),
                json!([{"virtualNodeRef": {"name": format!("{svc}-primary")}, "weight": 100}]),
                Some(20),
                &[],
            ),
        ]
    };
    let canary_routes = vec![route(
        c,
        &format!("{svc}-canary"),
        weighted(svc, Weights::ALL_CANARY),
        None,
        &[],
    )];
    [
        (svc.to_string(), apex_routes),
        (format!("{svc}-canary"), canary_routes),
    ]
    .into_iter()
    .map(|(name, routes)| {
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "VirtualRouter",
            "metadata": metadata(c, &name, ns, owner),
            "spec": {"listeners": [listener(c)], "routes": routes},
        })
    })
    .collect()
}

/// VirtualServices `<svc>` and `<svc>-canary`, each provided by its router. The apex one carries
/// the gateway annotations when `service.hosts` is set (FB §3.5).
pub fn virtual_services(c: &Canary, ns: &str, owner: &Value) -> Vec<Value> {
    let svc = c.spec.service_name();
    [svc.to_string(), format!("{svc}-canary")]
        .into_iter()
        .map(|name| {
            let mut meta = metadata(c, &name, ns, owner);
            let hosts: Vec<&String> = c.spec.service.hosts.iter().flatten().collect();
            if name == svc && !hosts.is_empty() {
                let a = &mut meta["annotations"];
                a["gateway.appmesh.k8s.aws/expose"] = json!("true");
                a["gateway.appmesh.k8s.aws/domain"] =
                    json!(hosts.iter().map(|h| format!("{h},")).collect::<String>());
                if let Some(t) = &c.spec.service.timeout {
                    a["gateway.appmesh.k8s.aws/timeout"] = json!(t);
                }
                if let Some(n) = c
                    .spec
                    .service
                    .retries
                    .as_ref()
                    .and_then(|r| r.attempts)
                    .filter(|n| *n > 0)
                {
                    a["gateway.appmesh.k8s.aws/retries"] = json!(n.to_string());
                }
            }
            json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "VirtualService",
                "metadata": meta,
                "spec": {
                    "provider": {"virtualRouter": {"virtualRouterRef": {"name": name}}},
                },
            })
        })
        .collect()
}

/// Weights of the apex router's first route, read from a live VirtualRouter.
pub fn read_weights(router: &Value, svc: &str) -> Result<Weights, String> {
    let route = router
        .pointer("/spec/routes/0")
        .ok_or_else(|| format!("VirtualRouter {svc} has no routes"))?;
    let targets = route
        .pointer("/httpRoute/action/weightedTargets")
        .or_else(|| route.pointer("/grpcRoute/action/weightedTargets"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("VirtualRouter {svc} route 0 has no weightedTargets"))?;
    let weight = |node: &str| {
        targets
            .iter()
            .find(|t| t.pointer("/virtualNodeRef/name").and_then(Value::as_str) == Some(node))
            .and_then(|t| t.get("weight"))
            .and_then(Value::as_i64)
            .map(|w| w as i32)
    };
    match (
        weight(&format!("{svc}-primary")),
        weight(&format!("{svc}-canary")),
    ) {
        (Some(p), Some(c)) if p + c > 0 => Ok(Weights {
            primary: p,
            canary: c,
        }),
        _ => Err(format!(
            "VirtualRouter {svc} route 0 does not target {svc}-primary and {svc}-canary"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> Canary {
        serde_saphyr::from_str(
            "apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  provider: appmesh:v1beta2
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service:
    port: 9898
    timeout: 30s
    retries: {attempts: 3, perTryTimeout: 5s, retryOn: 'gateway-error,client-error'}
    backends: [test.example.com, 'arn:aws:appmesh:eu-west-1:1:mesh/global/virtualService/x']
  analysis: {interval: 1m, stepWeight: 10}
",
        )
        .expect("canary")
    }

    fn owner() -> Value {
        json!({"apiVersion": "serin.dev/v1beta1", "kind": "Canary", "name": "podinfo", "uid": "u"})
    }

    #[test]
    fn virtual_nodes_match_fb_3_3() {
        let vns = virtual_nodes(
            &canary(),
            "test",
            &("app".into(), "podinfo".into()),
            &owner(),
        );
        assert_eq!(vns.len(), 2);
        let p = &vns[0];
        assert_eq!(p["metadata"]["name"], "podinfo-primary");
        assert_eq!(
            p["spec"]["podSelector"]["matchLabels"]["app"],
            "podinfo-primary"
        );
        assert_eq!(
            p["spec"]["serviceDiscovery"]["dns"]["hostname"],
            "podinfo-primary.test.svc.cluster.local."
        );
        assert_eq!(
            p["spec"]["listeners"][0]["portMapping"],
            json!({"port": 9898, "protocol": "http"})
        );
        assert_eq!(
            p["spec"]["listeners"][0]["timeout"]["http"]["perRequest"]["value"],
            30000
        );
        assert_eq!(p["spec"]["backends"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            p["spec"]["backends"][1]["virtualService"]["virtualServiceARN"],
            "arn:aws:appmesh:eu-west-1:1:mesh/global/virtualService/x"
        );
        assert_eq!(
            vns[1]["spec"]["podSelector"]["matchLabels"]["app"],
            "podinfo"
        );
        assert!(p.pointer("/spec/meshRef").is_none() && p.pointer("/spec/awsName").is_none());
        assert_eq!(
            p["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "serin"
        );
    }

    #[test]
    fn routers_carry_weights_timeout_and_retries() {
        let vrs = virtual_routers(&canary(), "test", &owner(), Weights::canary(10));
        let apex = &vrs[0];
        assert_eq!(apex["metadata"]["name"], "podinfo");
        let r = &apex["spec"]["routes"][0]["httpRoute"];
        assert_eq!(r["match"]["prefix"], "/");
        assert_eq!(r["timeout"]["perRequest"]["value"], 30000);
        assert_eq!(r["retryPolicy"]["maxRetries"], 3);
        assert_eq!(r["retryPolicy"]["perRetryTimeout"]["value"], 5000);
        assert_eq!(
            r["retryPolicy"]["httpRetryEvents"],
            json!(["gateway-error", "client-error"])
        );
        assert_eq!(read_weights(apex, "podinfo"), Ok(Weights::canary(10)));
        assert!(
            read_weights(&vrs[1], "podinfo-canary").is_err(),
            "the canary router targets only the canary"
        );
        assert_eq!(
            vrs[1]["spec"]["routes"][0]["httpRoute"]["action"]["weightedTargets"][0]["weight"],
            100
        );
    }

    #[test]
    fn ab_testing_adds_a_header_route() {
        let mut c = canary();
        c.spec.analysis = serde_saphyr::from_str(
            "{interval: 1m, iterations: 10, match: [{headers: {x-canary: {exact: insider}}}]}",
        )
        .ok();
        let vrs = virtual_routers(&c, "test", &owner(), Weights::ALL_CANARY);
        let routes = vrs[0]["spec"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0]["priority"], 10);
        assert_eq!(
            routes[0]["httpRoute"]["match"]["headers"],
            json!([{"name": "x-canary", "match": {"exact": "insider"}}])
        );
        assert_eq!(
            routes[1]["httpRoute"]["action"]["weightedTargets"],
            json!([{"virtualNodeRef": {"name": "podinfo-primary"}, "weight": 100}])
        );
    }

    #[test]
    fn virtual_services_point_at_their_routers_and_expose_hosts() {
        let mut c = canary();
        c.spec.service.hosts = Some(vec!["app.example.com".into()]);
        let vss = virtual_services(&c, "test", &owner());
        assert_eq!(
            vss[0]["spec"]["provider"]["virtualRouter"]["virtualRouterRef"]["name"],
            "podinfo"
        );
        assert_eq!(
            vss[1]["spec"]["provider"]["virtualRouter"]["virtualRouterRef"]["name"],
            "podinfo-canary"
        );
        assert_eq!(
            vss[0]["metadata"]["annotations"]["gateway.appmesh.k8s.aws/domain"],
            "app.example.com,"
        );
        assert!(
            vss[1]["metadata"]["annotations"]
                .get("gateway.appmesh.k8s.aws/expose")
                .is_none()
        );
    }
}
