//! The decision engine: a pure state machine from (spec, status, observations, probe results,
//! now) to the next status, actions, Events and requeue time. No I/O, no clock.
//!
//! One call of [`decide`] either asks for probes it needs (webhooks of a type, metric queries)
//! or decides. The shell runs the probes, adds their answers and calls again with the same
//! inputs, so the probes run are exactly the ones the state machine reaches, in its order.

mod steps;
mod types;

use chrono::{DateTime, Duration, Utc};

pub use steps::{next_canary_weight, next_promotion_weight};
pub use types::*;

use crate::analysis::{self, Judgement};
use crate::api::{
    CONDITION_PROMOTED, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, CanaryAnalysis,
    CanaryStatus, HookType, MetricStatus, Phase, Provider, RouterKind, Severity, Strategy, Verdict,
    validate_canary,
};

/// How soon to look again while waiting on pods.
pub const READINESS_POLL: Duration = Duration::seconds(5);

/// Decides what to do now, or which probes to run first.
pub fn decide(input: &Input<'_>) -> Outcome {
    let mut run = Run::new(input);
    match run.step() {
        Ok(()) => Outcome::Decided(Box::new(run.finish())),
        Err(Pending(probes)) => Outcome::Need(probes),
    }
}

/// Probes still to run before the decision can be made.
struct Pending(Vec<Probe>);

type Step = Result<(), Pending>;

struct Run<'a> {
    input: &'a Input<'a>,
    analysis: std::borrow::Cow<'a, CanaryAnalysis>,
    status: CanaryStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<Duration>,
    /// Reconciling/Stalled override for problems outside the phase (invalid spec, no target).
    stalled: Option<(String, String)>,
}

impl<'a> Run<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        Run {
            input,
            analysis: input.spec.analysis(),
            status: input.status.clone(),
            actions: Vec::new(),
            events: Vec::new(),
            requeue: None,
            stalled: None,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }

    /// `name.namespace`, as messages name the Canary.
    fn id(&self) -> String {
        format!("{}.{}", self.input.name, self.input.namespace)
    }

    /// `target.namespace`.
    fn target_id(&self) -> String {
        format!(
            "{}.{}",
            self.input.spec.target_ref.name, self.input.namespace
        )
    }

    fn event(&mut self, type_: EventType, reason: Reason, message: impl Into<String>) {
        self.events.push(Event {
            type_,
            reason,
            message: message.into(),
        });
    }

    fn notify(&mut self, severity: Severity, message: impl Into<String>) {
        self.actions.push(Action::Notify {
            severity,
            message: message.into(),
        });
    }

    fn requeue_in(&mut self, d: Duration) {
        let d = d.max(Duration::zero());
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.status.phase != phase {
            self.status.phase = phase;
            self.status.last_transition_time = Some(self.now());
        }
    }

    fn set_weights(&mut self, w: Weights) {
        self.actions.push(Action::SetWeights(w));
        self.status.canary_weight = w.canary;
    }

    fn finish(mut self) -> Decision {
        self.status.observed_generation = self.input.observed.generation;
        self.set_conditions();
        Decision {
            status: self.status,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue,
        }
    }

    // ---- probes -------------------------------------------------------------------------

    /// The result of the webhooks of `kind`; passes when there are none.
    fn hooks(&self, kind: HookType) -> Result<HookResult, Pending> {
        if self.analysis.hooks_of(kind).next().is_none() {
            return Ok(HookResult::quiet(kind));
        }
        match self.input.probes.hooks.get(&kind) {
            Some(r) => Ok(r.clone()),
            None => Err(Pending(vec![Probe::Hooks(kind)])),
        }
    }

    /// Names of the hooks of `kind`, for messages.
    fn hook_names(&self, kind: HookType) -> String {
        self.analysis
            .hooks_of(kind)
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn hook_muted(&self, kind: HookType, name: &str) -> bool {
        self.analysis
            .hooks_of(kind)
            .any(|h| h.name == name && h.mute_alert == Some(true))
    }

    /// Judgements of the metrics selected by `critical_only`, in spec order.
    fn metrics(&self, critical_only: bool) -> Result<Vec<(String, bool, Judgement)>, Pending> {
        let selected: Vec<_> = self
            .analysis
            .metrics()
            .iter()
            .filter(|m| !critical_only || m.critical())
            .collect();
        let missing: Vec<String> = selected
            .iter()
            .filter(|m| !self.input.probes.metrics.contains_key(&m.name))
            .map(|m| m.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(Pending(vec![Probe::Metrics(missing)]));
        }
        Ok(selected
            .into_iter()
            .filter_map(|m| {
                let r = self.input.probes.metrics.get(&m.name)?;
                Some((m.name.clone(), m.critical(), analysis::judge(m, r)))
            })
            .collect())
    }

    fn record_metrics(&mut self, judged: &[(String, bool, Judgement)]) {
        let now = self.now();
        for (name, _, j) in judged {
            let entry = MetricStatus {
                name: name.clone(),
                value: j.value,
                verdict: j.verdict,
                message: j.message.clone(),
                time: now,
            };
            match self.status.metrics.iter_mut().find(|m| &m.name == name) {
                Some(m) => *m = entry,
                None => self.status.metrics.push(entry),
            }
        }
    }

    // ---- waiting and the progress deadline ------------------------------------------------

    /// Marks the rollout as waiting on `what`; returns true when this wait just began. Waits
    /// are told apart by the text before the first ':', so details may change without
    /// restarting the deadline.
    fn wait(&mut self, what: &str) -> bool {
        let key = |s: &str| s.split(':').next().unwrap_or("").to_string();
        let same = self
            .status
            .waiting_for
            .as_deref()
            .is_some_and(|w| key(w) == key(what));
        self.status.waiting_for = Some(what.to_string());
        if same && self.status.waiting_since.is_some() {
            return false;
        }
        self.status.waiting_since = Some(self.now());
        true
    }

    fn clear_wait(&mut self) {
        self.status.waiting_for = None;
        self.status.waiting_since = None;
    }

    /// How long is left of the progress deadline for the current wait.
    fn deadline_left(&self) -> Option<Duration> {
        let since = self.status.waiting_since?;
        Some(since + self.input.spec.progress_deadline() - self.now())
    }

    fn deadline_passed(&self) -> bool {
        self.deadline_left().is_some_and(|d| d <= Duration::zero())
    }

    /// Schedules a look after `poll`, but no later than the deadline.
    fn poll(&mut self, poll: Duration) {
        let d = match self.deadline_left() {
            Some(left) => poll.min(left),
            None => poll,
        };
        self.requeue_in(d);
    }

    // ---- the state machine ----------------------------------------------------------------

    fn step(&mut self) -> Step {
        let spec = self.input.spec;
        let errors = validate_canary(spec);
        if !errors.is_empty() {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            self.stall(
                Reason::InvalidSpec,
                format!("invalid Canary, traffic left as it is: {message}"),
            );
            return Ok(());
        }
        let was_suspended = self
            .status
            .condition(CONDITION_RECONCILING)
            .is_some_and(|c| c.reason == "Suspended");
        if spec.suspended() {
            if !was_suspended {
                self.event(
                    EventType::Normal,
                    Reason::Suspended,
                    format!("Skipping {}: the Canary is suspended", self.id()),
                );
            }
            return Ok(());
        }
        if was_suspended {
            self.event(
                EventType::Normal,
                Reason::Resumed,
                format!("Resuming {}", self.id()),
            );
        }
        if self.input.observed.target.is_none() {
            self.stall(
                Reason::TargetNotFound,
                format!(
                    "Deployment {} not found; create it or fix spec.targetRef.name",
                    self.target_id()
                ),
            );
            self.requeue_in(self.analysis.interval());
            return Ok(());
        }
        self.check_routes();
        if let Some(request) = self.input.request
            && self.status.handled_request.as_deref() != Some(request)
        {
            self.status.handled_request = Some(request.to_string());
            self.requeue_in(Duration::zero());
            return self.handle_request(request);
        }
        match self.status.phase {
            Phase::Initializing => self.initialize(),
            Phase::Initialized | Phase::Succeeded | Phase::Failed => self.idle(),
            Phase::Waiting => self.waiting(),
            Phase::Progressing | Phase::WaitingPromotion => self.analyse(),
            Phase::Promoting => self.promote(),
            Phase::Finalising => self.finalise(),
            Phase::Terminating => Ok(()),
        }
    }

    /// A manual request (`promote`, `promote-full`, `abort`, `retry`), carried out once.
    fn handle_request(&mut self, request: &str) -> Step {
        let verb = request.split_whitespace().next().unwrap_or("");
        let id = self.id();
        let phase = self.status.phase;
        let nothing = |what: &str| format!("{what} requested for {id}, but {phase}: nothing to do");
        match verb {
            "promote" => match phase {
                Phase::Waiting => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Promote requested: starting {id} without approval"),
                    );
                    self.begin_run()
                }
                Phase::WaitingPromotion => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Promote requested: promoting {id} without approval"),
                    );
                    self.begin_promotion()
                }
                Phase::Progressing
                    if self
                        .status
                        .waiting_for
                        .as_deref()
                        .is_some_and(|w| w.starts_with("traffic increase approval")) =>
                {
                    let next = next_canary_weight(&self.analysis, self.status.canary_weight);
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Promote requested: advancing {id} without approval"),
                    );
                    self.clear_wait();
                    self.set_weights(Weights::canary(next));
                    self.status.last_analysis_time = Some(self.now());
                    self.event(
                        EventType::Normal,
                        Reason::WeightAdvanced,
                        format!("Advance {id} canary weight {next}"),
                    );
                    Ok(())
                }
                _ => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("{}; no gate is waiting", nothing("Promote")),
                    );
                    Ok(())
                }
            },
            "promote-full" => match phase {
                Phase::Progressing | Phase::WaitingPromotion => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Full promotion requested: skipping the remaining steps of {id}"),
                    );
                    self.begin_promotion()
                }
                Phase::Waiting => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Full promotion requested for {id}, but the run has not started: request promote first"),
                    );
                    Ok(())
                }
                _ => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        nothing("Full promotion"),
                    );
                    Ok(())
                }
            },
            "abort" => match phase {
                Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion => {
                    self.event(
                        EventType::Warning,
                        Reason::Requested,
                        format!("Abort requested: rolling back {id}"),
                    );
                    self.rollback("Rollout aborted by request".into())
                }
                Phase::Promoting | Phase::Finalising => {
                    self.event(
                        EventType::Warning,
                        Reason::Requested,
                        format!("Abort requested for {id}, but the promotion is under way; revert the target to roll back"),
                    );
                    Ok(())
                }
                _ => {
                    self.event(EventType::Normal, Reason::Requested, nothing("Abort"));
                    Ok(())
                }
            },
            "retry" => match phase {
                Phase::Failed => {
                    self.event(
                        EventType::Normal,
                        Reason::Requested,
                        format!("Retry requested: running {id} again"),
                    );
                    self.status.last_applied_spec = None;
                    self.idle()
                }
                _ => {
                    self.event(EventType::Normal, Reason::Requested, nothing("Retry"));
                    Ok(())
                }
            },
            other => {
                self.event(
                    EventType::Warning,
                    Reason::InvalidRequest,
                    format!(
                        "Unknown request '{other}' in annotation {}: use promote, promote-full, abort or retry",
                        crate::api::REQUEST_ANNOTATION
                    ),
                );
                Ok(())
            }
        }
    }

    /// Records a problem that stops reconciliation until the user acts, once per message.
    fn stall(&mut self, reason: Reason, message: String) {
        let same = self
            .status
            .condition(CONDITION_STALLED)
            .is_some_and(|c| c.status == "True" && c.message == message);
        if !same {
            self.event(EventType::Warning, reason, message.clone());
        }
        self.stalled = Some((reason.as_str().to_string(), message));
    }

    fn target(&self) -> &TargetState {
        // step() returns before any phase handler when the target is missing.
        self.input
            .observed
            .target
            .as_ref()
            .unwrap_or(&MISSING_TARGET)
    }

    /// The weights the routes must have for the current status.
    fn expected_routes(&self) -> Option<Weights> {
        match self.status.phase {
            Phase::Initializing | Phase::Terminating => None,
            _ => Some(Weights::canary(self.status.canary_weight)),
        }
    }

    /// Rewrites routes that were read back with other weights than Serin wrote.
    fn check_routes(&mut self) {
        let (Some(expected), Some(seen)) = (self.expected_routes(), self.input.observed.routes)
        else {
            return;
        };
        if seen != expected {
            self.event(
                EventType::Warning,
                Reason::RouteMismatch,
                format!(
                    "Routes of {} read back as primary {} / canary {}, expected {} / {}; writing them again",
                    self.id(),
                    seen.primary,
                    seen.canary,
                    expected.primary,
                    expected.canary
                ),
            );
            self.actions.push(Action::SetWeights(expected));
            self.requeue_in(READINESS_POLL);
        }
    }

    fn initialize(&mut self) -> Step {
        if self.status.conditions.is_empty() {
            self.event(
                EventType::Normal,
                Reason::Initializing,
                format!(
                    "New Deployment {} detected, starting initialization",
                    self.target_id()
                ),
            );
        }
        self.actions.push(Action::EnsureRoutes);
        self.actions.push(Action::EnsurePrimary);
        let primary = self.input.observed.primary.clone();
        let ready = match primary {
            Some(Readiness::Ready) => true,
            _ if self.input.spec.skip_analysis() && primary.is_some() => true,
            Some(Readiness::Stuck(msg)) => {
                self.stall(
                    Reason::ProgressDeadlineExceeded,
                    format!(
                        "{}-primary.{} not ready: {msg}",
                        self.input.spec.target_ref.name, self.input.namespace
                    ),
                );
                self.requeue_in(self.analysis.interval());
                false
            }
            Some(Readiness::NotReady(msg)) => {
                self.wait(&format!("primary: {msg}"));
                self.requeue_in(READINESS_POLL);
                false
            }
            None => {
                self.requeue_in(READINESS_POLL);
                false
            }
        };
        if !ready {
            return Ok(());
        }
        let target = self.target().clone();
        self.actions.push(Action::ScaleTarget(Scale::Zero));
        self.status.last_applied_spec = Some(target.revision.clone());
        self.status.last_promoted_spec = Some(target.revision);
        self.status.tracked_configs = Some(target.tracked_configs);
        self.status.canary_weight = 0;
        self.status.failed_checks = 0;
        self.status.iterations = 0;
        self.clear_wait();
        self.set_phase(Phase::Initialized);
        self.event(
            EventType::Normal,
            Reason::Initialized,
            format!("Initialization done! {}", self.id()),
        );
        self.notify(
            Severity::Info,
            "New Deployment detected, initialization completed.",
        );
        Ok(())
    }

    /// Initialized, Succeeded or Failed: start a run when the target has a new revision.
    fn idle(&mut self) -> Step {
        let revision = self.target().revision.clone();
        if self.status.last_promoted_spec.as_deref() == Some(revision.as_str()) {
            // Reverting the target to the primary's revision starts nothing.
            self.status.last_applied_spec = Some(revision);
            self.requeue_in(self.analysis.interval());
            return Ok(());
        }
        if self.status.last_applied_spec.as_deref() == Some(revision.as_str()) {
            // Unchanged, or the revision that failed: not retried until it changes.
            self.requeue_in(self.analysis.interval());
            return Ok(());
        }
        self.confirm_rollout()
    }

    /// Asks the confirm-rollout gate; starts the run when it is open.
    fn confirm_rollout(&mut self) -> Step {
        let gate = self.hooks(HookType::ConfirmRollout)?;
        self.status.last_analysis_time = Some(self.now());
        if gate.ok {
            return self.begin_run();
        }
        self.set_phase(Phase::Waiting);
        if self.wait("approval") {
            self.event(
                EventType::Warning,
                Reason::WaitingForApproval,
                format!(
                    "Halt {} advancement waiting for approval {}",
                    self.id(),
                    gate.hook
                ),
            );
            if !self.hook_muted(HookType::ConfirmRollout, &gate.hook) {
                self.notify(Severity::Warn, "Canary is waiting for approval.");
            }
        }
        if self.deadline_passed() {
            return self.rollback(format!(
                "Progress deadline exceeded: waited {} for approval by {}",
                crate::api::duration::format(self.input.spec.progress_deadline()),
                gate.hook
            ));
        }
        self.poll(self.analysis.interval());
        Ok(())
    }

    fn begin_run(&mut self) -> Step {
        let target = self.target().clone();
        self.event(
            EventType::Normal,
            Reason::NewRevision,
            format!("New revision detected! Scaling up {}", self.target_id()),
        );
        self.notify(
            Severity::Info,
            "New revision detected, progressing canary analysis.",
        );
        self.actions.push(Action::ScaleTarget(Scale::Up));
        self.reset_run(target);
        self.requeue_in(READINESS_POLL);
        Ok(())
    }

    /// Status of a fresh run of the target's current revision.
    fn reset_run(&mut self, target: TargetState) {
        self.set_phase(Phase::Progressing);
        self.status.last_applied_spec = Some(target.revision);
        self.status.tracked_configs = Some(target.tracked_configs);
        self.status.canary_weight = 0;
        self.status.failed_checks = 0;
        self.status.iterations = 0;
        self.status.last_analysis_time = None;
        self.status.last_fail_fast_time = None;
        self.status.metrics.clear();
        self.clear_wait();
    }

    fn waiting(&mut self) -> Step {
        let revision = self.target().revision.clone();
        if self.status.last_promoted_spec.as_deref() == Some(revision.as_str()) {
            self.status.last_applied_spec = Some(revision);
            self.clear_wait();
            self.set_phase(Phase::Initialized);
            self.event(
                EventType::Normal,
                Reason::Reverted,
                format!(
                    "{} was reverted to the promoted revision; nothing to roll out",
                    self.target_id()
                ),
            );
            return Ok(());
        }
        if !self.due(self.analysis.interval()) && !self.deadline_passed() {
            self.poll(self.until_due(self.analysis.interval()));
            return Ok(());
        }
        self.confirm_rollout()
    }

    /// True when the last step is at least `every` ago (or there was none).
    fn due(&self, every: Duration) -> bool {
        self.status
            .last_analysis_time
            .is_none_or(|t| self.now() >= t + every)
    }

    fn until_due(&self, every: Duration) -> Duration {
        self.status
            .last_analysis_time
            .map_or(Duration::zero(), |t| t + every - self.now())
    }

    fn fail_fast_due(&self) -> bool {
        let every = self.analysis.fail_fast_interval();
        let last = match (
            self.status.last_fail_fast_time,
            self.status.last_analysis_time,
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        last.is_some_and(|t| self.now() >= t + every)
    }

    fn has_critical(&self) -> bool {
        self.analysis.metrics().iter().any(|m| m.critical())
    }

    /// Progressing or WaitingPromotion.
    fn analyse(&mut self) -> Step {
        let target = self.target().clone();
        if self.status.last_promoted_spec.as_deref() == Some(target.revision.as_str()) {
            self.set_weights(Weights::ALL_PRIMARY);
            self.actions.push(Action::ScaleTarget(Scale::Zero));
            self.status.last_applied_spec = Some(target.revision);
            self.clear_wait();
            self.set_phase(Phase::Initialized);
            self.event(
                EventType::Normal,
                Reason::Reverted,
                format!(
                    "{} was reverted to the promoted revision; analysis cancelled, all traffic on the primary",
                    self.target_id()
                ),
            );
            return Ok(());
        }
        if self.status.last_applied_spec.as_deref() != Some(target.revision.as_str()) {
            self.event(
                EventType::Normal,
                Reason::Restarted,
                format!(
                    "New revision detected! Restarting analysis for {}",
                    self.target_id()
                ),
            );
            self.set_weights(Weights::ALL_PRIMARY);
            self.reset_run(target);
            self.requeue_in(READINESS_POLL);
            return Ok(());
        }
        if !self.pods_ready(&target.readiness)? {
            return Ok(());
        }
        if self.input.spec.skip_analysis() {
            return self.promote_without_analysis();
        }
        let interval = self.analysis.interval();
        if self.gate_wait_expired() {
            let what = self.status.waiting_for.clone().unwrap_or_default();
            return self.rollback(format!("Progress deadline exceeded waiting for {what}"));
        }
        let start = self.status.phase == Phase::Progressing
            && self.status.canary_weight == 0
            && self.status.iterations == 0;
        let first = start && self.status.last_analysis_time.is_none();
        if !first && !self.due(interval) {
            if self.has_critical() && self.fail_fast_due() {
                return self.fail_fast();
            }
            self.schedule_analysis();
            return Ok(());
        }
        self.analysis_step(start)
    }

    /// Next call: the next step, or the next critical-metric check, whichever is sooner.
    fn schedule_analysis(&mut self) {
        let interval = self.analysis.interval();
        let mut next = self.until_due(interval);
        if self.has_critical() {
            let ffi = self.analysis.fail_fast_interval();
            let last = self
                .status
                .last_fail_fast_time
                .into_iter()
                .chain(self.status.last_analysis_time)
                .max();
            if let Some(t) = last {
                next = next.min(t + ffi - self.now());
            }
        }
        self.poll(next);
    }

    /// Waits for canary and primary pods; rolls back when they miss the progress deadline.
    fn pods_ready(&mut self, canary: &Readiness) -> Result<bool, Pending> {
        let primary = self
            .input
            .observed
            .primary
            .clone()
            .unwrap_or_else(|| Readiness::NotReady("primary Deployment does not exist".into()));
        let target = self.input.spec.target_ref.name.clone();
        let ns = self.input.namespace.to_string();
        let problem = match (canary, &primary) {
            (Readiness::Stuck(m), _) => Some((
                true,
                format!("canary deployment {target}.{ns} not ready: {m}"),
            )),
            (_, Readiness::Stuck(m)) => {
                Some((true, format!("{target}-primary.{ns} not ready: {m}")))
            }
            (Readiness::NotReady(m), _) => Some((
                false,
                format!("canary deployment {target}.{ns} not ready: {m}"),
            )),
            (_, Readiness::NotReady(m)) => {
                Some((false, format!("{target}-primary.{ns} not ready: {m}")))
            }
            _ => None,
        };
        let Some((stuck, message)) = problem else {
            if self
                .status
                .waiting_for
                .as_deref()
                .is_some_and(|w| w.starts_with("pods"))
            {
                self.clear_wait();
            }
            return Ok(true);
        };
        if self.wait(&format!("pods: {message}")) {
            self.event(EventType::Warning, Reason::Waiting, message.clone());
        }
        if stuck || self.deadline_passed() {
            self.event(
                EventType::Warning,
                Reason::ProgressDeadlineExceeded,
                format!(
                    "Rolling back {} progress deadline exceeded: {message}",
                    self.id()
                ),
            );
            self.rollback(format!("Progress deadline exceeded: {message}"))?;
            return Ok(false);
        }
        self.poll(READINESS_POLL);
        Ok(false)
    }

    /// Critical metrics only, between steps: a breach rolls back at once.
    fn fail_fast(&mut self) -> Step {
        let judged = self.metrics(true)?;
        self.status.last_fail_fast_time = Some(self.now());
        self.record_metrics(&judged);
        // Only a measured breach rolls back between steps; no data and query errors are left to
        // the next full step, where onNoData and the threshold apply.
        if let Some((name, _, j)) = judged
            .iter()
            .find(|(_, _, j)| j.verdict == Verdict::Fail && j.value.is_some())
        {
            let msg = format!("Halt {} advancement {}", self.id(), j.message);
            self.event(EventType::Warning, Reason::CheckFailed, msg);
            self.status.failed_checks += 1;
            return self.rollback(format!("Critical metric {name} failed: {}", j.message));
        }
        self.schedule_analysis();
        Ok(())
    }

    /// One analysis step: rollback hooks, then pre-rollout hooks (first step) or rollout
    /// hooks and metrics, then the strategy's next move.
    fn analysis_step(&mut self, start: bool) -> Step {
        let rollback = self.hooks(HookType::Rollback)?;
        if rollback.ok {
            self.event(
                EventType::Warning,
                Reason::RollbackRequested,
                format!(
                    "Rolling back {} manual webhook invoked ({})",
                    self.id(),
                    rollback.hook
                ),
            );
            return self.rollback("Rolling back manual webhook invoked".into());
        }
        if start {
            self.event(
                EventType::Normal,
                Reason::NewRevision,
                format!("Starting canary analysis for {}", self.target_id()),
            );
            let pre = self.hooks(HookType::PreRollout)?;
            if !pre.ok {
                return self.failed_check(format!(
                    "Halt {} advancement pre-rollout check {} failed {}",
                    self.id(),
                    pre.hook,
                    pre.message
                ));
            }
            if self
                .analysis
                .hooks_of(HookType::PreRollout)
                .next()
                .is_some()
            {
                self.event(
                    EventType::Normal,
                    Reason::PreRolloutPassed,
                    format!(
                        "Pre-rollout check {} passed",
                        self.hook_names(HookType::PreRollout)
                    ),
                );
            }
        } else {
            let rollout = self.hooks(HookType::Rollout)?;
            if !rollout.ok {
                return self.failed_check(format!(
                    "Halt {} advancement external check {} failed {}",
                    self.id(),
                    rollout.hook,
                    rollout.message
                ));
            }
            let judged = self.metrics(false)?;
            self.record_metrics(&judged);
            self.status.last_fail_fast_time = Some(self.now());
            let id = self.id();
            let mut failed = false;
            let mut critical_failure = None;
            for (name, critical, j) in &judged {
                match j.verdict {
                    Verdict::Pass => {}
                    Verdict::Hold => {}
                    Verdict::Fail | Verdict::Error => {
                        failed = true;
                        self.event(
                            EventType::Warning,
                            Reason::CheckFailed,
                            format!("Halt {id} advancement {}", j.message),
                        );
                        if *critical
                            && j.verdict == Verdict::Fail
                            && j.value.is_some()
                            && critical_failure.is_none()
                        {
                            critical_failure =
                                Some(format!("Critical metric {name} failed: {}", j.message));
                        }
                    }
                }
            }
            if let Some(reason) = critical_failure {
                self.status.failed_checks += 1;
                self.status.last_analysis_time = Some(self.now());
                return self.rollback(reason);
            }
            if failed {
                return self.count_failure();
            }
            if let Some((name, _, _)) = judged.iter().find(|(_, _, j)| j.verdict == Verdict::Hold) {
                let what = format!("data for metric {name}");
                self.wait(&what);
                self.status.last_analysis_time = Some(self.now());
                if self.deadline_passed() {
                    return self.rollback(format!("Progress deadline exceeded waiting for {what}"));
                }
                self.schedule_analysis();
                return Ok(());
            }
        }
        if self
            .status
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.starts_with("data for"))
        {
            self.clear_wait();
        }
        self.advance()
    }

    fn failed_check(&mut self, message: String) -> Step {
        self.event(EventType::Warning, Reason::CheckFailed, message);
        self.count_failure()
    }

    fn count_failure(&mut self) -> Step {
        self.status.failed_checks += 1;
        self.status.last_analysis_time = Some(self.now());
        let threshold = self.analysis.threshold();
        if self.status.failed_checks >= threshold {
            self.event(
                EventType::Warning,
                Reason::RolledBack,
                format!(
                    "Rolling back {} failed checks threshold reached {}",
                    self.id(),
                    self.status.failed_checks
                ),
            );
            return self.rollback(format!(
                "Failed checks threshold reached {}",
                self.status.failed_checks
            ));
        }
        if self.gate_wait_expired() {
            return self.rollback(format!(
                "Progress deadline exceeded waiting for {}",
                self.status.waiting_for.clone().unwrap_or_default()
            ));
        }
        self.schedule_analysis();
        Ok(())
    }

    /// A wait on a gate or on metric data outlived the progress deadline.
    fn gate_wait_expired(&self) -> bool {
        self.status
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.ends_with("approval") || w.starts_with("data for"))
            && self.deadline_passed()
    }

    /// The strategy's next move after a passing step.
    fn advance(&mut self) -> Step {
        self.status.last_analysis_time = Some(self.now());
        let id = self.id();
        match self.input.spec.strategy() {
            Strategy::Canary => {
                let max = self.analysis.max_weight();
                let current = self.status.canary_weight;
                if current < max && self.status.phase == Phase::Progressing {
                    let next = next_canary_weight(&self.analysis, current);
                    let gate = self.hooks(HookType::ConfirmTrafficIncrease)?;
                    if !gate.ok {
                        return self.gate_closed(
                            HookType::ConfirmTrafficIncrease,
                            &gate,
                            "traffic increase approval",
                            "Canary traffic increase is waiting for approval.",
                        );
                    }
                    self.clear_wait();
                    self.set_weights(Weights::canary(next));
                    self.event(
                        EventType::Normal,
                        Reason::WeightAdvanced,
                        format!("Advance {id} canary weight {next}"),
                    );
                    self.schedule_analysis();
                    return Ok(());
                }
                self.confirm_promotion()
            }
            Strategy::AbTesting => {
                let n = self.analysis.iterations();
                if self.status.iterations < n && self.status.phase == Phase::Progressing {
                    self.set_weights(Weights::ALL_CANARY);
                    self.status.iterations += 1;
                    let i = self.status.iterations;
                    self.event(
                        EventType::Normal,
                        Reason::IterationAdvanced,
                        format!("Advance {id} canary iteration {i}/{n}"),
                    );
                    self.schedule_analysis();
                    return Ok(());
                }
                self.confirm_promotion()
            }
            Strategy::BlueGreen => {
                let n = self.analysis.iterations();
                if self.status.iterations < n && self.status.phase == Phase::Progressing {
                    self.status.iterations += 1;
                    let i = self.status.iterations;
                    self.event(
                        EventType::Normal,
                        Reason::IterationAdvanced,
                        format!("Advance {id} canary iteration {i}/{n}"),
                    );
                    self.schedule_analysis();
                    return Ok(());
                }
                if self.status.canary_weight < 100 {
                    let gate = self.hooks(HookType::ConfirmPromotion)?;
                    if !gate.ok {
                        return self.gate_closed(
                            HookType::ConfirmPromotion,
                            &gate,
                            "promotion approval",
                            "Canary promotion is waiting for approval.",
                        );
                    }
                    self.clear_wait();
                    self.set_phase(Phase::Progressing);
                    self.set_weights(Weights::ALL_CANARY);
                    self.event(
                        EventType::Normal,
                        Reason::WeightAdvanced,
                        format!("Routing all traffic to canary {id}"),
                    );
                    self.schedule_analysis();
                    return Ok(());
                }
                self.begin_promotion()
            }
        }
    }

    fn confirm_promotion(&mut self) -> Step {
        let gate = self.hooks(HookType::ConfirmPromotion)?;
        if !gate.ok {
            return self.gate_closed(
                HookType::ConfirmPromotion,
                &gate,
                "promotion approval",
                "Canary promotion is waiting for approval.",
            );
        }
        self.begin_promotion()
    }

    /// A gate said no: hold (metrics keep running every step), bounded by the deadline.
    fn gate_closed(&mut self, kind: HookType, gate: &HookResult, what: &str, alert: &str) -> Step {
        if kind == HookType::ConfirmPromotion {
            self.set_phase(Phase::WaitingPromotion);
        }
        if self.wait(what) {
            self.event(
                EventType::Warning,
                Reason::WaitingForApproval,
                format!(
                    "Halt {} advancement waiting for {what} {}",
                    self.id(),
                    gate.hook
                ),
            );
            if !self.hook_muted(kind, &gate.hook) {
                self.notify(Severity::Warn, alert);
            }
        }
        if self.deadline_passed() {
            return self.rollback(format!(
                "Progress deadline exceeded: waited {} for {what} by {}",
                crate::api::duration::format(self.input.spec.progress_deadline()),
                gate.hook
            ));
        }
        self.schedule_analysis();
        Ok(())
    }

    fn begin_promotion(&mut self) -> Step {
        self.clear_wait();
        self.copy_to_primary();
        self.set_phase(Phase::Promoting);
        self.status.last_analysis_time = None;
        self.requeue_in(READINESS_POLL);
        Ok(())
    }

    /// Copies the canary's template to the primary.
    fn copy_to_primary(&mut self) {
        self.event(
            EventType::Normal,
            Reason::Promoting,
            format!(
                "Copying {} template spec to {}-primary.{}",
                self.target_id(),
                self.input.spec.target_ref.name,
                self.input.namespace
            ),
        );
        self.actions.push(Action::PromoteToPrimary);
    }

    fn promote_without_analysis(&mut self) -> Step {
        self.set_weights(Weights::ALL_PRIMARY);
        self.copy_to_primary();
        self.actions.push(Action::ScaleTarget(Scale::Zero));
        self.succeed(format!(
            "Promotion completed! Canary analysis was skipped for {}",
            self.target_id()
        ));
        self.notify(
            Severity::Info,
            "Canary analysis was skipped, promotion finished.",
        );
        Ok(())
    }

    fn succeed(&mut self, message: String) {
        self.status.last_promoted_spec = self.status.last_applied_spec.clone();
        self.status.canary_weight = 0;
        self.status.iterations = 0;
        self.status.last_analysis_time = None;
        self.clear_wait();
        self.set_phase(Phase::Succeeded);
        self.event(EventType::Normal, Reason::Promoted, message);
        self.actions.push(Action::RunHooks {
            kind: HookType::PostRollout,
            phase: Phase::Succeeded,
        });
    }

    /// Promoting: once the primary runs the new revision, traffic moves back to it.
    fn promote(&mut self) -> Step {
        let primary = self
            .input
            .observed
            .primary
            .clone()
            .unwrap_or_else(|| Readiness::NotReady("primary Deployment does not exist".into()));
        let name = format!(
            "{}-primary.{}",
            self.input.spec.target_ref.name, self.input.namespace
        );
        match primary {
            Readiness::Ready => {}
            Readiness::Stuck(m) => return self.failed_promotion(format!("{name} not ready: {m}")),
            Readiness::NotReady(m) => {
                let message = format!("{name} not ready: {m}");
                if self.wait("primary rollout") {
                    self.event(EventType::Normal, Reason::Waiting, message.clone());
                }
                if self.deadline_passed() {
                    return self.failed_promotion(message);
                }
                self.poll(READINESS_POLL);
                return Ok(());
            }
        }
        self.clear_wait();
        let kubernetes =
            self.input.spec.provider.map(Provider::router) == Some(RouterKind::Kubernetes);
        let step = self.analysis.step_weight_promotion.filter(|_| !kubernetes);
        let current = self.status.canary_weight;
        match step {
            Some(step) if current > 0 => {
                if !self.due(self.analysis.interval()) {
                    self.poll(self.until_due(self.analysis.interval()));
                    return Ok(());
                }
                let next = next_promotion_weight(current, step);
                self.set_weights(Weights::canary(next));
                self.status.last_analysis_time = Some(self.now());
                if next > 0 {
                    self.event(
                        EventType::Normal,
                        Reason::TrafficToPrimary,
                        format!("Advance {} primary weight {}", self.id(), 100 - next),
                    );
                    self.poll(self.analysis.interval());
                    return Ok(());
                }
                self.event(
                    EventType::Normal,
                    Reason::TrafficToPrimary,
                    format!("Routing all traffic to primary {}", self.id()),
                );
            }
            _ => {
                self.set_weights(Weights::ALL_PRIMARY);
                self.event(
                    EventType::Normal,
                    Reason::TrafficToPrimary,
                    format!("Routing all traffic to primary {}", self.id()),
                );
            }
        }
        self.set_phase(Phase::Finalising);
        self.requeue_in(Duration::zero());
        Ok(())
    }

    /// Finalising: once the routes read back all-primary, scale the canary down.
    fn finalise(&mut self) -> Step {
        if self
            .input
            .observed
            .routes
            .is_some_and(|r| r != Weights::ALL_PRIMARY)
        {
            // check_routes() has rewritten them; look again shortly.
            return Ok(());
        }
        self.actions.push(Action::ScaleTarget(Scale::Zero));
        self.succeed(format!(
            "Promotion completed! Scaling down {}",
            self.target_id()
        ));
        self.notify(
            Severity::Info,
            "Canary analysis completed successfully, promotion finished.",
        );
        Ok(())
    }

    fn failed_promotion(&mut self, message: String) -> Step {
        self.event(
            EventType::Warning,
            Reason::PromotionFailed,
            format!(
                "Promotion of {} failed, primary not ready: {message}",
                self.target_id()
            ),
        );
        self.notify(
            Severity::Error,
            format!("Promotion failed, primary not ready: {message}"),
        );
        self.set_weights(Weights::ALL_PRIMARY);
        // The primary was given the new template; a revert of the target to the previously
        // promoted revision must start a run that promotes it back.
        self.status.last_promoted_spec = None;
        self.clear_wait();
        self.set_phase(Phase::Failed);
        self.actions.push(Action::RunHooks {
            kind: HookType::PostRollout,
            phase: Phase::Failed,
        });
        Ok(())
    }

    /// All traffic back to the primary, the canary scaled to zero, phase Failed.
    fn rollback(&mut self, alert: String) -> Step {
        // The failed revision is not retried until the target changes again.
        self.status.last_applied_spec = Some(self.target().revision.clone());
        self.set_weights(Weights::ALL_PRIMARY);
        self.actions.push(Action::ScaleTarget(Scale::Zero));
        self.event(
            EventType::Warning,
            Reason::RolledBack,
            format!("Canary failed! Scaling down {}", self.target_id()),
        );
        self.notify(Severity::Error, alert);
        self.actions.push(Action::RunHooks {
            kind: HookType::PostRollout,
            phase: Phase::Failed,
        });
        self.status.iterations = 0;
        self.status.last_analysis_time = None;
        self.clear_wait();
        self.set_phase(Phase::Failed);
        Ok(())
    }

    // ---- conditions -----------------------------------------------------------------------

    fn set_conditions(&mut self) {
        let now = self.now();
        let generation = self.input.observed.generation;
        let phase = self.status.phase;
        let kind = "Deployment";
        let (promoted, promoted_msg) = match phase {
            Phase::Initializing | Phase::Terminating => (
                "Unknown",
                format!("New {kind} detected, starting initialization."),
            ),
            Phase::Initialized => ("True", format!("{kind} initialization completed.")),
            Phase::Waiting | Phase::WaitingPromotion => ("Unknown", "Waiting for approval.".into()),
            Phase::Progressing => (
                "Unknown",
                "New revision detected, progressing canary analysis.".into(),
            ),
            Phase::Promoting => (
                "Unknown",
                "Canary analysis completed, starting primary rolling update.".into(),
            ),
            Phase::Finalising => (
                "Unknown",
                "Canary analysis completed, routing all traffic to primary.".into(),
            ),
            Phase::Succeeded => (
                "True",
                "Canary analysis completed successfully, promotion finished.".into(),
            ),
            Phase::Failed => (
                "False",
                format!("Canary analysis failed, {kind} scaled to zero."),
            ),
        };
        let reason = phase.as_str();
        let s = &mut self.status;
        s.set_condition(
            CONDITION_PROMOTED,
            promoted,
            reason,
            &promoted_msg,
            now,
            generation,
        );
        let suspended = self.input.spec.suspended();
        if let Some((r, m)) = self.stalled.clone() {
            s.set_condition(CONDITION_STALLED, "True", &r, &m, now, generation);
            s.set_condition(CONDITION_READY, "False", &r, &m, now, generation);
            s.set_condition(CONDITION_RECONCILING, "False", &r, &m, now, generation);
            return;
        }
        if suspended {
            let m = "The Canary is suspended (spec.suspend: true)";
            s.set_condition(
                CONDITION_RECONCILING,
                "False",
                "Suspended",
                m,
                now,
                generation,
            );
            s.set_condition(CONDITION_STALLED, "False", "Suspended", m, now, generation);
            return;
        }
        let waiting = s.waiting_for.clone();
        match phase {
            Phase::Initialized | Phase::Succeeded => {
                s.set_condition(
                    CONDITION_READY,
                    "True",
                    reason,
                    &promoted_msg,
                    now,
                    generation,
                );
                s.set_condition(
                    CONDITION_RECONCILING,
                    "False",
                    reason,
                    &promoted_msg,
                    now,
                    generation,
                );
                s.set_condition(
                    CONDITION_STALLED,
                    "False",
                    reason,
                    &promoted_msg,
                    now,
                    generation,
                );
            }
            Phase::Failed => {
                let m = "The last revision was rolled back; push a new revision to try again";
                s.set_condition(CONDITION_READY, "False", reason, m, now, generation);
                s.set_condition(CONDITION_RECONCILING, "False", reason, m, now, generation);
                s.set_condition(CONDITION_STALLED, "True", "RolledBack", m, now, generation);
            }
            _ => {
                let m = match waiting {
                    Some(w) => format!("{promoted_msg} Waiting for {w}."),
                    None => promoted_msg.clone(),
                };
                s.set_condition(CONDITION_READY, "False", reason, &m, now, generation);
                s.set_condition(CONDITION_RECONCILING, "True", reason, &m, now, generation);
                s.set_condition(CONDITION_STALLED, "False", reason, &m, now, generation);
            }
        }
    }
}

static MISSING_TARGET: TargetState = TargetState {
    revision: String::new(),
    tracked_configs: std::collections::BTreeMap::new(),
    readiness: Readiness::Ready,
};

#[cfg(test)]
mod tests;
