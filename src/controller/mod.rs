//! `serin controller`: wiring only. A kube-runtime `Controller` on Canaries, triggered by the
//! objects they own and reference; leader election on a Lease; `/metrics`, `/healthz` and
//! `/readyz`. Each reconcile observes, asks the engine, acts, and writes status
//! (see `reconcile.rs`).

mod leader;
mod probes;
mod reconcile;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{events::Reporter, watcher};
use kube::{Client, ResourceExt};

use crate::api::{AlertProvider, Canary, MetricTemplate, Provider};

pub use probes::{LiveProbes, Probes};
pub use reconcile::Context;

/// Options of `serin controller` (flags, or the environment variables named).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch Canaries in this namespace only; default: all namespaces.
    #[arg(long, env = "SERIN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Prometheus address for built-in metrics of Canaries without `metricsServer`.
    #[arg(
        long,
        env = "SERIN_METRICS_SERVER",
        default_value = "http://prometheus:9090"
    )]
    pub metrics_server: String,
    /// Provider of Canaries that set none.
    #[arg(long, env = "SERIN_PROVIDER", default_value = "appmesh:v1beta2")]
    pub provider: String,
    /// Elect a leader through a coordination.k8s.io Lease; only the leader writes.
    #[arg(long, env = "SERIN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease; default: the pod's namespace, else `default`.
    #[arg(long, env = "SERIN_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of this controller instance (in the Lease and in Events); default: hostname-pid.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Log format.
    #[arg(long, env = "SERIN_LOG_FORMAT", value_parser = ["json", "text"], default_value = "text")]
    pub log_format: String,
    /// Cluster name put in alerts.
    #[arg(long, env = "SERIN_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Average Kubernetes API requests per second (watches count once, when they start).
    #[arg(long, env = "SERIN_KUBE_QPS", default_value_t = 50.0)]
    pub kube_qps: f64,
    /// Requests allowed in a burst above the average.
    #[arg(long, env = "SERIN_KUBE_BURST", default_value_t = 100)]
    pub kube_burst: u64,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "SERIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    #[error("cannot reach the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("unknown --provider '{0}': use appmesh, appmesh:v1beta2, gatewayapi or kubernetes")]
    Provider(String),
    #[error("cannot serve {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Probes(String),
}

/// Starts logging, the HTTP server, leader election and the controller; returns when the
/// process is asked to stop or leadership is lost.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    telemetry::init_logs(&args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let default_provider: Provider = serde_json::from_value(serde_json::json!(args.provider))
        .map_err(|_| ControllerError::Provider(args.provider.clone()))?;
    let metrics = Arc::new(telemetry::Metrics::default());
    let client = client(&args, metrics.clone()).await?;
    let instance = args.instance.clone().unwrap_or_else(default_instance);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: args.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ControllerError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(telemetry::serve(listener, metrics.clone(), ready.clone()));

    let lease_ns = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".into());
    // Ready once the API answers: a standby waiting for the Lease is healthy and ready.
    client.apiserver_version().await?;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let elector = if args.leader_election {
        let elector = leader::Elector::new(client.clone(), &lease_ns, &instance);
        tracing::info!(instance = %instance, "waiting for the leader Lease");
        elector.acquire().await;
        tracing::info!(instance = %instance, lease = %format!("{lease_ns}/{}", leader::LEASE_NAME), "became leader");
        Some(elector)
    } else {
        None
    };
    metrics.leader.set(1);

    let probes = LiveProbes::new(args.metrics_server.clone(), args.cluster_name.clone())
        .map_err(ControllerError::Probes)?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Reporter {
            controller: "serin".into(),
            instance: Some(instance.clone()),
        },
        default_provider,
        Arc::new(probes),
        metrics,
    ));
    let canaries: Api<Canary> = namespaced(&client, &args.namespace);
    let deployments: Api<Deployment> = namespaced(&client, &args.namespace);
    let services: Api<Service> = namespaced(&client, &args.namespace);
    let templates: Api<MetricTemplate> = namespaced(&client, &args.namespace);
    let alerts: Api<AlertProvider> = namespaced(&client, &args.namespace);

    let controller = Controller::new(canaries, watcher::Config::default());
    let store = controller.store();
    let by_target = store.clone();
    let by_template = store.clone();
    let by_alert = store.clone();
    let mut controller = controller
        .owns(deployments.clone(), watcher::Config::default())
        .owns(services, watcher::Config::default())
        .watches(
            deployments,
            watcher::Config::default(),
            move |d: Deployment| {
                let ns = d.namespace().unwrap_or_default();
                let name = d.name_any();
                by_target
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace().as_deref() == Some(ns.as_str())
                            && c.spec.target_ref.name == name
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            templates,
            watcher::Config::default(),
            move |t: MetricTemplate| {
                let ns = t.namespace().unwrap_or_default();
                let name = t.name_any();
                by_template
                    .state()
                    .into_iter()
                    .filter(|c| reconcile::uses_template(c, &ns, &name))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            alerts,
            watcher::Config::default(),
            move |a: AlertProvider| {
                let ns = a.namespace().unwrap_or_default();
                let name = a.name_any();
                by_alert
                    .state()
                    .into_iter()
                    .filter(|c| reconcile::uses_alert_provider(c, &ns, &name))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        );
    if appmesh_installed(&client).await {
        let gvk = GroupVersionKind::gvk(
            crate::router::appmesh::GROUP,
            crate::router::appmesh::VERSION,
            "VirtualRouter",
        );
        let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualrouters");
        let routers: Api<DynamicObject> = match &args.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_with(routers, ar, watcher::Config::default());
    } else {
        tracing::warn!(
            "appmesh.k8s.aws/v1beta2 is not served by this cluster; App Mesh Canaries will report it"
        );
    }
    let run = controller
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile error");
            }
        });
    match &elector {
        Some(elector) => {
            tokio::select! {
                () = run => elector.release().await,
                () = elector.keep() => {
                    tracing::error!("lost leadership; exiting so that a new leader takes over");
                    std::process::exit(1);
                }
            }
        }
        None => run.await,
    }
    Ok(())
}

fn namespaced<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn client(
    args: &ControllerArgs,
    metrics: Arc<telemetry::Metrics>,
) -> Result<Client, ControllerError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| ControllerError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ControllerError::Config(e.to_string()))?,
    };
    let builder = kube::client::ClientBuilder::try_from(config).map_err(ControllerError::Api)?;
    Ok(builder
        .with_layer(&telemetry::count_requests(metrics))
        .build())
}

async fn appmesh_installed(client: &Client) -> bool {
    let gv = format!(
        "{}/{}",
        crate::router::appmesh::GROUP,
        crate::router::appmesh::VERSION
    );
    client.list_api_group_resources(&gv).await.is_ok()
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "serin".into());
    format!("{host}-{}", std::process::id())
}

/// Backoff of a reconcile that failed: first retry, and the longest wait.
pub(crate) const RETRY_MIN: Duration = Duration::from_secs(1);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(60);

/// Requeue when the engine gives no time.
pub(crate) fn requeue(after: Option<chrono::Duration>) -> Action {
    let d = after
        .and_then(|d| d.to_std().ok())
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_millis(200));
    Action::requeue(d)
}
