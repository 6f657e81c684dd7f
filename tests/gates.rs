//! Manual gates end to end: the real decision engine, driven in virtual time by a small loop
//! that answers webhook probes with `Hooks::run` against a real `serin loadtester` process, and
//! metric probes with passing values. No Kubernetes: the loop applies the decisions' actions to
//! an in-memory world.

#[path = "support/http.rs"]
mod http;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use http::{Loadtester, TestServer, canary};
use serde_json::{Value, json};
use serin::api::{Canary, CanaryStatus, Phase};
use serin::engine::{
    Action, Decision, Event, Input, MetricResult, Observed, Outcome, Probe, ProbeResults,
    Readiness, Reason, Scale, TargetState, Weights, decide,
};
use serin::hooks::{Hooks, payload_phase};

/// An in-memory cluster the engine drives.
struct World {
    canary: Canary,
    hooks: Hooks,
    status: CanaryStatus,
    now: DateTime<Utc>,
    revision: String,
    canary_up: bool,
    primary: Option<Readiness>,
    routes: Option<Weights>,
    events: Vec<Event>,
    alerts: Vec<String>,
}

impl World {
    fn new(canary: Canary) -> World {
        World {
            canary,
            hooks: Hooks::new().expect("hooks"),
            status: CanaryStatus::default(),
            now: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("time"),
            revision: "rev-1".into(),
            canary_up: false,
            primary: None,
            routes: None,
            events: Vec::new(),
            alerts: Vec::new(),
        }
    }

    /// Ticks until the primary serves all traffic, then pushes a new revision.
    async fn initialized_then_pushed(canary: Canary) -> World {
        let mut w = World::new(canary);
        w.until(|w| w.status.phase == Phase::Initialized, 10).await;
        w.revision = "rev-2".into();
        w.events.clear();
        w.alerts.clear();
        w
    }

    fn observed(&self) -> Observed {
        Observed {
            generation: Some(1),
            target: Some(TargetState {
                revision: self.revision.clone(),
                tracked_configs: BTreeMap::new(),
                readiness: if self.canary_up {
                    Readiness::Ready
                } else {
                    Readiness::NotReady("scaled to zero".into())
                },
            }),
            primary: self.primary.clone(),
            routes: self.routes,
        }
    }

    /// One reconcile: probes answered for real, then the decision applied.
    async fn tick(&mut self) -> Decision {
        let observed = self.observed();
        let mut probes = ProbeResults::default();
        for _ in 0..10 {
            let input = Input {
                name: "podinfo",
                namespace: "test",
                spec: &self.canary.spec,
                status: &self.status,
                observed: &observed,
                probes: &probes,
                request: None,
                now: self.now,
            };
            match decide(&input) {
                Outcome::Decided(d) => {
                    self.apply(&d).await;
                    return *d;
                }
                Outcome::Need(list) => {
                    for probe in list {
                        match probe {
                            Probe::Hooks(kind) => {
                                let mut c = self.canary.clone();
                                c.status = Some(self.status.clone());
                                let phase = payload_phase(kind, self.status.phase);
                                let result = self.hooks.run(&c, kind, phase).await;
                                probes.hooks.insert(kind, result);
                            }
                            Probe::Metrics(names) => {
                                for n in names {
                                    probes.metrics.insert(n, MetricResult::Value(100.0));
                                }
                            }
                        }
                    }
                }
            }
        }
        panic!("the engine kept asking for probes");
    }

    async fn apply(&mut self, d: &Decision) {
        self.status = d.status.clone();
        for action in &d.actions {
            match action {
                Action::EnsurePrimary => self.primary = Some(Readiness::Ready),
                Action::EnsureRoutes => {
                    self.routes.get_or_insert(Weights::ALL_PRIMARY);
                }
                Action::SetWeights(w) => self.routes = Some(*w),
                Action::ScaleTarget(Scale::Up) => self.canary_up = true,
                Action::ScaleTarget(Scale::Zero) => self.canary_up = false,
                Action::PromoteToPrimary => {}
                Action::RunHooks { kind, phase } => {
                    let mut c = self.canary.clone();
                    c.status = Some(self.status.clone());
                    let failed = self.hooks.run_all(&c, *kind, *phase).await;
                    self.events.extend(failed);
                }
                Action::Notify { message, .. } => self.alerts.push(message.clone()),
            }
        }
        self.events.extend(d.events.iter().cloned());
        let wait = d.requeue_after.unwrap_or(Duration::minutes(1));
        self.now += wait.max(Duration::seconds(1));
    }

    async fn until(&mut self, done: impl Fn(&World) -> bool, max_ticks: usize) {
        for _ in 0..max_ticks {
            if done(self) {
                return;
            }
            self.tick().await;
        }
        assert!(
            done(self),
            "condition not reached after {max_ticks} ticks; phase {}, events: {:#?}",
            self.status.phase,
            self.events
        );
    }

    fn events_with(&self, reason: Reason) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.message.as_str())
            .collect()
    }
}

fn analysis(webhooks: Value) -> Value {
    json!({
        "interval": "1m",
        "threshold": 2,
        "maxWeight": 50,
        "stepWeight": 25,
        "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "1m"}],
        "webhooks": webhooks,
    })
}

fn podinfo() -> Value {
    json!({"name": "podinfo", "namespace": "test"})
}

#[tokio::test]
async fn a_closed_confirm_rollout_gate_holds_the_canary_until_opened() {
    let lt = Loadtester::start(&[]);
    let c = canary(analysis(json!([
        {"type": "confirm-rollout", "name": "approve", "url": lt.url("/gate/check")}
    ])));
    let mut w = World::initialized_then_pushed(c).await;
    for _ in 0..3 {
        w.tick().await;
        assert_eq!(w.status.phase, Phase::Waiting);
        assert!(
            !w.canary_up,
            "the canary is not scaled up while the gate is closed"
        );
    }
    assert_eq!(
        w.events_with(Reason::WaitingForApproval),
        ["Halt podinfo.test advancement waiting for approval approve"],
        "told once per wait"
    );
    assert_eq!(w.alerts, ["Canary is waiting for approval."]);

    assert_eq!(
        lt.post("/gate/open", podinfo()).await,
        (202, "Gate opened".into())
    );
    w.tick().await;
    assert_eq!(w.status.phase, Phase::Progressing);
    assert!(w.canary_up);
    w.until(|w| w.status.phase == Phase::Succeeded, 30).await;
}

#[tokio::test]
async fn a_closed_confirm_promotion_gate_holds_in_waiting_promotion_with_checks_running() {
    let lt = Loadtester::start(&[]);
    let c = canary(analysis(json!([
        {"type": "confirm-promotion", "name": "release-manager", "url": lt.url("/gate/check")}
    ])));
    let mut w = World::initialized_then_pushed(c).await;
    w.until(|w| w.status.phase == Phase::WaitingPromotion, 20)
        .await;
    assert_eq!(w.routes, Some(Weights::canary(50)), "held at maxWeight");
    assert_eq!(
        w.events_with(Reason::WaitingForApproval),
        ["Halt podinfo.test advancement waiting for promotion approval release-manager"]
    );
    for _ in 0..2 {
        let before = w.now;
        w.tick().await;
        assert_eq!(w.status.phase, Phase::WaitingPromotion);
        let checked = w.status.metrics.first().map(|m| m.time);
        assert!(
            checked.is_some_and(|t| t >= before),
            "metrics keep being checked while the gate is closed"
        );
    }
    assert_eq!(lt.post("/gate/open", podinfo()).await.0, 202);
    w.until(|w| w.status.phase == Phase::Succeeded, 20).await;
    assert_eq!(w.routes, Some(Weights::ALL_PRIMARY));
}

#[tokio::test]
async fn opening_the_rollback_gate_mid_analysis_rolls_back() {
    let lt = Loadtester::start(&[]);
    let c = canary(analysis(json!([
        {"type": "rollback", "name": "on-call", "url": lt.url("/rollback/check")}
    ])));
    let mut w = World::initialized_then_pushed(c).await;
    w.until(|w| w.status.canary_weight == 25, 10).await;
    w.tick().await;
    assert_eq!(
        w.status.phase,
        Phase::Progressing,
        "a closed rollback gate changes nothing"
    );
    assert_eq!(w.status.canary_weight, 50);

    assert_eq!(
        lt.post("/rollback/open", podinfo()).await,
        (202, "Rollback gate opened".into())
    );
    w.tick().await;
    assert_eq!(w.status.phase, Phase::Failed);
    assert_eq!(w.routes, Some(Weights::ALL_PRIMARY));
    assert!(!w.canary_up, "the canary is scaled to zero");
    assert_eq!(
        w.events_with(Reason::RollbackRequested),
        ["Rolling back podinfo.test manual webhook invoked (on-call)"]
    );
}

#[tokio::test]
async fn a_failing_pre_rollout_acceptance_test_counts_as_a_failed_check() {
    let lt = Loadtester::start(&[]);
    let backend = TestServer::answering(500).await;
    let c = canary(analysis(json!([
        {"type": "pre-rollout", "name": "acceptance", "url": lt.url("/"), "timeout": "30s",
         "metadata": {"type": "load", "url": backend.url("/"), "rps": "20", "duration": "1s",
                      "minSuccessRate": "99"}}
    ])));
    let mut w = World::initialized_then_pushed(c).await;
    w.until(|w| w.status.failed_checks == 1, 10).await;
    assert_eq!(w.status.phase, Phase::Progressing);
    assert_eq!(
        w.status.canary_weight, 0,
        "no traffic before the pre-rollout check passes"
    );
    let failed = w.events_with(Reason::CheckFailed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with(
            "Halt podinfo.test advancement pre-rollout check acceptance failed answered 412: load test missed its thresholds: success rate 0.00% is below minSuccessRate 99%"
        ),
        "{}",
        failed[0]
    );
    w.until(|w| w.status.phase == Phase::Failed, 5).await;
    assert_eq!(w.status.failed_checks, 2, "rolled back at the threshold");
    assert!(
        !backend.requests().is_empty(),
        "the load test reached the backend"
    );
}
