//! The in-memory cluster: the target Deployment (which runs the canary), the primary
//! Deployment and the routes, as the engine's actions change them, plus the changes the world
//! makes on its own (pods becoming ready, new revisions pushed) as timed events.

use std::collections::BTreeMap;

use crate::engine::{Action, Observed, Readiness, Scale, TargetState, Weights};

/// How long a Deployment may be rolling out before Kubernetes marks it stuck
/// (`progressDeadlineSeconds` default of a Deployment).
pub const DEPLOYMENT_PROGRESS_DEADLINE_MS: i64 = 600_000;

/// A change the world makes at a given time; each is one a watch would report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorldEvent {
    /// CI pushes a new revision of the target.
    Push,
    /// The target's pods of rollout `epoch` become ready.
    TargetReady {
        epoch: u64,
    },
    /// The target's rollout `epoch` exceeds its progress deadline.
    TargetStuck {
        epoch: u64,
    },
    PrimaryReady {
        epoch: u64,
    },
    PrimaryStuck {
        epoch: u64,
    },
}

/// One Deployment's rollout state.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The revision of the pod template (0 is the one running when the simulation starts).
    pub revision: u32,
    /// The revision whose pods serve requests (old pods keep serving during a rolling update).
    pub serving: Option<u32>,
    pub ready: bool,
    pub stuck: bool,
    /// Bumped at every rollout, so events of an abandoned rollout are ignored.
    pub epoch: u64,
}

impl Workload {
    fn readiness(&self, name: &str) -> Readiness {
        if self.ready {
            Readiness::Ready
        } else if self.stuck {
            Readiness::Stuck(format!(
                "deployment \"{name}\" exceeded its progress deadline"
            ))
        } else {
            Readiness::NotReady(
                "waiting for rollout to finish: updated replicas are not available yet".into(),
            )
        }
    }

    /// Starts a rollout of the current revision; returns the events that end it.
    fn roll_out(
        &mut self,
        now: i64,
        delay: i64,
        ready: WorldEvent,
        stuck: WorldEvent,
    ) -> Vec<(i64, WorldEvent)> {
        self.ready = false;
        self.stuck = false;
        let mut events = vec![(now + delay, ready)];
        if delay > DEPLOYMENT_PROGRESS_DEADLINE_MS {
            events.push((now + DEPLOYMENT_PROGRESS_DEADLINE_MS, stuck));
        }
        events
    }
}

/// The simulated cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub target_name: String,
    /// The target Deployment; `scaled_up` false means zero replicas.
    pub target: Workload,
    pub target_scaled_up: bool,
    pub primary: Option<Workload>,
    pub routes: Option<Weights>,
    pub canary_start_delay_ms: i64,
    pub primary_start_delay_ms: i64,
}

/// The revision hash the engine sees for revision `n`.
pub fn revision_hash(n: u32) -> String {
    format!("rev-{n}")
}

impl Cluster {
    /// A cluster where the target runs revision 0, scaled up and ready, and nothing else exists.
    pub fn new(
        target_name: &str,
        canary_start_delay_ms: i64,
        primary_start_delay_ms: i64,
    ) -> Cluster {
        Cluster {
            target_name: target_name.to_string(),
            target: Workload {
                revision: 0,
                serving: Some(0),
                ready: true,
                stuck: false,
                epoch: 0,
            },
            target_scaled_up: true,
            primary: None,
            routes: None,
            canary_start_delay_ms,
            primary_start_delay_ms,
        }
    }

    /// What the controller would read.
    pub fn observe(&self) -> Observed {
        let target_readiness = if self.target_scaled_up {
            self.target.readiness(&self.target_name)
        } else {
            // Zero of zero replicas: Kubernetes reports the Deployment as available.
            Readiness::Ready
        };
        Observed {
            generation: Some(1),
            target: Some(TargetState {
                revision: revision_hash(self.target.revision),
                tracked_configs: BTreeMap::new(),
                readiness: target_readiness,
            }),
            primary: self
                .primary
                .as_ref()
                .map(|p| p.readiness(&format!("{}-primary", self.target_name))),
            routes: self.routes,
        }
    }

    /// The canary has pods serving requests.
    pub fn canary_serving(&self) -> Option<u32> {
        if self.target_scaled_up {
            self.target.serving
        } else {
            None
        }
    }

    /// A new revision of the target; returns the events that follow.
    pub fn push(&mut self, now: i64) -> Vec<(i64, WorldEvent)> {
        self.target.revision += 1;
        self.target.epoch += 1;
        if !self.target_scaled_up {
            return Vec::new();
        }
        let epoch = self.target.epoch;
        self.target.roll_out(
            now,
            self.canary_start_delay_ms,
            WorldEvent::TargetReady { epoch },
            WorldEvent::TargetStuck { epoch },
        )
    }

    /// Applies a world event; returns false when it is stale (its rollout was replaced).
    pub fn happen(&mut self, event: &WorldEvent) -> bool {
        match *event {
            WorldEvent::Push => true,
            WorldEvent::TargetReady { epoch }
                if epoch == self.target.epoch && self.target_scaled_up =>
            {
                self.target.ready = true;
                self.target.serving = Some(self.target.revision);
                true
            }
            WorldEvent::TargetStuck { epoch }
                if epoch == self.target.epoch && self.target_scaled_up =>
            {
                self.target.stuck = true;
                true
            }
            WorldEvent::PrimaryReady { epoch } => match &mut self.primary {
                Some(p) if p.epoch == epoch => {
                    p.ready = true;
                    p.serving = Some(p.revision);
                    true
                }
                _ => false,
            },
            WorldEvent::PrimaryStuck { epoch } => match &mut self.primary {
                Some(p) if p.epoch == epoch => {
                    p.stuck = true;
                    true
                }
                _ => false,
            },
            WorldEvent::TargetReady { .. } | WorldEvent::TargetStuck { .. } => false,
        }
    }

    /// Carries out one action of the engine, idempotently; returns the world events it starts.
    pub fn apply(&mut self, action: &Action, now: i64) -> Vec<(i64, WorldEvent)> {
        match action {
            Action::EnsureRoutes => {
                self.routes.get_or_insert(Weights::ALL_PRIMARY);
                Vec::new()
            }
            Action::EnsurePrimary => {
                if self.primary.is_some() {
                    return Vec::new();
                }
                let mut primary = Workload {
                    revision: self.target.revision,
                    serving: None,
                    ready: false,
                    stuck: false,
                    epoch: 1,
                };
                let events = primary.roll_out(
                    now,
                    self.primary_start_delay_ms,
                    WorldEvent::PrimaryReady { epoch: 1 },
                    WorldEvent::PrimaryStuck { epoch: 1 },
                );
                self.primary = Some(primary);
                events
            }
            Action::SetWeights(w) => {
                self.routes = Some(*w);
                Vec::new()
            }
            Action::ScaleTarget(Scale::Up) => {
                if self.target_scaled_up {
                    return Vec::new();
                }
                self.target_scaled_up = true;
                self.target.serving = None;
                self.target.epoch += 1;
                let epoch = self.target.epoch;
                self.target.roll_out(
                    now,
                    self.canary_start_delay_ms,
                    WorldEvent::TargetReady { epoch },
                    WorldEvent::TargetStuck { epoch },
                )
            }
            Action::ScaleTarget(Scale::Zero) => {
                if self.target_scaled_up {
                    self.target_scaled_up = false;
                    self.target.serving = None;
                    self.target.ready = false;
                    self.target.stuck = false;
                    self.target.epoch += 1;
                }
                Vec::new()
            }
            Action::PromoteToPrimary => {
                let revision = self.target.revision;
                let delay = self.primary_start_delay_ms;
                let Some(p) = self.primary.as_mut() else {
                    return Vec::new();
                };
                if p.revision == revision {
                    return Vec::new();
                }
                p.revision = revision;
                p.epoch += 1;
                let epoch = p.epoch;
                p.roll_out(
                    now,
                    delay,
                    WorldEvent::PrimaryReady { epoch },
                    WorldEvent::PrimaryStuck { epoch },
                )
            }
            Action::RunHooks { .. } | Action::Notify { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_and_canary_follow_actions_and_delays() {
        let mut c = Cluster::new("podinfo", 20_000, 30_000);
        assert_eq!(c.observe().primary, None);
        let ev = c.apply(&Action::EnsurePrimary, 0);
        assert_eq!(ev, vec![(30_000, WorldEvent::PrimaryReady { epoch: 1 })]);
        assert!(matches!(c.observe().primary, Some(Readiness::NotReady(_))));
        assert!(c.happen(&ev[0].1));
        assert_eq!(c.observe().primary, Some(Readiness::Ready));

        c.apply(&Action::ScaleTarget(Scale::Zero), 30_000);
        assert_eq!(c.canary_serving(), None);
        assert!(c.push(40_000).is_empty());
        assert_eq!(c.observe().target.unwrap().revision, "rev-1");
        let ev = c.apply(&Action::ScaleTarget(Scale::Up), 40_000);
        assert_eq!(ev, vec![(60_000, WorldEvent::TargetReady { epoch: 3 })]);
        assert_eq!(c.canary_serving(), None);
        // A second scale-up is a no-op.
        assert!(c.apply(&Action::ScaleTarget(Scale::Up), 41_000).is_empty());
        assert!(c.happen(&ev[0].1));
        assert_eq!(c.canary_serving(), Some(1));

        let ev = c.apply(&Action::PromoteToPrimary, 100_000);
        assert_eq!(ev, vec![(130_000, WorldEvent::PrimaryReady { epoch: 2 })]);
        assert!(c.apply(&Action::PromoteToPrimary, 101_000).is_empty());
        assert_eq!(c.primary.as_ref().unwrap().serving, Some(0));
    }

    #[test]
    fn stale_and_stuck_rollouts() {
        let mut c = Cluster::new("podinfo", 700_000, 30_000);
        c.apply(&Action::ScaleTarget(Scale::Zero), 0);
        let ev = c.apply(&Action::ScaleTarget(Scale::Up), 0);
        assert_eq!(
            ev,
            vec![
                (700_000, WorldEvent::TargetReady { epoch: 2 }),
                (600_000, WorldEvent::TargetStuck { epoch: 2 })
            ]
        );
        assert!(c.happen(&ev[1].1));
        assert!(matches!(
            c.observe().target.unwrap().readiness,
            Readiness::Stuck(_)
        ));
        c.apply(&Action::ScaleTarget(Scale::Zero), 650_000);
        assert!(!c.happen(&ev[0].1));
    }
}
