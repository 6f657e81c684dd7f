//! Alerts to Slack, Microsoft Teams, Discord and generic JSON webhooks: the payload of each
//! AlertProvider type, the severity filter of a Canary's `analysis.alerts`, and delivery with a
//! timeout. Addresses and tokens (often secrets) never appear in logs, errors or Events.
//!
//! Every alert carries the cluster name (when set), the Canary, its namespace and phase, what
//! happened, and the Canary's last check values (`status.metrics`); see README.md "Alerts" for
//! an example of each payload.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{AlertProviderSpec, AlertProviderType, Canary, CanaryAlert, Severity, Strategy};
use crate::hooks::http;

/// Time allowed for one alert delivery.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "the AlertProvider has no address: set spec.address, or the key 'address' in the Secret named by spec.secretRef"
    )]
    NoAddress,
    #[error(
        "the AlertProvider's {0} is not an absolute http:// or https:// URL, for example https://hooks.slack.com/services/…"
    )]
    BadAddress(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("sending notification failed: {0}")]
    Transport(String),
    #[error("sending notification timed out after {}s", SEND_TIMEOUT.as_secs())]
    Timeout,
    #[error("sending notification bad response {status}: {body}")]
    Status { status: u16, body: String },
}

impl NotifyError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            NotifyError::NoAddress => "no_address",
            NotifyError::BadAddress(_) => "bad_address",
            NotifyError::Client(_) => "client",
            NotifyError::Transport(_) => "transport",
            NotifyError::Timeout => "timeout",
            NotifyError::Status { .. } => "status",
        }
    }
}

/// One alert about one Canary.
#[derive(Clone, Copy, Debug)]
pub struct Alert<'a> {
    /// The controller's `--cluster-name`, when set.
    pub cluster: Option<&'a str>,
    pub canary: &'a Canary,
    pub severity: Severity,
    /// What happened, for example "Failed checks threshold reached 5".
    pub message: &'a str,
}

/// Whether a Canary's alert entry wants alerts of `severity`: `info` (the default) takes all,
/// `warn` takes warnings and errors, `error` only errors.
pub fn wanted(alert: &CanaryAlert, severity: Severity) -> bool {
    severity >= alert.severity.unwrap_or_default()
}

/// Sends alerts. Cheap to share behind an `Arc`.
pub struct Notifier {
    client: reqwest::Client,
}

impl Notifier {
    pub fn new() -> Result<Notifier, NotifyError> {
        Ok(Notifier {
            client: http::client(true, None).map_err(NotifyError::Client)?,
        })
    }

    /// Sends `alert` through `provider`. `secret` is the AlertProvider's Secret data, already
    /// decoded: `address` (overrides `spec.address`), `token` (sent as `Authorization: Bearer`)
    /// and `proxy` (overrides `spec.proxy`). A 2xx answer is success.
    pub async fn send(
        &self,
        provider: &AlertProviderSpec,
        secret: Option<&BTreeMap<String, String>>,
        alert: &Alert<'_>,
    ) -> Result<(), NotifyError> {
        let from_secret = |k: &str| {
            secret
                .and_then(|s| s.get(k))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let (address, source) = match from_secret("address") {
            Some(a) => (a, "Secret key 'address'"),
            None => (
                provider.address.as_deref().ok_or(NotifyError::NoAddress)?,
                "spec.address",
            ),
        };
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(NotifyError::BadAddress(source));
        }
        let mut url = reqwest::Url::parse(address).map_err(|_| NotifyError::BadAddress(source))?;
        if provider.type_ == AlertProviderType::Discord && !url.path().ends_with("/slack") {
            // Discord takes Slack's payload on the webhook URL + /slack.
            let path = format!("{}/slack", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        let proxy_client;
        let client = match from_secret("proxy").or(provider.proxy.as_deref()) {
            Some(proxy) => {
                proxy_client = http::client(true, Some(proxy)).map_err(NotifyError::Client)?;
                &proxy_client
            }
            None => &self.client,
        };
        let mut req = client.post(url).json(&payload(provider, alert));
        if let Some(token) = from_secret("token") {
            req = req.bearer_auth(token);
        }
        let call = async {
            let resp = req
                .send()
                .await
                .map_err(|e| NotifyError::Transport(http::chain(&e.without_url())))?;
            let status = resp.status();
            let body = match http::read_body(resp).await {
                Ok(http::Body::Complete(b)) => http::quote(&b),
                Ok(http::Body::TooLarge) => format!(
                    "<answer larger than {} bytes, not read>",
                    http::MAX_RESPONSE_BYTES
                ),
                Err(e) => format!("<answer unreadable: {}>", http::chain(&e.without_url())),
            };
            if status.is_success() {
                Ok(())
            } else {
                Err(NotifyError::Status {
                    status: status.as_u16(),
                    body,
                })
            }
        };
        let result = tokio::time::timeout(SEND_TIMEOUT, call)
            .await
            .unwrap_or(Err(NotifyError::Timeout));
        let canary = alert.canary;
        tracing::debug!(
            canary = %format!(
                "{}/{}",
                canary.metadata.namespace.as_deref().unwrap_or_default(),
                canary.metadata.name.as_deref().unwrap_or_default()
            ),
            provider = provider_type(provider.type_),
            ok = result.is_ok(),
            "alert sent"
        );
        result
    }
}

/// The JSON body `provider` receives for `alert`.
pub fn payload(provider: &AlertProviderSpec, alert: &Alert<'_>) -> Value {
    let id = canary_id(alert.canary);
    let fields = fields(alert);
    match provider.type_ {
        AlertProviderType::Slack | AlertProviderType::Discord => json!({
            "channel": provider.channel.as_deref().filter(|c| !c.is_empty()).unwrap_or("general"),
            "username": provider.username.as_deref().filter(|u| !u.is_empty()).unwrap_or("serin"),
            "icon_emoji": ":rocket:",
            "attachments": [{
                "color": match alert.severity {
                    Severity::Info => "good",
                    Severity::Warn => "warning",
                    Severity::Error => "danger",
                },
                "author_name": id,
                "text": alert.message,
                "mrkdwn_in": ["text"],
                "fields": fields
                    .iter()
                    .map(|(t, v)| json!({"title": t, "value": v, "short": false}))
                    .collect::<Vec<_>>(),
            }],
        }),
        AlertProviderType::Msteams => json!({
            "@type": "MessageCard",
            "@context": "http://schema.org/extensions",
            "themeColor": match alert.severity {
                Severity::Info => "0076D7",
                Severity::Warn => "FFA500",
                Severity::Error => "FF0000",
            },
            "summary": id,
            "sections": [{
                "activityTitle": alert.message,
                "activitySubtitle": id,
                "facts": fields
                    .iter()
                    .map(|(t, v)| json!({"name": t, "value": v}))
                    .collect::<Vec<_>>(),
            }],
        }),
        AlertProviderType::Generic => generic(alert),
    }
}

/// Serin's own JSON for the `generic` provider: the same facts, as typed fields.
fn generic(alert: &Alert<'_>) -> Value {
    let canary = alert.canary;
    let status = canary.status.clone().unwrap_or_default();
    let mut v = json!({
        "name": canary.metadata.name.as_deref().unwrap_or_default(),
        "namespace": canary.metadata.namespace.as_deref().unwrap_or_default(),
        "target": target(canary),
        "phase": status.phase.as_str(),
        "severity": severity_str(alert.severity),
        "message": alert.message,
        "failedChecks": status.failed_checks,
        "threshold": canary.spec.analysis().threshold(),
        "canaryWeight": status.canary_weight,
        "metrics": status.metrics.iter().map(|m| json!({
            "name": m.name,
            "value": m.value,
            "verdict": m.verdict.as_str(),
            "message": m.message,
        })).collect::<Vec<_>>(),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let (Some(cluster), Some(obj)) = (alert.cluster, v.as_object_mut()) {
        obj.insert("cluster".into(), Value::String(cluster.into()));
    }
    v
}

/// Title–value pairs shown by the chat providers, in order.
fn fields(alert: &Alert<'_>) -> Vec<(String, String)> {
    let canary = alert.canary;
    let status = canary.status.clone().unwrap_or_default();
    let analysis = canary.spec.analysis();
    let mut out = Vec::new();
    if let Some(cluster) = alert.cluster.filter(|c| !c.is_empty()) {
        out.push(("Cluster".into(), cluster.to_string()));
    }
    out.push(("Target".into(), target(canary)));
    out.push(("Phase".into(), status.phase.as_str().into()));
    out.push((
        "Failed checks".into(),
        format!("{} of {}", status.failed_checks, analysis.threshold()),
    ));
    out.push(("Canary weight".into(), format!("{}%", status.canary_weight)));
    out.push(("Traffic routing".into(), routing(canary)));
    out.push((
        "Progress deadline".into(),
        crate::api::duration::format(canary.spec.progress_deadline()),
    ));
    for m in &status.metrics {
        out.push((
            m.name.clone(),
            format!("{}: {}", m.verdict.as_str(), m.message),
        ));
    }
    out
}

fn routing(canary: &Canary) -> String {
    let analysis = canary.spec.analysis();
    match canary.spec.strategy() {
        Strategy::AbTesting => "A/B Testing".into(),
        Strategy::BlueGreen => "Blue/Green".into(),
        Strategy::Canary => match &analysis.step_weights {
            Some(steps) if !steps.is_empty() => format!(
                "Weight steps: {} max: {}",
                steps
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                analysis.max_weight()
            ),
            _ => format!(
                "Weight step: {} max: {}",
                analysis.step_weight.unwrap_or(0),
                analysis.max_weight()
            ),
        },
    }
}

fn target(canary: &Canary) -> String {
    format!(
        "Deployment/{}.{}",
        canary.spec.target_ref.name,
        canary.metadata.namespace.as_deref().unwrap_or_default()
    )
}

fn canary_id(canary: &Canary) -> String {
    format!(
        "{}.{}",
        canary.metadata.name.as_deref().unwrap_or_default(),
        canary.metadata.namespace.as_deref().unwrap_or_default()
    )
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warn => "warn",
        Severity::Error => "error",
    }
}

fn provider_type(t: AlertProviderType) -> &'static str {
    match t {
        AlertProviderType::Slack => "slack",
        AlertProviderType::Msteams => "msteams",
        AlertProviderType::Discord => "discord",
        AlertProviderType::Generic => "generic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CrossNamespaceRef;

    #[test]
    fn severity_filter_follows_the_least_severity_wanted() {
        let entry = |severity| CanaryAlert {
            name: "on-call".into(),
            severity,
            provider_ref: CrossNamespaceRef {
                name: "slack".into(),
                namespace: None,
            },
        };
        for (wanted_at, sent) in [
            (None, [true, true, true]),
            (Some(Severity::Info), [true, true, true]),
            (Some(Severity::Warn), [false, true, true]),
            (Some(Severity::Error), [false, false, true]),
        ] {
            let got = [Severity::Info, Severity::Warn, Severity::Error]
                .map(|s| wanted(&entry(wanted_at), s));
            assert_eq!(got, sent, "alert severity {wanted_at:?}");
        }
    }
}
