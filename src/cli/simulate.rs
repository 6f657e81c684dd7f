//! `serin simulate`: reads a Canary manifest and a scenario file, runs the simulation (or many
//! seeds of it) and prints a timeline a person reads, a summary, or JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::{self, ManifestError};
use crate::api::{Canary, Phase, Strategy, Verdict, duration};
use crate::sim::run::{ActionRecord, DecisionRecord, WorldRecord};
use crate::sim::{
    Options, RunOutcome, Scenario, ScenarioFile, SimResult, Stop, Summary, clock, clock_short,
};

/// Arguments of `serin simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The Canary manifest (YAML; when it holds several Canaries, pick one with --name).
    pub canary: PathBuf,
    /// The scenario: traffic, how each version behaves, webhook answers, pod start delays.
    #[arg(long, value_name = "SCENARIO.yaml")]
    pub scenario: PathBuf,
    /// `text` (a timeline) or `json`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Seed of the random traffic; the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulate this many seeds (from --seed on) and print how many promoted or rolled back.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub runs: u64,
    /// The Canary to simulate when the manifest holds several.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Runs the command; returns the exit code: 0 when the simulation ran (whatever its outcome),
/// 1 when the engine misbehaved, 2 on bad input.
pub fn run(args: &SimulateArgs) -> i32 {
    let (canary, scenario) = match load(args) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("serin simulate: {message}");
            return 2;
        }
    };
    let scenario_file = args.scenario.display().to_string();
    let (out, code) = if args.runs == 1 {
        let result = crate::sim::simulate(
            &canary,
            &scenario,
            &Options {
                seed: args.seed,
                record: true,
            },
        );
        let code = if matches!(result.stopped, Stop::Engine(_)) {
            1
        } else {
            0
        };
        let out = match args.output {
            OutputFormat::Text => timeline(&canary, &scenario_file, &result),
            OutputFormat::Json => json_text(&RunReport {
                scenario: &scenario_file,
                result: &result,
            }),
        };
        (out, code)
    } else {
        let results = crate::sim::simulate_seeds(&canary, &scenario, args.seed, args.runs);
        let summary = Summary::of(args.seed, &results);
        let code = if summary.engine_errors > 0 { 1 } else { 0 };
        let out = match args.output {
            OutputFormat::Text => summary_text(&canary, &scenario_file, &summary),
            OutputFormat::Json => json_text(&SummaryReport {
                canary: canary_id(&canary),
                scenario: &scenario_file,
                summary: &summary,
                runs: results
                    .iter()
                    .map(|r| RunLine {
                        seed: r.seed,
                        outcome: r.outcome,
                        time_to_outcome_seconds: r.time_to_outcome_seconds,
                        canary_errors: r.traffic.canary_errors,
                    })
                    .collect(),
            }),
        };
        (out, code)
    };
    // A closed stdout (for example `| head`) is not an error of the simulation.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    code
}

/// `--output json` of one run: the result, with the scenario file it ran.
#[derive(Serialize)]
struct RunReport<'a> {
    scenario: &'a str,
    #[serde(flatten)]
    result: &'a SimResult,
}

/// `--output json` of `--runs N`.
#[derive(Serialize)]
struct SummaryReport<'a> {
    canary: String,
    scenario: &'a str,
    summary: &'a Summary,
    runs: Vec<RunLine>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunLine {
    seed: u64,
    outcome: RunOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_outcome_seconds: Option<f64>,
    canary_errors: u64,
}

fn json_text(value: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// Reads and checks both files; the error names the file, the field and the broken rule.
fn load(args: &SimulateArgs) -> Result<(Canary, Scenario), String> {
    let canaries = manifest::load_canaries(&args.canary).map_err(|e| e.to_string())?;
    let file = args.canary.display().to_string();
    let canary = match &args.name {
        Some(name) => canaries
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| format!("{file}: holds no Canary named '{name}'"))?,
        None if canaries.len() > 1 => {
            let names: Vec<&str> = canaries
                .iter()
                .map(|c| c.metadata.name.as_deref().unwrap_or(""))
                .collect();
            return Err(format!(
                "{file}: holds {} Canaries ({}); pick one with --name",
                names.len(),
                names.join(", ")
            ));
        }
        None => canaries
            .into_iter()
            .next()
            .ok_or_else(|| format!("{file}: holds no Canary"))?,
    };
    let scenario = load_scenario(&args.scenario, &canary)?;
    Ok((canary, scenario))
}

fn load_scenario(path: &Path, canary: &Canary) -> Result<Scenario, String> {
    let file = path.display().to_string();
    let mut docs = manifest::read_documents(path).map_err(|e| e.to_string())?;
    if docs.len() != 1 {
        return Err(ManifestError::Missing {
            file,
            message: format!(
                "holds {} YAML documents; a scenario is exactly one",
                docs.len()
            ),
        }
        .to_string());
    }
    let doc = docs.remove(0);
    if !doc.is_object() {
        return Err(ManifestError::Field {
            file,
            doc: 1,
            path: "(root)".into(),
            message: "a scenario is a mapping of fields (maxDuration, pushes, pods, traffic, \
                      primary, canary, webhooks, metrics)"
                .into(),
        }
        .to_string());
    }
    let parsed: ScenarioFile = manifest::from_document(&file, 1, doc).map_err(|e| e.to_string())?;
    parsed.resolve(&canary.spec).map_err(|issues| {
        let mut lines = issues.into_iter().map(|i| {
            ManifestError::Field {
                file: file.clone(),
                doc: 1,
                path: i.path,
                message: i.message,
            }
            .to_string()
        });
        let first = lines.next().unwrap_or_default();
        lines.fold(first, |all, line| format!("{all}\nserin simulate: {line}"))
    })
}

fn canary_id(canary: &Canary) -> String {
    format!(
        "{}/{}",
        canary.metadata.namespace.as_deref().unwrap_or("default"),
        canary.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The settings that shape the timeline, in one line.
fn describe(canary: &Canary) -> String {
    let spec = &canary.spec;
    let a = spec.analysis();
    let interval = duration::format(a.interval());
    match spec.strategy() {
        Strategy::Canary => {
            let steps = match &a.step_weights {
                Some(w) => format!(
                    "stepWeights {}",
                    w.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
                ),
                None => format!(
                    "maxWeight {}, stepWeight {}",
                    a.max_weight(),
                    a.step_weight.unwrap_or(0)
                ),
            };
            format!(
                "canary, interval {interval}, threshold {}, {steps}",
                a.threshold()
            )
        }
        s => format!(
            "{}, interval {interval}, threshold {}, iterations {}",
            s.as_str(),
            a.threshold(),
            a.iterations()
        ),
    }
}

fn seconds_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

fn format_value(name: &str, value: f64) -> String {
    match name {
        "request-success-rate" => format!("{value:.2}%"),
        "request-duration" => format!("{value:.0}ms"),
        _ => format!("{value}"),
    }
}

/// A decision is shown when something visible happened (a new phase, weights, an Event, an
/// alert, a failing check or gate) or an analysis step ran; quiet polls are left out.
fn shown(d: &DecisionRecord, weights: &str, previous_weights: &str) -> bool {
    d.phase != d.previous_phase
        || weights != previous_weights
        || !d.events.is_empty()
        || d.actions.iter().any(|a| {
            matches!(
                a,
                ActionRecord::Notify { .. } | ActionRecord::RunHooks { .. }
            )
        })
        || d.analysis
        || d.checks.iter().any(|c| c.verdict != Verdict::Pass)
        || d.hooks
            .iter()
            .any(|h| if h.kind == "rollback" { h.ok } else { !h.ok })
}

fn weights_text(d: &DecisionRecord) -> String {
    d.weights.map_or_else(
        || "-".to_string(),
        |w| format!("{}/{}", w.primary, w.canary),
    )
}

fn decision_lines(out: &mut String, d: &DecisionRecord) {
    let weights = weights_text(d);
    let mut head = format!(
        "{}  {:<16} {:>7}",
        clock(seconds_ms(d.time_seconds)),
        d.phase.as_str(),
        weights
    );
    if d.failed_checks > 0 {
        let _ = write!(head, "  failed checks {}", d.failed_checks);
    }
    let _ = writeln!(out, "{}", head.trim_end());
    let pad = "          ";
    for c in &d.checks {
        let value = c
            .value
            .map_or_else(|| "no data".to_string(), |v| format_value(&c.name, v));
        let mut line = format!("{pad}check   {} {value} {}", c.name, c.verdict.as_str());
        if let Some(n) = c.requests {
            let _ = write!(line, " ({n} requests)");
        }
        if !c.message.is_empty() && c.verdict != Verdict::Pass {
            let _ = write!(line, ": {}", c.message);
        }
        let _ = writeln!(out, "{line}");
    }
    for h in &d.hooks {
        let shown = if h.kind == "rollback" { h.ok } else { !h.ok };
        if shown {
            let _ = writeln!(out, "{pad}hook    {} {}: {}", h.kind, h.hook, h.message);
        }
    }
    for e in &d.events {
        let _ = writeln!(out, "{pad}{:<8}{}: {}", e.type_, e.reason, e.message);
    }
    for a in &d.actions {
        match a {
            ActionRecord::Notify { severity, message } => {
                let sev = serde_json::to_value(severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let _ = writeln!(out, "{pad}alert   {sev}: {message}");
            }
            ActionRecord::RunHooks { kind, phase } => {
                let _ = writeln!(out, "{pad}called  {kind} hooks (phase {phase})");
            }
            _ => {}
        }
    }
}

fn world_line(out: &mut String, w: &WorldRecord) {
    let _ = writeln!(out, "{}  ~ {}", clock(seconds_ms(w.time_seconds)), w.what);
}

/// The timeline of one run, ending with the outcome line.
fn timeline(canary: &Canary, scenario_file: &str, r: &SimResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Simulating {} ({}) with {}, seed {}",
        canary_id(canary),
        describe(canary),
        scenario_file,
        r.seed
    );
    let _ = writeln!(out, "   time  phase            weights (primary/canary)");
    let mut world = r.world.iter().peekable();
    let mut previous_weights = String::new();
    for (i, d) in r.decisions.iter().enumerate() {
        while let Some(w) = world.next_if(|w| w.after_decisions <= i) {
            world_line(&mut out, w);
        }
        let weights = weights_text(d);
        if shown(d, &weights, &previous_weights) {
            decision_lines(&mut out, d);
        }
        previous_weights = weights;
    }
    for w in world {
        world_line(&mut out, w);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", outcome_line(r));
    let t = r.traffic;
    let _ = writeln!(
        out,
        "Requests: canary served {} ({} failed), primary served {} ({} failed).",
        t.canary_requests, t.canary_errors, t.primary_requests, t.primary_errors
    );
    out
}

fn outcome_line(r: &SimResult) -> String {
    let since_push = |s: Option<f64>| {
        s.map_or_else(String::new, |s| {
            format!(" ({} after the push)", clock_short(seconds_ms(s)))
        })
    };
    let at =
        |s: Option<f64>| s.map_or_else(String::new, |s| clock(seconds_ms(s)).trim().to_string());
    let mut line = match r.outcome {
        RunOutcome::Succeeded => format!(
            "Succeeded: promoted at {}{}.",
            at(r.finished_at_seconds),
            since_push(r.time_to_outcome_seconds)
        ),
        RunOutcome::Failed => format!(
            "Failed: rolled back at {}{}.",
            at(r.finished_at_seconds),
            since_push(r.time_to_outcome_seconds)
        ),
        _ if r.rollouts.is_empty() && r.stopped == Stop::Finished => format!(
            "No rollout: {} at {} (the scenario pushes no new revision).",
            r.final_phase.as_str(),
            clock(seconds_ms(r.end_seconds)).trim()
        ),
        RunOutcome::Superseded | RunOutcome::Unfinished => {
            let why = match &r.stopped {
                Stop::TimeLimit => "the scenario's maxDuration was reached",
                Stop::Idle => "nothing more was scheduled",
                Stop::Engine(_) => "the engine stopped",
                Stop::Finished => "the rollout did not end",
            };
            format!(
                "Unfinished: {} at {} ({why}).",
                r.final_phase.as_str(),
                clock(seconds_ms(r.end_seconds)).trim()
            )
        }
    };
    if r.rollouts.len() > 1 {
        let each: Vec<String> = r
            .rollouts
            .iter()
            .map(|ro| format!("{} {}", ro.revision, ro.outcome.as_str()))
            .collect();
        let _ = write!(line, " Rollouts: {}.", each.join(", "));
    }
    if let Stop::Engine(message) = &r.stopped {
        let _ = write!(line, "\nEngine error: {message}.");
    }
    if r.final_phase == Phase::Initializing && r.rollouts.is_empty() {
        let _ = write!(line, " The Canary never finished initializing.");
    }
    line
}

fn spread_text(s: Option<crate::sim::Spread>) -> String {
    s.map_or_else(
        || "-".to_string(),
        |s| {
            let f = |v: f64| clock_short(seconds_ms(v));
            format!(
                "min {} / median {} / max {}",
                f(s.min),
                f(s.median),
                f(s.max)
            )
        },
    )
}

fn seeds_text(seeds: &[u64]) -> String {
    seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary_text(canary: &Canary, scenario_file: &str, s: &Summary) -> String {
    let mut out = String::new();
    let last_seed = s.first_seed.wrapping_add(s.runs.saturating_sub(1));
    let _ = writeln!(
        out,
        "Simulated {} ({}) with {}: {} runs, seeds {}..={}",
        canary_id(canary),
        describe(canary),
        scenario_file,
        s.runs,
        s.first_seed,
        last_seed
    );
    let pct = |n: u64| 100.0 * n as f64 / s.runs.max(1) as f64;
    let _ = writeln!(
        out,
        "  promoted     {:>6} ({:5.1}%)  time to promote   {}",
        s.promoted,
        pct(s.promoted),
        spread_text(s.time_to_promote_seconds)
    );
    let _ = writeln!(
        out,
        "  rolled back  {:>6} ({:5.1}%)  time to roll back {}",
        s.rolled_back,
        pct(s.rolled_back),
        spread_text(s.time_to_roll_back_seconds)
    );
    if s.unfinished > 0 {
        let _ = writeln!(
            out,
            "  unfinished   {:>6} ({:5.1}%)",
            s.unfinished,
            pct(s.unfinished)
        );
    }
    let _ = writeln!(
        out,
        "  failed canary requests per run: {:.1} on average",
        s.mean_canary_errors
    );
    // Seeds of the rarer outcomes, the runs worth replaying.
    for (what, count, seeds) in [
        ("promoted", s.promoted, &s.promoted_seeds),
        ("rolled back", s.rolled_back, &s.rolled_back_seeds),
        ("unfinished", s.unfinished, &s.unfinished_seeds),
    ] {
        if count > 0 && count * 2 <= s.runs {
            let _ = writeln!(
                out,
                "  {what} with seeds {} (replay one with --seed)",
                seeds_text(seeds)
            );
        }
    }
    if s.engine_errors > 0 {
        let _ = writeln!(
            out,
            "  {} runs stopped on an engine error (replay one with --seed {})",
            s.engine_errors,
            s.unfinished_seeds.first().copied().unwrap_or(s.first_seed)
        );
    }
    out
}
