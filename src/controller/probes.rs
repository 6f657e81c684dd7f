//! The controller's connections to the outside: webhooks, metrics providers and alert
//! providers, shared by every reconcile.

use crate::hooks::Hooks;
use crate::metrics::{Metrics, MetricsConfig};
use crate::notify::Notifier;

/// Clients for webhooks, metrics and alerts.
pub struct LiveProbes {
    pub hooks: Hooks,
    pub metrics: Metrics,
    pub notifier: Notifier,
    pub cluster_name: Option<String>,
}

impl LiveProbes {
    pub fn new(metrics_server: String, cluster_name: Option<String>) -> Result<LiveProbes, String> {
        let config = MetricsConfig {
            default_prometheus: Some(metrics_server).filter(|s| !s.is_empty()),
            ..MetricsConfig::default()
        };
        Ok(LiveProbes {
            hooks: Hooks::new().map_err(|e| e.to_string())?,
            metrics: Metrics::new(config).map_err(|e| e.to_string())?,
            notifier: Notifier::new().map_err(|e| e.to_string())?,
            cluster_name,
        })
    }
}

/// The probes as the reconciler sees them.
pub type Probes = LiveProbes;
