//! `serin get [NAME] [-n NS | -A] [-w]`: a table of Canaries (phase, weight, failed checks,
//! current step, each check's last value and verdict, age); with `-w`, a live view redrawn on
//! every change of a Canary and followed by its Events as they are recorded.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::{KubeArgs, PluginError};
use crate::api::{CONDITION_STALLED, Canary, Phase, Strategy};
use crate::engine::next_canary_weight;

/// Arguments of `serin get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The Canary to show; all Canaries of the namespace when omitted.
    pub name: Option<String>,
    /// Canaries of every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["name", "namespace"])]
    pub all_namespaces: bool,
    /// Keep watching: redraw on every change and print the Canaries' Events as they arrive.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin get`; exit code 0, 1 when the cluster cannot be read, 2 when the Canary does not
/// exist.
pub fn run(args: &GetArgs) -> u8 {
    super::run_command("get", get(args))
}

async fn get(args: &GetArgs) -> Result<u8, PluginError> {
    let (client, ns) = super::connect(&args.kube).await?;
    let scope = (!args.all_namespaces).then_some(ns.as_str());
    let canaries = list(&client, scope, args.name.as_deref()).await?;
    if !args.watch {
        let now = Utc::now();
        if canaries.is_empty() {
            println!("No Canaries found in {}.", scope_words(scope));
        } else {
            print!("{}", render(&canaries, args.all_namespaces, now));
        }
        return Ok(0);
    }
    watch(client, scope, args.name.as_deref(), args.all_namespaces).await?;
    Ok(0)
}

fn scope_words(scope: Option<&str>) -> String {
    match scope {
        Some(ns) => format!("namespace {ns}"),
        None => "any namespace".into(),
    }
}

fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn list(
    client: &Client,
    scope: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<Canary>, PluginError> {
    let api: Api<Canary> = api(client, scope);
    match name {
        Some(n) => match api.get_opt(n).await? {
            Some(c) => Ok(vec![c]),
            None => Err(PluginError::NotFound {
                namespace: scope.unwrap_or_default().to_string(),
                name: n.to_string(),
            }),
        },
        None => {
            let mut all = api.list(&ListParams::default()).await?.items;
            all.sort_by_key(|c| (c.namespace(), c.name_any()));
            Ok(all)
        }
    }
}

/// One table row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub weight: String,
    pub failed: String,
    pub step: String,
    pub checks: String,
    pub age: String,
}

/// A number as people read it: no trailing zeros, at most two decimals.
pub fn number(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// The current step: `2/10` on the weight ladder, `3/5` iterations, `-` when no run is active.
pub fn step(c: &Canary) -> String {
    let Some(status) = &c.status else {
        return "-".into();
    };
    if !status.phase.is_active() || c.spec.skip_analysis() {
        return "-".into();
    }
    let analysis = c.spec.analysis();
    match c.spec.strategy() {
        Strategy::Canary => {
            let max = analysis.max_weight();
            let mut ladder = Vec::new();
            let mut w = 0;
            while w < max && ladder.len() < 100 {
                let next = next_canary_weight(&analysis, w);
                if next <= w {
                    break;
                }
                ladder.push(next);
                w = next;
            }
            let done = match status.phase {
                Phase::Promoting | Phase::Finalising | Phase::WaitingPromotion => ladder.len(),
                _ => ladder
                    .iter()
                    .filter(|w| **w <= status.canary_weight)
                    .count(),
            };
            format!("{done}/{}", ladder.len())
        }
        Strategy::BlueGreen | Strategy::AbTesting => {
            format!("{}/{}", status.iterations, analysis.iterations())
        }
    }
}

/// Each check's last value and verdict: `error-rate 0.5 Pass, latency 620 Fail`.
pub fn checks(c: &Canary) -> String {
    let Some(status) = &c.status else {
        return "-".into();
    };
    if status.metrics.is_empty() {
        return "-".into();
    }
    status
        .metrics
        .iter()
        .map(|m| {
            format!(
                "{} {} {}",
                m.name,
                m.value.map_or("-".into(), number),
                m.verdict.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn row(c: &Canary, now: DateTime<Utc>) -> Row {
    let status = c.status.clone().unwrap_or_default();
    let reconciled = c.status.is_some();
    Row {
        namespace: c.namespace().unwrap_or_default(),
        name: c.name_any(),
        phase: if reconciled {
            status.phase.to_string()
        } else {
            "-".into()
        },
        weight: status.canary_weight.to_string(),
        failed: format!("{}/{}", status.failed_checks, c.spec.analysis().threshold()),
        step: step(c),
        checks: checks(c),
        age: c
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| super::to_chrono(&t.0))
            .map_or("-".into(), |t| super::age(now - t)),
    }
}

/// What a row cannot show: suspended, stalled (with why), or what the rollout waits for.
pub fn notes(c: &Canary, now: DateTime<Utc>) -> Vec<String> {
    let name = c.name_any();
    let mut out = Vec::new();
    if c.spec.suspended() {
        out.push(format!(
            "{name}: suspended; resume it with `kubectl serin resume {name}`"
        ));
    }
    let Some(status) = &c.status else {
        out.push(format!(
            "{name}: not reconciled yet; is `serin controller` running?"
        ));
        return out;
    };
    if let Some(s) = status.condition(CONDITION_STALLED)
        && s.status == "True"
        && s.reason != "RolledBack"
    {
        out.push(format!("{name}: stalled ({}): {}", s.reason, s.message));
    }
    if let Some(w) = &status.waiting_for {
        let since = status
            .waiting_since
            .map(|t| format!(" for {}", super::age(now - t)))
            .unwrap_or_default();
        out.push(format!("{name}: waiting{since} for {w}"));
    }
    out
}

/// The table, with a NAMESPACE column when `with_namespace`, and notes under it.
pub fn render(canaries: &[Canary], with_namespace: bool, now: DateTime<Utc>) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["NAME", "PHASE", "WEIGHT", "FAILED", "STEP", "CHECKS", "AGE"];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.iter().map(|s| s.to_string()).collect());
    for c in canaries {
        let r = row(c, now);
        let mut cells = vec![r.name, r.phase, r.weight, r.failed, r.step, r.checks, r.age];
        if with_namespace {
            cells.insert(0, r.namespace);
        }
        rows.push(cells);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for c in canaries {
        for n in notes(c, now) {
            let _ = writeln!(out, "  {n}");
        }
    }
    out
}

// One update at a time, moved straight out of the stream: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Update {
    Canary(Result<watcher::Event<Canary>, watcher::Error>),
    Event(Result<watcher::Event<KubeEvent>, watcher::Error>),
}

/// How many recent Events a redraw on a terminal shows.
const SHOWN_EVENTS: usize = 12;

struct View {
    canaries: BTreeMap<(String, String), Canary>,
    buffered: Option<BTreeMap<(String, String), Canary>>,
    listed: bool,
    events: Vec<KubeEvent>,
    seen: HashSet<(String, i32)>,
    events_listed: bool,
    with_namespace: bool,
    terminal: bool,
}

impl View {
    fn key(c: &Canary) -> (String, String) {
        (c.namespace().unwrap_or_default(), c.name_any())
    }

    /// The table (and on a terminal the recent Events), for one redraw.
    fn frame(&self) -> String {
        let now = Utc::now();
        let canaries: Vec<Canary> = self.canaries.values().cloned().collect();
        let mut out = String::new();
        if self.terminal {
            out.push_str("\x1b[H\x1b[2J");
        } else {
            out.push('\n');
        }
        let _ = writeln!(out, "{}", now.format("%H:%M:%S"));
        if canaries.is_empty() {
            out.push_str("No Canaries found.\n");
        } else {
            out.push_str(&render(&canaries, self.with_namespace, now));
        }
        if self.terminal && !self.events.is_empty() {
            out.push_str("\nEVENTS\n");
            let from = self.events.len().saturating_sub(SHOWN_EVENTS);
            for e in &self.events[from..] {
                let _ = writeln!(out, "{}", self.event_line(e));
            }
        }
        out
    }

    fn event_line(&self, e: &KubeEvent) -> String {
        let at = super::event_time(e).map_or("--:--:--".into(), |t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        });
        let r = &e.involved_object;
        let name = r.name.as_deref().unwrap_or("");
        let who = if self.with_namespace {
            format!("{}/{name}", r.namespace.as_deref().unwrap_or(""))
        } else {
            name.to_string()
        };
        format!("{at}  {who}  {}", super::event_text(e))
    }

    fn on_canary(&mut self, ev: watcher::Event<Canary>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.buffered = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(c) => {
                if let Some(b) = self.buffered.as_mut() {
                    b.insert(Self::key(&c), c);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(b) = self.buffered.take() {
                    self.canaries = b;
                }
                self.listed = true;
                true
            }
            watcher::Event::Apply(c) => {
                self.canaries.insert(Self::key(&c), c);
                self.listed
            }
            watcher::Event::Delete(c) => {
                self.canaries.remove(&Self::key(&c));
                self.listed
            }
        }
    }

    /// Takes an Event in; returns it when it is new and should be shown now.
    fn on_event(&mut self, ev: watcher::Event<KubeEvent>) -> Vec<KubeEvent> {
        match ev {
            watcher::Event::Init | watcher::Event::Delete(_) => vec![],
            watcher::Event::InitApply(e) => {
                if self.seen.insert(super::event_key(&e)) {
                    self.events.push(e.clone());
                    if self.events_listed {
                        return vec![e];
                    }
                }
                vec![]
            }
            watcher::Event::InitDone => {
                self.events.sort_by_key(super::event_time);
                if self.events_listed {
                    return vec![];
                }
                self.events_listed = true;
                let from = self.events.len().saturating_sub(SHOWN_EVENTS);
                self.events[from..].to_vec()
            }
            watcher::Event::Apply(e) => {
                if self.seen.insert(super::event_key(&e)) {
                    self.events.push(e.clone());
                    if self.events.len() > 1000 {
                        self.events.drain(..500);
                    }
                    return vec![e];
                }
                vec![]
            }
        }
    }
}

async fn watch(
    client: Client,
    scope: Option<&str>,
    name: Option<&str>,
    with_namespace: bool,
) -> Result<(), PluginError> {
    let canaries: Api<Canary> = api(&client, scope);
    let events: Api<KubeEvent> = api(&client, scope);
    let mut canary_cfg = watcher::Config::default();
    if let Some(n) = name {
        canary_cfg = canary_cfg.fields(&format!("metadata.name={n}"));
    }
    let event_cfg = watcher::Config::default().fields(&super::canary_events_selector(name));
    let mut updates = futures::stream::select(
        watcher(canaries, canary_cfg)
            .default_backoff()
            .map(Update::Canary)
            .boxed(),
        watcher(events, event_cfg)
            .default_backoff()
            .map(Update::Event)
            .boxed(),
    );
    let mut view = View {
        canaries: BTreeMap::new(),
        buffered: None,
        listed: false,
        events: Vec::new(),
        seen: HashSet::new(),
        events_listed: false,
        with_namespace,
        terminal: std::io::stdout().is_terminal(),
    };
    let mut last_error = String::new();
    while let Some(update) = updates.next().await {
        let mut out = String::new();
        match update {
            Update::Canary(Ok(ev)) => {
                if view.on_canary(ev) {
                    out = view.frame();
                }
            }
            Update::Event(Ok(ev)) => {
                let new = view.on_event(ev);
                if view.terminal {
                    if !new.is_empty() && view.listed {
                        out = view.frame();
                    }
                } else {
                    for e in new {
                        let _ = writeln!(out, "{}", view.event_line(&e));
                    }
                }
            }
            Update::Canary(Err(e)) | Update::Event(Err(e)) => {
                let message = e.to_string();
                if message != last_error {
                    eprintln!("serin get: watch interrupted, retrying: {message}");
                    last_error = message;
                }
            }
        }
        if !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                // The reader went away (a closed pipe): nothing more to show.
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CanaryStatus, MetricStatus, Verdict};

    fn canary(analysis: serde_json::Value, status: Option<CanaryStatus>) -> Canary {
        let mut c: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test",
                         "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {"port": 9898},
                "analysis": analysis,
            },
        }))
        .unwrap();
        c.status = status;
        c
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn progressing(weight: i32) -> CanaryStatus {
        CanaryStatus {
            phase: Phase::Progressing,
            canary_weight: weight,
            failed_checks: 1,
            metrics: vec![
                MetricStatus {
                    name: "error-rate".into(),
                    value: Some(0.5),
                    verdict: Verdict::Pass,
                    message: String::new(),
                    time: at("2026-01-01T10:04:00Z"),
                },
                MetricStatus {
                    name: "latency".into(),
                    value: None,
                    verdict: Verdict::Error,
                    message: String::new(),
                    time: at("2026-01-01T10:04:00Z"),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_progressing_canary_shows_weight_step_checks_and_age() {
        let c = canary(
            serde_json::json!({"interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 5}),
            Some(progressing(15)),
        );
        let r = row(&c, at("2026-01-01T10:05:00Z"));
        assert_eq!(r.phase, "Progressing");
        assert_eq!(r.weight, "15");
        assert_eq!(r.failed, "1/5");
        assert_eq!(r.step, "3/10");
        assert_eq!(r.checks, "error-rate 0.5 Pass, latency - Error");
        assert_eq!(r.age, "5m0s");
    }

    #[test]
    fn steps_follow_ladders_iterations_and_clamped_last_steps() {
        let ladder = canary(
            serde_json::json!({"stepWeights": [1, 5, 25, 50]}),
            Some(progressing(25)),
        );
        assert_eq!(step(&ladder), "3/4");
        let clamped = canary(
            serde_json::json!({"maxWeight": 50, "stepWeight": 20}),
            Some(progressing(50)),
        );
        assert_eq!(step(&clamped), "3/3");
        let mut s = progressing(0);
        s.iterations = 2;
        let blue_green = canary(serde_json::json!({"iterations": 5}), Some(s));
        assert_eq!(step(&blue_green), "2/5");
        let idle = canary(
            serde_json::json!({"stepWeight": 10}),
            Some(CanaryStatus {
                phase: Phase::Succeeded,
                ..Default::default()
            }),
        );
        assert_eq!(step(&idle), "-");
    }

    #[test]
    fn the_table_aligns_columns_and_explains_stalls_and_waits() {
        let mut waiting = progressing(10);
        waiting.waiting_for = Some("traffic increase approval".into());
        waiting.waiting_since = Some(at("2026-01-01T10:03:00Z"));
        let a = canary(serde_json::json!({"stepWeight": 10}), Some(waiting));
        let mut b = canary(serde_json::json!({"stepWeight": 10}), None);
        b.metadata.name = Some("backend".into());
        let text = render(&[a, b], false, at("2026-01-01T10:05:00Z"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME      PHASE         WEIGHT   FAILED   STEP   CHECKS                                 AGE"
        );
        assert_eq!(
            lines[1],
            "podinfo   Progressing   10       1/1      1/10   error-rate 0.5 Pass, latency - Error   5m0s"
        );
        assert!(lines[2].starts_with("backend   -"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "  podinfo: waiting for 2m0s for traffic increase approval"
        );
        assert_eq!(
            lines[4],
            "  backend: not reconciled yet; is `serin controller` running?"
        );
    }

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(99.0), "99");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(0.1234), "0.12");
        assert_eq!(number(-0.0001), "0");
    }
}
