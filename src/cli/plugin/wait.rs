//! `serin wait NAME --timeout D`: for CI after it changes the target's image. It follows the
//! rollout of the revision currently in the target Deployment (computed exactly as the
//! controller computes it), prints one line per step and per Event, and exits 0 when that
//! revision is promoted (or a first deploy is initialized with it), 1 when it failed or was
//! rolled back, 2 on timeout, 3 when the Canary is invalid or missing. When a newer revision is
//! pushed while waiting, it follows the newest one.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use super::{KubeArgs, PluginError};
use crate::api::{CONDITION_STALLED, Canary, Phase, validate_canary};
use crate::workload;

/// Exit codes of `serin wait`.
pub const PROMOTED: u8 = 0;
pub const FAILED: u8 = 1;
pub const TIMED_OUT: u8 = 2;
pub const INVALID: u8 = 3;

/// How long a Stalled condition must last before `wait` believes it: a condition written
/// before the user's last change may be cleared by the next reconcile.
const STALL_GRACE: Duration = Duration::from_secs(3);

/// Events older than this before `wait` started are not printed (they belong to an earlier run).
const EVENT_LOOKBACK_SECS: i64 = 30;

/// Arguments of `serin wait`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// The Canary whose target Deployment was changed.
    pub name: String,
    /// Give up after this long (exit code 2), for example 10m or 1h.
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// What a Canary's status says about one revision of its target.
#[derive(Clone, Debug, PartialEq)]
pub enum Assessment {
    /// The revision runs on the primary.
    Promoted(String),
    /// The revision was rolled back, or its promotion failed.
    Failed(String),
    /// The controller reports a problem that stops the rollout; exit with `code` if it lasts.
    Stalled { code: u8, message: String },
    /// Still on its way.
    Pending,
}

/// Judges the Canary's status for `revision` (a hash from `workload::deployment_revision`).
pub fn assess(c: &Canary, revision: &str) -> Assessment {
    let Some(s) = &c.status else {
        return Assessment::Pending;
    };
    let promoted = s.last_promoted_spec.as_deref() == Some(revision);
    let applied = s.last_applied_spec.as_deref() == Some(revision);
    match s.phase {
        Phase::Initialized if promoted && applied => {
            return Assessment::Promoted(format!("revision {revision} is live on the primary"));
        }
        Phase::Succeeded if promoted => {
            return Assessment::Promoted(format!("revision {revision} promoted"));
        }
        Phase::Failed if promoted && applied => {
            return Assessment::Promoted(format!(
                "revision {revision} is the one the primary runs (the last rollout, of another revision, failed)"
            ));
        }
        Phase::Failed if applied => {
            let why = s
                .condition(crate::api::CONDITION_PROMOTED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            return Assessment::Failed(
                format!("revision {revision} was rolled back: {why}")
                    .trim_end_matches([' ', ':'])
                    .to_string(),
            );
        }
        _ => {}
    }
    if let Some(st) = s.condition(CONDITION_STALLED)
        && st.status == "True"
        && st.reason != "RolledBack"
    {
        let code = if st.reason == "ProgressDeadlineExceeded" {
            FAILED
        } else {
            INVALID
        };
        return Assessment::Stalled {
            code,
            message: format!("{}: {}", st.reason, st.message),
        };
    }
    Assessment::Pending
}

/// Runs `serin wait`; see the module documentation for the exit codes.
pub fn run(args: &WaitArgs) -> u8 {
    super::run_command("wait", wait(args))
}

// One update at a time, moved straight out of the stream: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Update {
    Canary(Result<watcher::Event<Canary>, watcher::Error>),
    Target(Result<watcher::Event<Deployment>, watcher::Error>),
    Event(Result<watcher::Event<KubeEvent>, watcher::Error>),
}

struct Waiter {
    client: Client,
    ns: String,
    name: String,
    started: Instant,
    canary: Canary,
    target: Deployment,
    revision: String,
    last_line: String,
    seen_events: HashSet<(String, i32)>,
    stalled_since: Option<Instant>,
    notes: HashSet<String>,
    last_error: String,
}

impl Waiter {
    fn say(&self, text: &str) {
        let elapsed = chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default();
        println!("[{:>6}] {text}", super::age(elapsed));
    }

    /// Says `text` once per run of `wait`.
    fn note(&mut self, text: String) {
        if self.notes.insert(text.clone()) {
            self.say(&text);
        }
    }

    /// Recomputes the revision of the target; says so when it changed.
    async fn refresh_revision(&mut self) {
        let computed = match workload::deployment_revision(&self.client, &self.ns, &self.target)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // A passing API error: the next change computes it again.
                eprintln!(
                    "serin wait: cannot read the target's configs, retrying on the next change: {e}"
                );
                return;
            }
        };
        match computed {
            Ok((revision, _)) => {
                if revision != self.revision {
                    self.say(&format!(
                        "new revision {revision} in Deployment {}: following it",
                        self.target.name_any()
                    ));
                    self.revision = revision;
                    self.last_line.clear();
                }
            }
            Err(e) => self.note(format!("cannot compute the target's revision: {e}")),
        }
    }

    /// One line when the phase, weight, checks or what the rollout waits for changed.
    fn progress(&mut self) {
        let c = &self.canary;
        let Some(s) = &c.status else {
            let line = "not reconciled yet; is `serin controller` running?".to_string();
            if line != self.last_line {
                self.say(&line);
                self.last_line = line;
            }
            return;
        };
        let mut line = format!("{}", s.phase);
        if s.phase.is_active() {
            line.push_str(&format!(
                "  weight {}  step {}  failed checks {}/{}",
                s.canary_weight,
                super::get::step(c),
                s.failed_checks,
                c.spec.analysis().threshold()
            ));
            let checks = super::get::checks(c);
            if checks != "-" {
                line.push_str(&format!("  {checks}"));
            }
        }
        if let Some(w) = &s.waiting_for {
            line.push_str(&format!("  (waiting for {w})"));
        }
        if c.spec.suspended() {
            line.push_str(&format!(
                "  (suspended: nothing moves until `kubectl serin resume {}`)",
                self.name
            ));
        }
        if line != self.last_line {
            self.say(&line);
            self.last_line = line;
        }
    }

    fn event(&mut self, e: KubeEvent, since: chrono::DateTime<Utc>) {
        if !self.seen_events.insert(super::event_key(&e)) {
            return;
        }
        if super::event_time(&e).is_some_and(|t| t < since) {
            return;
        }
        self.say(&format!("event {}", super::event_text(&e)));
    }

    fn error(&mut self, e: watcher::Error) {
        let message = e.to_string();
        if message != self.last_error {
            eprintln!("serin wait: watch interrupted, retrying: {message}");
            self.last_error = message;
        }
    }

    /// The exit code when the wait is over.
    fn verdict(&mut self) -> Option<u8> {
        match assess(&self.canary, &self.revision) {
            Assessment::Promoted(m) => {
                self.say(&format!("{}: {m}", self.name));
                Some(PROMOTED)
            }
            Assessment::Failed(m) => {
                self.say(&format!("{}: {m}", self.name));
                Some(FAILED)
            }
            Assessment::Stalled { code, message } => {
                let since = *self.stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALL_GRACE {
                    self.say(&format!("{}: stalled: {message}", self.name));
                    Some(code)
                } else {
                    None
                }
            }
            Assessment::Pending => {
                self.stalled_since = None;
                None
            }
        }
    }
}

async fn wait(args: &WaitArgs) -> Result<u8, PluginError> {
    let (client, ns) = super::connect(&args.kube).await?;
    let started = Instant::now();
    let deadline = started + args.timeout;
    let since = Utc::now() - chrono::Duration::seconds(EVENT_LOOKBACK_SECS);
    let name = args.name.clone();
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &ns);
    let Some(canary) = canaries.get_opt(&name).await? else {
        println!("Canary {name} not found in namespace {ns}");
        return Ok(INVALID);
    };
    let errors = validate_canary(&canary.spec);
    if !errors.is_empty() {
        println!("Canary {name} is invalid:");
        for e in errors {
            println!("  - {e}");
        }
        return Ok(INVALID);
    }
    let target_name = canary.spec.target_ref.name.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let Some(target) = deployments.get_opt(&target_name).await? else {
        println!(
            "Deployment {target_name} (spec.targetRef.name of Canary {name}) not found in namespace {ns}"
        );
        return Ok(INVALID);
    };
    let revision = match workload::deployment_revision(&client, &ns, &target).await? {
        Ok((r, _)) => r,
        Err(e) => {
            println!("Canary {name}: {e}");
            return Ok(INVALID);
        }
    };
    let mut w = Waiter {
        client: client.clone(),
        ns: ns.clone(),
        name: name.clone(),
        started,
        canary,
        target,
        revision,
        last_line: String::new(),
        seen_events: HashSet::new(),
        stalled_since: None,
        notes: HashSet::new(),
        last_error: String::new(),
    };
    w.say(&format!(
        "waiting for revision {} of Deployment {ns}/{target_name} (Canary {name}, timeout {})",
        w.revision,
        crate::api::duration::format(chrono::Duration::from_std(args.timeout).unwrap_or_default())
    ));
    w.progress();
    if let Some(code) = w.verdict() {
        return Ok(code);
    }
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), &ns);
    let mut updates = futures::stream::select(
        futures::stream::select(
            watcher(canaries, by_name(&name))
                .default_backoff()
                .map(Update::Canary)
                .boxed(),
            watcher(deployments, by_name(&target_name))
                .default_backoff()
                .map(Update::Target)
                .boxed(),
        ),
        watcher(
            events,
            watcher::Config::default().fields(&super::canary_events_selector(Some(&name))),
        )
        .default_backoff()
        .map(Update::Event)
        .boxed(),
    );
    loop {
        let stall_check = w
            .stalled_since
            .map_or(deadline, |s| (s + STALL_GRACE).min(deadline));
        let update = tokio::select! {
            Some(u) = updates.next() => Some(u),
            () = tokio::time::sleep_until(stall_check) => None,
        };
        match update {
            Some(Update::Canary(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))) => {
                w.canary = c;
                w.refresh_revision().await;
            }
            Some(Update::Canary(Ok(watcher::Event::Delete(_)))) => {
                w.say(&format!("Canary {name} was deleted"));
                return Ok(INVALID);
            }
            Some(Update::Target(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)))) => {
                w.target = d;
                w.refresh_revision().await;
            }
            Some(Update::Target(Ok(watcher::Event::Delete(_)))) => {
                w.say(&format!("Deployment {target_name} was deleted"));
                return Ok(INVALID);
            }
            Some(Update::Event(Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)))) => {
                w.event(e, since);
            }
            Some(Update::Canary(Ok(_)) | Update::Target(Ok(_)) | Update::Event(Ok(_))) => {}
            Some(Update::Canary(Err(e)) | Update::Target(Err(e)) | Update::Event(Err(e))) => {
                w.error(e);
            }
            None if Instant::now() < deadline => {}
            None => {
                w.say(&format!(
                    "timed out after {}; the rollout goes on: {}",
                    crate::api::duration::format(
                        chrono::Duration::from_std(args.timeout).unwrap_or_default()
                    ),
                    if w.last_line.is_empty() {
                        "no status yet"
                    } else {
                        &w.last_line
                    }
                ));
                return Ok(TIMED_OUT);
            }
        }
        w.progress();
        if let Some(code) = w.verdict() {
            return Ok(code);
        }
        if Instant::now() >= deadline {
            w.say(&format!(
                "timed out after {}; the rollout goes on: {}",
                crate::api::duration::format(
                    chrono::Duration::from_std(args.timeout).unwrap_or_default()
                ),
                w.last_line
            ));
            return Ok(TIMED_OUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CanaryStatus;

    fn canary(status: CanaryStatus) -> Canary {
        let mut c: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test", "generation": 1},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {"port": 9898},
                "analysis": {"interval": "10s", "stepWeight": 25, "maxWeight": 50},
            },
        }))
        .unwrap();
        c.status = Some(status);
        c
    }

    fn status(phase: Phase, applied: &str, promoted: Option<&str>) -> CanaryStatus {
        CanaryStatus {
            phase,
            last_applied_spec: Some(applied.into()),
            last_promoted_spec: promoted.map(String::from),
            ..Default::default()
        }
    }

    fn stalled(reason: &str) -> CanaryStatus {
        let mut s = CanaryStatus::default();
        s.set_condition(
            CONDITION_STALLED,
            "True",
            reason,
            "MetricTemplate error-rate.test used by metric error-rate not found",
            Utc::now(),
            Some(1),
        );
        s
    }

    #[test]
    fn a_first_deploy_counts_once_initialized_with_that_revision() {
        let c = canary(status(Phase::Initialized, "r1", Some("r1")));
        assert!(matches!(assess(&c, "r1"), Assessment::Promoted(_)));
        // Still initializing, or initialized with an older template: not yet.
        assert_eq!(
            assess(&canary(status(Phase::Initializing, "", None)), "r1"),
            Assessment::Pending
        );
        assert_eq!(
            assess(&canary(status(Phase::Initialized, "r0", Some("r0"))), "r1"),
            Assessment::Pending
        );
    }

    #[test]
    fn a_new_revision_is_done_when_promoted_or_rolled_back() {
        // Right after CI changed the image the status still describes the last run.
        let before = canary(status(Phase::Succeeded, "r1", Some("r1")));
        assert_eq!(assess(&before, "r2"), Assessment::Pending);
        let running = canary(status(Phase::Progressing, "r2", Some("r1")));
        assert_eq!(assess(&running, "r2"), Assessment::Pending);
        let promoted = canary(status(Phase::Succeeded, "r2", Some("r2")));
        assert_eq!(
            assess(&promoted, "r2"),
            Assessment::Promoted("revision r2 promoted".into())
        );
        let failed = canary(status(Phase::Failed, "r2", Some("r1")));
        assert!(
            matches!(assess(&failed, "r2"), Assessment::Failed(m) if m.starts_with("revision r2 was rolled back"))
        );
        // An earlier revision failed; this one has not started yet.
        let earlier = canary(status(Phase::Failed, "r2", Some("r1")));
        assert_eq!(assess(&earlier, "r3"), Assessment::Pending);
    }

    #[test]
    fn stalls_are_invalid_except_a_stuck_initialization_which_failed() {
        assert!(matches!(
            assess(&canary(stalled("MetricTemplateNotFound")), "r1"),
            Assessment::Stalled { code: INVALID, message } if message.starts_with("MetricTemplateNotFound: MetricTemplate error-rate.test")
        ));
        assert!(matches!(
            assess(&canary(stalled("ProgressDeadlineExceeded")), "r1"),
            Assessment::Stalled { code: FAILED, .. }
        ));
        let mut rolled_back = status(Phase::Failed, "r1", Some("r0"));
        rolled_back.set_condition(
            CONDITION_STALLED,
            "True",
            "RolledBack",
            "",
            Utc::now(),
            Some(1),
        );
        assert_eq!(
            assess(&canary(rolled_back), "r2"),
            Assessment::Pending,
            "a rolled-back earlier revision does not stop a new one"
        );
    }
}
