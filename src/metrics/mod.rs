//! Metrics providers: the `MetricsProvider` port and its adapters — Prometheus (with SigV4 for
//! Amazon Managed Service for Prometheus), CloudWatch `GetMetricData`, CloudWatch alarms, and
//! `scrape` (direct Envoy/pod scrape, no Prometheus needed) — plus query templating and the
//! built-in queries per mesh. [`Metrics::query`] is the one entry point the controller calls.
//!
//! Which provider runs a Canary metric:
//! - a `templateRef`: the template's `provider.type`;
//! - an inline `query`: Prometheus at the Canary's `metricsServer` (or the controller default);
//! - a built-in (`request-success-rate`, `request-duration`): Prometheus at that server with the
//!   mesh's PromQL, or the `scrape` provider when no server is known or the server is `scrape`.

pub mod builtin;
pub mod cloudwatch;
mod http;
pub mod prometheus;
pub mod scrape;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::api::{CanaryMetric, MetricProvider, MetricProviderType, MetricTemplateSpec, Provider};
use crate::engine::MetricResult;

pub use cloudwatch::{CloudWatch, CloudWatchAlarms};
pub use prometheus::Prometheus;
pub use scrape::{ScrapeEndpoint, ScrapeState};
pub use template::Vars;

/// What a query is about.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The Canary's name.
    pub canary: &'a str,
    pub namespace: &'a str,
    /// `targetRef.name`: the canary Deployment.
    pub target: &'a str,
    /// The apex Service name.
    pub service: &'a str,
    /// The mesh provider; selects the built-in queries.
    pub provider: Provider,
}

/// A MetricTemplate with the data of its `secretRef` (read by the controller).
#[derive(Clone, Copy, Debug)]
pub struct ResolvedTemplate<'a> {
    pub spec: &'a MetricTemplateSpec,
    pub secret: Option<&'a BTreeMap<String, String>>,
}

/// A pod of a Deployment and its IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub ip: String,
}

/// Pods of a Deployment with their IPs, for the scrape provider (the controller implements it
/// with the Deployment's selector).
pub trait PodSource: Send + Sync {
    fn pods<'a>(
        &'a self,
        namespace: &'a str,
        deployment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Pod>, String>>;
}

/// Controller-wide settings of the providers.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Prometheus for built-ins and inline queries when a Canary sets no `metricsServer`.
    /// `None` (or `scrape`) makes built-ins use the scrape provider.
    pub default_prometheus: Option<String>,
    /// Timeout of one HTTP request (Prometheus, one pod scrape) or one AWS call attempt.
    pub timeout: Duration,
    /// Extra attempts after a transport error (connection refused, reset); never after a timeout
    /// or an HTTP answer.
    pub retries: usize,
    /// CloudWatch endpoint for every template without `address` (tests, VPC endpoints).
    pub cloudwatch_endpoint: Option<String>,
    /// Static AWS credentials instead of the default chain (environment, IRSA web identity,
    /// EKS pod identity, instance metadata).
    pub aws_credentials: Option<aws_sdk_cloudwatch::config::Credentials>,
    /// Port scraped on each pod when a scrape template sets no address: Envoy's admin port.
    pub scrape_port: u16,
    /// Path scraped on each pod when a scrape template sets no address.
    pub scrape_path: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            default_prometheus: None,
            timeout: Duration::from_secs(5),
            retries: 2,
            cloudwatch_endpoint: None,
            aws_credentials: None,
            scrape_port: 9901,
            scrape_path: "/stats/prometheus".into(),
        }
    }
}

/// Why a query produced no value. `label()` is short and stable (metrics, Events).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Empty result or NaN: the check follows the metric's `onNoData`.
    #[error("{provider} returned {detail} for `{query}`")]
    NoData {
        provider: &'static str,
        query: String,
        detail: String,
    },
    #[error("query template: {0}")]
    Template(String),
    #[error("{0}")]
    Config(String),
    #[error("{provider} at {at}: {detail}")]
    Transport {
        provider: &'static str,
        at: String,
        detail: String,
    },
    #[error("{provider} at {at}: no answer within {after:?}")]
    Timeout {
        provider: &'static str,
        at: String,
        after: Duration,
    },
    #[error("{provider} at {at}: HTTP {status}: {body}")]
    Http {
        provider: &'static str,
        at: String,
        status: u16,
        body: String,
    },
    #[error("{provider}: {detail}")]
    BadResponse {
        provider: &'static str,
        detail: String,
    },
    #[error(
        "{provider} returned {count} series for `{query}` ({series}); aggregate them into one (for example with sum()) or filter by label"
    )]
    MultipleSeries {
        provider: &'static str,
        query: String,
        count: usize,
        series: String,
    },
    #[error("{provider}: {detail}")]
    Aws {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} does not support {what}")]
    Unsupported {
        provider: &'static str,
        what: String,
    },
}

impl MetricsError {
    pub fn label(&self) -> &'static str {
        match self {
            MetricsError::NoData { .. } => "no-data",
            MetricsError::Template(_) => "template",
            MetricsError::Config(_) => "config",
            MetricsError::Transport { .. } => "transport",
            MetricsError::Timeout { .. } => "timeout",
            MetricsError::Http { .. } => "http",
            MetricsError::BadResponse { .. } => "bad-response",
            MetricsError::MultipleSeries { .. } => "multiple-series",
            MetricsError::Aws { .. } => "aws",
            MetricsError::Unsupported { .. } => "unsupported",
        }
    }

    /// The engine's view: no data goes through `onNoData`, everything else is a failed query.
    /// `provider` prefixes messages that do not name one already.
    pub fn into_result(self, provider: &str) -> MetricResult {
        match self {
            MetricsError::NoData { .. } => MetricResult::NoData(self.to_string()),
            MetricsError::Template(_) | MetricsError::Config(_) => {
                MetricResult::Error(format!("{provider}: {self}"))
            }
            other => MetricResult::Error(other.to_string()),
        }
    }
}

/// A time range for range queries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeRange {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub step: Duration,
}

/// One value of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub time: DateTime<Utc>,
    pub value: f64,
}

/// A source of metric values.
pub trait MetricsProvider: Send + Sync {
    /// Short name used in messages: `prometheus`, `cloudwatch`, `cloudwatch-alarms`, `scrape`.
    fn kind(&self) -> &'static str;

    /// The value of `query` now. `window` is the metric's interval: CloudWatch looks back
    /// 10 × window, scrape compares with its scrape of about one window ago, Prometheus has the
    /// window in the query text. Empty results and NaN are [`MetricsError::NoData`].
    fn instant<'a>(
        &'a self,
        query: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<f64, MetricsError>>;

    /// The values of `query` over `range`, oldest first (one series).
    fn range<'a>(
        &'a self,
        query: &'a str,
        range: TimeRange,
    ) -> BoxFuture<'a, Result<Vec<Point>, MetricsError>>;
}

/// The providers, their HTTP and AWS clients, and the scrape provider's previous samples.
pub struct Metrics {
    config: MetricsConfig,
    http: http::Clients,
    aws: cloudwatch::AwsClients,
    scrape: ScrapeState,
}

/// The `metricsServer` value that selects the scrape provider for built-ins.
pub const SCRAPE_SERVER: &str = "scrape";

impl Metrics {
    pub fn new(config: MetricsConfig) -> Result<Metrics, MetricsError> {
        let http = http::Clients::new(config.timeout)?;
        let aws = cloudwatch::AwsClients::new(&config);
        Ok(Metrics {
            config,
            http,
            aws,
            scrape: ScrapeState::default(),
        })
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// One check: renders the query (template variables), runs it, and returns the value,
    /// `NoData` (empty result or NaN; the message names the provider and the query) or `Error`
    /// (the message names the provider and the error). Never panics.
    pub async fn query(
        &self,
        target: &Target<'_>,
        metric: &CanaryMetric,
        template: Option<&ResolvedTemplate<'_>>,
        pods: &dyn PodSource,
        metrics_server: Option<&str>,
    ) -> MetricResult {
        let (provider, outcome) = self
            .run(target, metric, template, pods, metrics_server)
            .await;
        match outcome {
            Ok(v) if v.is_nan() => MetricResult::NoData(format!("{provider} returned NaN")),
            Ok(v) => MetricResult::Value(v),
            Err(e) => {
                tracing::debug!(
                    canary = %format!("{}/{}", target.namespace, target.canary),
                    metric = %metric.name,
                    provider,
                    error = e.label(),
                    "metric query gave no value"
                );
                e.into_result(provider)
            }
        }
    }

    async fn run(
        &self,
        target: &Target<'_>,
        metric: &CanaryMetric,
        template: Option<&ResolvedTemplate<'_>>,
        pods: &dyn PodSource,
        metrics_server: Option<&str>,
    ) -> (&'static str, Result<f64, MetricsError>) {
        let interval = metric.interval.as_deref().unwrap_or("1m");
        let window = metric
            .interval()
            .to_std()
            .unwrap_or(Duration::from_secs(60));
        let vars = Vars {
            name: target.canary,
            namespace: target.namespace,
            target: target.target,
            service: target.service,
            interval,
            variables: metric.template_variables.as_ref(),
        };
        if let Some(t) = template {
            let kind = t.spec.provider.type_.as_str();
            let out = self.run_template(target, t, &vars, window, pods).await;
            return (kind, out);
        }
        let server = metrics_server
            .filter(|s| !s.trim().is_empty())
            .or(self.config.default_prometheus.as_deref());
        if let Some(query) = &metric.query {
            let Some(address) = server.filter(|s| *s != SCRAPE_SERVER) else {
                return (
                    prometheus::KIND,
                    Err(MetricsError::Config(format!(
                        "metric '{}' has an inline query but no Prometheus is known: set spec.metricsServer or the controller's default Prometheus",
                        metric.name
                    ))),
                );
            };
            let out = async {
                let q = template::collapse_whitespace(&template::render(query, &vars)?);
                let p = self.prometheus(address, None, None).await?;
                p.instant(&q, window).await
            }
            .await;
            return (prometheus::KIND, out);
        }
        if !metric.is_builtin() {
            return (
                "metrics",
                Err(MetricsError::Config(format!(
                    "metric '{}' is neither built in (request-success-rate, request-duration) nor has a query or templateRef",
                    metric.name
                ))),
            );
        }
        match server.filter(|s| *s != SCRAPE_SERVER) {
            Some(address) => {
                let out = async {
                    let q = builtin::promql(&metric.name, target.provider, &vars)?;
                    let p = self.prometheus(address, None, None).await?;
                    p.instant(&q, window).await
                }
                .await;
                (prometheus::KIND, out)
            }
            None => {
                let out = async {
                    let measure = builtin::scrape_measure(&metric.name, target.provider)?;
                    let endpoint =
                        ScrapeEndpoint::new(self.config.scrape_port, &self.config.scrape_path);
                    self.scrape
                        .provider(
                            &self.http.verify,
                            pods,
                            target.namespace,
                            target.target,
                            endpoint,
                        )
                        .with_timeout(self.config.timeout)
                        .instant(measure, window)
                        .await
                }
                .await;
                (scrape::KIND, out)
            }
        }
    }

    async fn run_template(
        &self,
        target: &Target<'_>,
        t: &ResolvedTemplate<'_>,
        vars: &Vars<'_>,
        window: Duration,
        pods: &dyn PodSource,
    ) -> Result<f64, MetricsError> {
        let p = &t.spec.provider;
        let rendered = template::render(&t.spec.query, vars)?;
        match p.type_ {
            MetricProviderType::Prometheus => {
                let address = p.address.as_deref().ok_or_else(|| {
                    MetricsError::Config(
                        "the template's provider.address is empty; set it to the Prometheus URL (for example http://prometheus.monitoring:9090)".into(),
                    )
                })?;
                let prom = self.prometheus(address, Some(p), t.secret).await?;
                prom.instant(&template::collapse_whitespace(&rendered), window)
                    .await
            }
            MetricProviderType::CloudWatch => {
                let client = self.cloudwatch_client(p).await?;
                CloudWatch::from_client(client)
                    .instant(&rendered, window)
                    .await
            }
            MetricProviderType::CloudWatchAlarms => {
                let client = self.cloudwatch_client(p).await?;
                CloudWatchAlarms::from_client(client)
                    .instant(&rendered, window)
                    .await
            }
            MetricProviderType::Scrape => {
                let endpoint = match p.address.as_deref().filter(|a| !a.trim().is_empty()) {
                    Some(a) => ScrapeEndpoint::parse(a)?,
                    None => ScrapeEndpoint::new(self.config.scrape_port, &self.config.scrape_path),
                };
                let client = if p.insecure_skip_verify.unwrap_or(false) {
                    &self.http.insecure
                } else {
                    &self.http.verify
                };
                self.scrape
                    .provider(client, pods, target.namespace, target.target, endpoint)
                    .with_timeout(self.config.timeout)
                    .instant(rendered.trim(), window)
                    .await
            }
        }
    }

    /// A Prometheus provider for `address`, with the template's headers, TLS setting and
    /// secret (`token`, or `username` and `password`). SigV4 signing is used for Amazon Managed
    /// Service for Prometheus (`aps-workspaces.<region>.amazonaws.com`).
    pub async fn prometheus(
        &self,
        address: &str,
        provider: Option<&MetricProvider>,
        secret: Option<&BTreeMap<String, String>>,
    ) -> Result<Prometheus, MetricsError> {
        let insecure = provider
            .and_then(|p| p.insecure_skip_verify)
            .unwrap_or(false);
        let client = if insecure {
            self.http.insecure.clone()
        } else {
            self.http.verify.clone()
        };
        let empty = BTreeMap::new();
        let headers = provider.and_then(|p| p.headers.as_ref()).unwrap_or(&empty);
        let mut prom = Prometheus::new(client, address, headers, secret)?
            .with_retries(self.config.retries)
            .with_timeout(self.config.timeout);
        if let Some(region) = prometheus::amp_region(prom.base_url()) {
            let creds = self.aws.credentials(&region).await?;
            prom = prom.with_sigv4(region, creds);
        }
        Ok(prom)
    }

    async fn cloudwatch_client(
        &self,
        p: &MetricProvider,
    ) -> Result<aws_sdk_cloudwatch::Client, MetricsError> {
        let region = p.region.as_deref().filter(|r| !r.trim().is_empty()).ok_or_else(|| {
            MetricsError::Config(
                "the template's provider.region is empty; set the AWS region of the metrics (for example eu-west-1)".into(),
            )
        })?;
        let endpoint = p
            .address
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .or(self.config.cloudwatch_endpoint.as_deref());
        self.aws.client(region, endpoint).await
    }
}

/// Renders label sets for messages: `{a="1",b="2"}`.
pub(crate) fn format_labels(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    let inner: Vec<String> = sorted
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{{{}}}", inner.join(","))
}
