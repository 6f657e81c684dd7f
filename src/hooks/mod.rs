//! Webhook calls and gate semantics: the Canary's `analysis.webhooks`, called with Flagger's
//! JSON payload, a per-attempt timeout, jittered retries and a bounded response body, and their
//! answers folded into the [`HookResult`] the engine reads.
//!
//! Payload (POST, `Content-Type: application/json`):
//! `{"name":"podinfo","namespace":"test","phase":"Progressing","checksum":"…","metadata":{…}}`,
//! `metadata` left out when empty. A call succeeds when the final answer's status is at most
//! 202. Connection errors, timeouts, 429 and 5xx other than 501 are retried `retries` times
//! (exponential backoff from 1s, capped at 30s, with jitter; `Retry-After` honoured on 429 and
//! 503); only the exhausted call counts as one failure.

pub mod http;

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{Canary, CanaryStatus, CanaryWebhook, HookType, Phase};
use crate::engine::{Event, EventType, HookResult, Reason};

/// First retry delay; it doubles on every retry.
const RETRY_MIN_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between two attempts.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no answer within {0}; raise the webhook's timeout if it needs longer")]
    Timeout(String),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "answered {status} with a body larger than {limit} bytes; a webhook must answer with at most {limit} bytes",
        limit = http::MAX_RESPONSE_BYTES
    )]
    BodyTooLarge { status: u16 },
    #[error("giving up after {attempts} attempt(s), last: {last}")]
    Exhausted {
        attempts: usize,
        last: Box<HookError>,
    },
}

impl HookError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Client(_) => "client",
            HookError::Transport(_) => "transport",
            HookError::Timeout(_) => "timeout",
            HookError::Status { .. } => "status",
            HookError::BodyTooLarge { .. } => "body_too_large",
            HookError::Exhausted { last, .. } => last.label(),
        }
    }

    /// Whether another attempt may succeed: connection errors, timeouts, 429 and 5xx except 501.
    fn retryable(&self) -> bool {
        match self {
            HookError::Transport(_) | HookError::Timeout(_) => true,
            HookError::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }
}

/// The JSON body of every webhook call.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Payload<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub phase: Phase,
    pub checksum: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A failed attempt, with the server's `Retry-After` when it sent one.
struct Attempt {
    error: HookError,
    retry_after: Option<Duration>,
}

/// Calls webhooks. Holds two HTTP clients, one verifying TLS certificates and one for hooks
/// with `disableTLS: true`; cheap to share behind an `Arc`.
pub struct Hooks {
    verifying: reqwest::Client,
    insecure: reqwest::Client,
    retry_min_delay: Duration,
}

impl Hooks {
    pub fn new() -> Result<Hooks, HookError> {
        Ok(Hooks {
            verifying: http::client(true, None).map_err(HookError::Client)?,
            insecure: http::client(false, None).map_err(HookError::Client)?,
            retry_min_delay: RETRY_MIN_DELAY,
        })
    }

    /// Gates, checks and rollback hooks of `kind` from `canary.spec.analysis.webhooks`, in spec
    /// order, with Flagger's payload and `phase` (see [`payload_phase`]). The result follows
    /// [`HookResult`]: for gates and checks the first failing hook stops the calls and decides
    /// (`ok: false`, its error in `message`); for `rollback` every hook is asked until one
    /// answers with success, which requests a rollback (`ok: true`). With no hook of `kind`
    /// the answer is [`HookResult::quiet`].
    pub async fn run(&self, canary: &Canary, kind: HookType, phase: Phase) -> HookResult {
        let kind = normalize(kind);
        let analysis = canary.spec.analysis();
        let rollback = kind == HookType::Rollback;
        for hook in analysis.hooks_of(kind) {
            let outcome = self.call(canary, hook, phase, BTreeMap::new()).await;
            match (rollback, outcome) {
                (true, Ok(body)) => {
                    return HookResult {
                        ok: true,
                        hook: hook.name.clone(),
                        message: body,
                    };
                }
                (true, Err(_)) | (false, Ok(_)) => {}
                (false, Err(e)) => {
                    return HookResult {
                        ok: false,
                        hook: hook.name.clone(),
                        message: e.to_string(),
                    };
                }
            }
        }
        HookResult::quiet(kind)
    }

    /// Fire-and-forget hooks (post-rollout): every hook of `kind` is called in spec order;
    /// returns a Warning Event (reason `HookFailed`) for each one that failed.
    pub async fn run_all(&self, canary: &Canary, kind: HookType, phase: Phase) -> Vec<Event> {
        let kind = normalize(kind);
        let analysis = canary.spec.analysis();
        let mut events = Vec::new();
        for hook in analysis.hooks_of(kind) {
            if let Err(e) = self.call(canary, hook, phase, BTreeMap::new()).await {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: Reason::HookFailed,
                    message: format!("{} hook {} failed {e}", capitalized(kind), hook.name),
                });
            }
        }
        events
    }

    /// Sends one Kubernetes Event to the canary's `event` webhooks. Each gets the payload with
    /// its own metadata plus `eventMessage`, `eventType` (`Normal`/`Warning`) and `timestamp`
    /// (milliseconds since the epoch), which the hook's metadata cannot override. Failures are
    /// logged, never returned: an unreachable event hook must not change a rollout.
    pub async fn send_event(&self, canary: &Canary, event: &Event, phase: Phase) {
        let analysis = canary.spec.analysis();
        for hook in analysis.hooks_of(HookType::Event) {
            let extra = BTreeMap::from([
                ("eventMessage".to_string(), event.message.clone()),
                (
                    "eventType".to_string(),
                    match event.type_ {
                        EventType::Normal => "Normal".to_string(),
                        EventType::Warning => "Warning".to_string(),
                    },
                ),
                (
                    "timestamp".to_string(),
                    chrono::Utc::now().timestamp_millis().to_string(),
                ),
            ]);
            if let Err(e) = self.call(canary, hook, phase, extra).await {
                tracing::warn!(
                    canary = %canary_id(canary),
                    hook = %hook.name,
                    error = %e,
                    label = e.label(),
                    "event webhook failed"
                );
            }
        }
    }

    /// Calls one hook with retries; returns the answer's body (quoted for messages).
    async fn call(
        &self,
        canary: &Canary,
        hook: &CanaryWebhook,
        phase: Phase,
        extra_metadata: BTreeMap<String, String>,
    ) -> Result<String, HookError> {
        let mut metadata = hook.metadata.clone().unwrap_or_default();
        metadata.extend(extra_metadata);
        let payload = Payload {
            name: canary.metadata.name.as_deref().unwrap_or_default(),
            namespace: canary.metadata.namespace.as_deref().unwrap_or_default(),
            phase,
            checksum: canary.status.as_ref().map(checksum).unwrap_or_default(),
            metadata,
        };
        let body = serde_json::to_vec(&payload)
            .map_err(|e| HookError::Client(format!("cannot encode the payload: {e}")))?;
        let client = if hook.disable_tls == Some(true) {
            &self.insecure
        } else {
            &self.verifying
        };
        let timeout = hook.timeout().to_std().unwrap_or(Duration::from_secs(10));
        let retries = usize::try_from(hook.retries.unwrap_or(0).max(0)).unwrap_or(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry_min_delay)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_max_times(retries)
            .with_jitter();
        let mut attempts = 0usize;
        let started = std::time::Instant::now();
        let result = (|| {
            attempts += 1;
            attempt(client, &hook.url, body.clone(), timeout)
        })
        .retry(backoff.build())
        .when(|a: &Attempt| a.error.retryable())
        .adjust(|a: &Attempt, delay| {
            delay.map(|d| a.retry_after.map_or(d, |r| r.min(RETRY_MAX_DELAY)))
        })
        .notify(|a: &Attempt, delay| {
            tracing::debug!(
                canary = %canary_id(canary),
                hook = %hook.name,
                error = %a.error,
                ?delay,
                "webhook attempt failed, retrying"
            );
        })
        .await;
        tracing::debug!(
            canary = %canary_id(canary),
            hook = %hook.name,
            kind = hook.kind().as_str(),
            attempts,
            ok = result.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "webhook called"
        );
        result.map_err(|a| {
            if retries > 0 && a.error.retryable() {
                HookError::Exhausted {
                    attempts,
                    last: Box::new(a.error),
                }
            } else {
                a.error
            }
        })
    }
}

/// One POST within `timeout`, body read included.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<String, Attempt> {
    let call = async {
        let resp = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Attempt {
                error: HookError::Transport(http::chain(&e.without_url())),
                retry_after: None,
            })?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let body = http::read_body(resp).await.map_err(|e| Attempt {
            error: HookError::Transport(format!(
                "reading the answer: {}",
                http::chain(&e.without_url())
            )),
            retry_after: None,
        })?;
        let code = status.as_u16();
        let body = match body {
            http::Body::Complete(b) => http::quote(&b),
            http::Body::TooLarge => {
                return Err(Attempt {
                    error: HookError::BodyTooLarge { status: code },
                    retry_after: None,
                });
            }
        };
        if code <= 202 {
            Ok(body)
        } else {
            Err(Attempt {
                error: HookError::Status {
                    status: code,
                    body: if body.is_empty() {
                        status.canonical_reason().unwrap_or("").to_string()
                    } else {
                        body
                    },
                },
                retry_after: if code == 429 || code == 503 {
                    retry_after
                } else {
                    None
                },
            })
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(Attempt {
            error: HookError::Timeout(crate::api::duration::format(
                chrono::Duration::from_std(timeout).unwrap_or_default(),
            )),
            retry_after: None,
        }),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The phase sent in the payload for hooks of `kind` when the Canary is in `current`: Flagger
/// sends the current phase to `confirm-rollout`, `post-rollout`, `rollback` and `event` hooks,
/// and `Progressing` to the checks and the other gates.
pub fn payload_phase(kind: HookType, current: Phase) -> Phase {
    match normalize(kind) {
        HookType::PreRollout
        | HookType::Rollout
        | HookType::ConfirmTrafficIncrease
        | HookType::ConfirmPromotion => Phase::Progressing,
        _ => current,
    }
}

/// A stable identifier of the revision under test and its tracked ConfigMaps and Secrets
/// (`lastAppliedSpec` and `trackedConfigs`): 16 hex digits of their SHA-256.
pub fn checksum(status: &CanaryStatus) -> String {
    let mut h = Sha256::new();
    h.update(status.last_applied_spec.as_deref().unwrap_or_default());
    h.update([0u8]);
    for (k, v) in status.tracked_configs.iter().flatten() {
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn normalize(kind: HookType) -> HookType {
    if kind == HookType::Unset {
        HookType::Rollout
    } else {
        kind
    }
}

/// `Post-rollout`, as Flagger's messages name hook types.
fn capitalized(kind: HookType) -> String {
    let s = kind.as_str();
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn canary_id(canary: &Canary) -> String {
    format!(
        "{}/{}",
        canary.metadata.namespace.as_deref().unwrap_or_default(),
        canary.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_changes_with_the_revision_and_the_configs_only() {
        let mut s = CanaryStatus {
            last_applied_spec: Some("abc".into()),
            ..Default::default()
        };
        let a = checksum(&s);
        assert_eq!(a.len(), 16);
        s.failed_checks = 3;
        assert_eq!(
            checksum(&s),
            a,
            "failed checks are not part of the revision"
        );
        s.tracked_configs = Some(BTreeMap::from([("configmap/app".into(), "1".into())]));
        let b = checksum(&s);
        assert_ne!(b, a);
        s.last_applied_spec = Some("abd".into());
        assert_ne!(checksum(&s), b);
    }

    #[test]
    fn checks_and_gates_send_progressing_others_the_current_phase() {
        assert_eq!(
            payload_phase(HookType::ConfirmRollout, Phase::Initialized),
            Phase::Initialized
        );
        assert_eq!(
            payload_phase(HookType::PreRollout, Phase::Initialized),
            Phase::Progressing
        );
        assert_eq!(
            payload_phase(HookType::ConfirmPromotion, Phase::WaitingPromotion),
            Phase::Progressing
        );
        assert_eq!(
            payload_phase(HookType::PostRollout, Phase::Failed),
            Phase::Failed
        );
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |status| HookError::Status {
            status,
            body: String::new(),
        };
        assert!(status(500).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(501).retryable());
        assert!(!status(403).retryable());
        assert!(!status(203).retryable());
        assert!(HookError::Timeout("1s".into()).retryable());
        assert!(!HookError::BodyTooLarge { status: 200 }.retryable());
    }
}
