//! The kinds the API server serves: one row per resource in `BUILTIN`, plus kinds registered at
//! run time from stored CustomResourceDefinitions, and the discovery documents built from them.

use serde_json::{Value, json};

/// One served resource (a group/version/plural), as discovery describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource: main-resource writes keep the stored `.status`, `/status`
    /// writes change only `.status`.
    pub status: bool,
    /// Has a `scale` subresource (autoscaling/v1 Scale over `spec.replicas`).
    pub scale: bool,
    /// Defined by a CustomResourceDefinition: no strategic merge patch, updates need a
    /// resourceVersion.
    pub custom: bool,
    /// Objects live in the storage of another resource (group, plural), converted on the way in
    /// and out: events.k8s.io/v1 events share core v1 events.
    pub storage: Option<(String, String)>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `pods`: how error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps`, `Pod`: how validation messages name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Where the objects are stored: (group, plural).
    pub fn storage_key(&self) -> (String, String) {
        self.storage
            .clone()
            .unwrap_or_else(|| (self.group.clone(), self.plural.clone()))
    }

    fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// (group, version, plural, kind, namespaced, short names, subresources, custom)
/// Subresources: "s" status, "c" scale, "" none. Adding a kind is one line here.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    &'static str,
    bool,
);

#[rustfmt::skip]
const BUILTIN: &[Row] = &[
    ("", "v1", "namespaces", "Namespace", false, &["ns"], "s", false),
    ("", "v1", "pods", "Pod", true, &["po"], "s", false),
    ("", "v1", "services", "Service", true, &["svc"], "s", false),
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], "", false),
    ("", "v1", "secrets", "Secret", true, &[], "", false),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], "", false),
    ("", "v1", "events", "Event", true, &["ev"], "", false),
    ("apps", "v1", "deployments", "Deployment", true, &["deploy"], "sc", false),
    ("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], "sc", false),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, &["hpa"], "s", false),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, &[], "", false),
    ("events.k8s.io", "v1", "events", "Event", true, &["ev"], "", false),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, &["crd", "crds"], "s", false),
    ("appmesh.k8s.aws", "v1beta2", "meshes", "Mesh", false, &[], "s", true),
    ("appmesh.k8s.aws", "v1beta2", "virtualnodes", "VirtualNode", true, &[], "s", true),
    ("appmesh.k8s.aws", "v1beta2", "virtualrouters", "VirtualRouter", true, &[], "s", true),
    ("appmesh.k8s.aws", "v1beta2", "virtualservices", "VirtualService", true, &[], "s", true),
    ("gateway.networking.k8s.io", "v1", "gateways", "Gateway", true, &["gtw"], "s", true),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", true, &[], "s", true),
    ("serin.dev", "v1beta1", "canaries", "Canary", true, &["canary"], "s", true),
    ("serin.dev", "v1beta1", "metrictemplates", "MetricTemplate", true, &["mt"], "", true),
    ("serin.dev", "v1beta1", "alertproviders", "AlertProvider", true, &[], "", true),
];

pub fn builtin() -> Vec<ResourceType> {
    BUILTIN
        .iter()
        .map(
            |&(group, version, plural, kind, namespaced, short, subs, custom)| {
                let storage =
                    (group == "events.k8s.io").then(|| (String::new(), "events".to_string()));
                ResourceType {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.into(),
                    singular: kind.to_ascii_lowercase(),
                    kind: kind.into(),
                    namespaced,
                    short_names: short.iter().map(|s| s.to_string()).collect(),
                    categories: if custom && group == "serin.dev" {
                        vec!["all".into()]
                    } else {
                        vec![]
                    },
                    status: subs.contains('s'),
                    scale: subs.contains('c'),
                    custom,
                    storage,
                }
            },
        )
        .collect()
}

/// The resources a stored CustomResourceDefinition defines (one per served version), or a
/// message saying which field is missing.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let text = |v: Option<&Value>, field: &str| -> Result<String, String> {
        v.and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{field}: Required value"))
    };
    let group = text(spec.get("group"), "spec.group")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = text(names.get("plural"), "spec.names.plural")?;
    let kind = text(names.get("kind"), "spec.names.kind")?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let subs = v.get("subresources");
        out.push(ResourceType {
            group: group.clone(),
            version: text(v.get("name"), "spec.versions[].name")?,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status: subs.and_then(|s| s.get("status")).is_some(),
            scale: subs.and_then(|s| s.get("scale")).is_some(),
            custom: true,
            storage: None,
        });
    }
    Ok(out)
}

/// Groups in first-seen order, each with its versions in first-seen order.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => {
                versions.push(t.version.clone())
            }
            Some(_) => {}
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions[0].clone(),
    })
}

/// `GET /apis`.
pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_doc(&g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    groups(types)
        .into_iter()
        .find(|(g, _)| g == name && !g.is_empty())
        .map(|(g, v)| {
            let mut doc = group_doc(&g, &v);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
}

/// `GET /api/v1` and `GET /apis/<group>/<version>`.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut main = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            main["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            main["categories"] = json!(t.categories);
        }
        resources.push(main);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
