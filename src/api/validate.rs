//! Spec validation shared by the controller and the CLI. It repeats the CEL rules of the CRDs
//! (so a Canary that reached the cluster some other way is still caught) and adds the checks
//! CEL cannot make. Every error names the field path and says what to do.

use std::fmt;

use super::canary::*;
use super::duration;
use super::template::{MetricProviderType, MetricTemplateSpec};

/// One broken rule, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the object root, like `spec.analysis.stepWeights`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&str>) -> Option<chrono::Duration> {
        let v = value?;
        match duration::parse(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(path, e);
                None
            }
        }
    }

    fn range(&mut self, path: &str, value: Option<i32>, min: i32, max: i32) {
        if let Some(v) = value
            && !(min..=max).contains(&v)
        {
            self.push(path, format!("{v} is outside {min}..={max}"));
        }
    }
}

/// Checks a Canary spec. Empty means valid.
pub fn validate_canary(spec: &CanarySpec) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    if spec.target_ref.name.is_empty() {
        e.push("spec.targetRef.name", "must name the Deployment to release");
    }
    if let Some(a) = &spec.autoscaler_ref {
        if a.name.is_empty() {
            e.push(
                "spec.autoscalerRef.name",
                "must name the HorizontalPodAutoscaler",
            );
        }
        if let Some(r) = &a.primary_scaler_replicas
            && let (Some(min), Some(max)) = (r.min_replicas, r.max_replicas)
            && min > max
        {
            e.push(
                "spec.autoscalerRef.primaryScalerReplicas",
                "minReplicas must not be greater than maxReplicas",
            );
        }
    }
    e.range("spec.service.port", Some(spec.service.port), 1, 65535);
    if let Some(name) = &spec.service.name
        && !is_dns_label(name)
    {
        e.push(
            "spec.service.name",
            format!("'{name}' is not a valid Service name (lowercase letters, digits and '-', at most 63)"),
        );
    }
    e.duration("spec.service.timeout", spec.service.timeout.as_deref());
    if let Some(r) = &spec.service.retries {
        e.duration(
            "spec.service.retries.perTryTimeout",
            r.per_try_timeout.as_deref(),
        );
    }
    for (i, m) in spec.service.match_.iter().flatten().enumerate() {
        check_match(&mut e, &format!("spec.service.match[{i}]"), m);
    }
    if let Some(p) = spec.progress_deadline_seconds
        && p < 1
    {
        e.push(
            "spec.progressDeadlineSeconds",
            "must be at least 1 (default 600)",
        );
    }
    if let Some(a) = &spec.analysis {
        check_analysis(&mut e, spec, a);
    }
    e.0
}

fn check_analysis(e: &mut Errors, spec: &CanarySpec, a: &CanaryAnalysis) {
    let p = "spec.analysis";
    let chosen = [
        a.step_weight.is_some(),
        a.step_weights.is_some(),
        a.iterations.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        e.push(
            p,
            "set exactly one of stepWeight, stepWeights (canary) or iterations (blue/green, A/B)",
        );
    }
    if let Some(d) = e.duration(&format!("{p}.interval"), a.interval.as_deref())
        && d < chrono::Duration::seconds(MIN_INTERVAL_SECS)
    {
        e.push(format!("{p}.interval"), "interval must be at least 10s");
    }
    e.duration(
        &format!("{p}.failFastInterval"),
        a.fail_fast_interval.as_deref(),
    );
    if let Some(t) = a.threshold
        && t < 0
    {
        e.push(format!("{p}.threshold"), "must not be negative");
    }
    e.range(&format!("{p}.maxWeight"), a.max_weight, 1, 100);
    e.range(&format!("{p}.stepWeight"), a.step_weight, 1, 100);
    e.range(
        &format!("{p}.stepWeightPromotion"),
        a.step_weight_promotion,
        1,
        100,
    );
    e.range(&format!("{p}.mirrorWeight"), a.mirror_weight, 0, 100);
    e.range(
        &format!("{p}.primaryReadyThreshold"),
        a.primary_ready_threshold,
        0,
        100,
    );
    e.range(
        &format!("{p}.canaryReadyThreshold"),
        a.canary_ready_threshold,
        0,
        100,
    );
    if let Some(i) = a.iterations
        && i < 1
    {
        e.push(format!("{p}.iterations"), "must be at least 1");
    }
    if let Some(ws) = &a.step_weights {
        if ws.is_empty() {
            e.push(
                format!("{p}.stepWeights"),
                "must list at least one weight, for example [5, 10, 25, 50]",
            );
        }
        if ws.len() > 20 {
            e.push(format!("{p}.stepWeights"), "at most 20 steps");
        }
        for (i, w) in ws.iter().enumerate() {
            e.range(&format!("{p}.stepWeights[{i}]"), Some(*w), 1, 100);
        }
        if ws.windows(2).any(|w| w[0] >= w[1]) {
            e.push(
                format!("{p}.stepWeights"),
                "stepWeights must be strictly ascending, for example [5, 10, 25, 50]",
            );
        }
    }
    let has_match = a.match_.as_ref().is_some_and(|m| !m.is_empty());
    if has_match && a.iterations.is_none() {
        e.push(
            format!("{p}.match"),
            "match (A/B testing) needs iterations: set analysis.iterations",
        );
    }
    for (i, m) in a.match_.iter().flatten().enumerate() {
        check_match(e, &format!("{p}.match[{i}]"), m);
    }
    if a.mirror == Some(true) && spec.provider.map(Provider::router) == Some(RouterKind::AppMesh) {
        e.push(
            format!("{p}.mirror"),
            "analysis.mirror is not supported by App Mesh; remove it or use the gatewayapi provider",
        );
    }
    if spec.provider == Some(Provider::Kubernetes) && a.iterations.is_none() {
        e.push(
            p,
            "the kubernetes provider supports blue/green only: set analysis.iterations instead of stepWeight or stepWeights",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, m) in a.metrics().iter().enumerate() {
        let mp = format!("{p}.metrics[{i}]");
        if m.name.is_empty() {
            e.push(format!("{mp}.name"), "must not be empty");
        }
        if !names.insert(m.name.as_str()) {
            e.push(
                format!("{mp}.name"),
                format!(
                    "metric '{}' is listed twice; give each metric its own name",
                    m.name
                ),
            );
        }
        if !m.is_builtin() && m.query.is_none() && m.template_ref.is_none() {
            e.push(
                mp.clone(),
                format!(
                    "metric '{}' is neither built in (request-success-rate, request-duration) nor has query or templateRef: add a templateRef",
                    m.name
                ),
            );
        }
        e.duration(&format!("{mp}.interval"), m.interval.as_deref());
        if let Some(r) = &m.threshold_range {
            if let (Some(min), Some(max)) = (r.min, r.max)
                && min > max
            {
                e.push(
                    format!("{mp}.thresholdRange"),
                    "thresholdRange.min must not be greater than thresholdRange.max",
                );
            }
            if r.min.is_some_and(f64::is_nan) || r.max.is_some_and(f64::is_nan) {
                e.push(format!("{mp}.thresholdRange"), "bounds must be numbers");
            }
        }
        if let Some(t) = &m.template_ref
            && t.name.is_empty()
        {
            e.push(
                format!("{mp}.templateRef.name"),
                "must name a MetricTemplate",
            );
        }
    }
    for (i, h) in a.webhooks().iter().enumerate() {
        let hp = format!("{p}.webhooks[{i}]");
        if h.name.is_empty() {
            e.push(format!("{hp}.name"), "must not be empty");
        }
        if let Err(msg) = check_url(&h.url) {
            e.push(format!("{hp}.url"), msg);
        }
        e.duration(&format!("{hp}.timeout"), h.timeout.as_deref());
        if let Some(r) = h.retries
            && !(0..=10).contains(&r)
        {
            e.push(format!("{hp}.retries"), format!("{r} is outside 0..=10"));
        }
    }
    for (i, al) in a.alerts().iter().enumerate() {
        if al.provider_ref.name.is_empty() {
            e.push(
                format!("{p}.alerts[{i}].providerRef.name"),
                "must name an AlertProvider",
            );
        }
    }
}

fn check_match(e: &mut Errors, path: &str, m: &HttpMatchRequest) {
    let mut one = |p: String, s: &StringMatch| {
        let set = [&s.exact, &s.prefix, &s.suffix, &s.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            e.push(p, "set exactly one of exact, prefix, suffix or regex");
        }
    };
    if let Some(u) = &m.uri {
        one(format!("{path}.uri"), u);
    }
    if let Some(u) = &m.method {
        one(format!("{path}.method"), u);
    }
    for (k, v) in m.headers.iter().flatten() {
        one(format!("{path}.headers.{k}"), v);
    }
    for (k, v) in m.query_params.iter().flatten() {
        one(format!("{path}.queryParams.{k}"), v);
    }
}

/// An absolute http(s) URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("'{url}' must be an absolute http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || !p.is_empty() => (h, Some(p)),
        _ => (host, None),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return Err(format!("'{url}' has no host"));
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("'{url}' has an invalid port '{p}'"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("'{url}' contains spaces"));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a MetricTemplate spec. Empty means valid.
pub fn validate_metric_template(spec: &MetricTemplateSpec) -> Vec<FieldError> {
    let mut e = Errors(Vec::new());
    let p = &spec.provider;
    match p.type_ {
        MetricProviderType::Prometheus => match &p.address {
            None => e.push(
                "spec.provider.address",
                "a prometheus provider needs address (for example http://prometheus.monitoring:9090)",
            ),
            Some(a) => {
                if let Err(m) = check_url(a) {
                    e.push("spec.provider.address", m);
                }
            }
        },
        MetricProviderType::CloudWatch | MetricProviderType::CloudWatchAlarms => {
            if p.region.as_deref().is_none_or(str::is_empty) {
                e.push(
                    "spec.provider.region",
                    "a CloudWatch provider needs region (for example eu-west-1)",
                );
            }
        }
        MetricProviderType::Scrape => {}
    }
    if spec.query.trim().is_empty() {
        e.push("spec.query", "must not be empty");
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("http://loadtester.test/").is_ok());
        assert!(check_url("https://a.b:8443/gate/check").is_ok());
        assert!(check_url("ftp://a").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("http://a:99999/").is_err());
        assert!(check_url("not a url").is_err());
    }
}
