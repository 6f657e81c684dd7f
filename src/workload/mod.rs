//! The primary Deployment and the target: revision hashing, tracked ConfigMaps and Secrets,
//! readiness and progress deadlines, building and promoting the primary, scaling, and the HPA
//! clone. Pure functions over Kubernetes objects, plus the few calls that read or write them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::engine::Readiness;

/// Labels that can carry a Deployment's app name, in the order they are looked for.
pub const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];
/// Label on every object Serin creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "serin");
/// Pod template annotation that changes on every promotion, so the primary always rolls.
pub const PROMOTION_ID: &str = "serin.dev/promotion-id";

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum WorkloadError {
    #[error(
        "Deployment {0} has none of the labels {labels} in spec.selector.matchLabels; add one (for example app: {0})",
        labels = SELECTOR_LABELS.join(", ")
    )]
    NoSelectorLabel(String),
    #[error("Deployment {0} has no pod template")]
    NoTemplate(String),
    #[error(
        "{kind} {name} used by the target is missing; create it or mark the reference optional"
    )]
    MissingConfig { kind: &'static str, name: String },
}

impl WorkloadError {
    pub fn label(&self) -> &'static str {
        match self {
            WorkloadError::NoSelectorLabel(_) => "no_selector_label",
            WorkloadError::NoTemplate(_) => "no_template",
            WorkloadError::MissingConfig { .. } => "missing_config",
        }
    }
}

/// The selector label key and value of a Deployment (`app: podinfo`).
pub fn selector_label(d: &Deployment) -> Result<(String, String), WorkloadError> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let labels = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref());
    for key in SELECTOR_LABELS {
        if let Some(v) = labels.and_then(|l| l.get(key)) {
            return Ok((key.to_string(), v.clone()));
        }
    }
    Err(WorkloadError::NoSelectorLabel(name))
}

/// Drops nulls, empty maps and empty lists, so that semantically equal templates hash equal
/// whether defaulted fields are written out or not.
fn canonical(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: serde_json::Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| canonical(v).map(|v| (k.clone(), v)))
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            let out: Vec<Value> = a.iter().filter_map(canonical).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A stable hash of a pod template together with the tracked configs' checksums. Key order,
/// explicit empty or null fields, and Serin's own promotion annotation do not change it.
pub fn revision(template: &PodTemplateSpec, tracked: &BTreeMap<String, String>) -> String {
    let mut t = template.clone();
    if let Some(a) = t.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
        a.remove(PROMOTION_ID);
    }
    let v = serde_json::to_value(&t).unwrap_or(Value::Null);
    let canon = canonical(&v).unwrap_or(Value::Null);
    let text = serde_json::json!({"template": canon, "configs": tracked}).to_string();
    short_hash(text.as_bytes())
}

/// A ConfigMap or Secret the pod template refers to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
    pub optional: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    pub fn key_prefix(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "configmap",
            ConfigKind::Secret => "secret",
        }
    }
}

/// ConfigMaps and Secrets referenced by volumes, env and envFrom of all containers.
pub fn config_refs(spec: &PodSpec) -> Vec<ConfigRef> {
    let mut out = Vec::new();
    let mut add = |kind, name: &str, optional: Option<bool>| {
        if !name.is_empty() {
            out.push(ConfigRef {
                kind,
                name: name.to_string(),
                optional: optional.unwrap_or(false),
            });
        }
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(ConfigKind::ConfigMap, &cm.name, cm.optional);
        }
        if let Some(s) = &v.secret {
            add(
                ConfigKind::Secret,
                s.secret_name.as_deref().unwrap_or(""),
                s.optional,
            );
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    add(ConfigKind::ConfigMap, &cm.name, cm.optional);
                }
                if let Some(s) = &src.secret {
                    add(ConfigKind::Secret, &s.name, s.optional);
                }
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    add(ConfigKind::ConfigMap, &r.name, r.optional);
                }
                if let Some(r) = &from.secret_key_ref {
                    add(ConfigKind::Secret, &r.name, r.optional);
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                add(ConfigKind::ConfigMap, &r.name, r.optional);
            }
            if let Some(r) = &e.secret_ref {
                add(ConfigKind::Secret, &r.name, r.optional);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Checksum of a ConfigMap's or Secret's data.
pub fn config_checksum(data: &Value) -> String {
    short_hash(data.to_string().as_bytes())
}

/// Checksum of a ConfigMap (data and binaryData).
pub fn configmap_checksum(cm: &ConfigMap) -> String {
    config_checksum(&serde_json::json!({"data": cm.data, "binaryData": cm.binary_data}))
}

/// Checksum of a Secret (data).
pub fn secret_checksum(s: &Secret) -> String {
    config_checksum(&serde_json::json!({"data": s.data}))
}

/// Whether Serin tracks this Secret type (service-account tokens and the like are not copied).
pub fn secret_is_tracked(s: &Secret) -> bool {
    matches!(
        s.type_.as_deref(),
        None | Some("Opaque")
            | Some("kubernetes.io/basic-auth")
            | Some("kubernetes.io/ssh-auth")
            | Some("kubernetes.io/tls")
    )
}

/// The ConfigMaps and Secrets a pod template uses that exist (and are tracked), with their
/// checksums keyed `configmap/<name>` or `secret/<name>` as [`revision`] takes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackedConfigs {
    pub checksums: BTreeMap<String, String>,
    pub refs: Vec<ConfigRef>,
}

/// Reads the configs `spec` refers to in namespace `ns`. A missing reference that is not
/// optional is a [`WorkloadError::MissingConfig`]; the outer error is the API's.
pub async fn tracked_configs(
    client: &kube::Client,
    ns: &str,
    spec: &PodSpec,
) -> Result<Result<TrackedConfigs, WorkloadError>, kube::Error> {
    let configmaps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), ns);
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    let mut out = TrackedConfigs::default();
    for r in config_refs(spec) {
        let sum = match r.kind {
            ConfigKind::ConfigMap => configmaps
                .get_opt(&r.name)
                .await?
                .map(|c| configmap_checksum(&c)),
            ConfigKind::Secret => secrets
                .get_opt(&r.name)
                .await?
                .filter(secret_is_tracked)
                .map(|s| secret_checksum(&s)),
        };
        match sum {
            Some(sum) => {
                out.checksums
                    .insert(format!("{}/{}", r.kind.key_prefix(), r.name), sum);
                out.refs.push(r);
            }
            None if r.optional => {}
            None => {
                return Ok(Err(WorkloadError::MissingConfig {
                    kind: match r.kind {
                        ConfigKind::ConfigMap => "ConfigMap",
                        ConfigKind::Secret => "Secret",
                    },
                    name: format!("{}.{ns}", r.name),
                }));
            }
        }
    }
    Ok(Ok(out))
}

/// The revision of a Deployment's pod template as the controller computes it: the template
/// with the checksums of its tracked configs. `Ok(Err(_))` when a required config is missing.
pub async fn deployment_revision(
    client: &kube::Client,
    ns: &str,
    d: &Deployment,
) -> Result<Result<(String, TrackedConfigs), WorkloadError>, kube::Error> {
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let pod_spec = template.spec.clone().unwrap_or_default();
    Ok(tracked_configs(client, ns, &pod_spec)
        .await?
        .map(|t| (revision(&template, &t.checksums), t)))
}

fn deployment_condition<'a>(
    d: &'a Deployment,
    type_: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Readiness of a Deployment (FB §2.8): rolled out to the observed generation, all replicas
/// updated, old ones gone, and `threshold` percent of the updated ones available.
pub fn readiness(d: &Deployment, threshold_percent: i32) -> Readiness {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return Readiness::NotReady("waiting for rollout to finish: no status yet".into());
    };
    if let Some(c) = deployment_condition(d, "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Readiness::Stuck(format!(
            "deployment {:?} exceeded its progress deadline",
            d.metadata.name.as_deref().unwrap_or("")
        ));
    }
    if status.observed_generation.unwrap_or(0) < generation {
        return Readiness::NotReady(
            "waiting for rollout to finish: observed deployment generation less than desired generation"
                .into(),
        );
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {} old replicas are pending termination",
            replicas - updated
        ));
    }
    let needed = (f64::from(updated) * f64::from(threshold_percent.clamp(0, 100)) / 100.0).floor();
    if f64::from(available) < needed {
        return Readiness::NotReady(format!(
            "waiting for rollout to finish: {available} of {updated} (readyThreshold {threshold_percent}%) updated replicas are available"
        ));
    }
    Readiness::Ready
}

/// The owner reference every object Serin creates carries.
pub fn owner_ref(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "serin.dev/v1beta1".into(),
        kind: "Canary".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Pod template for the primary: the target's, with the selector label value suffixed
/// `-primary`, config references renamed to their `-primary` copies, Flux annotations dropped,
/// and `promotion_id` set so every promotion rolls the primary.
pub fn primary_template(
    target: &Deployment,
    label: &(String, String),
    configs: &[ConfigRef],
    promotion_id: &str,
) -> Result<PodTemplateSpec, WorkloadError> {
    let name = target.metadata.name.clone().unwrap_or_default();
    let mut t = target
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| WorkloadError::NoTemplate(name.clone()))?;
    let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(label.0.clone(), format!("{}-primary", label.1));
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.retain(|k, _| !k.contains("toolkit.fluxcd.io"));
    annotations.insert(PROMOTION_ID.into(), promotion_id.into());
    if let Some(spec) = t.spec.as_mut() {
        rename_configs(spec, configs);
        rename_affinity(spec, &name, &label.0);
    }
    Ok(t)
}

/// Renames tracked config references to their `-primary` copies.
fn rename_configs(spec: &mut PodSpec, configs: &[ConfigRef]) {
    let tracked =
        |kind: ConfigKind, name: &str| configs.iter().any(|c| c.kind == kind && c.name == name);
    let primary = |n: &str| format!("{n}-primary");
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut()
            && tracked(ConfigKind::ConfigMap, &cm.name)
        {
            cm.name = primary(&cm.name);
        }
        if let Some(s) = v.secret.as_mut()
            && let Some(n) = s.secret_name.as_mut()
            && tracked(ConfigKind::Secret, n)
        {
            *n = primary(n);
        }
        if let Some(p) = v.projected.as_mut() {
            for src in p.sources.iter_mut().flatten() {
                if let Some(cm) = src.config_map.as_mut()
                    && tracked(ConfigKind::ConfigMap, &cm.name)
                {
                    cm.name = primary(&cm.name);
                }
                if let Some(s) = src.secret.as_mut()
                    && tracked(ConfigKind::Secret, &s.name)
                {
                    s.name = primary(&s.name);
                }
            }
        }
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        for e in c.env.iter_mut().flatten() {
            if let Some(from) = e.value_from.as_mut() {
                if let Some(r) = from.config_map_key_ref.as_mut()
                    && tracked(ConfigKind::ConfigMap, &r.name)
                {
                    r.name = primary(&r.name);
                }
                if let Some(r) = from.secret_key_ref.as_mut()
                    && tracked(ConfigKind::Secret, &r.name)
                {
                    r.name = primary(&r.name);
                }
            }
        }
        for e in c.env_from.iter_mut().flatten() {
            if let Some(r) = e.config_map_ref.as_mut()
                && tracked(ConfigKind::ConfigMap, &r.name)
            {
                r.name = primary(&r.name);
            }
            if let Some(r) = e.secret_ref.as_mut()
                && tracked(ConfigKind::Secret, &r.name)
            {
                r.name = primary(&r.name);
            }
        }
    }
}

/// Anti-affinity and topology spread selectors naming the target select the primary instead.
fn rename_affinity(spec: &mut PodSpec, target: &str, key: &str) {
    let fix = |sel: &mut Option<LabelSelector>| {
        if let Some(v) = sel
            .as_mut()
            .and_then(|s| s.match_labels.as_mut())
            .and_then(|m| m.get_mut(key))
            && v == target
        {
            *v = format!("{target}-primary");
        }
    };
    for t in spec.topology_spread_constraints.iter_mut().flatten() {
        fix(&mut t.label_selector);
    }
    if let Some(a) = spec
        .affinity
        .as_mut()
        .and_then(|a| a.pod_anti_affinity.as_mut())
    {
        for t in a
            .required_during_scheduling_ignored_during_execution
            .iter_mut()
            .flatten()
        {
            fix(&mut t.label_selector);
        }
        for t in a
            .preferred_during_scheduling_ignored_during_execution
            .iter_mut()
            .flatten()
        {
            fix(&mut t.pod_affinity_term.label_selector);
        }
    }
}

/// The primary Deployment built from the target (create, or the spec to apply on promotion).
/// `replicas` is what the primary gets: see [`primary_replicas`].
pub fn primary_deployment(
    target: &Deployment,
    namespace: &str,
    owner: &OwnerReference,
    configs: &[ConfigRef],
    promotion_id: &str,
    replicas: i32,
) -> Result<Deployment, WorkloadError> {
    let name = target.metadata.name.clone().unwrap_or_default();
    let label = selector_label(target)?;
    let template = primary_template(target, &label, configs, promotion_id)?;
    let tspec = target.spec.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.insert(label.0.clone(), format!("{}-primary", label.1));
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(format!("{name}-primary")),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    label.0.clone(),
                    format!("{}-primary", label.1),
                )])),
                ..Default::default()
            },
            template,
            progress_deadline_seconds: tspec.progress_deadline_seconds,
            min_ready_seconds: tspec.min_ready_seconds,
            revision_history_limit: tspec.revision_history_limit,
            strategy: tspec.strategy,
            ..Default::default()
        }),
        status: None,
    })
}

/// Replicas of the primary: the target's on creation; on promotion the primary keeps its own
/// when an autoscaler manages it, and takes the target's otherwise.
pub fn primary_replicas(
    target: &Deployment,
    primary: Option<&Deployment>,
    has_autoscaler: bool,
) -> i32 {
    let current = primary
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.replicas)
        .filter(|r| *r > 0);
    let from_target = target
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .filter(|r| *r > 0);
    match (has_autoscaler, current) {
        (true, Some(r)) => r,
        _ => from_target.or(current).unwrap_or(1),
    }
}

/// Replicas to give the target when it is scaled up as the canary (FB §3.9).
pub fn scale_up_replicas(
    target: &Deployment,
    primary: Option<&Deployment>,
    hpa: Option<&HorizontalPodAutoscaler>,
) -> i32 {
    if let Some(r) = target
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .filter(|r| *r > 0)
    {
        return r;
    }
    if let Some(h) = hpa {
        return h
            .spec
            .as_ref()
            .and_then(|s| s.min_replicas)
            .unwrap_or(1)
            .max(1);
    }
    primary
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.replicas)
        .filter(|r| *r > 0)
        .unwrap_or(1)
}

/// The primary's clone of the target's HPA.
pub fn primary_hpa(
    hpa: &HorizontalPodAutoscaler,
    target: &str,
    namespace: &str,
    owner: &OwnerReference,
    overrides: Option<&crate::api::ScalerReplicas>,
) -> HorizontalPodAutoscaler {
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let mut spec = hpa.spec.clone().unwrap_or_default();
    spec.scale_target_ref.name = format!("{target}-primary");
    if let Some(o) = overrides {
        if let Some(min) = o.min_replicas {
            spec.min_replicas = Some(min);
        }
        if let Some(max) = o.max_replicas {
            spec.max_replicas = max;
        }
    }
    HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(format!("{name}-primary")),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(yaml: &str) -> Deployment {
        serde_saphyr::from_str(yaml).expect("deployment parses")
    }

    const PODINFO: &str = "
metadata: {name: podinfo, namespace: test, generation: 2}
spec:
  replicas: 2
  selector: {matchLabels: {app: podinfo}}
  template:
    metadata: {labels: {app: podinfo}, annotations: {kustomize.toolkit.fluxcd.io/checksum: x}}
    spec:
      containers:
      - name: podinfo
        image: ghcr.io/stefanprodan/podinfo:6.0.0
        envFrom: [{configMapRef: {name: podinfo-env}}]
        env:
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: podinfo-token, key: token, optional: true}}
      volumes:
      - name: config
        configMap: {name: podinfo-config}
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: podinfo}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2}
";

    #[test]
    fn selector_label_is_found_or_named_in_the_error() {
        let d = deployment(PODINFO);
        assert_eq!(
            selector_label(&d).unwrap(),
            ("app".into(), "podinfo".into())
        );
        let mut bad = d.clone();
        bad.spec.as_mut().unwrap().selector.match_labels =
            Some(BTreeMap::from([("tier".into(), "web".into())]));
        let err = selector_label(&bad).unwrap_err().to_string();
        assert!(err.contains("app, name, app.kubernetes.io/name"), "{err}");
    }

    #[test]
    fn revision_ignores_key_order_and_defaulted_empties() {
        let a = deployment(PODINFO).spec.unwrap().template;
        let mut b = a.clone();
        b.spec.as_mut().unwrap().init_containers = Some(vec![]);
        b.metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .insert(PROMOTION_ID.into(), "x".into());
        let tracked = BTreeMap::new();
        assert_eq!(revision(&a, &tracked), revision(&b, &tracked));
        let mut c = a.clone();
        c.spec.as_mut().unwrap().containers[0].image =
            Some("ghcr.io/stefanprodan/podinfo:6.0.1".into());
        assert_ne!(revision(&a, &tracked), revision(&c, &tracked));
        let changed = BTreeMap::from([("configmap/podinfo-config".to_string(), "abc".to_string())]);
        assert_ne!(
            revision(&a, &tracked),
            revision(&a, &changed),
            "config changes are new revisions"
        );
    }

    #[test]
    fn config_refs_cover_volumes_env_and_env_from() {
        let spec = deployment(PODINFO).spec.unwrap().template.spec.unwrap();
        let refs = config_refs(&spec);
        let names: Vec<_> = refs
            .iter()
            .map(|r| (r.kind, r.name.as_str(), r.optional))
            .collect();
        assert_eq!(
            names,
            vec![
                (ConfigKind::ConfigMap, "podinfo-config", false),
                (ConfigKind::ConfigMap, "podinfo-env", false),
                (ConfigKind::Secret, "podinfo-token", true),
            ]
        );
    }

    #[test]
    fn primary_selects_primary_pods_and_uses_primary_configs() {
        let d = deployment(PODINFO);
        let spec = d.spec.clone().unwrap().template.spec.unwrap();
        let refs = config_refs(&spec);
        let owner = owner_ref("podinfo", "uid-1");
        let p = primary_deployment(
            &d,
            "test",
            &owner,
            &refs,
            "id-1",
            primary_replicas(&d, None, false),
        )
        .unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("podinfo-primary"));
        let ps = p.spec.unwrap();
        assert_eq!(ps.replicas, Some(2));
        assert_eq!(ps.selector.match_labels.unwrap()["app"], "podinfo-primary");
        let t = ps.template;
        assert_eq!(
            t.metadata.as_ref().unwrap().labels.as_ref().unwrap()["app"],
            "podinfo-primary"
        );
        let ann = t.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert!(!ann.keys().any(|k| k.contains("fluxcd")));
        assert_eq!(ann[PROMOTION_ID], "id-1");
        let pod = t.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
            "podinfo-config-primary"
        );
        assert_eq!(
            pod.containers[0].env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "podinfo-env-primary"
        );
        let spread = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(
            spread
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"],
            "podinfo-primary"
        );
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "Canary");
        let scaled = p_clone_with_replicas(&d, 5);
        assert_eq!(
            primary_replicas(&d, Some(&scaled), true),
            5,
            "the HPA's count is kept"
        );
        assert_eq!(
            primary_replicas(&d, Some(&scaled), false),
            2,
            "without an HPA, the target's"
        );
        assert_eq!(
            primary_replicas(&d, None, true),
            2,
            "created with the target's count"
        );
    }

    fn p_clone_with_replicas(d: &Deployment, n: i32) -> Deployment {
        let mut p = d.clone();
        p.spec.as_mut().unwrap().replicas = Some(n);
        p
    }

    #[test]
    fn readiness_follows_the_deployment_status() {
        let d = deployment(PODINFO);
        assert_eq!(readiness(&d, 100), Readiness::Ready);
        let mut old = d.clone();
        old.status.as_mut().unwrap().observed_generation = Some(1);
        assert!(matches!(readiness(&old, 100), Readiness::NotReady(m) if m.contains("generation")));
        let mut half = d.clone();
        half.status.as_mut().unwrap().available_replicas = Some(1);
        assert!(matches!(readiness(&half, 100), Readiness::NotReady(m) if m.contains("1 of 2")));
        assert_eq!(readiness(&half, 50), Readiness::Ready);
        let mut stuck = d.clone();
        stuck.status.as_mut().unwrap().conditions =
            Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]);
        assert!(matches!(readiness(&stuck, 100), Readiness::Stuck(_)));
    }

    #[test]
    fn scale_up_uses_target_then_hpa_then_primary() {
        let mut d = deployment(PODINFO);
        assert_eq!(scale_up_replicas(&d, None, None), 2);
        d.spec.as_mut().unwrap().replicas = Some(0);
        assert_eq!(scale_up_replicas(&d, None, None), 1);
        let p = primary_deployment(
            &deployment(PODINFO),
            "test",
            &owner_ref("c", "u"),
            &[],
            "i",
            2,
        )
        .unwrap();
        assert_eq!(scale_up_replicas(&d, Some(&p), None), 2);
    }
}
