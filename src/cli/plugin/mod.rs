//! The kubectl plugin (`serin <command>`, or `kubectl serin <command>` when the binary is
//! installed as `kubectl-serin`): `get`, `wait`, `promote`, `abort`, `retry`, `pause`, `resume`
//! against a cluster, and `convert` for Flagger manifests. This module owns what the commands
//! share: cluster connection flags, errors, time and Event formatting.

pub mod abort;
pub mod convert;
pub mod get;
pub mod pause;
pub mod promote;
mod request;
pub mod resume;
pub mod retry;
pub mod wait;

use std::future::Future;
use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How a command reaches the cluster (the flags kubectl users know).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; default: its current context.
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace of the Canary; default: the context's namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// What can stop a plugin command.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "Canary {name} not found in namespace {namespace}; list them with `kubectl serin get -n {namespace}`"
    )]
    NotFound { namespace: String, name: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl PluginError {
    /// A short stable label.
    pub fn label(&self) -> &'static str {
        match self {
            PluginError::Config(_) => "config",
            PluginError::Api(_) => "kube_api",
            PluginError::NotFound { .. } => "not_found",
            PluginError::Usage(_) => "usage",
            PluginError::Runtime(_) => "runtime",
        }
    }

    /// Exit code: 2 for input the user must fix (a wrong name, bad flags), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::NotFound { .. } | PluginError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// A client for the cluster the flags name, and the namespace to work in.
pub async fn connect(args: &KubeArgs) -> Result<(Client, String), PluginError> {
    // reqwest and kube are built without a default crypto provider; an error only means one is
    // already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| PluginError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| PluginError::Config(format!("{}: {e}", path.display())))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| PluginError::Config(e.to_string()))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| PluginError::Config(e.to_string()))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok((client, namespace))
}

/// Runs a command's future on a fresh runtime; prints its error as `serin <command>: <error>`.
pub fn run_command<F>(command: &str, future: F) -> u8
where
    F: Future<Output = Result<u8, PluginError>>,
{
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PluginError::Runtime)
        .and_then(|rt| rt.block_on(future));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("serin {command}: {e}");
            e.exit_code()
        }
    }
}

/// A Kubernetes timestamp as a chrono time.
pub fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t.as_millisecond())
}

/// An age the way kubectl prints it: `45s`, `3m12s`, `25m`, `4h10m`, `3d`.
pub fn age(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28_800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// When an Event last happened: its series' last observation, else its last timestamp, else
/// its event time, else its creation.
pub fn event_time(e: &KubeEvent) -> Option<DateTime<Utc>> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| &t.0)
        .or(e.last_timestamp.as_ref().map(|t| &t.0))
        .or(e.event_time.as_ref().map(|t| &t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| &t.0))
        .and_then(to_chrono)
}

/// An Event's identity for de-duplication: its uid (or name) and how often it happened.
pub fn event_key(e: &KubeEvent) -> (String, i32) {
    let id = e
        .metadata
        .uid
        .clone()
        .or_else(|| e.metadata.name.clone())
        .unwrap_or_default();
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1);
    (id, count)
}

/// `Warning  CheckFailed: Halt podinfo.test advancement …`
pub fn event_text(e: &KubeEvent) -> String {
    format!(
        "{:<7}  {}: {}",
        e.type_.as_deref().unwrap_or("Normal"),
        e.reason.as_deref().unwrap_or(""),
        e.message.as_deref().unwrap_or("")
    )
}

/// The field selector of the Events recorded on Canaries (one Canary when `name` is given).
/// The controller records events.k8s.io/v1 Events; they are read through the core v1 view,
/// whose `involvedObject` selectors every API server version supports.
pub fn canary_events_selector(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("involvedObject.kind=Canary,involvedObject.name={n}"),
        None => "involvedObject.kind=Canary".to_string(),
    }
}

/// A duration flag (`30s`, `10m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::api::duration::parse(s)?;
    d.to_std()
        .map_err(|_| format!("'{s}' is negative; write it like 30s or 10m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(Duration::seconds(45)), "45s");
        assert_eq!(age(Duration::seconds(192)), "3m12s");
        assert_eq!(age(Duration::seconds(1500)), "25m");
        assert_eq!(age(Duration::seconds(4 * 3600 + 600)), "4h10m");
        assert_eq!(age(Duration::seconds(3 * 86_400 + 5)), "3d");
        assert_eq!(age(Duration::seconds(-5)), "0s");
    }

    #[test]
    fn duration_flags_name_the_accepted_form() {
        assert_eq!(
            parse_duration("1m30s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert!(parse_duration("10").unwrap_err().contains("without a unit"));
    }
}
