//! What the server does to an object on every write besides storing it: defaulting of the
//! built-in kinds (the fields a controller reads back and must tolerate), validation of names,
//! labels and a few kind rules (Deployment selector, Service ports), immutable fields, and the
//! conversion between core v1 and events.k8s.io/v1 Events (one storage, two views).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use super::error::{ApiError, Cause};
use super::resources::ResourceType;

/// RFC 3339 with second precision, as `metav1.Time` is written.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with microseconds, as `metav1.MicroTime` is written.
pub fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn random_u64() -> u64 {
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A version-4-shaped UUID.
pub fn uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// The random suffix `generateName` gets.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Whether the kind has `metadata.generation` managed by the server.
pub fn tracks_generation(rt: &ResourceType) -> bool {
    rt.custom
        || matches!(
            rt.group.as_str(),
            "apps" | "autoscaling" | "apiextensions.k8s.io"
        )
}

/// The part of an object whose change bumps `generation`: everything but metadata, and but
/// status when the kind has a status subresource.
pub fn generation_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if rt.status {
            m.remove("status");
        }
    }
    v
}

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

fn default_probe(p: &mut Value) {
    if let Some(m) = p.as_object_mut() {
        set_default(m, "timeoutSeconds", json!(1));
        set_default(m, "periodSeconds", json!(10));
        set_default(m, "successThreshold", json!(1));
        set_default(m, "failureThreshold", json!(3));
        if let Some(h) = m.get_mut("httpGet").and_then(Value::as_object_mut) {
            set_default(h, "scheme", json!("HTTP"));
        }
    }
}

fn default_container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    set_default(m, "resources", json!({}));
    let image = m.get("image").and_then(Value::as_str).unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let tag = last.split_once(':').map(|(_, t)| t);
    let digest = image.contains('@');
    let policy = if !digest && matches!(tag, None | Some("latest")) {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(m, "imagePullPolicy", json!(policy));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = m.get_mut(list) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(Value::Array(vols)) = m.get_mut("volumes") {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for src in ["configMap", "secret"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

/// Service cluster IPs handed out so far.
static CLUSTER_IPS: AtomicU64 = AtomicU64::new(10);

/// Fills the defaults the real API server fills for built-in kinds. `old` is the stored object
/// on updates (allocated values such as a Service's clusterIP carry over).
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet") => {
            let Some(spec) = obj_mut(obj, "spec") else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            if rt.kind == "Deployment" {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
                if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s.get("type") == Some(&json!("RollingUpdate")) {
                        set_default(s, "rollingUpdate", json!({}));
                        if let Some(r) = s.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                            set_default(r, "maxUnavailable", json!("25%"));
                            set_default(r, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        ("", "Service") => {
            let Some(spec) = obj_mut(obj, "spec") else {
                return;
            };
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            if spec.get("type") != Some(&json!("ExternalName")) {
                let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
                match old_ip {
                    Some(ip) => set_default(spec, "clusterIP", ip),
                    None => {
                        let n = CLUSTER_IPS.fetch_add(1, Ordering::Relaxed);
                        let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                        set_default(spec, "clusterIP", json!(ip));
                    }
                }
                let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
                set_default(spec, "clusterIPs", json!([ip]));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
        }
        ("", "Secret") => {
            let Some(m) = obj.as_object_mut() else { return };
            set_default(m, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) = m.remove("stringData") {
                let data = m.entry("data").or_insert_with(|| json!({}));
                if let Some(d) = data.as_object_mut() {
                    for (k, v) in string_data {
                        let text = v.as_str().unwrap_or_default().as_bytes().to_vec();
                        d.insert(k, json!(base64(&text)));
                    }
                }
            }
        }
        ("", "Namespace") => {
            let Some(m) = obj.as_object_mut() else { return };
            set_default(m, "spec", json!({"finalizers": ["kubernetes"]}));
            set_default(m, "status", json!({"phase": "Active"}));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "minReplicas", json!(1));
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let t = now();
            let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "reason": reason, "message": msg, "lastTransitionTime": t});
            let versions: Vec<Value> = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().filter_map(|v| v.get("name").cloned()).collect())
                .unwrap_or_default();
            if let Some(m) = obj.as_object_mut() {
                m.insert(
                    "status".into(),
                    json!({
                        "acceptedNames": names,
                        "storedVersions": versions,
                        "conditions": [
                            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                        ],
                    }),
                );
            }
        }
        _ => {}
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

fn check_map(obj: &Value, field: &str, values_too: bool, causes: &mut Vec<Cause>) {
    let Some(map) = obj.pointer(&format!("/metadata/{field}")) else {
        return;
    };
    let Some(map) = map.as_object() else {
        causes.push(Cause::new(
            format!("metadata.{field}"),
            "must be a map of strings",
        ));
        return;
    };
    for (k, v) in map {
        if !is_qualified_name(k) {
            causes.push(Cause::new(
                format!("metadata.{field}"),
                format!(
                    "Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', \
                     and must start and end with an alphanumeric character (at most 63 characters), \
                     with an optional DNS subdomain prefix and '/'"
                ),
            ));
        }
        let Some(text) = v.as_str() else {
            causes.push(Cause::new(
                format!("metadata.{field}.{k}"),
                "must be a string",
            ));
            continue;
        };
        if values_too && !is_label_value(text) {
            causes.push(Cause::new(
                format!("metadata.{field}"),
                format!(
                    "Invalid value: {text:?}: a valid label must be an empty string or consist of alphanumeric \
                     characters, '-', '_' or '.', and must start and end with an alphanumeric character \
                     (at most 63 characters)"
                ),
            ));
        }
    }
}

fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let have = labels.get(key).and_then(Value::as_str);
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => have.is_some_and(|h| values.contains(&h)),
                    Some("NotIn") => !have.is_some_and(|h| values.contains(&h)),
                    Some("Exists") => have.is_some(),
                    Some("DoesNotExist") => have.is_none(),
                    _ => false,
                }
            })
        });
    labels_ok && exprs_ok
}

/// Validates an object about to be stored; `old` is the stored object on updates.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut causes = Vec::new();
    let label_only = matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        ("", "Namespace" | "Service")
    );
    if name.is_empty() {
        causes.push(Cause::new(
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if label_only && !is_dns_label(name) {
        causes.push(Cause::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', \
                 start and end with an alphanumeric character, and be at most 63 characters"
            ),
        ));
    } else if !label_only && !is_dns_subdomain(name) {
        causes.push(Cause::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)"
            ),
        ));
    }
    check_map(obj, "labels", true, &mut causes);
    check_map(obj, "annotations", false, &mut causes);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet") => {
            let selector = obj.pointer("/spec/selector");
            let labels = obj
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            match selector {
                None | Some(Value::Null) => {
                    causes.push(Cause::new("spec.selector", "Required value"));
                }
                Some(sel) => {
                    if sel.get("matchLabels").is_none() && sel.get("matchExpressions").is_none() {
                        causes.push(Cause::new(
                            "spec.selector",
                            "Invalid value: empty selector is invalid for deployment",
                        ));
                    } else if !selector_matches(sel, &labels) {
                        causes.push(Cause::new(
                            "spec.template.metadata.labels",
                            format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                        ));
                    }
                    if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector"))
                        && old_sel != sel
                    {
                        causes.push(Cause::new(
                            "spec.selector",
                            format!("Invalid value: {sel}: field is immutable"),
                        ));
                    }
                }
            }
            let containers = obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array);
            if containers.is_none_or(Vec::is_empty) {
                causes.push(Cause::new(
                    "spec.template.spec.containers",
                    "Required value",
                ));
            }
        }
        ("", "Service") => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
            if ty != "ExternalName" && ports.is_none_or(Vec::is_empty) {
                causes.push(Cause::new("spec.ports", "Required value"));
            }
            if let Some(ports) = ports {
                let mut seen = Vec::new();
                for (i, p) in ports.iter().enumerate() {
                    let pname = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    if ports.len() > 1 && pname.is_empty() {
                        causes.push(Cause::new(
                            format!("spec.ports[{i}].name"),
                            "Required value",
                        ));
                    } else if !pname.is_empty() && seen.contains(&pname) {
                        causes.push(Cause::new(
                            format!("spec.ports[{i}].name"),
                            format!("Duplicate value: {pname:?}"),
                        ));
                    }
                    seen.push(pname);
                    if p.get("port")
                        .and_then(Value::as_u64)
                        .is_none_or(|n| n == 0 || n > 65535)
                    {
                        causes.push(Cause::new(
                            format!("spec.ports[{i}].port"),
                            "Invalid value: must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
            let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP"));
            let new_ip = obj.pointer("/spec/clusterIP");
            if let (Some(o), Some(n)) = (old_ip, new_ip)
                && o != n
            {
                causes.push(Cause::new(
                    "spec.clusterIP",
                    format!("Invalid value: {n}: field is immutable"),
                ));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, causes))
    }
}

fn rename(from: &Map<String, Value>, pairs: &[(&str, &str)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in from {
        let key = pairs
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| (*b).to_string())
            .unwrap_or_else(|| k.clone());
        out.insert(key, v.clone());
    }
    out
}

/// Field renames between core v1 Event and events.k8s.io/v1 Event.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Converts a stored object (core v1 for events) into the view of `rt`.
pub fn to_view(rt: &ResourceType, stored: Value) -> Value {
    if rt.storage.is_none() {
        return stored;
    }
    let Value::Object(m) = stored else {
        return stored;
    };
    let mut out = rename(&m, EVENT_FIELDS);
    out.insert("apiVersion".into(), json!(rt.api_version()));
    out.insert("kind".into(), json!(rt.kind));
    Value::Object(out)
}

/// Converts an object written through `rt` into its stored form.
pub fn from_view(rt: &ResourceType, view: Value) -> Value {
    if rt.storage.is_none() {
        return view;
    }
    let Value::Object(m) = view else { return view };
    let back: Vec<(&str, &str)> = EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)).collect();
    let mut out = rename(&m, &back);
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}
