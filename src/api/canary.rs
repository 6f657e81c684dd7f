//! The `Canary` custom resource: what a team declares for one Deployment.
//!
//! Field names, meanings and defaults follow Flagger's `flagger.app/v1beta1` Canary so a
//! Flagger manifest works after changing `apiVersion`; Serin's additions are optional fields.

use std::collections::BTreeMap;

use chrono::Duration;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration;
use super::status::CanaryStatus;

/// Annotation carrying a manual request: `<verb> <id>`, with verb `promote`, `promote-full`,
/// `abort` or `retry` and an id that makes each request distinct (the CLI writes a timestamp).
/// Each distinct value is carried out once and acknowledged in `status.handledRequest`.
pub const REQUEST_ANNOTATION: &str = "serin.dev/request";

/// Built-in metric names that need neither a query nor a template.
pub const BUILTIN_METRICS: [&str; 2] = ["request-success-rate", "request-duration"];

/// A progressive rollout of a Deployment: traffic moves to the new version step by step while
/// its metrics and webhooks are checked, and all traffic returns to the old version when they fail.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "serin.dev",
    version = "v1beta1",
    kind = "Canary",
    plural = "canaries",
    shortname = "canary",
    category = "all",
    namespaced,
    doc = "A progressive rollout of a Deployment",
    status = "CanaryStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"integer","jsonPath":".status.failedChecks"}"#,
    printcolumn = r#"{"name":"LastTransitionTime","type":"string","format":"date-time","jsonPath":".status.lastTransitionTime"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"Interval","type":"string","jsonPath":".spec.analysis.interval","priority":1}"#,
    printcolumn = r#"{"name":"StepWeight","type":"integer","jsonPath":".spec.analysis.stepWeight","priority":1}"#,
    printcolumn = r#"{"name":"StepWeights","type":"string","jsonPath":".spec.analysis.stepWeights","priority":1}"#,
    printcolumn = r#"{"name":"MaxWeight","type":"integer","jsonPath":".spec.analysis.maxWeight","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.analysis) || !has(self.analysis.mirror) || !self.analysis.mirror || !has(self.provider) || !self.provider.startsWith('appmesh')",
        "message": "analysis.mirror is not supported by App Mesh; remove it or use the gatewayapi provider",
        "fieldPath": ".analysis.mirror"
    },
    {
        "rule": "!has(self.provider) || self.provider != 'kubernetes' || !has(self.analysis) || has(self.analysis.iterations)",
        "message": "the kubernetes provider supports blue/green only: set analysis.iterations instead of stepWeight or stepWeights",
        "fieldPath": ".analysis"
    }
]))]
pub struct CanarySpec {
    /// Traffic provider: `appmesh` (or `appmesh:v1beta2`), `gatewayapi` (or `gatewayapi:v1`,
    /// `gatewayapi:v1beta1`), or `kubernetes` (blue/green through Services only).
    /// Defaults to the controller's `--provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,

    /// Prometheus address for built-in metrics and inline queries; overrides the controller default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,

    /// The Deployment under release.
    pub target_ref: TargetRef,

    /// A HorizontalPodAutoscaler of the target, cloned for the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,

    /// How the ClusterIP Services and mesh objects are generated.
    pub service: CanaryService,

    /// The analysis run for every new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,

    /// Seconds the canary or primary may take to make progress before the rollout is rolled back.
    /// Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,

    /// Promote without analysis (the canary must still become ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,

    /// On deletion of the Canary, scale the target back up and point the apex Service at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,

    /// Freeze the Canary: nothing is reconciled while true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// Traffic providers Serin drives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Provider {
    #[serde(rename = "appmesh")]
    AppMesh,
    #[serde(rename = "appmesh:v1beta2")]
    AppMeshV1beta2,
    #[serde(rename = "gatewayapi")]
    GatewayApi,
    #[serde(rename = "gatewayapi:v1")]
    GatewayApiV1,
    #[serde(rename = "gatewayapi:v1beta1")]
    GatewayApiV1beta1,
    #[serde(rename = "kubernetes")]
    Kubernetes,
}

/// The router family a provider selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterKind {
    AppMesh,
    GatewayApi,
    Kubernetes,
}

impl Provider {
    pub fn router(self) -> RouterKind {
        match self {
            Provider::AppMesh | Provider::AppMeshV1beta2 => RouterKind::AppMesh,
            Provider::GatewayApi | Provider::GatewayApiV1 | Provider::GatewayApiV1beta1 => {
                RouterKind::GatewayApi
            }
            Provider::Kubernetes => RouterKind::Kubernetes,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::AppMesh => "appmesh",
            Provider::AppMeshV1beta2 => "appmesh:v1beta2",
            Provider::GatewayApi => "gatewayapi",
            Provider::GatewayApiV1 => "gatewayapi:v1",
            Provider::GatewayApiV1beta1 => "gatewayapi:v1beta1",
            Provider::Kubernetes => "kubernetes",
        }
    }
}

/// Reference to the workload under release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `apps/v1`.
    #[serde(default = "default_apps_v1")]
    pub api_version: String,
    /// `Deployment`.
    pub kind: TargetKind,
    #[schemars(length(min = 1))]
    pub name: String,
}

fn default_apps_v1() -> String {
    "apps/v1".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    Deployment,
}

/// Reference to the target's autoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerRef {
    /// `autoscaling/v2`.
    #[serde(default = "default_autoscaling_v2")]
    pub api_version: String,
    pub kind: AutoscalerKind,
    #[schemars(length(min = 1))]
    pub name: String,
    /// Replica bounds for the primary's clone, instead of the target autoscaler's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_replicas: Option<ScalerReplicas>,
}

fn default_autoscaling_v2() -> String {
    "autoscaling/v2".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AutoscalerKind {
    HorizontalPodAutoscaler,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not be greater than maxReplicas"
    }
]))]
pub struct ScalerReplicas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
}

/// How the apex, primary and canary Services and the mesh objects are generated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// Apex Service name; defaults to `targetRef.name`. Also the name of the mesh objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Service port name, default `http`; a name containing `grpc` selects the gRPC protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Container port or port name; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `appProtocol` of the Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Add the target's other container ports to the generated Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_discovery: Option<bool>,
    /// Generate headless Services (`clusterIP: None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless: Option<bool>,
    /// Per-request timeout on routes (for example `15s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Retry policy on routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Route match; App Mesh uses the first entry's `uri.prefix` as the route prefix.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    pub match_: Option<Vec<HttpMatchRequest>>,
    /// App Mesh VirtualNode backends: VirtualService names, or ARNs (`arn:aws:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// Hostnames: App Mesh gateway domains, or Gateway API HTTPRoute hostnames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Gateway API parents of the generated HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_refs: Option<Vec<GatewayRef>>,
    /// Legacy App Mesh (v1beta1) mesh name; accepted and ignored (App Mesh v1beta2 takes the mesh
    /// from the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_name: Option<String>,
    /// Labels and annotations of the apex Service (also put on the App Mesh VirtualNodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    /// Labels and annotations of the `-primary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    /// Labels and annotations of the `-canary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
    /// Label and annotation keys other controllers own on the generated Services; kept as found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_metadata: Option<UnmanagedMetadata>,
}

/// Retry policy (Istio's HTTPRetry shape, as Flagger uses it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Number of retries; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub attempts: Option<i32>,
    /// Timeout of each try, for example `5s`; default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub per_try_timeout: Option<String>,
    /// Comma-separated retry events, for example `gateway-error,client-error`; default `gateway-error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// A request match: A/B conditions in `analysis.match`, the route prefix in `service.match`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Header name to condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<BTreeMap<String, StringMatch>>,
}

/// One string condition: exactly one of exact, prefix, suffix or regex.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.exact), has(self.prefix), has(self.suffix), has(self.regex)].filter(x, x).size() == 1",
        "message": "set exactly one of exact, prefix, suffix or regex"
    }
]))]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A Gateway API parentRef.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// Labels and annotations put on a generated object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Keys that Serin leaves to other controllers on the Services it generates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Vec<String>>,
}

/// The analysis: how often to check, how traffic moves, and what must hold at every step.
///
/// Exactly one of `stepWeight`, `stepWeights` (canary strategy) or `iterations` (blue/green, or
/// A/B testing together with `match`) selects the strategy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.stepWeight), has(self.stepWeights), has(self.iterations)].filter(x, x).size() == 1",
        "message": "set exactly one of stepWeight, stepWeights (canary) or iterations (blue/green, A/B)"
    },
    {
        "rule": "!has(self.match) || size(self.match) == 0 || has(self.iterations)",
        "message": "match (A/B testing) needs iterations: set analysis.iterations",
        "fieldPath": ".match"
    }
]))]
pub struct CanaryAnalysis {
    /// Time between analysis steps, at least 10s (for example `1m`). Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+(ms|s|m|h))+$"),
        extend("x-kubernetes-validations" = [
            {"rule": "duration(self) >= duration('10s')", "message": "interval must be at least 10s"}
        ])
    )]
    pub interval: Option<String>,
    /// Failed checks before the canary is rolled back. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub threshold: Option<i32>,
    /// Highest canary weight before promotion (percent). Default 100. Ignored with stepWeights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight: Option<i32>,
    /// Weight added at every step (percent); the last step is clamped at maxWeight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight: Option<i32>,
    /// An explicit, strictly ascending ladder of canary weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 20),
        inner(range(min = 1, max = 100)),
        extend("x-kubernetes-validations" = [
            {
                "rule": "self.isSorted() && self.all(w, self.filter(x, x == w).size() == 1)",
                "message": "stepWeights must be strictly ascending, for example [5, 10, 25, 50]"
            }
        ])
    )]
    pub step_weights: Option<Vec<i32>>,
    /// Weight moved back to the primary at every promotion step; unset moves all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight_promotion: Option<i32>,
    /// Number of analysis iterations for blue/green and A/B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub iterations: Option<i32>,
    /// A/B testing conditions: matching requests go to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    pub match_: Option<Vec<HttpMatchRequest>>,
    /// Mirror traffic to the canary before shifting it (Gateway API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    /// Percent of requests mirrored (Gateway API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_weight: Option<i32>,
    /// Percent of primary replicas that must be available. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub primary_ready_threshold: Option<i32>,
    /// Percent of canary replicas that must be available. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub canary_ready_threshold: Option<i32>,
    /// How often critical metrics are checked between steps. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub fail_fast_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<CanaryMetric>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<CanaryWebhook>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<CanaryAlert>>,
}

/// One metric checked at every analysis step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.name in ['request-success-rate', 'request-duration'] || has(self.query) || has(self.templateRef)",
        "message": "metric is neither built in (request-success-rate, request-duration) nor has query or templateRef: add a templateRef"
    }
]))]
pub struct CanaryMetric {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Query window, for example `1m`. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: Option<String>,
    /// Deprecated single bound: a minimum for request-success-rate, a maximum otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Accepted range, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// Inline PromQL (deprecated in favour of templateRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A MetricTemplate; namespace defaults to the Canary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<CrossNamespaceRef>,
    /// Values for `{{ variables.NAME }}` in the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<BTreeMap<String, String>>,
    /// What an empty result or NaN means: `fail` (default), `pass`, or `hold` (neither pass nor
    /// fail; the step waits for data, bounded by the progress deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<NoDataPolicy>,
    /// A breach of a critical metric rolls back at once, and it is checked every failFastInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoDataPolicy {
    #[default]
    Fail,
    Pass,
    Hold,
}

/// Inclusive bounds; a value fails when below `min` or above `max`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
        "message": "thresholdRange.min must not be greater than thresholdRange.max"
    }
]))]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A reference to an object that may live in another namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A webhook called at a point of the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryWebhook {
    /// When it is called; empty means `rollout`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<HookType>,
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))", "message": "url must be an absolute http:// or https:// URL"}
    ]))]
    pub url: String,
    /// Per-attempt timeout; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Sent in the payload's `metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Extra attempts on connection errors, 429 and 5xx before the call counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    /// Skip TLS certificate verification.
    #[serde(
        default,
        rename = "disableTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_tls: Option<bool>,
    /// Send no alert when this gate is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum HookType {
    #[serde(rename = "")]
    Unset,
    #[serde(rename = "confirm-rollout")]
    ConfirmRollout,
    #[serde(rename = "pre-rollout")]
    PreRollout,
    #[serde(rename = "rollout")]
    Rollout,
    #[serde(rename = "confirm-traffic-increase")]
    ConfirmTrafficIncrease,
    #[serde(rename = "confirm-promotion")]
    ConfirmPromotion,
    #[serde(rename = "post-rollout")]
    PostRollout,
    #[serde(rename = "rollback")]
    Rollback,
    #[serde(rename = "event")]
    Event,
}

impl HookType {
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::Unset | HookType::Rollout => "rollout",
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }
}

/// An alert sent through an AlertProvider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Least severity sent: `info` (everything), `warn`, or `error`. Default info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub provider_ref: CrossNamespaceRef,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Warn,
    Error,
}

/// The rollout strategy selected by the analysis fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    BlueGreen,
    AbTesting,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
            Strategy::AbTesting => "ab-testing",
        }
    }
}

/// Default analysis interval when none is set.
pub const DEFAULT_INTERVAL_SECS: i64 = 60;
/// Shortest analysis interval.
pub const MIN_INTERVAL_SECS: i64 = 10;
/// Default progress deadline.
pub const DEFAULT_PROGRESS_DEADLINE_SECS: i32 = 600;

impl CanarySpec {
    /// Apex Service name.
    pub fn service_name(&self) -> &str {
        self.service
            .name
            .as_deref()
            .unwrap_or(&self.target_ref.name)
    }

    pub fn skip_analysis(&self) -> bool {
        self.skip_analysis.unwrap_or(false) || self.analysis.is_none()
    }

    pub fn suspended(&self) -> bool {
        self.suspend.unwrap_or(false)
    }

    pub fn progress_deadline(&self) -> Duration {
        Duration::seconds(i64::from(
            self.progress_deadline_seconds
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECS),
        ))
    }

    /// The analysis, or an empty one when none is declared.
    pub fn analysis(&self) -> std::borrow::Cow<'_, CanaryAnalysis> {
        match &self.analysis {
            Some(a) => std::borrow::Cow::Borrowed(a),
            None => std::borrow::Cow::Owned(CanaryAnalysis::default()),
        }
    }

    pub fn strategy(&self) -> Strategy {
        let a = self.analysis();
        let iterations = a.iterations.unwrap_or(0) > 0;
        let has_match = a.match_.as_ref().is_some_and(|m| !m.is_empty());
        let blue_green_only = self.provider.map(Provider::router) == Some(RouterKind::Kubernetes);
        if iterations && has_match && !blue_green_only {
            Strategy::AbTesting
        } else if iterations || blue_green_only {
            Strategy::BlueGreen
        } else {
            Strategy::Canary
        }
    }
}

impl CanaryAnalysis {
    /// The step interval; at least 10s, 1m when unset or unreadable.
    pub fn interval(&self) -> Duration {
        let d = self
            .interval
            .as_deref()
            .and_then(|s| duration::parse(s).ok())
            .unwrap_or(Duration::seconds(DEFAULT_INTERVAL_SECS));
        d.max(Duration::seconds(MIN_INTERVAL_SECS))
    }

    /// Interval between critical-metric checks; never longer than the step interval.
    pub fn fail_fast_interval(&self) -> Duration {
        let d = self
            .fail_fast_interval
            .as_deref()
            .and_then(|s| duration::parse(s).ok())
            .unwrap_or(Duration::seconds(10))
            .max(Duration::seconds(1));
        d.min(self.interval())
    }

    pub fn threshold(&self) -> i32 {
        self.threshold.filter(|t| *t > 0).unwrap_or(1)
    }

    /// The highest canary weight of the canary strategy.
    pub fn max_weight(&self) -> i32 {
        if let Some(last) = self.step_weights.as_ref().and_then(|w| w.last()) {
            return (*last).clamp(1, 100);
        }
        self.max_weight.filter(|w| *w > 0).unwrap_or(100).min(100)
    }

    pub fn iterations(&self) -> i32 {
        self.iterations.unwrap_or(0).max(0)
    }

    pub fn metrics(&self) -> &[CanaryMetric] {
        self.metrics.as_deref().unwrap_or(&[])
    }

    pub fn webhooks(&self) -> &[CanaryWebhook] {
        self.webhooks.as_deref().unwrap_or(&[])
    }

    pub fn hooks_of(&self, kind: HookType) -> impl Iterator<Item = &CanaryWebhook> {
        self.webhooks().iter().filter(move |h| h.kind() == kind)
    }

    pub fn alerts(&self) -> &[CanaryAlert] {
        self.alerts.as_deref().unwrap_or(&[])
    }
}

impl CanaryWebhook {
    /// The hook type, with empty meaning `rollout`.
    pub fn kind(&self) -> HookType {
        match self.type_ {
            None | Some(HookType::Unset) => HookType::Rollout,
            Some(t) => t,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|s| duration::parse(s).ok())
            .filter(|d| *d > Duration::zero())
            .unwrap_or(Duration::seconds(10))
    }
}

impl CanaryMetric {
    pub fn is_builtin(&self) -> bool {
        BUILTIN_METRICS.contains(&self.name.as_str())
    }

    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(|s| duration::parse(s).ok())
            .unwrap_or(Duration::seconds(60))
    }

    pub fn on_no_data(&self) -> NoDataPolicy {
        self.on_no_data.unwrap_or_default()
    }

    pub fn critical(&self) -> bool {
        self.critical.unwrap_or(false)
    }

    /// The accepted range, taking the deprecated single `threshold` into account: a minimum for
    /// the success rate, a maximum for everything else.
    pub fn range(&self) -> (Option<f64>, Option<f64>) {
        if let Some(r) = &self.threshold_range {
            return (r.min, r.max);
        }
        match self.threshold {
            Some(t) if self.name == "request-success-rate" => (Some(t), None),
            Some(t) => (None, Some(t)),
            None => (None, None),
        }
    }
}
