//! One reconcile of one Canary: observe (reads only), ask the engine (running the probes it
//! needs), act (idempotent writes), record Events, then write status with the resourceVersion
//! it was read at, so a stale writer loses with 409 instead of overwriting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::probes::Probes;
use super::telemetry::{
    BoundLabels, CanaryLabels, ErrorLabels, MetricLabels, Metrics, OutcomeLabels, VERDICTS,
    VerdictLabels,
};
use crate::api::{
    AlertProvider, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, Canary, CanarySpec,
    CanaryStatus, MetricTemplate, Phase, Provider, RouterKind,
};
use crate::engine::{
    self, Action as EngineAction, Decision, Event, EventType, Input, Observed, Outcome, Probe,
    ProbeResults, Readiness, Reason, Scale, TargetState, Weights,
};
use crate::metrics::{self, ResolvedTemplate};
use crate::router::{self, appmesh};
use crate::workload::{self, ConfigKind, ConfigRef};

pub const FINALIZER: &str = "finalizer.serin.dev";
const MANAGER: &str = "serin";

/// Shared by all reconciles.
pub struct Context {
    /// Consecutive failed reconciles per Canary (`namespace/name`), for the retry backoff.
    failures: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    client: Client,
    recorder: Recorder,
    default_provider: Provider,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        default_provider: Provider,
        probes: Arc<Probes>,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            failures: std::sync::Mutex::default(),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_provider,
            probes,
            metrics,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Routes(String),
    #[error("the engine kept asking for probes without deciding")]
    Undecided,
}

impl ReconcileError {
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            ReconcileError::Kube(_) => "kube_api",
            ReconcileError::Routes(_) => "routes",
            ReconcileError::Undecided => "undecided",
        }
    }
}

pub fn uses_template(c: &Canary, ns: &str, name: &str) -> bool {
    let own = c.namespace().unwrap_or_default();
    c.spec.analysis().metrics().iter().any(|m| {
        m.template_ref
            .as_ref()
            .is_some_and(|t| t.name == name && t.namespace.as_deref().unwrap_or(own.as_str()) == ns)
    })
}

pub fn uses_alert_provider(c: &Canary, ns: &str, name: &str) -> bool {
    let own = c.namespace().unwrap_or_default();
    c.spec.analysis().alerts().iter().any(|a| {
        a.provider_ref.name == name
            && a.provider_ref.namespace.as_deref().unwrap_or(own.as_str()) == ns
    })
}

/// Retries a failed reconcile (409 conflicts, API errors, unreadable routes) with jittered
/// exponential backoff per Canary: about 1s, 2s, 4s … up to a minute.
pub fn error_policy(c: Arc<Canary>, e: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            category: e.label().into(),
        })
        .inc();
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    let attempt = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(super::RETRY_MIN)
            .with_max_delay(super::RETRY_MAX)
            .with_jitter()
            .without_max_times(),
    )
    .nth(attempt.saturating_sub(1).min(16))
    .unwrap_or(super::RETRY_MAX);
    tracing::warn!(canary = %key, error = %e, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    // The watch cache may lag behind our own last status write; deciding from a stale status
    // would undo a step. Read the Canary itself, as Flagger does on every tick.
    let ns = canary.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = api.get_opt(&canary.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let result = Reconciler::new(&fresh, &ctx).run().await;
    if result.is_ok() {
        let key = format!("{ns}/{}", fresh.name_any());
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Everything read about one Canary's world.
struct World {
    observed: Observed,
    target: Option<Deployment>,
    primary: Option<Deployment>,
    label: Option<(String, String)>,
    configs: Vec<ConfigRef>,
    hpa: Option<HorizontalPodAutoscaler>,
    templates: BTreeMap<String, (MetricTemplate, Option<BTreeMap<String, String>>)>,
}

/// Something the user must fix before anything moves; traffic is left as it is.
struct Stall {
    reason: &'static str,
    message: String,
}

struct Reconciler<'a> {
    canary: &'a Canary,
    ctx: &'a Context,
    ns: String,
    name: String,
    spec: CanarySpec,
    /// The Canary with the controller's defaults filled in (provider).
    effective: Canary,
}

impl<'a> Reconciler<'a> {
    fn new(canary: &'a Canary, ctx: &'a Context) -> Reconciler<'a> {
        let mut spec = canary.spec.clone();
        if spec.provider.is_none() {
            spec.provider = Some(ctx.default_provider);
        }
        let mut effective = canary.clone();
        effective.spec = spec.clone();
        Reconciler {
            canary,
            ctx,
            ns: canary.namespace().unwrap_or_else(|| "default".into()),
            name: canary.name_any(),
            spec,
            effective,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn dynamic(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(appmesh::GROUP, appmesh::VERSION, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::namespaced_with(self.ctx.client.clone(), &self.ns, &ar)
    }

    fn router(&self) -> RouterKind {
        self.spec
            .provider
            .map_or(RouterKind::AppMesh, Provider::router)
    }

    fn owner(&self) -> Value {
        json!({
            "apiVersion": "serin.dev/v1beta1",
            "kind": "Canary",
            "name": self.name,
            "uid": self.canary.uid().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        })
    }

    fn status(&self) -> CanaryStatus {
        self.canary.status.clone().unwrap_or_default()
    }

    async fn run(&self) -> Result<Action, ReconcileError> {
        let finalizers = self.canary.finalizers();
        let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
        let revert = self.spec.revert_on_deletion == Some(true);
        if self.canary.meta().deletion_timestamp.is_some() {
            if has_finalizer {
                self.finalize(revert).await?;
            }
            return Ok(Action::await_change());
        }
        if revert != has_finalizer {
            self.set_finalizer(revert).await?;
        }
        let world = match self.observe().await? {
            Ok(w) => w,
            Err(stall) => return self.stall(stall).await,
        };
        let asked = std::sync::atomic::AtomicBool::new(false);
        let started = Instant::now();
        let decision = self.decide(&world, &asked).await?;
        if asked.load(std::sync::atomic::Ordering::Relaxed) {
            self.ctx
                .metrics
                .analysis_duration
                .observe(started.elapsed().as_secs_f64());
        }
        let mut events = decision.events.clone();
        let weights = self.act(&world, &decision, &mut events).await?;
        // Events before status: a crash in between repeats them on the next reconcile, where the
        // recorder counts a repeat into the same Event instead of losing it.
        self.record(&events, decision.status.phase).await;
        self.write_status(&decision.status).await?;
        let labels = CanaryLabels {
            name: self.name.clone(),
            namespace: self.ns.clone(),
        };
        let status_value = match decision.status.phase {
            Phase::Initialized | Phase::Succeeded => 1,
            Phase::Failed => 2,
            _ => 0,
        };
        self.ctx
            .metrics
            .status
            .get_or_create(&labels)
            .set(status_value);
        self.ctx
            .metrics
            .weight
            .get_or_create(&labels)
            .set(i64::from(weights.canary));
        self.export(&labels, &decision);
        Ok(super::requeue(decision.requeue_after))
    }

    /// Failed checks, each metric's value and verdict, and the outcome of a run that ended.
    fn export(&self, labels: &CanaryLabels, d: &Decision) {
        let m = &self.ctx.metrics;
        m.failed_checks
            .get_or_create(labels)
            .set(i64::from(d.status.failed_checks));
        for metric in self.spec.analysis().metrics() {
            let (min, max) = metric.range();
            for (bound, value) in [("min", min), ("max", max)] {
                if let Some(v) = value {
                    m.metric_threshold
                        .get_or_create(&BoundLabels {
                            name: self.name.clone(),
                            namespace: self.ns.clone(),
                            metric: metric.name.clone(),
                            bound: bound.into(),
                        })
                        .set(v);
                }
            }
        }
        for metric in &d.status.metrics {
            let key = MetricLabels {
                name: self.name.clone(),
                namespace: self.ns.clone(),
                metric: metric.name.clone(),
            };
            if let Some(v) = metric.value {
                m.metric_value.get_or_create(&key).set(v);
            }
            for verdict in VERDICTS {
                let series = VerdictLabels {
                    name: self.name.clone(),
                    namespace: self.ns.clone(),
                    metric: metric.name.clone(),
                    verdict: verdict.into(),
                };
                m.metric_verdict
                    .get_or_create(&series)
                    .set(i64::from(metric.verdict.as_str() == verdict));
            }
        }
        let old = self.status();
        let (from, to) = (old.phase, d.status.phase);
        let outcome = if to == Phase::Succeeded && from != Phase::Succeeded {
            Some("promoted")
        } else if to == Phase::Failed && from != Phase::Failed {
            let aborted = d
                .events
                .iter()
                .any(|e| e.reason == Reason::Requested && e.message.starts_with("Abort requested"));
            Some(if aborted { "aborted" } else { "rolled_back" })
        } else if from.is_active()
            && d.events
                .iter()
                .any(|e| matches!(e.reason, Reason::Restarted | Reason::Reverted))
        {
            Some("superseded")
        } else {
            None
        };
        // The Promoted condition turns Unknown when a run starts and stays so until it ends.
        let started = old
            .condition(crate::api::CONDITION_PROMOTED)
            .filter(|c| c.status == "Unknown")
            .map(|c| c.last_transition_time);
        if let (Some(outcome), Some(started)) = (outcome, started) {
            let seconds = (Utc::now() - started).num_milliseconds() as f64 / 1000.0;
            m.rollout_duration
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .observe(seconds.max(0.0));
        }
    }

    // ---- observe ----------------------------------------------------------------------------

    async fn observe(&self) -> Result<Result<World, Stall>, ReconcileError> {
        let deployments: Api<Deployment> = self.api();
        let target_name = &self.spec.target_ref.name;
        let target = deployments.get_opt(target_name).await?;
        let primary = deployments
            .get_opt(&format!("{target_name}-primary"))
            .await?;
        let analysis = self.spec.analysis();
        let mut world = World {
            observed: Observed {
                generation: self.canary.metadata.generation,
                target: None,
                primary: primary.as_ref().map(|p| {
                    workload::readiness(p, analysis.primary_ready_threshold.unwrap_or(100))
                }),
                routes: None,
            },
            target: target.clone(),
            primary,
            label: None,
            configs: Vec::new(),
            hpa: None,
            templates: BTreeMap::new(),
        };
        if self.router() == RouterKind::GatewayApi {
            return Ok(Err(Stall {
                reason: "ProviderNotSupported",
                message: format!(
                    "provider {} is not supported by this version of Serin; use appmesh or kubernetes",
                    self.spec.provider.map_or("", Provider::as_str)
                ),
            }));
        }
        if let Some(t) = &target {
            let label = match workload::selector_label(t) {
                Ok(l) => l,
                Err(e) => {
                    return Ok(Err(Stall {
                        reason: "NoSelectorLabel",
                        message: e.to_string(),
                    }));
                }
            };
            let (revision, tracked) =
                match workload::deployment_revision(&self.ctx.client, &self.ns, t).await? {
                    Ok(r) => r,
                    Err(e) => {
                        return Ok(Err(Stall {
                            reason: "MissingConfig",
                            message: e.to_string(),
                        }));
                    }
                };
            let replicas = t.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let readiness = if replicas == 0 {
                Readiness::NotReady("the target is scaled to zero".into())
            } else {
                workload::readiness(t, analysis.canary_ready_threshold.unwrap_or(100))
            };
            world.observed.target = Some(TargetState {
                revision,
                tracked_configs: tracked.checksums,
                readiness,
            });
            world.configs = tracked.refs;
            world.label = Some(label);
        }
        if let Some(a) = &self.spec.autoscaler_ref {
            let hpas: Api<HorizontalPodAutoscaler> = self.api();
            match hpas.get_opt(&a.name).await? {
                Some(h) => world.hpa = Some(h),
                None => {
                    return Ok(Err(Stall {
                        reason: "AutoscalerNotFound",
                        message: format!(
                            "HorizontalPodAutoscaler {}.{} (spec.autoscalerRef) not found; create it or remove autoscalerRef",
                            a.name, self.ns
                        ),
                    }));
                }
            }
        }
        for m in analysis.metrics() {
            let Some(r) = &m.template_ref else { continue };
            let ns = r.namespace.clone().unwrap_or_else(|| self.ns.clone());
            let api: Api<MetricTemplate> = Api::namespaced(self.ctx.client.clone(), &ns);
            let Some(t) = api.get_opt(&r.name).await? else {
                return Ok(Err(Stall {
                    reason: "MetricTemplateNotFound",
                    message: format!(
                        "MetricTemplate {}.{ns} used by metric {} not found; create it or fix templateRef",
                        r.name, m.name
                    ),
                }));
            };
            let secret = match &t.spec.provider.secret_ref {
                Some(s) => {
                    let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
                    match api.get_opt(&s.name).await? {
                        Some(secret) => Some(secret_strings(&secret)),
                        None => {
                            return Ok(Err(Stall {
                                reason: "SecretNotFound",
                                message: format!(
                                    "Secret {}.{ns} of MetricTemplate {} not found",
                                    s.name, r.name
                                ),
                            }));
                        }
                    }
                }
                None => None,
            };
            world.templates.insert(m.name.clone(), (t, secret));
        }
        for a in analysis.alerts() {
            let ns = a
                .provider_ref
                .namespace
                .clone()
                .unwrap_or_else(|| self.ns.clone());
            let api: Api<AlertProvider> = Api::namespaced(self.ctx.client.clone(), &ns);
            if api.get_opt(&a.provider_ref.name).await?.is_none() {
                return Ok(Err(Stall {
                    reason: "AlertProviderNotFound",
                    message: format!(
                        "AlertProvider {}.{ns} used by alert {} not found; create it or fix providerRef",
                        a.provider_ref.name, a.name
                    ),
                }));
            }
        }
        world.observed.routes = self.read_routes(world.label.as_ref()).await?;
        Ok(Ok(world))
    }

    async fn read_routes(
        &self,
        label: Option<&(String, String)>,
    ) -> Result<Option<Weights>, ReconcileError> {
        let svc = self.spec.service_name();
        match self.router() {
            RouterKind::AppMesh => {
                let api = self.dynamic("VirtualRouter", "virtualrouters");
                let Some(vr) = api.get_opt(svc).await? else {
                    return Ok(None);
                };
                let value = serde_json::to_value(&vr).unwrap_or(Value::Null);
                Ok(appmesh::read_weights(&value, svc).ok())
            }
            RouterKind::Kubernetes | RouterKind::GatewayApi => {
                let (Some(label), api) = (label, self.api::<Service>()) else {
                    return Ok(None);
                };
                Ok(api.get_opt(svc).await?.map(|s| {
                    router::service_weights(&serde_json::to_value(&s).unwrap_or(Value::Null), label)
                }))
            }
        }
    }

    // ---- decide -----------------------------------------------------------------------------

    async fn decide(
        &self,
        world: &World,
        asked: &std::sync::atomic::AtomicBool,
    ) -> Result<Decision, ReconcileError> {
        let status = self.status();
        let mut probes = ProbeResults::default();
        let now = Utc::now();
        for _ in 0..8 {
            let input = Input {
                name: &self.name,
                namespace: &self.ns,
                spec: &self.spec,
                status: &status,
                observed: &world.observed,
                probes: &probes,
                request: self
                    .canary
                    .annotations()
                    .get(crate::api::REQUEST_ANNOTATION)
                    .map(String::as_str),
                now,
            };
            match engine::decide(&input) {
                Outcome::Decided(d) => return Ok(*d),
                Outcome::Need(list) => {
                    if list.iter().any(|p| matches!(p, Probe::Metrics(_))) {
                        asked.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    for p in list {
                        self.probe(p, world, &status, &mut probes).await;
                    }
                }
            }
        }
        Err(ReconcileError::Undecided)
    }

    async fn probe(&self, p: Probe, world: &World, status: &CanaryStatus, out: &mut ProbeResults) {
        let probes = &self.ctx.probes;
        match p {
            Probe::Hooks(kind) => {
                let canary = self.with_status(status);
                let phase = status.phase;
                let r = probes
                    .hooks
                    .run(&canary, kind, crate::hooks::payload_phase(kind, phase))
                    .await;
                out.hooks.insert(kind, r);
            }
            Probe::Metrics(names) => {
                let target = metrics::Target {
                    canary: &self.name,
                    namespace: &self.ns,
                    target: &self.spec.target_ref.name,
                    service: self.spec.service_name(),
                    provider: self.spec.provider.unwrap_or(self.ctx.default_provider),
                };
                let pods = PodLister {
                    client: self.ctx.client.clone(),
                };
                let analysis = self.spec.analysis();
                let queries = names.iter().filter_map(|n| {
                    let m = analysis.metrics().iter().find(|m| &m.name == n)?;
                    let template = world.templates.get(n).map(|(t, s)| ResolvedTemplate {
                        spec: &t.spec,
                        secret: s.as_ref(),
                    });
                    let pods = &pods;
                    let target = &target;
                    Some(async move {
                        let r = probes
                            .metrics
                            .query(
                                target,
                                m,
                                template.as_ref(),
                                pods,
                                self.spec.metrics_server.as_deref(),
                            )
                            .await;
                        (n.clone(), r)
                    })
                });
                for (n, r) in futures::future::join_all(queries).await {
                    out.metrics.insert(n, r);
                }
            }
        }
    }

    /// The Canary with a given status, as webhooks and alerts describe it.
    fn with_status(&self, status: &CanaryStatus) -> Canary {
        let mut c = self.effective.clone();
        c.status = Some(status.clone());
        c
    }

    // ---- act --------------------------------------------------------------------------------

    async fn apply(&self, api: &Api<DynamicObject>, obj: &Value) -> Result<(), ReconcileError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
        Ok(())
    }

    async fn apply_typed<K>(&self, obj: &Value) -> Result<(), ReconcileError>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        self.api::<K>()
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
        Ok(())
    }

    /// Carries out the decision's actions in order; returns the weights the routes have after.
    async fn act(
        &self,
        world: &World,
        d: &Decision,
        events: &mut Vec<Event>,
    ) -> Result<Weights, ReconcileError> {
        let mut weights = world
            .observed
            .routes
            .unwrap_or_else(|| Weights::canary(self.status().canary_weight));
        for a in &d.actions {
            match a {
                EngineAction::EnsureRoutes => self.ensure_routes(world, weights).await?,
                EngineAction::EnsurePrimary => self.ensure_primary(world).await?,
                EngineAction::SetWeights(w) => {
                    self.set_weights(world, *w).await?;
                    weights = *w;
                }
                EngineAction::ScaleTarget(scale) => self.scale(world, *scale).await?,
                EngineAction::PromoteToPrimary => self.promote(world, &d.status).await?,
                EngineAction::RunHooks { kind, phase } => {
                    let canary = self.with_status(&d.status);
                    events.extend(self.ctx.probes.hooks.run_all(&canary, *kind, *phase).await);
                }
                EngineAction::Notify { severity, message } => {
                    self.notify(&d.status, *severity, message, events).await;
                }
            }
        }
        Ok(weights)
    }

    async fn ensure_routes(&self, world: &World, weights: Weights) -> Result<(), ReconcileError> {
        let Some(label) = &world.label else {
            return Ok(());
        };
        let owner = self.owner();
        if self.router() == RouterKind::AppMesh {
            for vn in appmesh::virtual_nodes(self.canary_with_spec(), &self.ns, label, &owner) {
                self.apply(&self.dynamic("VirtualNode", "virtualnodes"), &vn)
                    .await?;
            }
            for vr in appmesh::virtual_routers(self.canary_with_spec(), &self.ns, &owner, weights) {
                self.apply(&self.dynamic("VirtualRouter", "virtualrouters"), &vr)
                    .await?;
            }
            for vs in appmesh::virtual_services(self.canary_with_spec(), &self.ns, &owner) {
                self.apply(&self.dynamic("VirtualService", "virtualservices"), &vs)
                    .await?;
            }
        }
        for s in router::services(self.canary_with_spec(), &self.ns, label, &owner, weights) {
            self.apply_typed::<Service>(&s).await?;
        }
        Ok(())
    }

    fn canary_with_spec(&self) -> &Canary {
        &self.effective
    }

    async fn copy_configs(&self, world: &World) -> Result<(), ReconcileError> {
        let owner = self.owner();
        for r in &world.configs {
            let copy = match r.kind {
                ConfigKind::ConfigMap => {
                    let Some(cm) = self.api::<ConfigMap>().get_opt(&r.name).await? else {
                        continue;
                    };
                    json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": copy_meta(&format!("{}-primary", r.name), &self.ns, &owner),
                        "data": cm.data, "binaryData": cm.binary_data,
                    })
                }
                ConfigKind::Secret => {
                    let Some(s) = self.api::<Secret>().get_opt(&r.name).await? else {
                        continue;
                    };
                    json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": copy_meta(&format!("{}-primary", r.name), &self.ns, &owner),
                        "type": s.type_, "data": s.data,
                    })
                }
            };
            match r.kind {
                ConfigKind::ConfigMap => self.apply_typed::<ConfigMap>(&copy).await?,
                ConfigKind::Secret => self.apply_typed::<Secret>(&copy).await?,
            }
        }
        Ok(())
    }

    fn primary_value(&self, world: &World, promotion_id: &str) -> Option<Value> {
        let target = world.target.as_ref()?;
        let owner = workload::owner_ref(&self.name, &self.canary.uid().unwrap_or_default());
        let replicas = workload::primary_replicas(
            target,
            world.primary.as_ref(),
            self.spec.autoscaler_ref.is_some(),
        );
        let d = workload::primary_deployment(
            target,
            &self.ns,
            &owner,
            &world.configs,
            promotion_id,
            replicas,
        )
        .ok()?;
        let mut v = serde_json::to_value(&d).ok()?;
        v["apiVersion"] = json!("apps/v1");
        v["kind"] = json!("Deployment");
        Some(v)
    }

    async fn ensure_hpa(&self, world: &World) -> Result<(), ReconcileError> {
        let (Some(hpa), Some(a)) = (&world.hpa, &self.spec.autoscaler_ref) else {
            return Ok(());
        };
        let owner = workload::owner_ref(&self.name, &self.canary.uid().unwrap_or_default());
        let clone = workload::primary_hpa(
            hpa,
            &self.spec.target_ref.name,
            &self.ns,
            &owner,
            a.primary_scaler_replicas.as_ref(),
        );
        let mut v = serde_json::to_value(&clone).unwrap_or(Value::Null);
        v["apiVersion"] = json!("autoscaling/v2");
        v["kind"] = json!("HorizontalPodAutoscaler");
        self.apply_typed::<HorizontalPodAutoscaler>(&v).await
    }

    async fn ensure_primary(&self, world: &World) -> Result<(), ReconcileError> {
        if world.primary.is_some() {
            return Ok(());
        }
        self.copy_configs(world).await?;
        if let Some(v) = self.primary_value(world, "initial") {
            self.apply_typed::<Deployment>(&v).await?;
        }
        self.ensure_hpa(world).await
    }

    async fn promote(&self, world: &World, status: &CanaryStatus) -> Result<(), ReconcileError> {
        self.copy_configs(world).await?;
        let id = format!(
            "{}-{}",
            status.last_applied_spec.as_deref().unwrap_or(""),
            Utc::now().timestamp()
        );
        if let Some(v) = self.primary_value(world, &id) {
            self.apply_typed::<Deployment>(&v).await?;
        }
        self.ensure_hpa(world).await
    }

    async fn set_weights(&self, world: &World, w: Weights) -> Result<(), ReconcileError> {
        let Some(label) = &world.label else {
            return Ok(());
        };
        let svc = self.spec.service_name();
        for _attempt in 0..2 {
            match self.router() {
                RouterKind::AppMesh => {
                    let routers =
                        appmesh::virtual_routers(&self.effective, &self.ns, &self.owner(), w);
                    self.apply(
                        &self.dynamic("VirtualRouter", "virtualrouters"),
                        &routers[0],
                    )
                    .await?;
                }
                RouterKind::Kubernetes | RouterKind::GatewayApi => {
                    let services =
                        router::services(&self.effective, &self.ns, label, &self.owner(), w);
                    self.apply_typed::<Service>(&services[2]).await?;
                }
            }
            if self.read_routes(Some(label)).await? == Some(w) {
                return Ok(());
            }
        }
        Err(ReconcileError::Routes(format!(
            "routes of {svc}.{} did not read back as primary {} / canary {} after two writes",
            self.ns, w.primary, w.canary
        )))
    }

    async fn scale(&self, world: &World, scale: Scale) -> Result<(), ReconcileError> {
        let Some(target) = &world.target else {
            return Ok(());
        };
        let replicas = match scale {
            Scale::Zero => 0,
            Scale::Up => {
                workload::scale_up_replicas(target, world.primary.as_ref(), world.hpa.as_ref())
            }
        };
        let current = target.spec.as_ref().and_then(|s| s.replicas);
        if current == Some(replicas) {
            return Ok(());
        }
        self.api::<Deployment>()
            .patch(
                &self.spec.target_ref.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        Ok(())
    }

    async fn notify(
        &self,
        status: &CanaryStatus,
        severity: crate::api::Severity,
        message: &str,
        events: &mut Vec<Event>,
    ) {
        let canary = self.with_status(status);
        for alert in self.spec.analysis().alerts() {
            if !crate::notify::wanted(alert, severity) {
                continue;
            }
            let ns = alert
                .provider_ref
                .namespace
                .clone()
                .unwrap_or_else(|| self.ns.clone());
            let providers: Api<AlertProvider> = Api::namespaced(self.ctx.client.clone(), &ns);
            let Ok(Some(provider)) = providers.get_opt(&alert.provider_ref.name).await else {
                continue;
            };
            let secret = match &provider.spec.secret_ref {
                Some(s) => {
                    let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
                    api.get_opt(&s.name)
                        .await
                        .ok()
                        .flatten()
                        .map(|s| secret_strings(&s))
                }
                None => None,
            };
            let a = crate::notify::Alert {
                cluster: self.ctx.probes.cluster_name.as_deref(),
                canary: &canary,
                severity,
                message,
            };
            if let Err(e) = self
                .ctx
                .probes
                .notifier
                .send(&provider.spec, secret.as_ref(), &a)
                .await
            {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: Reason::CheckFailed,
                    message: format!(
                        "Alert {} through {} failed: {e}",
                        alert.name, alert.provider_ref.name
                    ),
                });
            }
        }
    }

    // ---- status, events, stalls, finalizer ----------------------------------------------------

    async fn write_status(&self, status: &CanaryStatus) -> Result<(), ReconcileError> {
        if self.canary.status.as_ref() == Some(status) {
            return Ok(());
        }
        let mut c = self.canary.clone();
        c.status = Some(status.clone());
        // The resourceVersion this reconcile read: a stale writer gets 409 and retries.
        self.api::<Canary>()
            .replace_status(&self.name, &PostParams::default(), &c)
            .await?;
        Ok(())
    }

    async fn record(&self, events: &[Event], phase: Phase) {
        let reference = self.canary.object_ref(&());
        let canary = self.with_status(&self.status());
        for e in events {
            let ev = KubeEvent {
                type_: match e.type_ {
                    EventType::Normal => KubeEventType::Normal,
                    EventType::Warning => KubeEventType::Warning,
                },
                reason: e.reason.as_str().into(),
                note: Some(e.message.chars().take(1000).collect()),
                // Events are grouped into series by reason and action: the message as action
                // keeps each step its own Event while repeats of one message count up.
                action: e.message.chars().take(128).collect(),
                secondary: None,
            };
            if let Err(err) = self.ctx.recorder.publish(&ev, &reference).await {
                tracing::warn!(canary = %format!("{}/{}", self.ns, self.name), error = %err, "cannot record event");
            }
            tracing::info!(canary = %format!("{}/{}", self.ns, self.name), reason = e.reason.as_str(), "{}", e.message);
            self.ctx.probes.hooks.send_event(&canary, e, phase).await;
        }
    }

    async fn stall(&self, stall: Stall) -> Result<Action, ReconcileError> {
        let mut status = self.status();
        let same = status
            .condition(CONDITION_STALLED)
            .is_some_and(|c| c.status == "True" && c.message == stall.message);
        let now = Utc::now();
        let generation = self.canary.metadata.generation;
        status.set_condition(
            CONDITION_STALLED,
            "True",
            stall.reason,
            &stall.message,
            now,
            generation,
        );
        status.set_condition(
            CONDITION_READY,
            "False",
            stall.reason,
            &stall.message,
            now,
            generation,
        );
        status.set_condition(
            CONDITION_RECONCILING,
            "False",
            stall.reason,
            &stall.message,
            now,
            generation,
        );
        status.observed_generation = generation;
        self.write_status(&status).await?;
        if !same {
            let ev = KubeEvent {
                type_: KubeEventType::Warning,
                reason: stall.reason.into(),
                note: Some(stall.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            let _ = self
                .ctx
                .recorder
                .publish(&ev, &self.canary.object_ref(&()))
                .await;
            tracing::warn!(canary = %format!("{}/{}", self.ns, self.name), reason = stall.reason, "{}", stall.message);
        }
        Ok(Action::requeue(std::time::Duration::from_secs(30)))
    }

    async fn set_finalizer(&self, add: bool) -> Result<(), ReconcileError> {
        let mut finalizers: Vec<String> = self.canary.finalizers().to_vec();
        if add {
            finalizers.push(FINALIZER.into());
        } else {
            finalizers.retain(|f| f != FINALIZER);
        }
        self.api::<Canary>()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers, "resourceVersion": self.canary.resource_version()}})),
            )
            .await?;
        Ok(())
    }

    /// revertOnDeletion: the target serves again through the apex Service, which is released
    /// from the Canary so garbage collection keeps it; then the finalizer goes.
    async fn finalize(&self, revert: bool) -> Result<(), ReconcileError> {
        if revert {
            let deployments: Api<Deployment> = self.api();
            let target_name = &self.spec.target_ref.name;
            if let Some(target) = deployments.get_opt(target_name).await? {
                let primary = deployments
                    .get_opt(&format!("{target_name}-primary"))
                    .await?;
                let replicas = primary
                    .as_ref()
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.replicas)
                    .filter(|r| *r > 0)
                    .unwrap_or(1);
                deployments
                    .patch(
                        target_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                    )
                    .await?;
                if let Ok(label) = workload::selector_label(&target) {
                    let svc = self.spec.service_name();
                    let services: Api<Service> = self.api();
                    if let Some(s) = services.get_opt(svc).await? {
                        let owners: Vec<_> = s
                            .metadata
                            .owner_references
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|o| o.kind != "Canary")
                            .collect();
                        services
                            .patch(
                                svc,
                                &PatchParams::default(),
                                &Patch::Merge(json!({
                                    "metadata": {"ownerReferences": owners},
                                    "spec": {"selector": {label.0: label.1}},
                                })),
                            )
                            .await?;
                    }
                }
            }
            let ev = KubeEvent {
                type_: KubeEventType::Normal,
                reason: "Terminated".into(),
                note: Some(format!(
                    "Terminated canary {}.{}: traffic back on {}",
                    self.name, self.ns, target_name
                )),
                action: "Finalize".into(),
                secondary: None,
            };
            let _ = self
                .ctx
                .recorder
                .publish(&ev, &self.canary.object_ref(&()))
                .await;
        }
        self.set_finalizer(false).await
    }
}

fn copy_meta(name: &str, ns: &str, owner: &Value) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "labels": {"app.kubernetes.io/managed-by": "serin"},
        "ownerReferences": [owner],
    })
}

fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Pods of a Deployment, found through its selector, for the scrape provider.
struct PodLister {
    client: Client,
}

impl metrics::PodSource for PodLister {
    fn pods<'a>(
        &'a self,
        namespace: &'a str,
        deployment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<metrics::Pod>, String>> {
        Box::pin(async move {
            let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
            let d = deployments
                .get(deployment)
                .await
                .map_err(|e| format!("cannot read Deployment {deployment}.{namespace}: {e}"))?;
            let selector = d
                .spec
                .and_then(|s| s.selector.match_labels)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("cannot list pods of {deployment}.{namespace}: {e}"))?;
            Ok(list
                .items
                .into_iter()
                .filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.clone()?;
                    Some(metrics::Pod {
                        name: p.name_any(),
                        ip,
                    })
                })
                .collect())
        })
    }
}
