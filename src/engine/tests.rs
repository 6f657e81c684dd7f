//! Engine tests: one per transition of the phase table, Flagger's scheduler scenarios
//! re-expressed against the engine, and property tests of the invariants.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::{
    Just, ProptestConfig, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::strategy::Strategy as Gen;

use super::*;
use crate::api::Strategy;
use crate::api::{
    CanaryAnalysis, CanaryMetric, CanarySpec, CanaryStatus, CanaryWebhook, HookType, NoDataPolicy,
    Phase, ThresholdRange,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

fn spec(analysis: &str) -> CanarySpec {
    let yaml = format!(
        "targetRef: {{apiVersion: apps/v1, kind: Deployment, name: podinfo}}\nservice: {{port: 9898}}\n{analysis}"
    );
    serde_saphyr::from_str(&yaml).expect("test spec parses")
}

fn canary_spec() -> CanarySpec {
    spec(
        "analysis:
  interval: 1m
  threshold: 3
  maxWeight: 50
  stepWeight: 10
  metrics:
  - name: request-success-rate
    thresholdRange: {min: 99}
    interval: 1m",
    )
}

fn hook(kind: &str, name: &str) -> CanaryWebhook {
    serde_json::from_value(
        serde_json::json!({"type": kind, "name": name, "url": "http://gate.test/"}),
    )
    .expect("hook parses")
}

/// An in-memory world the engine drives, answering probes from the test's settings.
struct World {
    spec: CanarySpec,
    status: CanaryStatus,
    now: DateTime<Utc>,
    revision: String,
    canary_up: bool,
    canary_readiness: Readiness,
    primary: Option<Readiness>,
    routes: Option<Weights>,
    hooks: BTreeMap<HookType, HookResult>,
    metrics: BTreeMap<String, MetricResult>,
    /// The manual request annotation.
    request: Option<String>,
    /// Every probe asked for, in order.
    asked: Vec<Probe>,
    decisions: Vec<Decision>,
}

impl World {
    fn new(spec: CanarySpec) -> World {
        World {
            spec,
            status: CanaryStatus::default(),
            now: t0(),
            revision: "rev-1".into(),
            canary_up: true,
            canary_readiness: Readiness::Ready,
            primary: None,
            routes: None,
            hooks: BTreeMap::new(),
            metrics: BTreeMap::from([(
                "request-success-rate".to_string(),
                MetricResult::Value(100.0),
            )]),
            request: None,
            asked: vec![],
            decisions: vec![],
        }
    }

    /// A world already initialized, with all traffic on the primary.
    fn initialized(spec: CanarySpec) -> World {
        let mut w = World::new(spec);
        w.primary = Some(Readiness::Ready);
        w.tick();
        assert_eq!(w.status.phase, Phase::Initialized);
        w
    }

    fn observed(&self) -> Observed {
        Observed {
            generation: Some(1),
            target: Some(TargetState {
                revision: self.revision.clone(),
                tracked_configs: BTreeMap::new(),
                readiness: if self.canary_up {
                    self.canary_readiness.clone()
                } else {
                    Readiness::NotReady("scaled to zero".into())
                },
            }),
            primary: self.primary.clone(),
            routes: self.routes,
        }
    }

    fn decide_once(&mut self) -> Decision {
        let observed = self.observed();
        self.decide_from(&observed)
    }

    fn decide_from(&mut self, observed: &Observed) -> Decision {
        let mut probes = ProbeResults::default();
        for _ in 0..10 {
            let input = Input {
                name: "podinfo",
                namespace: "test",
                spec: &self.spec,
                status: &self.status,
                observed,
                probes: &probes,
                request: self.request.as_deref(),
                now: self.now,
            };
            match decide(&input) {
                Outcome::Decided(d) => return *d,
                Outcome::Need(list) => {
                    assert!(!list.is_empty(), "Need with no probes");
                    for p in list {
                        self.asked.push(p.clone());
                        match p {
                            Probe::Hooks(kind) => {
                                let r = self.hooks.get(&kind).cloned().unwrap_or_else(|| {
                                    if kind == HookType::Rollback {
                                        HookResult {
                                            ok: false,
                                            hook: "rb".into(),
                                            message: String::new(),
                                        }
                                    } else {
                                        HookResult::passed()
                                    }
                                });
                                probes.hooks.insert(kind, r);
                            }
                            Probe::Metrics(names) => {
                                for n in names {
                                    let r = self
                                        .metrics
                                        .get(&n)
                                        .cloned()
                                        .unwrap_or(MetricResult::NoData("unset".into()));
                                    probes.metrics.insert(n, r);
                                }
                            }
                        }
                    }
                }
            }
        }
        panic!("engine kept asking for probes");
    }

    /// One reconcile: decide, then apply the actions to the world.
    fn tick(&mut self) -> Decision {
        let d = self.decide_once();
        for a in &d.actions {
            match a {
                Action::SetWeights(w) => {
                    assert_eq!(w.primary + w.canary, 100, "weights must sum to 100: {w:?}");
                    self.routes = Some(*w);
                }
                Action::EnsureRoutes => {
                    if self.routes.is_none() {
                        self.routes = Some(Weights::ALL_PRIMARY);
                    }
                }
                Action::EnsurePrimary => {
                    if self.primary.is_none() {
                        self.primary = Some(Readiness::NotReady("starting".into()));
                    }
                }
                Action::ScaleTarget(Scale::Up) => self.canary_up = true,
                Action::ScaleTarget(Scale::Zero) => self.canary_up = false,
                Action::PromoteToPrimary | Action::RunHooks { .. } | Action::Notify { .. } => {}
            }
        }
        self.status = d.status.clone();
        self.decisions.push(d.clone());
        d
    }

    /// Advances the clock by `d` and reconciles.
    fn after(&mut self, d: Duration) -> Decision {
        self.now += d;
        self.tick()
    }

    fn push(&mut self, rev: &str) {
        self.revision = rev.into();
    }

    fn fail_metrics(&mut self) {
        self.metrics
            .insert("request-success-rate".into(), MetricResult::Value(90.0));
    }

    fn pass_metrics(&mut self) {
        self.metrics
            .insert("request-success-rate".into(), MetricResult::Value(100.0));
    }

    fn gate(&mut self, kind: HookType, ok: bool) {
        self.hooks.insert(
            kind,
            HookResult {
                ok,
                hook: "gate".into(),
                message: if ok { String::new() } else { "closed".into() },
            },
        );
    }
}

fn reasons(d: &Decision) -> Vec<Reason> {
    d.events.iter().map(|e| e.reason).collect()
}

fn has(d: &Decision, a: &Action) -> bool {
    d.actions.contains(a)
}

fn condition<'a>(s: &'a CanaryStatus, t: &str) -> &'a str {
    s.condition(t).map_or("", |c| c.status.as_str())
}

fn minute() -> Duration {
    Duration::minutes(1)
}

/// A world in Progressing at `weight`, reached through passing steps.
fn progressing_at(spec: CanarySpec, weight: i32) -> World {
    let mut w = World::initialized(spec);
    w.push("rev-2");
    w.tick();
    let mut d = w.tick();
    while w.status.canary_weight < weight {
        d = w.after(minute());
    }
    assert_eq!(w.status.canary_weight, weight, "{:?}", reasons(&d));
    w
}

// ---- the phase table (FB §2.4, as amended by DESIGN.md §3) ---------------------------------

#[test]
fn new_canary_initializes_and_waits_for_the_primary() {
    let mut w = World::new(canary_spec());
    let d = w.tick();
    assert_eq!(d.status.phase, Phase::Initializing);
    assert!(has(&d, &Action::EnsureRoutes) && has(&d, &Action::EnsurePrimary));
    assert_eq!(reasons(&d), vec![Reason::Initializing]);
    assert_eq!(condition(&d.status, "Reconciling"), "True");
    // The primary exists but is not ready: still initializing, no second Initializing event.
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Initializing);
    assert!(d.events.is_empty());
    assert!(
        d.status
            .waiting_for
            .as_deref()
            .unwrap_or("")
            .starts_with("primary")
    );
}

#[test]
fn ready_primary_completes_initialization_and_scales_the_target_to_zero() {
    let mut w = World::new(canary_spec());
    w.primary = Some(Readiness::Ready);
    let d = w.tick();
    assert_eq!(d.status.phase, Phase::Initialized);
    assert!(has(&d, &Action::ScaleTarget(Scale::Zero)));
    assert_eq!(d.status.last_applied_spec.as_deref(), Some("rev-1"));
    assert_eq!(d.status.last_promoted_spec.as_deref(), Some("rev-1"));
    assert_eq!(reasons(&d), vec![Reason::Initializing, Reason::Initialized]);
    assert_eq!(condition(&d.status, "Promoted"), "True");
    assert_eq!(condition(&d.status, "Ready"), "True");
    assert!(d.actions.iter().any(|a| matches!(
        a,
        Action::Notify {
            severity: Severity::Info,
            ..
        }
    )));
}

#[test]
fn unchanged_revision_does_nothing() {
    let mut w = World::initialized(canary_spec());
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Initialized);
    assert!(d.actions.is_empty() && d.events.is_empty());
    assert!(w.asked.is_empty(), "no probe runs without a new revision");
}

#[test]
fn closed_confirm_rollout_waits_and_open_gate_starts_the_run() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-rollout", "approve")]);
    let mut w = World::initialized(s);
    w.gate(HookType::ConfirmRollout, false);
    w.push("rev-2");
    let d = w.tick();
    assert_eq!(d.status.phase, Phase::Waiting);
    assert_eq!(reasons(&d), vec![Reason::WaitingForApproval]);
    assert!(!has(&d, &Action::ScaleTarget(Scale::Up)));
    assert!(d.actions.iter().any(|a| matches!(
        a,
        Action::Notify {
            severity: Severity::Warn,
            ..
        }
    )));
    // Still closed a minute later: no new event or alert.
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Waiting);
    assert!(d.events.is_empty() && d.actions.is_empty());
    w.gate(HookType::ConfirmRollout, true);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(has(&d, &Action::ScaleTarget(Scale::Up)));
    assert_eq!(reasons(&d), vec![Reason::NewRevision]);
    assert_eq!(d.status.last_applied_spec.as_deref(), Some("rev-2"));
}

#[test]
fn new_revision_without_gates_scales_the_canary_up() {
    let mut w = World::initialized(canary_spec());
    w.push("rev-2");
    let d = w.tick();
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(has(&d, &Action::ScaleTarget(Scale::Up)));
    assert_eq!(d.status.canary_weight, 0);
    assert_eq!(d.requeue_after, Some(READINESS_POLL));
}

#[test]
fn first_step_runs_pre_rollout_hooks_and_shifts_the_first_weight() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("pre-rollout", "acceptance")]);
    let mut w = World::initialized(s);
    w.push("rev-2");
    w.tick();
    let d = w.tick();
    assert!(w.asked.contains(&Probe::Hooks(HookType::PreRollout)));
    assert!(
        !w.asked.iter().any(|p| matches!(p, Probe::Metrics(_))),
        "no metrics before traffic"
    );
    assert_eq!(
        reasons(&d),
        vec![
            Reason::NewRevision,
            Reason::PreRolloutPassed,
            Reason::WeightAdvanced
        ]
    );
    assert!(has(&d, &Action::SetWeights(Weights::canary(10))));
    assert_eq!(d.requeue_after, Some(minute()));
}

#[test]
fn failing_pre_rollout_hook_counts_a_failed_check_and_retries_next_interval() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("pre-rollout", "acceptance")]);
    let mut w = World::initialized(s);
    w.gate(HookType::PreRollout, false);
    w.push("rev-2");
    w.tick();
    let d = w.tick();
    assert_eq!(d.status.failed_checks, 1);
    assert_eq!(d.status.canary_weight, 0);
    // Not due yet: nothing is run again before the interval.
    let before = w.asked.len();
    let d = w.after(Duration::seconds(10));
    assert_eq!(w.asked.len(), before);
    assert_eq!(d.status.failed_checks, 1);
    w.gate(HookType::PreRollout, true);
    let d = w.after(minute());
    assert_eq!(d.status.canary_weight, 10);
    assert_eq!(d.status.failed_checks, 1, "failed checks are cumulative");
}

#[test]
fn failing_analysis_holds_the_weight_and_counts() {
    let mut w = progressing_at(canary_spec(), 10);
    w.fail_metrics();
    let d = w.after(minute());
    assert_eq!(d.status.failed_checks, 1);
    assert_eq!(d.status.canary_weight, 10);
    assert_eq!(reasons(&d), vec![Reason::CheckFailed]);
    assert_eq!(
        d.events[0].message,
        "Halt podinfo.test advancement success rate 90% < 99%"
    );
    assert_eq!(d.status.metrics[0].verdict, crate::api::Verdict::Fail);
    assert_eq!(d.status.metrics[0].value, Some(90.0));
}

#[test]
fn reaching_the_threshold_rolls_back_in_the_same_step() {
    let mut w = progressing_at(canary_spec(), 10);
    w.fail_metrics();
    w.after(minute());
    w.after(minute());
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.failed_checks, 3);
    assert_eq!(d.status.canary_weight, 0);
    assert!(has(&d, &Action::SetWeights(Weights::ALL_PRIMARY)));
    assert!(has(&d, &Action::ScaleTarget(Scale::Zero)));
    assert!(has(
        &d,
        &Action::RunHooks {
            kind: HookType::PostRollout,
            phase: Phase::Failed
        }
    ));
    assert!(d.actions.iter().any(|a| matches!(a, Action::Notify { severity: Severity::Error, message } if message == "Failed checks threshold reached 3")));
    assert_eq!(
        reasons(&d),
        vec![Reason::CheckFailed, Reason::RolledBack, Reason::RolledBack]
    );
    assert_eq!(condition(&d.status, "Stalled"), "True");
    assert_eq!(condition(&d.status, "Promoted"), "False");
}

#[test]
fn canary_missing_the_progress_deadline_rolls_back() {
    let mut s = canary_spec();
    s.progress_deadline_seconds = Some(60);
    let mut w = World::initialized(s);
    w.canary_readiness = Readiness::NotReady("0 of 1 updated replicas are available".into());
    w.push("rev-2");
    w.tick();
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(reasons(&d), vec![Reason::Waiting]);
    assert!(d.requeue_after <= Some(READINESS_POLL));
    let d = w.after(Duration::seconds(30));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(d.events.is_empty(), "one Waiting event per wait");
    let d = w.after(Duration::seconds(30));
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(reasons(&d).contains(&Reason::ProgressDeadlineExceeded));
}

#[test]
fn stuck_canary_rolls_back_at_once() {
    let mut w = progressing_at(canary_spec(), 20);
    w.canary_readiness = Readiness::Stuck("exceeded its progress deadline".into());
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(w.routes, Some(Weights::ALL_PRIMARY));
}

#[test]
fn rollback_webhook_rolls_back() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("rollback", "rollback-gate")]);
    let mut w = progressing_at(s, 20);
    w.gate(HookType::Rollback, true);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(reasons(&d).contains(&Reason::RollbackRequested));
}

#[test]
fn new_revision_mid_analysis_restarts_from_zero() {
    let mut w = progressing_at(canary_spec(), 30);
    w.fail_metrics();
    w.after(minute());
    w.pass_metrics();
    w.push("rev-3");
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.canary_weight, 0);
    assert_eq!(d.status.failed_checks, 0);
    assert_eq!(d.status.last_applied_spec.as_deref(), Some("rev-3"));
    assert!(has(&d, &Action::SetWeights(Weights::ALL_PRIMARY)));
    assert_eq!(reasons(&d), vec![Reason::Restarted]);
    let d = w.tick();
    assert_eq!(
        d.status.canary_weight, 10,
        "the new revision starts at the first step"
    );
}

#[test]
fn reverting_to_the_promoted_revision_cancels_the_run() {
    let mut w = progressing_at(canary_spec(), 30);
    w.push("rev-1");
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Initialized);
    assert_eq!(w.routes, Some(Weights::ALL_PRIMARY));
    assert!(!w.canary_up);
    assert_eq!(reasons(&d), vec![Reason::Reverted]);
}

#[test]
fn closed_confirm_promotion_waits_with_metrics_running_and_rolls_back_on_failure() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-promotion", "approve")]);
    let mut w = progressing_at(s, 50);
    w.gate(HookType::ConfirmPromotion, false);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::WaitingPromotion);
    assert_eq!(
        d.status.canary_weight, 50,
        "traffic stays on the canary while waiting"
    );
    assert!(reasons(&d).contains(&Reason::WaitingForApproval));
    w.fail_metrics();
    let mut last = w.after(minute());
    assert_eq!(last.status.failed_checks, 1);
    while last.status.phase == Phase::WaitingPromotion {
        last = w.after(minute());
    }
    assert_eq!(
        last.status.phase,
        Phase::Failed,
        "a breach rolls back even while the gate is closed"
    );
}

#[test]
fn open_confirm_promotion_copies_the_template() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-promotion", "approve")]);
    let mut w = progressing_at(s, 50);
    w.gate(HookType::ConfirmPromotion, false);
    w.after(minute());
    w.gate(HookType::ConfirmPromotion, true);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Promoting);
    assert!(has(&d, &Action::PromoteToPrimary));
    assert_eq!(
        d.events.last().map(|e| e.message.as_str()),
        Some("Copying podinfo.test template spec to podinfo-primary.test")
    );
}

#[test]
fn promotion_waits_for_the_primary_then_routes_all_traffic_back() {
    let mut w = progressing_at(canary_spec(), 50);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Promoting);
    w.primary = Some(Readiness::NotReady(
        "1 old replicas are pending termination".into(),
    ));
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Promoting);
    assert_eq!(w.routes, Some(Weights::canary(50)));
    w.primary = Some(Readiness::Ready);
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Finalising);
    assert!(has(&d, &Action::SetWeights(Weights::ALL_PRIMARY)));
    assert_eq!(d.requeue_after, Some(Duration::zero()));
    let d = w.tick();
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert!(has(&d, &Action::ScaleTarget(Scale::Zero)));
    assert!(has(
        &d,
        &Action::RunHooks {
            kind: HookType::PostRollout,
            phase: Phase::Succeeded
        }
    ));
    assert_eq!(d.status.last_promoted_spec.as_deref(), Some("rev-2"));
    assert_eq!(condition(&d.status, "Ready"), "True");
}

#[test]
fn primary_stuck_during_promotion_fails_the_promotion_with_traffic_on_the_primary() {
    let mut w = progressing_at(canary_spec(), 50);
    w.after(minute());
    w.primary = Some(Readiness::Stuck("exceeded its progress deadline".into()));
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.canary_weight, 0);
    assert!(reasons(&d).contains(&Reason::PromotionFailed));
    assert!(w.canary_up, "the canary is kept for investigation");
    // Reverting the target to the old revision runs it again, to promote it back.
    w.primary = Some(Readiness::Ready);
    w.push("rev-1");
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Progressing);
}

#[test]
fn step_weight_promotion_moves_traffic_back_in_steps() {
    let s =
        spec("analysis: {interval: 1m, threshold: 1, stepWeight: 100, stepWeightPromotion: 50}");
    let mut w = World::initialized(s);
    w.push("rev-2");
    let mut phases = vec![(w.tick().status.phase, w.status.canary_weight)];
    for _ in 0..8 {
        let d = w.after(minute());
        phases.push((d.status.phase, d.status.canary_weight));
        if d.status.phase == Phase::Finalising {
            let d = w.tick();
            phases.push((d.status.phase, d.status.canary_weight));
            break;
        }
    }
    // FB §7.1 TestScheduler_DeploymentAnalysisPhases.
    assert_eq!(
        phases,
        vec![
            (Phase::Progressing, 0),
            (Phase::Progressing, 100),
            (Phase::Promoting, 100),
            (Phase::Promoting, 50),
            (Phase::Finalising, 0),
            (Phase::Succeeded, 0),
        ]
    );
}

#[test]
fn failed_revision_is_not_retried_until_it_changes() {
    let mut w = progressing_at(canary_spec(), 10);
    w.fail_metrics();
    for _ in 0..3 {
        w.after(minute());
    }
    assert_eq!(w.status.phase, Phase::Failed);
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.actions.is_empty());
    // Reverting to the primary's revision starts nothing ...
    w.push("rev-1");
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.actions.is_empty());
    // ... and pushing the failed revision again after the revert is a change, as in Flagger.
    w.pass_metrics();
    w.push("rev-2");
    let d = w.after(minute());
    assert_eq!(d.status.phase, Phase::Progressing);
    // A different revision after a failure starts a run too.
    let mut w2 = progressing_at(canary_spec(), 10);
    w2.fail_metrics();
    for _ in 0..3 {
        w2.after(minute());
    }
    w2.push("rev-3");
    assert_eq!(w2.after(minute()).status.phase, Phase::Progressing);
}

#[test]
fn succeeded_canary_starts_again_on_the_next_revision() {
    let mut w = progressing_at(canary_spec(), 50);
    w.after(minute());
    w.primary = Some(Readiness::Ready);
    w.after(Duration::seconds(5));
    w.tick();
    assert_eq!(w.status.phase, Phase::Succeeded);
    w.push("rev-3");
    assert_eq!(w.after(minute()).status.phase, Phase::Progressing);
}

#[test]
fn skip_analysis_promotes_once_the_canary_is_ready() {
    let mut s = canary_spec();
    s.skip_analysis = Some(true);
    let mut w = World::initialized(s);
    w.canary_readiness = Readiness::NotReady("starting".into());
    w.push("rev-2");
    w.tick();
    assert_eq!(
        w.after(Duration::seconds(5)).status.phase,
        Phase::Progressing
    );
    w.canary_readiness = Readiness::Ready;
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert!(has(&d, &Action::PromoteToPrimary));
    assert!(has(&d, &Action::ScaleTarget(Scale::Zero)));
    assert!(!w.asked.iter().any(|p| matches!(p, Probe::Metrics(_))));
    assert_eq!(
        d.events.last().map(|e| e.message.as_str()),
        Some("Promotion completed! Canary analysis was skipped for podinfo.test")
    );
}

#[test]
fn suspend_freezes_everything_and_resume_continues() {
    let mut w = progressing_at(canary_spec(), 20);
    w.spec.suspend = Some(true);
    w.fail_metrics();
    let d = w.after(minute());
    assert_eq!(reasons(&d), vec![Reason::Suspended]);
    assert!(d.actions.is_empty());
    assert_eq!(condition(&d.status, "Reconciling"), "False");
    let d = w.after(minute());
    assert!(d.events.is_empty(), "one Suspended event");
    assert_eq!(d.status.failed_checks, 0);
    w.spec.suspend = None;
    w.pass_metrics();
    let d = w.after(minute());
    assert_eq!(reasons(&d)[0], Reason::Resumed);
    assert_eq!(d.status.canary_weight, 30);
}

#[test]
fn closed_traffic_increase_gate_holds_weight_but_checks_keep_running() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-traffic-increase", "more")]);
    let mut w = progressing_at(s, 20);
    w.gate(HookType::ConfirmTrafficIncrease, false);
    let d = w.after(minute());
    assert_eq!(d.status.canary_weight, 20);
    assert!(reasons(&d).contains(&Reason::WaitingForApproval));
    let alerts = |d: &Decision| {
        d.actions
            .iter()
            .filter(|a| matches!(a, Action::Notify { .. }))
            .count()
    };
    assert_eq!(alerts(&d), 1);
    assert_eq!(
        alerts(&w.after(minute())),
        0,
        "one alert per wait, not per step"
    );
    w.fail_metrics();
    for _ in 0..3 {
        w.after(minute());
    }
    assert_eq!(
        w.status.phase,
        Phase::Failed,
        "flagger#1801: gates do not suspend rollback"
    );
}

#[test]
fn gate_closed_past_the_progress_deadline_rolls_back() {
    let mut s = canary_spec();
    s.progress_deadline_seconds = Some(300);
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-traffic-increase", "more")]);
    let mut w = progressing_at(s, 10);
    w.gate(HookType::ConfirmTrafficIncrease, false);
    let mut d = w.after(minute());
    let started = w.now;
    while d.status.phase == Phase::Progressing {
        let step = d.requeue_after.unwrap_or(minute());
        assert!(step > Duration::zero());
        d = w.after(step);
    }
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(w.now - started, Duration::seconds(300));
}

#[test]
fn critical_metric_breach_between_steps_rolls_back_at_once() {
    let mut s = canary_spec();
    {
        let a = s.analysis.as_mut().unwrap();
        a.threshold = Some(10);
        a.fail_fast_interval = Some("10s".into());
        a.metrics.as_mut().unwrap()[0].critical = Some(true);
    }
    let mut w = progressing_at(s, 10);
    let d = w.after(Duration::seconds(10));
    assert!(w.asked.iter().any(|p| matches!(p, Probe::Metrics(_))));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.requeue_after, Some(Duration::seconds(10)));
    // No data between steps is not a breach: it waits for the full step and its policy.
    w.metrics.insert(
        "request-success-rate".into(),
        MetricResult::NoData("empty".into()),
    );
    let d = w.after(Duration::seconds(10));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.failed_checks, 0);
    w.fail_metrics();
    let d = w.after(Duration::seconds(10));
    assert_eq!(
        d.status.phase,
        Phase::Failed,
        "threshold 10 is not waited for"
    );
    assert_eq!(d.status.failed_checks, 1);
}

#[test]
fn no_data_with_hold_waits_without_failing_until_the_deadline() {
    let mut s = canary_spec();
    s.progress_deadline_seconds = Some(180);
    s.analysis.as_mut().unwrap().metrics.as_mut().unwrap()[0].on_no_data = Some(NoDataPolicy::Hold);
    let mut w = progressing_at(s, 10);
    w.metrics.insert(
        "request-success-rate".into(),
        MetricResult::NoData("empty result".into()),
    );
    let mut d = w.after(minute());
    assert_eq!(d.status.failed_checks, 0);
    assert_eq!(d.status.canary_weight, 10);
    assert_eq!(d.status.metrics[0].verdict, crate::api::Verdict::Hold);
    let hold_began = w.now;
    while d.status.phase == Phase::Progressing {
        assert_eq!(d.status.failed_checks, 0);
        assert_eq!(d.status.canary_weight, 10);
        d = w.after(d.requeue_after.unwrap_or(minute()));
    }
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(w.now - hold_began, Duration::seconds(180));
}

#[test]
fn no_data_defaults_to_a_failed_check_with_a_message() {
    let mut w = progressing_at(canary_spec(), 10);
    w.metrics.insert(
        "request-success-rate".into(),
        MetricResult::NoData("empty result".into()),
    );
    let d = w.after(minute());
    assert_eq!(d.status.failed_checks, 1);
    assert!(d.events[0].message.contains("may not be receiving traffic"));
}

#[test]
fn invalid_spec_is_reported_and_touches_nothing() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().metrics = Some(vec![CanaryMetric {
        name: "errors".into(),
        ..Default::default()
    }]);
    let mut w = progressing_at(canary_spec(), 20);
    w.spec = s;
    let d = w.after(minute());
    assert!(d.actions.is_empty());
    assert_eq!(reasons(&d), vec![Reason::InvalidSpec]);
    assert!(d.events[0].message.contains("spec.analysis.metrics[0]"));
    assert_eq!(condition(&d.status, "Stalled"), "True");
    assert_eq!(d.status.canary_weight, 20);
    assert!(w.after(minute()).events.is_empty(), "reported once");
}

#[test]
fn missing_target_is_reported() {
    let mut w = World::initialized(canary_spec());
    let observed = Observed {
        target: None,
        ..w.observed()
    };
    let input = Input {
        name: "podinfo",
        namespace: "test",
        spec: &w.spec,
        status: &w.status,
        observed: &observed,
        probes: &ProbeResults::default(),
        request: None,
        now: w.now,
    };
    let Outcome::Decided(d) = decide(&input) else {
        panic!("decides")
    };
    assert_eq!(reasons(&d), vec![Reason::TargetNotFound]);
    assert!(d.actions.is_empty());
    w.status = d.status;
    assert_eq!(condition(&w.status, "Stalled"), "True");
}

#[test]
fn routes_read_back_wrong_are_rewritten() {
    let mut w = progressing_at(canary_spec(), 20);
    w.routes = Some(Weights::canary(35));
    let d = w.after(Duration::seconds(5));
    assert!(reasons(&d).contains(&Reason::RouteMismatch));
    assert!(has(&d, &Action::SetWeights(Weights::canary(20))));
}

// ---- manual requests ------------------------------------------------------------------------

#[test]
fn promote_request_opens_the_waiting_gate_once() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-promotion", "approve")]);
    let mut w = progressing_at(s, 50);
    w.gate(HookType::ConfirmPromotion, false);
    assert_eq!(w.after(minute()).status.phase, Phase::WaitingPromotion);
    w.request = Some("promote 1".into());
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Promoting);
    assert!(has(&d, &Action::PromoteToPrimary));
    assert_eq!(d.status.handled_request.as_deref(), Some("promote 1"));
    assert_eq!(d.requeue_after, Some(Duration::zero()));
    // The same request is not applied twice.
    let d = w.tick();
    assert!(!reasons(&d).contains(&Reason::Requested));
}

#[test]
fn promote_request_advances_past_a_closed_traffic_gate() {
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().webhooks = Some(vec![hook("confirm-traffic-increase", "more")]);
    let mut w = progressing_at(s, 20);
    w.gate(HookType::ConfirmTrafficIncrease, false);
    w.after(minute());
    assert_eq!(w.status.canary_weight, 20);
    w.request = Some("promote a".into());
    let d = w.after(Duration::seconds(1));
    assert_eq!(d.status.canary_weight, 30);
    assert_eq!(w.routes, Some(Weights::canary(30)));
}

#[test]
fn promote_full_skips_the_remaining_steps() {
    let mut w = progressing_at(canary_spec(), 10);
    w.request = Some("promote-full x".into());
    let d = w.after(Duration::seconds(3));
    assert_eq!(d.status.phase, Phase::Promoting);
    assert!(has(&d, &Action::PromoteToPrimary));
    w.primary = Some(Readiness::Ready);
    let d = w.after(Duration::seconds(5));
    assert_eq!(d.status.phase, Phase::Finalising);
}

#[test]
fn abort_rolls_back_at_once_and_retry_runs_the_revision_again() {
    let mut w = progressing_at(canary_spec(), 30);
    w.request = Some("abort 1".into());
    let d = w.after(Duration::seconds(2));
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(w.routes, Some(Weights::ALL_PRIMARY));
    assert!(d.actions.iter().any(
        |a| matches!(a, Action::Notify { message, .. } if message == "Rollout aborted by request")
    ));
    let d = w.after(minute());
    assert_eq!(
        d.status.phase,
        Phase::Failed,
        "the aborted revision is not retried by itself"
    );
    w.request = Some("retry 2".into());
    let d = w.after(Duration::seconds(2));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(has(&d, &Action::ScaleTarget(Scale::Up)));
}

#[test]
fn requests_that_do_not_apply_say_so_and_unknown_ones_are_rejected() {
    let mut w = World::initialized(canary_spec());
    w.request = Some("abort 1".into());
    let d = w.after(Duration::seconds(1));
    assert_eq!(d.status.phase, Phase::Initialized);
    assert!(
        d.events[0].message.contains("nothing to do"),
        "{}",
        d.events[0].message
    );
    assert!(d.actions.is_empty());
    w.request = Some("promte 2".into());
    let d = w.after(Duration::seconds(1));
    assert_eq!(reasons(&d), vec![Reason::InvalidRequest]);
    assert!(
        d.events[0]
            .message
            .contains("use promote, promote-full, abort or retry")
    );
}

// ---- Flagger's scheduler scenarios (FB §7.1), re-expressed --------------------------------

fn run_to_end(w: &mut World) -> Vec<(Phase, i32)> {
    let mut out = vec![];
    for _ in 0..200 {
        let d = w.tick();
        if out.last() != Some(&(d.status.phase, d.status.canary_weight)) {
            out.push((d.status.phase, d.status.canary_weight));
        }
        if matches!(d.status.phase, Phase::Succeeded | Phase::Failed) {
            break;
        }
        w.now += d.requeue_after.unwrap_or(minute());
    }
    out
}

#[test]
fn linear_steps_stop_at_max_weight() {
    // Flagger's ServicePromotion: max 50, step 20 gives 20, 40, 60; Serin clamps the last step.
    let mut w = World::initialized(spec(
        "analysis: {interval: 1m, maxWeight: 50, stepWeight: 20}",
    ));
    w.push("rev-2");
    let weights: Vec<i32> = run_to_end(&mut w)
        .into_iter()
        .filter(|(p, _)| *p == Phase::Progressing)
        .map(|(_, w)| w)
        .collect();
    assert_eq!(weights, vec![0, 20, 40, 50]);
    assert_eq!(w.status.phase, Phase::Succeeded);
}

#[test]
fn step_weights_ladder() {
    let mut w = World::initialized(spec(
        "analysis: {interval: 1m, stepWeights: [1, 2, 10, 80]}",
    ));
    w.push("rev-2");
    let weights: Vec<i32> = run_to_end(&mut w)
        .into_iter()
        .filter(|(p, _)| *p == Phase::Progressing)
        .map(|(_, w)| w)
        .collect();
    assert_eq!(weights, vec![0, 1, 2, 10, 80]);
}

#[test]
fn blue_green_runs_iterations_then_switches_all_traffic() {
    // FB §7.1 TestScheduler_DeploymentBlueGreenAnalysisPhases, iterations 2.
    let mut w = World::initialized(spec("analysis: {interval: 1m, iterations: 2}"));
    w.push("rev-2");
    let seen = run_to_end(&mut w);
    assert_eq!(
        seen,
        vec![
            (Phase::Progressing, 0),
            (Phase::Progressing, 100),
            (Phase::Promoting, 100),
            (Phase::Finalising, 0),
            (Phase::Succeeded, 0),
        ]
    );
    let iterations: Vec<String> = w
        .decisions
        .iter()
        .flat_map(|d| d.events.iter())
        .filter(|e| e.reason == Reason::IterationAdvanced)
        .map(|e| e.message.clone())
        .collect();
    assert_eq!(
        iterations,
        vec![
            "Advance podinfo.test canary iteration 1/2",
            "Advance podinfo.test canary iteration 2/2"
        ]
    );
}

#[test]
fn ab_testing_routes_matching_requests_for_n_iterations() {
    let mut w = World::initialized(spec(
        "analysis: {interval: 1m, iterations: 3, match: [{headers: {x-canary: {exact: insider}}}], metrics: [{name: request-success-rate, thresholdRange: {min: 99}}]}",
    ));
    w.push("rev-2");
    let seen = run_to_end(&mut w);
    assert_eq!(
        seen[1],
        (Phase::Progressing, 100),
        "the header route goes to the canary"
    );
    assert_eq!(w.status.phase, Phase::Succeeded);
    let metric_steps = w
        .asked
        .iter()
        .filter(|p| matches!(p, Probe::Metrics(_)))
        .count();
    assert_eq!(metric_steps, 3, "A/B promotes after N analyses");
}

#[test]
fn kubernetes_provider_is_blue_green() {
    let mut s = spec("analysis: {interval: 1m, iterations: 1}");
    s.provider = Some(Provider::Kubernetes);
    let mut w = World::initialized(s);
    w.push("rev-2");
    let seen = run_to_end(&mut w);
    assert_eq!(
        seen,
        vec![
            (Phase::Progressing, 0),
            (Phase::Progressing, 100),
            (Phase::Promoting, 100),
            (Phase::Finalising, 0),
            (Phase::Succeeded, 0),
        ]
    );
    // With stepWeight instead of iterations the spec is invalid, and nothing moves.
    let mut s = spec("analysis: {interval: 1m, stepWeight: 10}");
    s.provider = Some(Provider::Kubernetes);
    let mut w = World::initialized(canary_spec());
    w.spec = s;
    w.push("rev-3");
    let d = w.tick();
    assert_eq!(reasons(&d), vec![Reason::InvalidSpec]);
    assert!(d.actions.is_empty());
}

#[test]
fn rollback_timing_matches_threshold_times_interval() {
    // Threshold 5 at 1m: the canary fails from its first analysis (t = 1m after the first
    // step) and is rolled back at the 5th failed analysis, 5 minutes after the first step.
    let mut s = canary_spec();
    s.analysis.as_mut().unwrap().threshold = Some(5);
    let mut w = World::initialized(s);
    w.fail_metrics();
    w.push("rev-2");
    w.tick();
    w.tick();
    let first_step = w.now;
    let seen = run_to_end(&mut w);
    assert_eq!(seen.last(), Some(&(Phase::Failed, 0)));
    assert_eq!(w.now - first_step, Duration::minutes(5));
}

#[test]
fn same_inputs_give_the_same_decision() {
    let mut w = progressing_at(canary_spec(), 20);
    w.now += minute();
    let a = w.decide_once();
    let b = w.decide_once();
    assert_eq!(a, b);
}

// ---- invariants ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Move {
    Wait(i64),
    MetricPass,
    MetricFail,
    MetricNoData,
    Push(u8),
    Canary(bool),
    Primary(bool),
    Gate(bool),
    Rollback(bool),
}

fn moves() -> impl Gen<Value = Vec<Move>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1i64..180).prop_map(Move::Wait),
            3 => Just(Move::MetricPass),
            2 => Just(Move::MetricFail),
            1 => Just(Move::MetricNoData),
            1 => (0u8..4).prop_map(Move::Push),
            1 => any::<bool>().prop_map(Move::Canary),
            1 => any::<bool>().prop_map(Move::Primary),
            1 => any::<bool>().prop_map(Move::Gate),
            1 => prop::bool::weighted(0.1).prop_map(Move::Rollback),
        ],
        1..120,
    )
}

fn specs() -> impl Gen<Value = CanarySpec> {
    let strategy = prop_oneof![
        (1i32..=100, 1i32..=100).prop_map(|(max, step)| (Some(max), Some(step), None, None)),
        prop::collection::btree_set(1i32..=100, 1..6).prop_map(|s| (
            None,
            None,
            Some(s.into_iter().collect::<Vec<_>>()),
            None
        )),
        (1i32..5).prop_map(|n| (None, None, None, Some(n))),
    ];
    (
        strategy,
        1i32..5,
        any::<bool>(),
        prop::option::of(1i32..60),
        any::<bool>(),
    )
        .prop_map(
            |((max, step, ladder, iterations), threshold, critical, promo, gates)| {
                let mut s = spec("");
                s.progress_deadline_seconds = Some(600);
                s.analysis = Some(CanaryAnalysis {
                    interval: Some("30s".into()),
                    threshold: Some(threshold),
                    max_weight: max,
                    step_weight: step,
                    step_weights: ladder,
                    iterations,
                    step_weight_promotion: promo,
                    metrics: Some(vec![CanaryMetric {
                        name: "request-success-rate".into(),
                        threshold_range: Some(ThresholdRange {
                            min: Some(99.0),
                            max: None,
                        }),
                        critical: Some(critical),
                        ..Default::default()
                    }]),
                    webhooks: gates.then(|| {
                        vec![
                            hook("confirm-rollout", "g1"),
                            hook("confirm-traffic-increase", "g2"),
                            hook("confirm-promotion", "g3"),
                            hook("rollback", "rb"),
                        ]
                    }),
                    ..Default::default()
                });
                s
            },
        )
}

/// Passing analyses the strategy needs before promotion.
fn required_analyses(s: &CanarySpec) -> usize {
    let a = s.analysis();
    match s.strategy() {
        Strategy::BlueGreen => a.iterations() as usize + 1,
        Strategy::AbTesting => a.iterations() as usize,
        Strategy::Canary => {
            let mut w = 0;
            let mut steps = 0;
            while w < a.max_weight() {
                w = next_canary_weight(&a, w);
                steps += 1;
            }
            steps
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_for_any_history(spec in specs(), moves in moves()) {
        let mut w = World::new(spec.clone());
        w.primary = Some(Readiness::Ready);
        w.tick();
        let max = spec.analysis().max_weight();
        let canary_strategy = spec.strategy() == Strategy::Canary;
        let mut passing = 0usize;
        for m in moves {
            match m {
                Move::Wait(s) => w.now += Duration::seconds(s),
                Move::MetricPass => w.pass_metrics(),
                Move::MetricFail => w.fail_metrics(),
                Move::MetricNoData => { w.metrics.insert("request-success-rate".into(), MetricResult::NoData("none".into())); }
                Move::Push(r) => w.push(&format!("rev-{r}")),
                Move::Canary(ok) => w.canary_readiness = if ok { Readiness::Ready } else { Readiness::NotReady("starting".into()) },
                Move::Primary(ok) => w.primary = Some(if ok { Readiness::Ready } else { Readiness::NotReady("rolling".into()) }),
                Move::Gate(ok) => {
                    for k in [HookType::ConfirmRollout, HookType::ConfirmTrafficIncrease, HookType::ConfirmPromotion] {
                        w.gate(k, ok);
                    }
                }
                Move::Rollback(ok) => w.gate(HookType::Rollback, ok),
            }
            let asked_before = w.asked.len();
            let before = w.status.clone();
            let observed = w.observed();
            let d = w.tick();
            let asked_after = w.asked.len();
            // Same inputs, same decision.
            w.status = before.clone();
            let again = w.decide_from(&observed);
            prop_assert_eq!(&again, &d);
            w.status = d.status.clone();
            w.asked.truncate(asked_after);

            for a in &d.actions {
                if let Action::SetWeights(x) = a {
                    prop_assert_eq!(x.primary + x.canary, 100);
                    if canary_strategy && d.status.phase == Phase::Progressing {
                        prop_assert!(x.canary <= max, "weight {} above maxWeight {}", x.canary, max);
                    }
                }
            }
            if canary_strategy {
                prop_assert!(d.status.canary_weight <= max);
            }
            if d.status.phase == Phase::Failed {
                prop_assert_eq!(d.status.canary_weight, 0);
                prop_assert!(w.routes.is_none_or(|r| r == Weights::ALL_PRIMARY));
            }
            // Passing full analyses of the current run.
            if d.events.iter().any(|e| e.reason == Reason::Restarted
                || (e.reason == Reason::NewRevision && e.message.starts_with("New revision")))
            {
                passing = 0;
            }
            let analysed = w.asked[asked_before..].iter().any(|p| matches!(p, Probe::Metrics(_)))
                && before.last_analysis_time.is_none_or(|t| w.now >= t + spec.analysis().interval())
                && d.status.failed_checks == before.failed_checks
                && !d.status.metrics.is_empty()
                && d.status.metrics.iter().all(|m| m.time == w.now && m.verdict == crate::api::Verdict::Pass);
            if analysed {
                passing += 1;
            }
            if d.actions.contains(&Action::PromoteToPrimary) && !spec.skip_analysis() {
                prop_assert!(passing >= required_analyses(&spec),
                    "promoted after {} passing analyses, {} required", passing, required_analyses(&spec));
            }
        }
    }
}
