//! A stand-in for the Deployment controller and the kubelets of a cluster: it watches the
//! Deployments of an `ApiServer` (in-process, so it shows neither in the request log nor in
//! injected faults) and writes their status the way a real cluster would make it evolve.
//!
//! For each new generation of a Deployment it writes, at once, `observedGeneration` and a
//! rollout in progress (`updatedReplicas` = spec.replicas, the new pods not ready yet; pods of the
//! previous template still counted in `replicas`, `readyReplicas` and `availableReplicas` while
//! they last; `Progressing` True `ReplicaSetUpdated`, `Available` False
//! `MinimumReplicasUnavailable` when nothing is available), then, after the delay its behaviour
//! gives, the finished rollout (`replicas` = `updatedReplicas` = `readyReplicas` =
//! `availableReplicas` = spec.replicas, `Available` True `MinimumReplicasAvailable`,
//! `Progressing` True `NewReplicaSetAvailable`). A rollout not finished within
//! `spec.progressDeadlineSeconds` gets `Progressing` False `ProgressDeadlineExceeded`. A Deployment
//! scaled to zero is finished at once. Counts that are zero are omitted, as the API server omits
//! them.
//!
//! Behaviour per Deployment (`name` in any namespace, or `namespace/name`): ready after a delay,
//! never ready, or ready and then crashing (ready and available drop to zero). It can be changed
//! while running; the change applies to the rollout in progress from that moment.
//!
//! Not modelled: ReplicaSets and Pods (no objects are created), surge and unavailability
//! budgets (all new pods become ready together), `minReadySeconds`, `paused`, the Recreate
//! strategy, and readiness gates.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::apiserver::{ApiServer, Handle};

/// How the pods of a Deployment behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pods {
    /// All pods of a rollout become ready this long after it starts.
    ReadyAfter(Duration),
    /// The pods never become ready (the progress deadline then fires).
    NeverReady,
    /// Ready after `ready_after`, then all pods crash `crash_after` later.
    CrashAfterReady {
        ready_after: Duration,
        crash_after: Duration,
    },
}

impl Pods {
    fn ready_after(self) -> Option<Duration> {
        match self {
            Pods::ReadyAfter(d) => Some(d),
            Pods::NeverReady => None,
            Pods::CrashAfterReady { ready_after, .. } => Some(ready_after),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Rolling,
    Ready,
    Crashed,
}

/// A condition as last written: (status, reason, lastUpdateTime, lastTransitionTime).
type Cond = (String, String, String, String);

/// What the stand-in knows about one Deployment.
#[derive(Clone, Debug)]
struct Tracked {
    generation: i64,
    replicas: i64,
    template: Value,
    progress_deadline: Duration,
    /// Pods of the previous template still running and ready during a rollout.
    old_ready: i64,
    /// Ready pods of this template carried over from the previous generation (a scale or a
    /// change outside the template).
    carried_ready: i64,
    phase: Phase,
    started: Instant,
    /// Bumped on every new rollout or behaviour change; timers of older epochs do nothing.
    epoch: u64,
    deadline_exceeded: bool,
    available: Option<Cond>,
    progressing: Option<Cond>,
}

struct State {
    default: Pods,
    behaviour: HashMap<String, Pods>,
    tracked: HashMap<(String, String), Tracked>,
}

impl State {
    fn pods_of(&self, ns: &str, name: &str) -> Pods {
        self.behaviour
            .get(&format!("{ns}/{name}"))
            .or_else(|| self.behaviour.get(name))
            .copied()
            .unwrap_or(self.default)
    }
}

struct Inner {
    api: Handle,
    state: Mutex<State>,
}

/// A running kubelet stand-in; stops when dropped.
pub struct Kubelet {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Ready,
    Crash,
    Deadline,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn template_hash(template: &Value) -> String {
    let mut h = DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// Sets a condition, keeping its times while status and reason stay the same (as the
/// Deployment controller does).
fn set_cond(slot: &mut Option<Cond>, status: &str, reason: &str) -> Cond {
    let t = now();
    let next = match slot.take() {
        Some(c) if c.0 == status && c.1 == reason => c,
        Some(c) if c.0 == status => (c.0, reason.to_string(), t, c.3),
        _ => (status.to_string(), reason.to_string(), t.clone(), t),
    };
    *slot = Some(next.clone());
    next
}

impl Kubelet {
    /// Starts watching `api`'s Deployments; pods become ready at once unless told otherwise.
    pub fn start(api: &ApiServer) -> Self {
        Self::start_with(api, Pods::ReadyAfter(Duration::ZERO))
    }

    /// Starts with `default` behaviour for Deployments without one of their own.
    pub fn start_with(api: &ApiServer, default: Pods) -> Self {
        let mut events = api.subscribe("apps/v1", "Deployment", "");
        let inner = Arc::new(Inner {
            api: api.handle(),
            state: Mutex::new(State {
                default,
                behaviour: HashMap::new(),
                tracked: HashMap::new(),
            }),
        });
        let worker = inner.clone();
        let task = api.runtime().spawn(async move {
            while let Some(ev) = events.recv().await {
                let key = (
                    text(&ev.object, "/metadata/namespace"),
                    text(&ev.object, "/metadata/name"),
                );
                if ev.kind == "DELETED" {
                    lock(&worker.state).tracked.remove(&key);
                } else {
                    Inner::observe(&worker, &ev.object, key);
                }
            }
        });
        Self { inner, task }
    }

    /// Sets how the pods of Deployment `name` (or `namespace/name`) behave from now on: a
    /// rollout in progress, a ready or a crashed Deployment follows the new behaviour from
    /// this moment.
    pub fn set(&self, name: &str, pods: Pods) {
        let keys: Vec<(String, String)> = {
            let mut st = lock(&self.inner.state);
            st.behaviour.insert(name.to_string(), pods);
            st.tracked
                .keys()
                .filter(|(ns, n)| n == name || format!("{ns}/{n}") == name)
                .cloned()
                .collect()
        };
        for key in keys {
            Inner::schedule(&self.inner, &key);
        }
    }

    /// Sets the behaviour of Deployments without one of their own (from their next rollout).
    pub fn set_default(&self, pods: Pods) {
        lock(&self.inner.state).default = pods;
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    /// A Deployment was added or changed: a new generation starts a rollout.
    fn observe(this: &Arc<Self>, obj: &Value, key: (String, String)) {
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let replicas = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0);
        let deadline = obj
            .pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        let template = obj
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        {
            let mut st = lock(&this.state);
            let prev = st.tracked.remove(&key);
            if let Some(p) = &prev
                && p.generation >= generation
            {
                st.tracked.insert(key, p.clone());
                return;
            }
            // Pods of the old template keep serving until the new ones are ready; a change
            // that keeps the template keeps the ready pods it has.
            let ready_before = match &prev {
                Some(p) if p.phase == Phase::Ready => p.replicas,
                _ => 0,
            };
            let same_template = prev.as_ref().is_some_and(|p| p.template == template);
            let (old_ready, carried_ready) = if same_template {
                (0, ready_before.min(replicas))
            } else {
                (ready_before, 0)
            };
            st.tracked.insert(
                key.clone(),
                Tracked {
                    generation,
                    replicas,
                    template,
                    progress_deadline: Duration::from_secs(deadline),
                    old_ready,
                    carried_ready,
                    phase: Phase::Rolling,
                    started: Instant::now(),
                    epoch: prev.as_ref().map_or(0, |p| p.epoch),
                    deadline_exceeded: false,
                    available: prev.as_ref().and_then(|p| p.available.clone()),
                    progressing: prev.and_then(|p| p.progressing),
                },
            );
        }
        Self::write(this, &key);
        Self::schedule(this, &key);
    }

    /// Schedules what happens next to a Deployment under its current behaviour.
    fn schedule(this: &Arc<Self>, key: &(String, String)) {
        let (epoch, phase, pods, deadline_at, replicas, carried) = {
            let mut st = lock(&this.state);
            let pods = st.pods_of(&key.0, &key.1);
            let Some(t) = st.tracked.get_mut(key) else {
                return;
            };
            t.epoch += 1;
            (
                t.epoch,
                t.phase,
                pods,
                t.started + t.progress_deadline,
                t.replicas,
                t.carried_ready,
            )
        };
        match phase {
            Phase::Rolling if carried >= replicas => {
                Self::transition(this, key, epoch, Phase::Ready)
            }
            Phase::Rolling => {
                Self::at(this, key, epoch, deadline_at, Step::Deadline);
                if let Some(d) = pods.ready_after() {
                    Self::at(this, key, epoch, Instant::now() + d, Step::Ready);
                }
            }
            Phase::Ready => {
                if let Pods::CrashAfterReady { crash_after, .. } = pods {
                    Self::at(this, key, epoch, Instant::now() + crash_after, Step::Crash);
                }
            }
            Phase::Crashed => {
                if let Pods::ReadyAfter(d) = pods {
                    Self::at(this, key, epoch, Instant::now() + d, Step::Ready);
                }
            }
        }
    }

    fn at(this: &Arc<Self>, key: &(String, String), epoch: u64, when: Instant, step: Step) {
        let this = this.clone();
        let key = key.clone();
        this.api.runtime().clone().spawn(async move {
            tokio::time::sleep_until(when).await;
            match step {
                Step::Ready => Self::transition(&this, &key, epoch, Phase::Ready),
                Step::Crash => Self::transition(&this, &key, epoch, Phase::Crashed),
                Step::Deadline => {
                    {
                        let mut st = lock(&this.state);
                        match st.tracked.get_mut(&key) {
                            Some(t) if t.epoch == epoch && t.phase == Phase::Rolling => {
                                t.deadline_exceeded = true
                            }
                            _ => return,
                        }
                    }
                    Self::write(&this, &key);
                }
            }
        });
    }

    fn transition(this: &Arc<Self>, key: &(String, String), epoch: u64, phase: Phase) {
        {
            let mut st = lock(&this.state);
            let Some(t) = st.tracked.get_mut(key) else {
                return;
            };
            if t.epoch != epoch {
                return;
            }
            t.phase = phase;
            if phase == Phase::Ready {
                t.old_ready = 0;
                t.carried_ready = 0;
                t.deadline_exceeded = false;
            }
        }
        Self::write(this, key);
        if phase == Phase::Ready {
            Self::schedule(this, key);
        }
    }

    /// Writes the status the tracked state implies (nothing when the Deployment is gone).
    fn write(this: &Arc<Self>, key: &(String, String)) {
        let status = {
            let mut st = lock(&this.state);
            let Some(t) = st.tracked.get_mut(key) else {
                return;
            };
            Self::status_of(t, &key.1)
        };
        this.api
            .try_put_status("apps/v1", "Deployment", &key.0, &key.1, status);
    }

    fn status_of(t: &mut Tracked, name: &str) -> Value {
        let rs = format!("{name}-{}", template_hash(&t.template));
        let (replicas, updated, ready) = match t.phase {
            Phase::Rolling => (
                t.replicas + t.old_ready,
                t.replicas,
                t.old_ready + t.carried_ready,
            ),
            Phase::Ready => (t.replicas, t.replicas, t.replicas),
            Phase::Crashed => (t.replicas, t.replicas, 0),
        };
        let available = ready;
        let unavailable = (t.replicas - available.min(t.replicas)).max(0);
        let (av_status, av_reason, av_msg) = if available > 0 || t.replicas == 0 {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        let (pr_status, pr_reason, pr_msg) = match (t.phase, t.deadline_exceeded) {
            (Phase::Rolling, true) => (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet {rs:?} has timed out progressing."),
            ),
            (Phase::Rolling, false) => (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet {rs:?} is progressing."),
            ),
            _ => (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet {rs:?} has successfully progressed."),
            ),
        };
        let av = set_cond(&mut t.available, av_status, av_reason);
        let pr = set_cond(&mut t.progressing, pr_status, pr_reason);
        let mut status = json!({
            "observedGeneration": t.generation,
            "conditions": [
                {
                    "type": "Available", "status": av.0, "reason": av.1, "message": av_msg,
                    "lastUpdateTime": av.2, "lastTransitionTime": av.3,
                },
                {
                    "type": "Progressing", "status": pr.0, "reason": pr.1, "message": pr_msg,
                    "lastUpdateTime": pr.2, "lastTransitionTime": pr.3,
                },
            ],
        });
        for (field, n) in [
            ("replicas", replicas),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", available),
            ("unavailableReplicas", unavailable),
        ] {
            if n > 0 {
                status[field] = json!(n);
            }
        }
        status
    }
}
