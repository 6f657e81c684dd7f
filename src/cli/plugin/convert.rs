//! `serin convert -f FLAGGER.yaml [-o FILE]`: turns a Flagger manifest (`flagger.app/v1beta1`
//! Canary, MetricTemplate, AlertProvider; several documents allowed) into a Serin one
//! (`serin.dev/v1beta1`), carrying every field Serin has, and reports on stderr each field it
//! changed or could not carry over, with its path. Other documents pass through unchanged. The
//! result is checked as the cluster would check it (types and `validate_canary`).

use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::{AlertProvider, Canary, MetricTemplate, validate_canary};
use crate::cli::manifest::{self, ManifestError};

/// Arguments of `serin convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The Flagger manifest (YAML, several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FLAGGER.yaml")]
    pub file: PathBuf,
    /// Write the Serin manifest to this file instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// What happened to one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Carried over with a different value or meaning (for example `canaryAnalysis`).
    Changed,
    /// Not carried over: Serin has no equivalent.
    Dropped,
    /// The converted object is not valid for Serin and must be edited before applying it.
    Invalid,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Changed => "changed",
            Kind::Dropped => "dropped",
            Kind::Invalid => "invalid",
        }
    }
}

/// One report line: which document, object and field, and what happened to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// 1-based document number in the input.
    pub doc: usize,
    /// `Canary podinfo`.
    pub object: String,
    /// Field path from the object root, like `spec.service.trafficPolicy`.
    pub path: String,
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {} ({}): {}: {}: {}",
            self.doc,
            self.object,
            self.path,
            self.kind.as_str(),
            self.message
        )
    }
}

/// A converted manifest and its report.
#[derive(Clone, Debug)]
pub struct Converted {
    pub yaml: String,
    pub findings: Vec<Finding>,
    /// How many Flagger objects were converted.
    pub converted: usize,
}

impl Converted {
    /// True when some object must be edited before it can be applied.
    pub fn has_invalid(&self) -> bool {
        self.findings.iter().any(|f| f.kind == Kind::Invalid)
    }
}

/// Runs `serin convert`: exit code 0 when converted (the report may list dropped and changed
/// fields), 1 when an object must be edited before it can be applied, 2 when the input cannot
/// be read or holds no Flagger object.
pub fn run(args: &ConvertArgs) -> u8 {
    let name = args.file.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        match std::io::stdin().read_to_string(&mut s) {
            Ok(_) => s,
            Err(e) => {
                eprintln!("serin convert: standard input: cannot read: {e}");
                return 2;
            }
        }
    } else {
        match std::fs::read_to_string(&args.file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("serin convert: {name}: cannot read: {e}");
                return 2;
            }
        }
    };
    let converted = match convert(&name, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("serin convert: {e}");
            return 2;
        }
    };
    for f in &converted.findings {
        eprintln!("{name}: {f}");
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, &converted.yaml)
            .map_err(|e| format!("{}: cannot write: {e}", path.display())),
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(converted.yaml.as_bytes())
                .map_err(|e| format!("standard output: {e}"))
        }
    };
    if let Err(e) = written {
        eprintln!("serin convert: {e}");
        return 2;
    }
    let count = |k: Kind| converted.findings.iter().filter(|f| f.kind == k).count();
    eprintln!(
        "{name}: converted {} Flagger object(s); {} field(s) changed, {} dropped, {} problem(s) to fix",
        converted.converted,
        count(Kind::Changed),
        count(Kind::Dropped),
        count(Kind::Invalid)
    );
    if converted.has_invalid() { 1 } else { 0 }
}

/// Converts the YAML `text` of file `file`.
pub fn convert(file: &str, text: &str) -> Result<Converted, ManifestError> {
    let docs = manifest::parse_documents(file, text)?;
    let mut out = Vec::new();
    let mut findings = Vec::new();
    let mut converted = 0;
    for (i, doc) in docs.into_iter().enumerate() {
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if !api.starts_with("flagger.app/")
            || !matches!(kind, "Canary" | "MetricTemplate" | "AlertProvider")
        {
            out.push(render(&doc, false)?);
            continue;
        }
        converted += 1;
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let mut c = Conversion {
            doc: i + 1,
            object: format!("{kind} {name}"),
            findings: Vec::new(),
        };
        if api != "flagger.app/v1beta1" {
            c.note(
                "apiVersion",
                Kind::Changed,
                format!("{api} is read as flagger.app/v1beta1"),
            );
        }
        let value = match kind {
            "Canary" => c.canary(&doc),
            "MetricTemplate" => c.metric_template(&doc),
            _ => c.alert_provider(&doc),
        };
        let yaml = match kind {
            "Canary" => c.typed::<Canary>(file, value, |canary| {
                validate_canary(&canary.spec)
                    .into_iter()
                    .map(|e| (e.path, e.message))
                    .collect()
            })?,
            "MetricTemplate" => c.typed::<MetricTemplate>(file, value, |_| vec![])?,
            _ => c.typed::<AlertProvider>(file, value, |_| vec![])?,
        };
        out.push(yaml);
        findings.extend(c.findings);
    }
    if converted == 0 {
        return Err(ManifestError::Missing {
            file: file.to_string(),
            message: "holds no Flagger object (apiVersion flagger.app/v1beta1, kind Canary, MetricTemplate or AlertProvider)".into(),
        });
    }
    Ok(Converted {
        yaml: out.join("---\n"),
        findings,
        converted,
    })
}

fn render<T: Serialize>(value: &T, invalid: bool) -> Result<String, ManifestError> {
    let yaml = serde_saphyr::to_string(value).map_err(|e| ManifestError::Syntax {
        file: "(output)".into(),
        message: e.to_string(),
    })?;
    Ok(if invalid {
        format!("# Not valid for Serin yet: fix the problems `serin convert` reported.\n{yaml}")
    } else {
        yaml
    })
}

/// Why each Flagger field Serin lacks is dropped.
const SERVICE_DROPPED: [(&str, &str); 8] = [
    (
        "trafficDistribution",
        "Serin does not set trafficDistribution on the Services it generates",
    ),
    (
        "rewrite",
        "URI rewrites (Istio, Gateway API) are not supported by Serin",
    ),
    ("gateways", "Istio Gateways are Istio only"),
    ("delegation", "VirtualService delegation is Istio only"),
    (
        "trafficPolicy",
        "the DestinationRule traffic policy is Istio only",
    ),
    ("headers", "header manipulation is Istio only"),
    ("corsPolicy", "the CORS policy is Istio only"),
    (
        "backendTimeout",
        "backend timeouts (Gateway API) are not supported by Serin",
    ),
];

const SERVICE_KEPT: [&str; 18] = [
    "name",
    "port",
    "portName",
    "targetPort",
    "appProtocol",
    "portDiscovery",
    "headless",
    "timeout",
    "retries",
    "match",
    "backends",
    "hosts",
    "gatewayRefs",
    "meshName",
    "apex",
    "primary",
    "canary",
    "unmanagedMetadata",
];

const ANALYSIS_KEPT: [&str; 15] = [
    "interval",
    "threshold",
    "maxWeight",
    "stepWeight",
    "stepWeights",
    "stepWeightPromotion",
    "iterations",
    "match",
    "mirror",
    "mirrorWeight",
    "primaryReadyThreshold",
    "canaryReadyThreshold",
    "metrics",
    "webhooks",
    "alerts",
];

const MATCH_KEPT: [&str; 5] = ["name", "uri", "method", "headers", "queryParams"];

const SUPPORTED_PROVIDERS: &str = "appmesh:v1beta2, gatewayapi:v1, gatewayapi:v1beta1, kubernetes";

struct Conversion {
    doc: usize,
    object: String,
    findings: Vec<Finding>,
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

impl Conversion {
    fn note(&mut self, path: &str, kind: Kind, message: impl Into<String>) {
        self.findings.push(Finding {
            doc: self.doc,
            object: self.object.clone(),
            path: path.to_string(),
            kind,
            message: message.into(),
        });
    }

    /// The fields of `from` named in `keep`; every other field is reported as dropped, with
    /// the reason from `reasons` or as unknown.
    fn keep(
        &mut self,
        from: &Map<String, Value>,
        path: &str,
        keep: &[&str],
        reasons: &[(&str, &str)],
    ) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in from {
            if keep.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            } else if let Some((_, why)) = reasons.iter().find(|(f, _)| f == k) {
                self.note(&format!("{path}.{k}"), Kind::Dropped, *why);
            } else {
                self.note(
                    &format!("{path}.{k}"),
                    Kind::Dropped,
                    "not a field Serin knows; removed",
                );
            }
        }
        out
    }

    /// Metadata without the fields the API server sets.
    fn metadata(&mut self, doc: &Value) -> Value {
        let meta = obj(doc.get("metadata"));
        let mut out = Map::new();
        for k in ["name", "namespace", "labels", "annotations"] {
            if let Some(v) = meta.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
        if let Some(a) = out.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            if a.is_empty() {
                out.remove("annotations");
            }
        }
        Value::Object(out)
    }

    fn canary(&mut self, doc: &Value) -> Value {
        let spec = obj(doc.get("spec"));
        let mut out = Map::new();
        let provider = spec.get("provider").and_then(Value::as_str);
        let appmesh = matches!(provider, Some("appmesh" | "appmesh:v1beta2"));
        let mut kept_provider = None;
        match provider {
            Some("appmesh") => {
                self.note(
                    "spec.provider",
                    Kind::Changed,
                    "appmesh (App Mesh v1beta1 CRDs in Flagger) becomes appmesh:v1beta2: Serin drives appmesh.k8s.aws/v1beta2 VirtualNodes, VirtualRouters and VirtualServices",
                );
                kept_provider = Some("appmesh:v1beta2");
            }
            Some(p @ ("appmesh:v1beta2" | "gatewayapi" | "gatewayapi:v1" | "gatewayapi:v1beta1" | "kubernetes")) => {
                kept_provider = Some(p);
            }
            Some(other) => self.note(
                "spec.provider",
                Kind::Dropped,
                format!(
                    "provider '{other}' is not supported by Serin ({SUPPORTED_PROVIDERS}); set one of them, or the controller's --provider applies"
                ),
            ),
            None => self.note(
                "spec.provider",
                Kind::Changed,
                "not set: Flagger's default mesh is its -mesh-provider flag; Serin's is the controller's --provider (default appmesh:v1beta2)",
            ),
        }
        if let Some(p) = kept_provider {
            out.insert("provider".into(), json!(p));
        }
        for k in [
            "metricsServer",
            "progressDeadlineSeconds",
            "skipAnalysis",
            "revertOnDeletion",
            "suspend",
        ] {
            if let Some(v) = spec.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
        if let Some(t) = spec.get("targetRef") {
            let kind = t.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind != "Deployment" {
                self.note(
                    "spec.targetRef.kind",
                    Kind::Invalid,
                    format!("{kind} targets are not supported by Serin: only Deployments can be released"),
                );
            }
            out.insert("targetRef".into(), t.clone());
        }
        if let Some(a) = spec.get("autoscalerRef").and_then(Value::as_object) {
            let kind = a.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind == "HorizontalPodAutoscaler" {
                let mut kept = self.keep(
                    a,
                    "spec.autoscalerRef",
                    &["apiVersion", "kind", "name", "primaryScalerReplicas"],
                    &[(
                        "primaryScalerQueries",
                        "primaryScalerQueries is for KEDA ScaledObjects only",
                    )],
                );
                if let Some(v) = kept.get("apiVersion").and_then(Value::as_str)
                    && v != "autoscaling/v2"
                {
                    self.note(
                        "spec.autoscalerRef.apiVersion",
                        Kind::Changed,
                        format!("{v} becomes autoscaling/v2, the version Serin reads and writes"),
                    );
                    kept.insert("apiVersion".into(), json!("autoscaling/v2"));
                }
                out.insert("autoscalerRef".into(), Value::Object(kept));
            } else {
                self.note(
                    "spec.autoscalerRef",
                    Kind::Dropped,
                    format!(
                        "{kind} (KEDA) autoscalers are not supported by Serin: the primary keeps the target's replica count; use a HorizontalPodAutoscaler"
                    ),
                );
            }
        }
        for (k, why) in [
            (
                "ingressRef",
                "NGINX Ingress routing is not supported by Serin",
            ),
            ("routeRef", "APISIX routing is not supported by Serin"),
            ("upstreamRef", "Gloo upstreams are not supported by Serin"),
        ] {
            if spec.contains_key(k) {
                self.note(&format!("spec.{k}"), Kind::Dropped, why);
            }
        }
        if let Some(s) = spec.get("service").and_then(Value::as_object) {
            out.insert("service".into(), self.service(s, appmesh));
        }
        let analysis = match (spec.get("analysis"), spec.get("canaryAnalysis")) {
            (Some(a), Some(_)) => {
                self.note(
                    "spec.canaryAnalysis",
                    Kind::Dropped,
                    "both analysis and the deprecated canaryAnalysis are set; Flagger uses analysis, and so does Serin",
                );
                Some(a)
            }
            (Some(a), None) => Some(a),
            (None, Some(a)) => {
                self.note(
                    "spec.canaryAnalysis",
                    Kind::Changed,
                    "the deprecated canaryAnalysis becomes analysis",
                );
                Some(a)
            }
            (None, None) => None,
        };
        if let Some(a) = analysis.and_then(Value::as_object) {
            // Only Gateway API mirrors; without a kept provider the controller's default applies.
            let mirrors = kept_provider.is_some_and(|p| p.starts_with("gatewayapi"));
            out.insert("analysis".into(), self.analysis(a, appmesh, mirrors));
        }
        for k in spec.keys() {
            let known = [
                "provider",
                "metricsServer",
                "progressDeadlineSeconds",
                "skipAnalysis",
                "revertOnDeletion",
                "suspend",
                "targetRef",
                "autoscalerRef",
                "ingressRef",
                "routeRef",
                "upstreamRef",
                "service",
                "analysis",
                "canaryAnalysis",
            ];
            if !known.contains(&k.as_str()) {
                self.note(
                    &format!("spec.{k}"),
                    Kind::Dropped,
                    "not a field Serin knows; removed",
                );
            }
        }
        json!({
            "apiVersion": "serin.dev/v1beta1",
            "kind": "Canary",
            "metadata": self.metadata(doc),
            "spec": out,
        })
    }

    fn service(&mut self, s: &Map<String, Value>, appmesh: bool) -> Value {
        let mut dropped: Vec<(&str, &str)> = SERVICE_DROPPED.to_vec();
        dropped.push(("mirror", "mirroring is set in analysis.mirror in Serin"));
        let mut out = self.keep(s, "spec.service", &SERVICE_KEPT, &dropped);
        if let Some(r) = s.get("retries").and_then(Value::as_object) {
            let kept = self.keep(
                r,
                "spec.service.retries",
                &["attempts", "perTryTimeout", "retryOn"],
                &[],
            );
            out.insert("retries".into(), Value::Object(kept));
        }
        if let Some(m) = s.get("match").and_then(Value::as_array) {
            out.insert("match".into(), self.matches(m, "spec.service.match"));
        }
        if appmesh && s.contains_key("meshName") {
            self.note(
                "spec.service.meshName",
                Kind::Changed,
                "kept but ignored: with App Mesh v1beta2 the mesh comes from the namespace's labels",
            );
        }
        Value::Object(out)
    }

    fn matches(&mut self, list: &[Value], path: &str) -> Value {
        Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, m)| {
                    let m = obj(Some(m));
                    let reasons: Vec<(&str, &str)> = [
                        "scheme",
                        "authority",
                        "port",
                        "sourceLabels",
                        "gateways",
                        "ignoreUriCase",
                        "withoutHeaders",
                        "sourceNamespace",
                        "statPrefix",
                    ]
                    .into_iter()
                    .map(|k| (k, "an Istio match condition Serin's routers cannot express"))
                    .collect();
                    Value::Object(self.keep(&m, &format!("{path}[{i}]"), &MATCH_KEPT, &reasons))
                })
                .collect(),
        )
    }

    fn analysis(&mut self, a: &Map<String, Value>, appmesh: bool, mirrors: bool) -> Value {
        let mut out = self.keep(
            a,
            "spec.analysis",
            &ANALYSIS_KEPT,
            &[(
                "sessionAffinity",
                "cookie-based session affinity (Istio, Gateway API) is not supported by Serin",
            )],
        );
        let positive = |k: &str| out.get(k).and_then(Value::as_i64).is_some_and(|v| v > 0);
        let iterations = positive("iterations");
        let step = positive("stepWeight");
        if iterations {
            for k in ["stepWeight", "stepWeights", "maxWeight"] {
                if out.remove(k).is_some() {
                    self.note(
                        &format!("spec.analysis.{k}"),
                        Kind::Dropped,
                        "iterations selects blue/green (or A/B) in Flagger, where it is unused; Serin accepts only one strategy",
                    );
                }
            }
        } else if step && out.remove("stepWeights").is_some() {
            self.note(
                "spec.analysis.stepWeights",
                Kind::Dropped,
                "stepWeight wins over stepWeights in Flagger; Serin accepts only one of them",
            );
        }
        if !mirrors {
            let why = if appmesh {
                "App Mesh cannot mirror traffic (it breaks the rollout in Flagger); use the gatewayapi provider to mirror"
            } else {
                "only the gatewayapi provider mirrors traffic, and this Canary gets another provider (or the controller's default, appmesh:v1beta2)"
            };
            for k in ["mirror", "mirrorWeight"] {
                if out.remove(k).is_some() {
                    self.note(&format!("spec.analysis.{k}"), Kind::Dropped, why);
                }
            }
        }
        if let Some(i) = out.get("interval").and_then(Value::as_str)
            && let Ok(d) = crate::api::duration::parse(i)
            && d < chrono::Duration::seconds(crate::api::MIN_INTERVAL_SECS)
        {
            self.note(
                "spec.analysis.interval",
                Kind::Changed,
                format!("{i} becomes 10s: Flagger runs the analysis every 10s at the most often, and Serin requires at least 10s"),
            );
            out.insert("interval".into(), json!("10s"));
        }
        if let Some(m) = a.get("match").and_then(Value::as_array) {
            out.insert("match".into(), self.matches(m, "spec.analysis.match"));
        }
        if let Some(list) = a.get("metrics").and_then(Value::as_array) {
            let metrics = list
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Value::Object(self.keep(
                        &obj(Some(m)),
                        &format!("spec.analysis.metrics[{i}]"),
                        &[
                            "name",
                            "interval",
                            "threshold",
                            "thresholdRange",
                            "query",
                            "templateRef",
                            "templateVariables",
                        ],
                        &[],
                    ))
                })
                .collect();
            out.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(list) = a.get("webhooks").and_then(Value::as_array) {
            let hooks = list
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let path = format!("spec.analysis.webhooks[{i}]");
                    let mut kept = self.keep(
                        &obj(Some(h)),
                        &path,
                        &[
                            "type",
                            "name",
                            "url",
                            "timeout",
                            "metadata",
                            "retries",
                            "disableTLS",
                            "muteAlert",
                        ],
                        &[],
                    );
                    if let Some(t) = kept.get("timeout").and_then(Value::as_str)
                        && t.len() < 2
                    {
                        self.note(
                            &format!("{path}.timeout"),
                            Kind::Changed,
                            format!("'{t}' is removed: Flagger reads it as 10s, Serin's default"),
                        );
                        kept.remove("timeout");
                    }
                    Value::Object(kept)
                })
                .collect();
            out.insert("webhooks".into(), Value::Array(hooks));
        }
        if let Some(list) = a.get("alerts").and_then(Value::as_array) {
            let alerts = list
                .iter()
                .enumerate()
                .map(|(i, al)| {
                    let mut kept = self.keep(
                        &obj(Some(al)),
                        &format!("spec.analysis.alerts[{i}]"),
                        &["name", "severity", "providerRef"],
                        &[],
                    );
                    // Flagger reads an empty severity as info, Serin's default.
                    if kept.get("severity").and_then(Value::as_str) == Some("") {
                        kept.remove("severity");
                    }
                    Value::Object(kept)
                })
                .collect();
            out.insert("alerts".into(), Value::Array(alerts));
        }
        Value::Object(out)
    }

    fn metric_template(&mut self, doc: &Value) -> Value {
        let spec = obj(doc.get("spec"));
        let mut out = self.keep(&spec, "spec", &["provider", "query"], &[]);
        if let Some(p) = spec.get("provider").and_then(Value::as_object) {
            let mut provider = self.keep(
                p,
                "spec.provider",
                &[
                    "type",
                    "address",
                    "secretRef",
                    "region",
                    "headers",
                    "insecureSkipVerify",
                ],
                &[],
            );
            let t = provider.get("type").and_then(Value::as_str).unwrap_or("");
            if !matches!(t, "prometheus" | "cloudwatch") {
                self.note(
                    "spec.provider.type",
                    Kind::Invalid,
                    format!(
                        "metrics provider '{t}' is not supported by Serin (prometheus, cloudwatch, cloudwatch-alarms, scrape); rewrite the query for one of them"
                    ),
                );
            }
            if let Some(h) = p.get("headers").and_then(Value::as_object) {
                let mut headers = Map::new();
                for (k, v) in h {
                    let value = match v {
                        Value::Array(items) => {
                            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                            if parts.len() > 1 {
                                self.note(
                                    &format!("spec.provider.headers.{k}"),
                                    Kind::Changed,
                                    "several values are joined with ', ' into one header",
                                );
                            }
                            parts.join(", ")
                        }
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    headers.insert(k.clone(), json!(value));
                }
                provider.insert("headers".into(), Value::Object(headers));
            }
            out.insert("provider".into(), Value::Object(provider));
        }
        json!({
            "apiVersion": "serin.dev/v1beta1",
            "kind": "MetricTemplate",
            "metadata": self.metadata(doc),
            "spec": out,
        })
    }

    fn alert_provider(&mut self, doc: &Value) -> Value {
        let spec = obj(doc.get("spec"));
        let out = self.keep(
            &spec,
            "spec",
            &[
                "type",
                "channel",
                "username",
                "address",
                "proxy",
                "secretRef",
            ],
            &[],
        );
        let t = out.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(t, "slack" | "msteams" | "discord") {
            self.note(
                "spec.type",
                Kind::Invalid,
                format!(
                    "alert provider '{t}' is not supported by Serin (slack, msteams, discord, generic)"
                ),
            );
        }
        json!({
            "apiVersion": "serin.dev/v1beta1",
            "kind": "AlertProvider",
            "metadata": self.metadata(doc),
            "spec": out,
        })
    }

    /// The object as YAML through its Serin type (so it is checked as the cluster would), or
    /// as converted with a warning comment when it is not valid.
    fn typed<T>(
        &mut self,
        file: &str,
        value: Value,
        check: impl Fn(&T) -> Vec<(String, String)>,
    ) -> Result<String, ManifestError>
    where
        T: serde::de::DeserializeOwned + Serialize,
    {
        let already_invalid = self.findings.iter().any(|f| f.kind == Kind::Invalid);
        match manifest::from_document::<T>(file, self.doc, value.clone()) {
            Ok(typed) => {
                let problems = check(&typed);
                for (path, message) in &problems {
                    self.note(path, Kind::Invalid, message.clone());
                }
                render(&typed, already_invalid || !problems.is_empty())
            }
            Err(ManifestError::Field { path, message, .. }) => {
                if !already_invalid {
                    self.note(&path, Kind::Invalid, message);
                }
                render(&value, true)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The App Mesh Canary of Flagger's tutorial (FB §7.5), with a load tester, the legacy
    /// provider name and the deprecated `canaryAnalysis`.
    const APPMESH: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
  namespace: test
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
spec:
  provider: appmesh
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  progressDeadlineSeconds: 60
  autoscalerRef:
    apiVersion: autoscaling/v2beta2
    kind: HorizontalPodAutoscaler
    name: podinfo
  service:
    port: 9898
    timeout: 15s
    meshName: global
    retries:
      attempts: 3
      perTryTimeout: 5s
      retryOn: "gateway-error,client-error,stream-error"
    backends:
      - backend.test
  canaryAnalysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 5
    metrics:
      - name: request-success-rate
        thresholdRange:
          min: 99
        interval: 1m
      - name: request-duration
        thresholdRange:
          max: 500
        interval: 30s
    webhooks:
      - name: acceptance-test
        type: pre-rollout
        url: http://flagger-loadtester.test/
        timeout: 30s
        metadata:
          type: bash
          cmd: "curl -sd 'test' http://podinfo-canary.test:9898/token | grep token"
      - name: load-test
        url: http://flagger-loadtester.test/
        timeout: 5s
        metadata:
          cmd: "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"
status:
  phase: Succeeded
---
apiVersion: v1
kind: Service
metadata:
  name: other
spec:
  ports: [{port: 80}]
"#;

    fn findings(c: &Converted) -> Vec<(String, Kind)> {
        c.findings
            .iter()
            .map(|f| (f.path.clone(), f.kind))
            .collect()
    }

    #[test]
    fn an_app_mesh_canary_converts_to_a_valid_serin_canary() {
        let c = convert("podinfo.yaml", APPMESH).unwrap();
        assert!(!c.has_invalid(), "{:#?}", c.findings);
        assert_eq!(c.converted, 1);
        assert_eq!(
            findings(&c),
            vec![
                ("spec.provider".into(), Kind::Changed),
                ("spec.autoscalerRef.apiVersion".into(), Kind::Changed),
                ("spec.service.meshName".into(), Kind::Changed),
                ("spec.canaryAnalysis".into(), Kind::Changed),
            ]
        );
        let docs: Vec<Value> = serde_saphyr::from_multiple(&c.yaml).unwrap();
        assert_eq!(docs.len(), 2);
        let canary: Canary = serde_json::from_value(docs[0].clone()).unwrap();
        assert_eq!(docs[0]["apiVersion"], "serin.dev/v1beta1");
        assert!(docs[0].get("status").is_none(), "status is not carried");
        assert!(docs[0]["metadata"].get("annotations").is_none());
        let spec = &canary.spec;
        assert_eq!(spec.provider, Some(crate::api::Provider::AppMeshV1beta2));
        assert_eq!(spec.progress_deadline_seconds, Some(60));
        let a = spec.analysis.as_ref().unwrap();
        assert_eq!(
            (a.max_weight, a.step_weight, a.threshold),
            (Some(50), Some(5), Some(5))
        );
        assert_eq!(a.metrics().len(), 2);
        assert_eq!(a.metrics()[1].range(), (None, Some(500.0)));
        assert_eq!(a.webhooks().len(), 2);
        assert_eq!(
            a.webhooks()[0].metadata.as_ref().unwrap()["cmd"],
            "curl -sd 'test' http://podinfo-canary.test:9898/token | grep token"
        );
        let retries = spec.service.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, Some(3));
        assert_eq!(
            spec.autoscaler_ref.as_ref().unwrap().api_version,
            "autoscaling/v2"
        );
        assert!(validate_canary(spec).is_empty());
        assert_eq!(docs[1]["kind"], "Service", "other kinds pass through");
        assert_eq!(docs[1]["spec"]["ports"][0]["port"], 80);
    }

    const ISTIO: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  provider: istio
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service:
    port: 9898
    gateways: [public-gateway.istio-system.svc.cluster.local]
    hosts: [app.example.com]
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL}
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "gateway-error,connect-failure"}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
    headers:
      request:
        add: {x-some-header: "value"}
  analysis:
    interval: 5s
    threshold: 10
    iterations: 10
    stepWeight: 10
    mirror: true
    match:
      - headers:
          x-canary: {exact: insider}
        sourceLabels: {app: frontend}
    sessionAffinity: {cookieName: flagger-cookie}
    metrics:
      - name: request-success-rate
        thresholdRange: {min: 99}
        interval: 1m
    alerts:
      - name: on-call
        severity: ""
        providerRef: {name: on-call}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: latency, namespace: test}
spec:
  provider:
    type: prometheus
    address: http://prometheus.istio-system:9090
    headers:
      X-Scope-OrgID: [tenant-a]
  query: histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{destination_workload="{{ target }}"}[{{ interval }}])) by (le))
---
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata: {name: on-call, namespace: test}
spec:
  type: gchat
  address: https://chat.googleapis.com/v1/spaces/x
"#;

    #[test]
    fn istio_fields_are_reported_with_their_paths_and_the_rest_carried() {
        let c = convert("istio.yaml", ISTIO).unwrap();
        let f = findings(&c);
        for (path, kind) in [
            ("spec.provider", Kind::Dropped),
            ("spec.service.gateways", Kind::Dropped),
            ("spec.service.trafficPolicy", Kind::Dropped),
            ("spec.service.corsPolicy", Kind::Dropped),
            ("spec.service.headers", Kind::Dropped),
            ("spec.analysis.sessionAffinity", Kind::Dropped),
            ("spec.analysis.stepWeight", Kind::Dropped),
            ("spec.analysis.match[0].sourceLabels", Kind::Dropped),
            ("spec.analysis.interval", Kind::Changed),
            ("spec.type", Kind::Invalid),
        ] {
            assert!(
                f.contains(&(path.to_string(), kind)),
                "{path} {kind:?} missing from {f:#?}"
            );
        }
        let provider = c
            .findings
            .iter()
            .find(|x| x.path == "spec.provider")
            .unwrap();
        assert_eq!(provider.object, "Canary podinfo");
        assert!(
            provider.message.contains("'istio' is not supported"),
            "{}",
            provider.message
        );
        assert!(c.has_invalid(), "the gchat AlertProvider must be edited");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&c.yaml).unwrap();
        let canary: Canary = serde_json::from_value(docs[0].clone()).unwrap();
        assert_eq!(canary.spec.provider, None);
        let a = canary.spec.analysis.as_ref().unwrap();
        assert_eq!(a.iterations, Some(10));
        assert_eq!(a.step_weight, None);
        assert_eq!(
            a.mirror, None,
            "without a kept provider the controller's default (App Mesh) applies, which cannot mirror"
        );
        assert!(f.contains(&("spec.analysis.mirror".to_string(), Kind::Dropped)));
        assert_eq!(a.interval.as_deref(), Some("10s"));
        assert!(a.alerts()[0].severity.is_none());
        let m = a.match_.as_ref().unwrap();
        assert_eq!(
            m[0].headers.as_ref().unwrap()["x-canary"].exact.as_deref(),
            Some("insider")
        );
        assert_eq!(
            canary.spec.service.hosts.as_ref().unwrap()[0],
            "app.example.com"
        );
        assert!(
            validate_canary(&canary.spec).is_empty(),
            "{:?}",
            validate_canary(&canary.spec)
        );
        let template: MetricTemplate = serde_json::from_value(docs[1].clone()).unwrap();
        assert_eq!(
            template.spec.provider.headers.as_ref().unwrap()["X-Scope-OrgID"],
            "tenant-a"
        );
        assert!(c.yaml.contains("# Not valid for Serin yet"), "{}", c.yaml);
        assert_eq!(docs[2]["spec"]["type"], "gchat");
    }

    #[test]
    fn daemonset_targets_keda_and_unknown_fields_are_named() {
        let text = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: agent}
spec:
  provider: kubernetes
  targetRef: {apiVersion: apps/v1, kind: DaemonSet, name: agent}
  autoscalerRef: {apiVersion: keda.sh/v1alpha1, kind: ScaledObject, name: agent}
  service: {port: 80, mirror: true}
  analysis: {interval: 1m, iterations: 3}
  extra: 1
"#;
        let c = convert("agent.yaml", text).unwrap();
        let f = findings(&c);
        assert!(
            f.contains(&("spec.targetRef.kind".into(), Kind::Invalid)),
            "{f:#?}"
        );
        assert!(
            f.contains(&("spec.autoscalerRef".into(), Kind::Dropped)),
            "{f:#?}"
        );
        assert!(
            f.contains(&("spec.service.mirror".into(), Kind::Dropped)),
            "{f:#?}"
        );
        assert!(f.contains(&("spec.extra".into(), Kind::Dropped)), "{f:#?}");
        assert!(
            c.yaml.starts_with("# Not valid for Serin yet"),
            "{}",
            c.yaml
        );
    }

    #[test]
    fn mirroring_is_dropped_unless_the_canary_keeps_a_gateway_api_provider() {
        let istio = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  provider: istio
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis: {interval: 1m, stepWeight: 10, mirror: true, mirrorWeight: 50}
"#;
        let c = convert("istio.yaml", istio).unwrap();
        let f = findings(&c);
        assert!(
            f.contains(&("spec.analysis.mirror".into(), Kind::Dropped)),
            "{f:#?}"
        );
        assert!(!c.yaml.contains("mirror"), "{}", c.yaml);
        let gateway = istio.replace("provider: istio", "provider: gatewayapi:v1");
        let c = convert("gateway.yaml", &gateway).unwrap();
        assert!(c.yaml.contains("mirror: true"), "{}", c.yaml);
    }

    #[test]
    fn a_result_that_breaks_a_serin_rule_is_reported_with_the_rule() {
        let text = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo}
spec:
  provider: appmesh:v1beta2
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis:
    interval: 1m
    stepWeights: [50, 10]
    metrics: [{name: error-rate, thresholdRange: {max: 1}}]
"#;
        let c = convert("bad.yaml", text).unwrap();
        let invalid: Vec<&Finding> = c
            .findings
            .iter()
            .filter(|f| f.kind == Kind::Invalid)
            .collect();
        assert!(
            invalid
                .iter()
                .any(|f| f.path == "spec.analysis.stepWeights"),
            "{invalid:#?}"
        );
        assert!(
            invalid
                .iter()
                .any(|f| f.path.starts_with("spec.analysis.metrics[0]")),
            "{invalid:#?}"
        );
    }

    #[test]
    fn input_without_flagger_objects_or_broken_yaml_is_refused() {
        let e = convert(
            "plain.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("plain.yaml: holds no Flagger object"),
            "{e}"
        );
        let e = convert("broken.yaml", "kind: [").unwrap_err();
        assert!(
            e.to_string().starts_with("broken.yaml: not valid YAML"),
            "{e}"
        );
    }
}
