//! Logs, and the HTTP server for `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// promoted, rolled_back, aborted or superseded.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

/// The verdicts a metric can have; each gets a series so dashboards can show the current one.
pub const VERDICTS: [&str; 4] = ["Pass", "Fail", "Hold", "Error"];

/// The controller's own metrics.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// 0 running or waiting, 1 promoted or initialized, 2 failed (Flagger's encoding).
    pub status: Family<CanaryLabels, Gauge>,
    pub weight: Family<CanaryLabels, Gauge>,
    pub failed_checks: Family<CanaryLabels, Gauge>,
    pub metric_value: Family<MetricLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub metric_verdict: Family<VerdictLabels, Gauge>,
    pub analysis_duration: Histogram,
    pub rollout_duration: Family<OutcomeLabels, Histogram>,
    pub api_requests: Family<VerbLabels, Counter>,
    /// 1 while this instance holds the leader Lease (or runs without leader election).
    pub leader: Gauge,
    pub metric_threshold: Family<BoundLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    /// min or max.
    pub bound: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("serin");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let status = Family::<CanaryLabels, Gauge>::default();
        let weight = Family::<CanaryLabels, Gauge>::default();
        registry.register("reconciles", "Reconciles of Canaries", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by category",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "canary_status",
            "0 while a rollout runs, 1 promoted or initialized, 2 failed",
            status.clone(),
        );
        registry.register(
            "canary_weight",
            "Canary traffic weight (percent)",
            weight.clone(),
        );
        let failed_checks = Family::<CanaryLabels, Gauge>::default();
        registry.register(
            "canary_failed_checks",
            "Failed checks of the current run",
            failed_checks.clone(),
        );
        let metric_value =
            Family::<MetricLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "canary_metric_value",
            "Last value of each analysis metric",
            metric_value.clone(),
        );
        let metric_verdict = Family::<VerdictLabels, Gauge>::default();
        registry.register(
            "canary_metric_verdict",
            "1 for the last verdict of each analysis metric (Pass, Fail, Hold, Error), 0 for the others",
            metric_verdict.clone(),
        );
        let analysis_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "analysis_duration_seconds",
            "Time to run the webhooks and metric queries of one analysis step",
            analysis_duration.clone(),
        );
        let rollout_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
            ])
        });
        registry.register(
            "rollout_duration_seconds",
            "Time from a new revision to its end, by outcome (promoted, rolled_back, aborted, superseded)",
            rollout_duration.clone(),
        );
        let api_requests = Family::<VerbLabels, Counter>::default();
        registry.register(
            "kube_api_requests",
            "Requests to the Kubernetes API, by verb",
            api_requests.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance leads (holds the Lease), 0 on standby",
            leader.clone(),
        );
        let metric_threshold =
            Family::<BoundLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "canary_metric_threshold",
            "Accepted range of each analysis metric (bound min or max)",
            metric_threshold.clone(),
        );
        Metrics {
            leader,
            metric_threshold,
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status,
            weight,
            failed_checks,
            metric_value,
            metric_verdict,
            analysis_duration,
            rollout_duration,
            api_requests,
        }
    }
}

/// Counts Kubernetes API requests by verb (get, list, watch, create, update, patch, delete).
pub fn count_requests(
    metrics: Arc<Metrics>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<kube::client::Body>) -> http::Request<kube::client::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let query = req.uri().query().unwrap_or("");
        let verb = match *req.method() {
            http::Method::GET if query.contains("watch=true") || query.contains("watch=1") => {
                "watch"
            }
            http::Method::GET => "get",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        metrics
            .api_requests
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
        req
    })
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.metrics.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "cannot encode metrics".into(),
        ),
    }
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for leadership",
        )
    }
}

/// Serves until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready_flag: Arc<AtomicBool>,
) {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            metrics,
            ready: ready_flag,
        });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
