//! The engine's inputs and outputs: what the shell observed, what probes it ran, and the
//! decision it must carry out.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::api::{CanaryStatus, HookType, Phase, Severity};

/// Readiness of a Deployment (canary target or primary), as the shell read it.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    Ready,
    /// Still rolling out; the message says what is missing ("1 of 2 updated replicas are available").
    NotReady(String),
    /// The Deployment itself reports that it cannot make progress (ProgressDeadlineExceeded).
    Stuck(String),
}

/// The target Deployment as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetState {
    /// Stable hash of the pod template together with the tracked ConfigMaps and Secrets.
    pub revision: String,
    /// Checksums of the tracked ConfigMaps and Secrets (`configmap/<name>` → checksum).
    pub tracked_configs: BTreeMap<String, String>,
    /// Readiness of the target's pods (meaningful while it is scaled up as the canary).
    pub readiness: Readiness,
}

/// Canary and primary weights of the route Serin shifts; they sum to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Weights {
    pub primary: i32,
    pub canary: i32,
}

impl Weights {
    pub const ALL_PRIMARY: Weights = Weights {
        primary: 100,
        canary: 0,
    };
    pub const ALL_CANARY: Weights = Weights {
        primary: 0,
        canary: 100,
    };

    /// `canary` percent to the canary, the rest to the primary.
    pub fn canary(canary: i32) -> Weights {
        let canary = canary.clamp(0, 100);
        Weights {
            primary: 100 - canary,
            canary,
        }
    }
}

/// Everything the shell read before asking for a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `metadata.generation` of the Canary.
    pub generation: Option<i64>,
    /// The target Deployment; `None` when it does not exist.
    pub target: Option<TargetState>,
    /// The primary Deployment's readiness; `None` when it does not exist yet.
    pub primary: Option<Readiness>,
    /// Weights read back from the router; `None` when the routes do not exist yet.
    pub routes: Option<Weights>,
}

/// A probe the engine needs answered before it can decide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Call the webhooks of this type, in spec order. For gates and checks the first failure
    /// stops the calls; for `rollback` every hook is asked.
    Hooks(HookType),
    /// Query these metrics (by name), in parallel.
    Metrics(Vec<String>),
}

/// The answer of the webhooks of one type.
#[derive(Clone, Debug, PartialEq)]
pub struct HookResult {
    /// Gates and checks: every hook answered 2xx. `rollback`: at least one hook answered 2xx
    /// (a rollback is requested).
    pub ok: bool,
    /// The hook that decided the result (the first failing one, or the one requesting rollback).
    pub hook: String,
    /// Its error or answer.
    pub message: String,
}

impl HookResult {
    pub fn passed() -> HookResult {
        HookResult {
            ok: true,
            hook: String::new(),
            message: String::new(),
        }
    }

    /// The answer when no hook of `kind` speaks up: gates open and checks pass, and nobody asks
    /// for a rollback.
    pub fn quiet(kind: HookType) -> HookResult {
        HookResult {
            ok: kind != HookType::Rollback,
            ..HookResult::passed()
        }
    }
}

/// What a metric query returned.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricResult {
    Value(f64),
    /// Empty result or NaN; the message says which provider and query.
    NoData(String),
    /// The query failed (connection, HTTP error, bad answer).
    Error(String),
}

/// Probe answers gathered so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeResults {
    pub hooks: BTreeMap<HookType, HookResult>,
    pub metrics: BTreeMap<String, MetricResult>,
}

/// Scaling of the target Deployment, which runs the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Back to its replicas (from the HPA minimum or the primary's count when it has none).
    Up,
    Zero,
}

/// Something the shell must do, idempotently.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create or update the `-primary`/`-canary`/apex Services and the router objects.
    EnsureRoutes,
    /// Create the primary Deployment (and HPA clone) from the target if it does not exist.
    EnsurePrimary,
    /// Write these weights to the router (and read them back).
    SetWeights(Weights),
    ScaleTarget(Scale),
    /// Copy the target's pod template (and tracked configs) to the primary.
    PromoteToPrimary,
    /// Call the webhooks of this type with this phase in the payload; the answer does not matter
    /// (post-rollout).
    RunHooks {
        kind: HookType,
        phase: Phase,
    },
    /// Send an alert to the Canary's alert providers.
    Notify {
        severity: Severity,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

/// Why an Event was recorded; the Kubernetes Event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Initializing,
    Initialized,
    NewRevision,
    WaitingForApproval,
    Waiting,
    PreRolloutPassed,
    CheckFailed,
    WeightAdvanced,
    IterationAdvanced,
    GateOpened,
    Promoting,
    TrafficToPrimary,
    Promoted,
    RolledBack,
    Restarted,
    Reverted,
    ProgressDeadlineExceeded,
    PromotionFailed,
    RollbackRequested,
    RouteMismatch,
    HookFailed,
    AlertFailed,
    Requested,
    InvalidRequest,
    Suspended,
    Resumed,
    InvalidSpec,
    TargetNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initializing => "Initializing",
            Reason::Initialized => "Initialized",
            Reason::NewRevision => "NewRevision",
            Reason::WaitingForApproval => "WaitingForApproval",
            Reason::Waiting => "Waiting",
            Reason::PreRolloutPassed => "PreRolloutPassed",
            Reason::CheckFailed => "CheckFailed",
            Reason::WeightAdvanced => "WeightAdvanced",
            Reason::IterationAdvanced => "IterationAdvanced",
            Reason::GateOpened => "GateOpened",
            Reason::Promoting => "Promoting",
            Reason::TrafficToPrimary => "TrafficToPrimary",
            Reason::Promoted => "Promoted",
            Reason::RolledBack => "RolledBack",
            Reason::Restarted => "Restarted",
            Reason::Reverted => "Reverted",
            Reason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Reason::PromotionFailed => "PromotionFailed",
            Reason::RollbackRequested => "RollbackRequested",
            Reason::RouteMismatch => "RouteMismatch",
            Reason::HookFailed => "HookFailed",
            Reason::Requested => "Requested",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::AlertFailed => "AlertFailed",
            Reason::Suspended => "Suspended",
            Reason::Resumed => "Resumed",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::TargetNotFound => "TargetNotFound",
        }
    }
}

/// A Kubernetes Event to record on the Canary.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
}

/// What the engine decided: the next status, what to do, what to tell, and when to call again.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: CanaryStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Call again after this long at the latest (watch events may call earlier).
    pub requeue_after: Option<Duration>,
}

/// The engine's answer to one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Run these probes, add their results, and call again with the same inputs.
    Need(Vec<Probe>),
    Decided(Box<Decision>),
}

/// Everything one call of the engine reads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a crate::api::CanarySpec,
    pub status: &'a CanaryStatus,
    pub observed: &'a Observed,
    pub probes: &'a ProbeResults,
    /// The Canary's manual request annotation, if any (see `api::REQUEST_ANNOTATION`).
    pub request: Option<&'a str>,
    pub now: DateTime<Utc>,
}
