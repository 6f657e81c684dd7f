//! The built-in metrics `request-success-rate` (percent of non-5xx responses) and
//! `request-duration` (p99 in milliseconds) per mesh provider: the App Mesh PromQL on Envoy's
//! metrics, and the matching measure of the scrape provider.
//!
//! App Mesh pods run an Envoy sidecar, so both come from Envoy's `envoy_cluster_upstream_rq`
//! counter and `envoy_cluster_upstream_rq_time` histogram (milliseconds). Gateway API and the
//! `kubernetes` provider have no single data plane whose metrics could be assumed, so their
//! built-ins have no query: such Canaries reference a MetricTemplate (see `policies/`).

use crate::api::{Provider, RouterKind};

use super::MetricsError;
use super::template::{self, Vars};

/// Success rate of the canary's pods, FB §3.12.
pub const APPMESH_SUCCESS_RATE: &str = r#"sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)",envoy_response_code!~"5.*"}[{{ interval }}])) / sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[{{ interval }}])) * 100"#;

/// p99 request duration of the canary's pods in milliseconds, FB §3.12.
pub const APPMESH_DURATION: &str = r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{kubernetes_namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[{{ interval }}])) by (le))"#;

/// The rendered PromQL of a built-in metric for `provider`, or an error saying what to use
/// instead.
pub fn promql(metric: &str, provider: Provider, vars: &Vars<'_>) -> Result<String, MetricsError> {
    let text = match (provider.router(), metric) {
        (RouterKind::AppMesh, "request-success-rate") => APPMESH_SUCCESS_RATE,
        (RouterKind::AppMesh, "request-duration") => APPMESH_DURATION,
        (RouterKind::AppMesh, other) => {
            return Err(MetricsError::Config(format!(
                "'{other}' is not a built-in metric (built in: request-success-rate, request-duration); add a query or templateRef"
            )));
        }
        (_, _) => return Err(no_builtin(metric, provider)),
    };
    Ok(template::collapse_whitespace(&template::render(
        text, vars,
    )?))
}

/// The scrape provider's measure for a built-in metric.
pub fn scrape_measure(metric: &str, provider: Provider) -> Result<&'static str, MetricsError> {
    match (provider.router(), metric) {
        (RouterKind::AppMesh, "request-success-rate") => Ok("request-success-rate"),
        (RouterKind::AppMesh, "request-duration") => Ok("request-duration"),
        (RouterKind::AppMesh, other) => Err(MetricsError::Config(format!(
            "'{other}' is not a built-in metric (built in: request-success-rate, request-duration); add a query or templateRef"
        ))),
        (_, _) => Err(no_builtin(metric, provider)),
    }
}

fn no_builtin(metric: &str, provider: Provider) -> MetricsError {
    MetricsError::Config(format!(
        "the {} provider has no built-in '{metric}': its data plane is not known; reference a MetricTemplate instead (policies/ has ready ones)",
        provider.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            name: "podinfo",
            namespace: "default",
            target: "podinfo",
            service: "podinfo",
            interval: "1m",
            variables: None,
        }
    }

    #[test]
    fn appmesh_success_rate_renders_as_flagger_does() {
        assert_eq!(
            promql("request-success-rate", Provider::AppMesh, &vars()).unwrap(),
            r#"sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace="default",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)",envoy_response_code!~"5.*"}[1m])) / sum(rate(envoy_cluster_upstream_rq{kubernetes_namespace="default",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) * 100"#
        );
    }

    #[test]
    fn appmesh_duration_renders_as_flagger_does() {
        assert_eq!(
            promql("request-duration", Provider::AppMeshV1beta2, &vars()).unwrap(),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{kubernetes_namespace="default",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) by (le))"#
        );
    }

    #[test]
    fn gateway_api_builtins_point_to_templates() {
        let err = promql("request-success-rate", Provider::GatewayApi, &vars())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gatewayapi"), "{err}");
        assert!(err.contains("MetricTemplate"), "{err}");
        assert!(scrape_measure("request-duration", Provider::Kubernetes).is_err());
        assert_eq!(
            scrape_measure("request-duration", Provider::AppMesh).unwrap(),
            "request-duration"
        );
    }
}
