//! The simulation loop: a virtual clock that calls the engine when its requeue time comes or
//! when the simulated world changes (as a watch would), answers the engine's probes from the
//! scenario and the traffic model, applies its actions to the in-memory cluster, and records
//! every decision.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::cluster::{Cluster, WorldEvent, revision_hash};
use super::scenario::{HookAnswer, Pushes, Scenario};
use super::traffic::{Routing, Totals, Traffic};
use crate::api::{
    CanarySpec, CanaryStatus, HookType, Phase, Severity, Strategy, Verdict, duration,
};
use crate::engine::{
    Action, Decision, EventType, HookResult, Input, MetricResult, Outcome, Probe, ProbeResults,
    Scale,
};

/// The instant the simulation starts (virtual; only differences are shown).
const START_SECONDS: i64 = 1_767_225_600;
/// Probe rounds allowed before one decision.
const MAX_PROBE_ROUNDS: usize = 8;
/// Engine calls allowed in one simulation.
const MAX_ENGINE_CALLS: u64 = 200_000;
/// Calls allowed at one instant; an engine asking again and again to be called at once is a bug.
const MAX_CALLS_AT_ONE_INSTANT: u32 = 50;

/// What to simulate and how much to record.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Keep every decision and world change (off for batches of runs, which need only outcomes).
    pub record: bool,
}

/// How a rollout (or the whole run) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RunOutcome {
    /// The revision was promoted.
    Succeeded,
    /// The revision was rolled back.
    Failed,
    /// A newer revision replaced it before its rollout ended.
    Superseded,
    /// The simulation stopped before the rollout ended.
    Unfinished,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "Succeeded",
            RunOutcome::Failed => "Failed",
            RunOutcome::Superseded => "Superseded",
            RunOutcome::Unfinished => "Unfinished",
        }
    }
}

/// Why the simulation stopped.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", content = "message", rename_all = "camelCase")]
pub enum Stop {
    /// Every push was handled and every rollout ended.
    Finished,
    /// `maxDuration` was reached.
    TimeLimit,
    /// Nothing was scheduled: the engine asked not to be called again and nothing changed.
    Idle,
    /// The engine misbehaved (no decision after its probes were answered); a bug to report.
    Engine(String),
}

/// One revision's rollout.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub revision: String,
    pub pushed_at_seconds: f64,
    pub outcome: RunOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_seconds: Option<f64>,
    /// From the push to promotion or rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// A change of the simulated world.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldRecord {
    pub time_seconds: f64,
    pub what: String,
    /// How many decisions were recorded before it (orders it among decisions of the same time).
    #[serde(skip)]
    pub after_decisions: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Canary requests in the metric's window (built-in metrics only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hook: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action")]
pub enum ActionRecord {
    EnsureRoutes,
    EnsurePrimary,
    SetWeights { primary: i32, canary: i32 },
    ScaleTarget { to: String },
    PromoteToPrimary,
    RunHooks { kind: String, phase: Phase },
    Notify { severity: Severity, message: String },
}

impl From<&Action> for ActionRecord {
    fn from(a: &Action) -> ActionRecord {
        match a {
            Action::EnsureRoutes => ActionRecord::EnsureRoutes,
            Action::EnsurePrimary => ActionRecord::EnsurePrimary,
            Action::SetWeights(w) => ActionRecord::SetWeights {
                primary: w.primary,
                canary: w.canary,
            },
            Action::ScaleTarget(s) => ActionRecord::ScaleTarget {
                to: match s {
                    Scale::Up => "up".into(),
                    Scale::Zero => "zero".into(),
                },
            },
            Action::PromoteToPrimary => ActionRecord::PromoteToPrimary,
            Action::RunHooks { kind, phase } => ActionRecord::RunHooks {
                kind: kind.as_str().into(),
                phase: *phase,
            },
            Action::Notify { severity, message } => ActionRecord::Notify {
                severity: *severity,
                message: message.clone(),
            },
        }
    }
}

/// Route weights as read back after a decision's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WeightsRecord {
    pub primary: i32,
    pub canary: i32,
}

/// One decision of the engine and what the simulator did with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub time_seconds: f64,
    pub phase: Phase,
    pub previous_phase: Phase,
    /// Route weights after the actions; absent before the routes exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsRecord>,
    pub failed_checks: i32,
    /// An analysis step ran (as opposed to a fail-fast check or a wait).
    pub analysis: bool,
    pub checks: Vec<CheckRecord>,
    pub hooks: Vec<HookRecord>,
    pub events: Vec<EventRecord>,
    pub actions: Vec<ActionRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<f64>,
}

/// The result of one simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimResult {
    /// `namespace/name`.
    pub canary: String,
    pub seed: u64,
    /// How the last rollout ended (`Unfinished` when there was none).
    pub outcome: RunOutcome,
    /// From the push of the last revision to its promotion or rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_outcome_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_seconds: Option<f64>,
    pub stopped: Stop,
    /// Simulated time when the simulation stopped.
    pub end_seconds: f64,
    pub final_phase: Phase,
    pub rollouts: Vec<Rollout>,
    /// Requests served and failed by each version over the whole simulation.
    pub traffic: Totals,
    pub engine_calls: u64,
    pub decisions: Vec<DecisionRecord>,
    pub world: Vec<WorldRecord>,
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

struct Sim<'a, F> {
    decide: F,
    name: &'a str,
    namespace: &'a str,
    spec: &'a CanarySpec,
    scenario: &'a Scenario,
    options: &'a Options,
    start: DateTime<Utc>,
    now: i64,
    status: CanaryStatus,
    cluster: Cluster,
    traffic: Traffic,
    queue: BTreeMap<(i64, u64), WorldEvent>,
    queued: u64,
    next_call: Option<i64>,
    push_after_initialization: bool,
    rollouts: Vec<Rollout>,
    decisions: Vec<DecisionRecord>,
    world: Vec<WorldRecord>,
    calls: u64,
    /// Calls made at the current instant.
    calls_now: u32,
}

/// Runs one Canary through `decide` against the scenario.
pub fn simulate_with<F>(
    decide: F,
    name: &str,
    namespace: &str,
    spec: &CanarySpec,
    scenario: &Scenario,
    options: &Options,
) -> SimResult
where
    F: Fn(&Input<'_>) -> Outcome,
{
    let mut sim = Sim {
        decide,
        name,
        namespace,
        spec,
        scenario,
        options,
        start: DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(START_SECONDS),
        now: 0,
        status: CanaryStatus::default(),
        cluster: Cluster::new(
            &spec.target_ref.name,
            scenario.canary_start_delay_ms,
            scenario.primary_start_delay_ms,
        ),
        traffic: Traffic::new(options.seed),
        queue: BTreeMap::new(),
        queued: 0,
        next_call: Some(0),
        push_after_initialization: scenario.pushes == Pushes::AfterInitialization,
        rollouts: Vec::new(),
        decisions: Vec::new(),
        world: Vec::new(),
        calls: 0,
        calls_now: 0,
    };
    if let Pushes::At(times) = &scenario.pushes {
        for t in times {
            sim.schedule(*t, WorldEvent::Push);
        }
    }
    let stop = sim.run();
    sim.finish(stop)
}

impl<F> Sim<'_, F>
where
    F: Fn(&Input<'_>) -> Outcome,
{
    fn schedule(&mut self, at: i64, event: WorldEvent) {
        self.queued += 1;
        self.queue.insert((at, self.queued), event);
    }

    fn note(&mut self, what: String) {
        if self.options.record {
            self.world.push(WorldRecord {
                time_seconds: seconds(self.now),
                what,
                after_decisions: self.decisions.len(),
            });
        }
    }

    /// Generates the traffic up to now under the cluster's current state; called before every
    /// change of that state.
    fn catch_up_traffic(&mut self) {
        let canary_weight = self.cluster.routes.map_or(0, |w| w.canary.clamp(0, 100));
        let mut share = f64::from(canary_weight) / 100.0;
        if self.spec.strategy() == Strategy::AbTesting {
            share *= *self.scenario.match_share.at(self.now);
        }
        let behaviour = |revision: Option<u32>| match revision {
            Some(0) | None => &self.scenario.primary,
            Some(_) => &self.scenario.canary,
        };
        let serving = self.cluster.canary_serving();
        let primary_revision = self
            .cluster
            .primary
            .as_ref()
            .map_or(Some(0), |p| p.serving.or(Some(p.revision)));
        let routing = Routing {
            canary_share: share,
            canary_serving: serving.is_some(),
            canary: behaviour(serving.or(Some(self.cluster.target.revision))),
            primary: behaviour(primary_revision),
        };
        self.traffic.advance_to(self.now, self.scenario, routing);
    }

    fn run(&mut self) -> Stop {
        loop {
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next = match (next_event, self.next_call) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return Stop::Idle,
                },
            };
            if next > self.scenario.max_duration_ms {
                self.now = self.scenario.max_duration_ms;
                self.catch_up_traffic();
                return Stop::TimeLimit;
            }
            if next > self.now {
                self.now = next;
                self.calls_now = 0;
            }
            let mut changed = false;
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let event = entry.remove();
                changed |= self.happen(event);
            }
            if changed || self.next_call.is_some_and(|t| t <= self.now) {
                if let Err(message) = self.call_engine() {
                    return Stop::Engine(message);
                }
                self.calls_now += 1;
                if self.calls_now >= MAX_CALLS_AT_ONE_INSTANT {
                    return Stop::Engine(format!(
                        "the engine asked to be called again at once {MAX_CALLS_AT_ONE_INSTANT} times at {}",
                        clock(self.now).trim()
                    ));
                }
                if self.calls >= MAX_ENGINE_CALLS {
                    return Stop::Engine(format!(
                        "the engine was called {MAX_ENGINE_CALLS} times without the rollout ending"
                    ));
                }
            }
            if self.finished() {
                return Stop::Finished;
            }
        }
    }

    /// Applies a world event; returns whether a watch would report it.
    fn happen(&mut self, event: WorldEvent) -> bool {
        self.catch_up_traffic();
        match event {
            WorldEvent::Push => {
                let followups = self.cluster.push(self.now);
                for (at, e) in followups {
                    self.schedule(at, e);
                }
                let revision = revision_hash(self.cluster.target.revision);
                self.note(format!("new revision {revision} pushed"));
                self.rollouts.push(Rollout {
                    revision,
                    pushed_at_seconds: seconds(self.now),
                    outcome: RunOutcome::Unfinished,
                    finished_at_seconds: None,
                    duration_seconds: None,
                });
                true
            }
            other => {
                if !self.cluster.happen(&other) {
                    return false;
                }
                let what = match other {
                    WorldEvent::TargetReady { .. } => format!(
                        "canary pods ready ({})",
                        revision_hash(self.cluster.target.revision)
                    ),
                    WorldEvent::TargetStuck { .. } => {
                        "canary rollout exceeded the Deployment's progress deadline".into()
                    }
                    WorldEvent::PrimaryReady { .. } => format!(
                        "primary pods ready ({})",
                        self.cluster
                            .primary
                            .as_ref()
                            .map_or_else(String::new, |p| revision_hash(p.revision))
                    ),
                    WorldEvent::PrimaryStuck { .. } => {
                        "primary rollout exceeded the Deployment's progress deadline".into()
                    }
                    WorldEvent::Push => String::new(),
                };
                self.note(what);
                true
            }
        }
    }

    fn call_engine(&mut self) -> Result<(), String> {
        self.calls += 1;
        self.catch_up_traffic();
        let observed = self.cluster.observe();
        let now = self.start + Duration::milliseconds(self.now);
        let mut probes = ProbeResults::default();
        let mut requests = BTreeMap::new();
        let mut hooks = Vec::new();
        for _ in 0..MAX_PROBE_ROUNDS {
            let input = Input {
                name: self.name,
                namespace: self.namespace,
                spec: self.spec,
                status: &self.status,
                observed: &observed,
                probes: &probes,
                request: None,
                now,
            };
            match (self.decide)(&input) {
                Outcome::Decided(decision) => {
                    self.apply(*decision, now, &requests, hooks);
                    return Ok(());
                }
                Outcome::Need(list) if list.is_empty() => {
                    return Err(format!(
                        "the engine neither decided nor asked for probes at {}",
                        clock(self.now)
                    ));
                }
                Outcome::Need(list) => {
                    for probe in list {
                        match probe {
                            Probe::Hooks(kind) => {
                                let result = self.answer_hooks(kind);
                                hooks.push(HookRecord {
                                    kind: kind.as_str().into(),
                                    ok: result.ok,
                                    hook: result.hook.clone(),
                                    message: result.message.clone(),
                                });
                                probes.hooks.insert(kind, result);
                            }
                            Probe::Metrics(names) => {
                                for name in names {
                                    let (result, n) = self.answer_metric(&name);
                                    if let Some(n) = n {
                                        requests.insert(name.clone(), n);
                                    }
                                    probes.metrics.insert(name, result);
                                }
                            }
                        }
                    }
                }
            }
        }
        Err(format!(
            "the engine asked for probes {MAX_PROBE_ROUNDS} times without deciding at {}",
            clock(self.now)
        ))
    }

    fn answer_hooks(&self, kind: HookType) -> HookResult {
        let kind = if kind == HookType::Unset {
            HookType::Rollout
        } else {
            kind
        };
        let analysis = self.spec.analysis();
        let rollback = kind == HookType::Rollback;
        let default = if rollback {
            HookAnswer::Fail
        } else {
            HookAnswer::Pass
        };
        for hook in analysis.hooks_of(kind) {
            let timeline = self.scenario.hooks.get(&hook.name);
            let answer = timeline.map_or(default, |t| *t.at(self.now));
            let until = timeline
                .and_then(|t| t.next_change_after(self.now))
                .map(|t| format!(" until {}", clock_short(t)))
                .unwrap_or_default();
            match (rollback, answer) {
                (true, HookAnswer::Pass) => {
                    return HookResult {
                        ok: true,
                        hook: hook.name.clone(),
                        message: format!("answered 200: rollback requested (scenario{until})"),
                    };
                }
                (false, HookAnswer::Fail) => {
                    let status = match kind {
                        HookType::ConfirmRollout
                        | HookType::ConfirmTrafficIncrease
                        | HookType::ConfirmPromotion => "403 Forbidden",
                        _ => "500 Internal Server Error",
                    };
                    return HookResult {
                        ok: false,
                        hook: hook.name.clone(),
                        message: format!("answered {status} (scenario: fails{until})"),
                    };
                }
                _ => {}
            }
        }
        HookResult::quiet(kind)
    }

    /// The metric's value now, and the canary requests it was computed from (built-ins).
    fn answer_metric(&mut self, name: &str) -> (MetricResult, Option<u64>) {
        let analysis = self.spec.analysis();
        let Some(metric) = analysis.metrics().iter().find(|m| m.name == name) else {
            return (
                MetricResult::Error(format!("the Canary has no metric named '{name}'")),
                None,
            );
        };
        if let Some(values) = self.scenario.metrics.get(name) {
            return (MetricResult::Value(*values.at(self.now)), None);
        }
        let window = metric.interval();
        let window_ms = window.num_milliseconds();
        let measured = match name {
            "request-success-rate" => self.traffic.success_rate(self.now, window_ms),
            "request-duration" => self.traffic.p99_ms(self.now, window_ms),
            _ => {
                return (
                    MetricResult::NoData(format!(
                        "the scenario gives no values for metric '{name}'"
                    )),
                    None,
                );
            }
        };
        let result = match measured.value {
            Some(v) => MetricResult::Value(v),
            None => MetricResult::NoData(format!(
                "no request reached the canary in the last {}",
                duration::format(window)
            )),
        };
        (result, Some(measured.requests))
    }

    fn apply(
        &mut self,
        decision: Decision,
        now: DateTime<Utc>,
        requests: &BTreeMap<String, u64>,
        hooks: Vec<HookRecord>,
    ) {
        for action in &decision.actions {
            self.catch_up_traffic();
            for (at, event) in self.cluster.apply(action, self.now) {
                self.schedule(at, event);
            }
        }
        let previous = self.status.phase;
        let phase = decision.status.phase;
        let requeue = decision.requeue_after.map(|d| d.num_milliseconds());
        self.next_call = requeue.map(|ms| self.now + ms.max(0));

        if phase != previous && matches!(phase, Phase::Succeeded | Phase::Failed) {
            let outcome = if phase == Phase::Succeeded {
                RunOutcome::Succeeded
            } else {
                RunOutcome::Failed
            };
            let applied = decision.status.last_applied_spec.as_deref();
            let open = |r: &Rollout| r.outcome == RunOutcome::Unfinished;
            let index = self
                .rollouts
                .iter()
                .position(|r| open(r) && Some(r.revision.as_str()) == applied)
                .or_else(|| self.rollouts.iter().rposition(open));
            if let Some(i) = index {
                let r = &mut self.rollouts[i];
                r.outcome = outcome;
                r.finished_at_seconds = Some(seconds(self.now));
                r.duration_seconds = Some(seconds(self.now) - r.pushed_at_seconds);
            }
        }
        if phase == Phase::Initialized && self.push_after_initialization {
            self.push_after_initialization = false;
            self.schedule(self.now, WorldEvent::Push);
        }

        if self.options.record {
            let checks = decision
                .status
                .metrics
                .iter()
                .filter(|m| m.time == now)
                .map(|m| CheckRecord {
                    name: m.name.clone(),
                    value: m.value,
                    verdict: m.verdict,
                    message: m.message.clone(),
                    requests: requests.get(&m.name).copied(),
                })
                .collect();
            self.decisions.push(DecisionRecord {
                time_seconds: seconds(self.now),
                phase,
                previous_phase: previous,
                weights: self.cluster.routes.map(|w| WeightsRecord {
                    primary: w.primary,
                    canary: w.canary,
                }),
                failed_checks: decision.status.failed_checks,
                analysis: decision.status.last_analysis_time == Some(now),
                checks,
                hooks,
                events: decision
                    .events
                    .iter()
                    .map(|e| EventRecord {
                        type_: match e.type_ {
                            EventType::Normal => "Normal".into(),
                            EventType::Warning => "Warning".into(),
                        },
                        reason: e.reason.as_str().into(),
                        message: e.message.clone(),
                    })
                    .collect(),
                actions: decision.actions.iter().map(ActionRecord::from).collect(),
                requeue_after_seconds: requeue.map(seconds),
            });
        }
        self.status = decision.status;
    }

    /// Every push happened, every rollout ended, and the Canary rests.
    fn finished(&self) -> bool {
        let pushes_pending =
            self.push_after_initialization || self.queue.values().any(|e| *e == WorldEvent::Push);
        !pushes_pending
            && matches!(
                self.status.phase,
                Phase::Initialized | Phase::Succeeded | Phase::Failed
            )
            && self
                .rollouts
                .iter()
                .all(|r| r.outcome != RunOutcome::Unfinished)
    }

    fn finish(mut self, stop: Stop) -> SimResult {
        let last = self.rollouts.len().saturating_sub(1);
        for (i, r) in self.rollouts.iter_mut().enumerate() {
            if i < last && r.outcome == RunOutcome::Unfinished {
                r.outcome = RunOutcome::Superseded;
            }
        }
        let final_rollout = self.rollouts.last();
        SimResult {
            canary: format!("{}/{}", self.namespace, self.name),
            seed: self.options.seed,
            outcome: final_rollout.map_or(RunOutcome::Unfinished, |r| r.outcome),
            time_to_outcome_seconds: final_rollout.and_then(|r| r.duration_seconds),
            finished_at_seconds: final_rollout.and_then(|r| r.finished_at_seconds),
            stopped: stop,
            end_seconds: seconds(self.now),
            final_phase: self.status.phase,
            traffic: self.traffic.totals(),
            engine_calls: self.calls,
            rollouts: self.rollouts,
            decisions: self.decisions,
            world: self.world,
        }
    }
}

/// Simulated time since the start, as the timeline shows it: `  3m00s`, ` 61m05s`.
pub fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    format!("{:>3}m{:02}s", s / 60, s % 60)
}

/// A duration the way users write it: `5m`, `1m30s`.
pub fn clock_short(ms: i64) -> String {
    duration::format(Duration::milliseconds(ms))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::api::Canary;
    use crate::engine::Decision;
    use crate::sim::ScenarioFile;

    fn canary() -> Canary {
        let value: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../examples/appmesh/canary.yaml")).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn scenario(canary: &Canary, yaml: &str) -> Scenario {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let file: ScenarioFile = serde_json::from_value(value).unwrap();
        file.resolve(&canary.spec).unwrap()
    }

    /// An engine that asks for `probes` once per call, then stays in `phase` and asks to be
    /// called again every minute; it logs the answers it got.
    fn asking<'a>(
        probes: Vec<Probe>,
        phase: Phase,
        log: &'a RefCell<Vec<(i64, ProbeResults)>>,
    ) -> impl Fn(&Input<'_>) -> Outcome + 'a {
        move |input: &Input<'_>| {
            let answered = input.probes.hooks.len() + input.probes.metrics.len();
            if !probes.is_empty() && answered == 0 {
                return Outcome::Need(probes.clone());
            }
            let t = (input.now - (DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(START_SECONDS)))
                .num_seconds();
            log.borrow_mut().push((t, input.probes.clone()));
            Outcome::Decided(Box::new(Decision {
                status: CanaryStatus {
                    phase,
                    ..CanaryStatus::default()
                },
                actions: vec![Action::EnsureRoutes],
                events: Vec::new(),
                requeue_after: Some(Duration::minutes(1)),
            }))
        }
    }

    fn options(seed: u64) -> Options {
        Options { seed, record: true }
    }

    #[test]
    fn same_seed_same_result() {
        let c = canary();
        let s = scenario(
            &c,
            "traffic: {rps: 10}\ncanary: {errorPercent: [{at: 0s, value: 0.5}, {at: 4m, value: 2}]}",
        );
        let run = |seed| crate::sim::simulate(&c, &s, &options(seed));
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first.traffic, run(8).traffic);
        assert!(!first.decisions.is_empty());
    }

    #[test]
    fn weight_zero_without_test_traffic_is_no_data() {
        let c = canary();
        let s = scenario(&c, "maxDuration: 3m\npushes: []\ntraffic: {rps: 100}");
        let log = RefCell::new(Vec::new());
        let probes = vec![Probe::Metrics(vec![
            "request-success-rate".into(),
            "request-duration".into(),
        ])];
        let r = simulate_with(
            asking(probes, Phase::Initializing, &log),
            "podinfo",
            "test",
            &c.spec,
            &s,
            &options(1),
        );
        assert_eq!(r.stopped, Stop::TimeLimit);
        let log = log.borrow();
        assert_eq!(log.len(), 4, "called at 0, 1m, 2m and 3m");
        for (_, answers) in log.iter() {
            for name in ["request-success-rate", "request-duration"] {
                assert!(
                    matches!(&answers.metrics[name], MetricResult::NoData(m) if m.contains("no request reached the canary")),
                    "{answers:?}"
                );
            }
        }
        assert_eq!(r.traffic.canary_requests, 0);
        assert!(r.traffic.primary_requests > 17_000);
    }

    #[test]
    fn webhook_answers_follow_the_scenario_over_time() {
        let mut c = canary();
        let hooks: Vec<crate::api::CanaryWebhook> = serde_json::from_value(serde_json::json!([
            {"name": "approve", "type": "confirm-promotion", "url": "http://gate/"},
            {"name": "stop", "type": "rollback", "url": "http://gate/"},
            {"name": "smoke", "type": "pre-rollout", "url": "http://gate/"}
        ]))
        .unwrap();
        if let Some(a) = c.spec.analysis.as_mut() {
            a.webhooks = Some(hooks);
        }
        let s = scenario(
            &c,
            "maxDuration: 8m\npushes: []\nwebhooks:\n  approve: [{at: 0s, value: closed}, {at: 5m, value: open}]\n  stop: [{at: 0s, value: fail}, {at: 7m, value: pass}]\n",
        );
        let log = RefCell::new(Vec::new());
        let probes = vec![
            Probe::Hooks(HookType::ConfirmPromotion),
            Probe::Hooks(HookType::Rollback),
            Probe::Hooks(HookType::PreRollout),
            Probe::Hooks(HookType::ConfirmRollout),
        ];
        simulate_with(
            asking(probes, Phase::Initializing, &log),
            "podinfo",
            "test",
            &c.spec,
            &s,
            &options(1),
        );
        for (t, answers) in log.borrow().iter() {
            let gate = &answers.hooks[&HookType::ConfirmPromotion];
            assert_eq!(gate.ok, *t >= 300, "approve at {t}s: {gate:?}");
            if !gate.ok {
                assert_eq!(gate.hook, "approve");
                assert!(gate.message.contains("403") && gate.message.contains("until 5m"));
            }
            assert_eq!(
                answers.hooks[&HookType::Rollback].ok,
                *t >= 420,
                "stop at {t}s"
            );
            // Unlisted hooks pass; a type without hooks passes.
            assert!(answers.hooks[&HookType::PreRollout].ok);
            assert!(answers.hooks[&HookType::ConfirmRollout].ok);
        }
    }

    #[test]
    fn custom_metrics_take_scenario_values_or_have_no_data() {
        let mut c = canary();
        let metrics: Vec<crate::api::CanaryMetric> = serde_json::from_value(serde_json::json!([
            {"name": "burn", "templateRef": {"name": "burn"}, "thresholdRange": {"max": 1}},
            {"name": "saturation", "templateRef": {"name": "sat"}, "thresholdRange": {"max": 1}}
        ]))
        .unwrap();
        if let Some(a) = c.spec.analysis.as_mut() {
            a.metrics = Some(metrics);
        }
        let s = scenario(
            &c,
            "maxDuration: 2m\npushes: []\nmetrics: {burn: [{at: 0s, value: 0.5}, {at: 1m, value: 3}]}",
        );
        let log = RefCell::new(Vec::new());
        let probes = vec![Probe::Metrics(vec![
            "burn".into(),
            "saturation".into(),
            "missing".into(),
        ])];
        simulate_with(
            asking(probes, Phase::Initializing, &log),
            "podinfo",
            "test",
            &c.spec,
            &s,
            &options(1),
        );
        let log = log.borrow();
        assert_eq!(log[0].1.metrics["burn"], MetricResult::Value(0.5));
        assert_eq!(log[1].1.metrics["burn"], MetricResult::Value(3.0));
        assert!(matches!(
            log[0].1.metrics["saturation"],
            MetricResult::NoData(_)
        ));
        assert!(matches!(
            log[0].1.metrics["missing"],
            MetricResult::Error(_)
        ));
    }

    #[test]
    fn an_engine_that_decides_nothing_stops_the_run() {
        let c = canary();
        let s = scenario(&c, "pushes: []");
        let r = simulate_with(
            |_: &Input<'_>| Outcome::Need(Vec::new()),
            "podinfo",
            "test",
            &c.spec,
            &s,
            &options(1),
        );
        assert!(matches!(r.stopped, Stop::Engine(ref m) if m.contains("neither decided")));
        assert_eq!(r.outcome, RunOutcome::Unfinished);
    }

    #[test]
    fn an_engine_that_keeps_asking_to_be_called_at_once_stops_the_run() {
        let c = canary();
        let s = scenario(&c, "pushes: []");
        let r = simulate_with(
            |input: &Input<'_>| {
                Outcome::Decided(Box::new(Decision {
                    status: input.status.clone(),
                    actions: Vec::new(),
                    events: Vec::new(),
                    requeue_after: Some(Duration::zero()),
                }))
            },
            "podinfo",
            "test",
            &c.spec,
            &s,
            &options(1),
        );
        assert!(matches!(r.stopped, Stop::Engine(ref m) if m.contains("at once")));
    }

    #[test]
    fn the_timeline_starts_with_initialization_and_a_push() {
        let c = canary();
        let s = scenario(&c, "traffic: {rps: 100, testRps: 20}");
        let r = crate::sim::simulate(&c, &s, &options(1));
        assert_eq!(r.decisions[0].phase, Phase::Initializing);
        assert_eq!(r.rollouts.len(), 1);
        assert_eq!(r.rollouts[0].revision, "rev-1");
        // The push follows initialization: primary ready at the 30s default start delay.
        assert_eq!(r.rollouts[0].pushed_at_seconds, 30.0);
        assert_eq!(r.outcome, RunOutcome::Succeeded);
        assert_eq!(r.stopped, Stop::Finished);
    }
}
