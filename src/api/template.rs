//! `MetricTemplate` (a reusable query against a metrics provider) and `AlertProvider` (where
//! alerts go), with Flagger's field names.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A query against a metrics provider, referenced by Canary metrics through `templateRef`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "serin.dev",
    version = "v1beta1",
    kind = "MetricTemplate",
    plural = "metrictemplates",
    category = "all",
    namespaced,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    pub provider: MetricProvider,
    /// The query, with `{{ namespace }}`, `{{ target }}`, `{{ service }}`, `{{ interval }}`,
    /// `{{ name }}` and `{{ variables.NAME }}` filled in before each run. For `cloudwatch` it is
    /// a JSON array of MetricDataQuery objects; for `cloudwatch-alarms` a JSON array of alarm
    /// names; for `scrape` the name of a built-in measure (`request-success-rate`,
    /// `request-duration`).
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Where a template's query runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'prometheus' || has(self.address)",
        "message": "a prometheus provider needs address (for example http://prometheus.monitoring:9090)",
        "fieldPath": ".address"
    },
    {
        "rule": "!(self.type in ['cloudwatch', 'cloudwatch-alarms']) || has(self.region)",
        "message": "a CloudWatch provider needs region (for example eu-west-1)",
        "fieldPath": ".region"
    }
]))]
pub struct MetricProvider {
    #[serde(rename = "type")]
    pub type_: MetricProviderType,
    /// Provider URL (Prometheus), or an endpoint override (CloudWatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Secret with `token`, or `username` and `password`, in the template's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// AWS region (CloudWatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Skip TLS certificate verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MetricProviderType {
    #[serde(rename = "prometheus")]
    Prometheus,
    #[serde(rename = "cloudwatch")]
    CloudWatch,
    #[serde(rename = "cloudwatch-alarms")]
    CloudWatchAlarms,
    #[serde(rename = "scrape")]
    Scrape,
}

impl MetricProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricProviderType::Prometheus => "prometheus",
            MetricProviderType::CloudWatch => "cloudwatch",
            MetricProviderType::CloudWatchAlarms => "cloudwatch-alarms",
            MetricProviderType::Scrape => "scrape",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Where alerts are sent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "serin.dev",
    version = "v1beta1",
    kind = "AlertProvider",
    plural = "alertproviders",
    category = "all",
    namespaced,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.address) || has(self.secretRef)",
        "message": "set address, or secretRef to a Secret whose key 'address' holds the webhook URL"
    }
]))]
pub struct AlertProviderSpec {
    #[serde(rename = "type")]
    pub type_: AlertProviderType,
    /// Channel (Slack); default `general`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Sender name; default `serin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && (self.startsWith('http://') || self.startsWith('https://'))", "message": "address must be an absolute http:// or https:// URL"}
    ]))]
    pub address: Option<String>,
    /// HTTP proxy URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Secret with `address` (overrides spec.address) and optional `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertProviderType {
    Slack,
    Msteams,
    Discord,
    Generic,
}
