//! Leader election on a `coordination.k8s.io/v1` Lease: one controller instance holds it and
//! renews it; the others wait until it expires. Writes carry the Lease's resourceVersion, so two
//! instances can never both believe they acquired it.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

pub const LEASE_NAME: &str = "serin-leader-election";
const LEASE_SECONDS: i32 = 15;
const LEASE: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Who holds the Lease after an attempt.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
    Ours,
    Theirs,
    /// The API could not be asked, or the write lost a race; try again.
    Unknown,
}

pub struct Elector {
    api: Api<Lease>,
    identity: String,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(l: &Lease) -> bool {
    let Some(spec) = &l.spec else { return true };
    let Some(renewed) = &spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let renewed_ms = renewed.0.as_millisecond();
    renewed_ms + secs * 1000 < Utc::now().timestamp_millis()
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
        }
    }

    /// One attempt to take or renew the Lease.
    async fn try_hold(&self) -> Hold {
        let current = match self.api.get_opt(LEASE_NAME).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader Lease");
                return Hold::Unknown;
            }
        };
        let written = |r: Result<Lease, kube::Error>| match r {
            Ok(_) => Hold::Ours,
            Err(e) => {
                tracing::debug!(error = %e, "leader Lease write lost");
                Hold::Unknown
            }
        };
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: acquired.or_else(|| Some(now_micro())),
            renew_time: Some(now_micro()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..Default::default()
                    },
                    spec: Some(spec(0, None)),
                };
                written(self.api.create(&PostParams::default(), &lease).await)
            }
            Some(mut lease) => {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                let ours = holder.as_deref() == Some(self.identity.as_str());
                let free = holder.as_deref().is_none_or(str::is_empty);
                if !ours && !free && !expired(&lease) {
                    return Hold::Theirs;
                }
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!ours);
                let acquired = if ours { old.acquire_time } else { None };
                lease.spec = Some(spec(transitions, acquired));
                // The resourceVersion read above makes a concurrent taker lose with 409.
                written(
                    self.api
                        .replace(LEASE_NAME, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
    }

    /// Waits until this instance holds the Lease.
    pub async fn acquire(&self) {
        loop {
            if self.try_hold().await == Hold::Ours {
                return;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Gives the Lease up (on shutdown), so a standby takes over at once instead of after it
    /// expires.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the leader Lease");
        }
    }

    /// Renews the Lease in the background; the returned future completes when it is lost.
    pub async fn keep(&self) {
        {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                match self.try_hold().await {
                    Hold::Ours => last_ok = tokio::time::Instant::now(),
                    Hold::Theirs => return,
                    // Stop before the Lease can expire under us and another instance takes it.
                    Hold::Unknown => {
                        if last_ok.elapsed() >= LEASE - RENEW_EVERY {
                            return;
                        }
                    }
                }
            }
        }
    }
}
