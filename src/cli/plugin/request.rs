//! Writes on a Canary that the controller acknowledges: manual requests (annotation
//! `serin.dev/request: "<verb> <id>"`, acknowledged in `status.handledRequest`, answered by a
//! `Requested` or `InvalidRequest` Event) and `spec.suspend` (acknowledged through
//! `status.observedGeneration` and the `Reconciling` condition).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::time::Instant;

use super::{KubeArgs, PluginError};
use crate::api::{CONDITION_RECONCILING, Canary, REQUEST_ANNOTATION};

/// Default time to wait for the controller's acknowledgement.
pub const DEFAULT_ACK_TIMEOUT: &str = "30s";

// One update at a time, moved straight out of the stream: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Update {
    Canary(Result<watcher::Event<Canary>, watcher::Error>),
    Event(Result<watcher::Event<KubeEvent>, watcher::Error>),
}

async fn get(api: &Api<Canary>, ns: &str, name: &str) -> Result<Canary, PluginError> {
    api.get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
}

fn phase_line(c: &Canary) -> String {
    match &c.status {
        Some(s) => format!(
            "{}: phase {}, canary weight {}",
            c.metadata.name.as_deref().unwrap_or(""),
            s.phase,
            s.canary_weight
        ),
        None => format!(
            "{}: not reconciled yet",
            c.metadata.name.as_deref().unwrap_or("")
        ),
    }
}

/// Writes the request `verb` on Canary `name`, then waits up to `timeout` for the controller
/// to carry it out and prints the Event it recorded and the phase that followed. Exit code 0
/// when carried out, 1 when the controller rejected it or did not answer in time.
pub async fn send(
    kube: &KubeArgs,
    name: &str,
    verb: &str,
    timeout: Duration,
) -> Result<u8, PluginError> {
    let (client, ns) = super::connect(kube).await?;
    let deadline = Instant::now() + timeout;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &ns);
    let canary = get(&canaries, &ns, name).await?;
    if canary.spec.suspended() {
        println!(
            "{name} is paused (spec.suspend: true) and requests wait until it is resumed: run `kubectl serin resume {name}` first"
        );
        return Ok(1);
    }
    let pending = canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_ANNOTATION))
        .filter(|v| {
            canary
                .status
                .as_ref()
                .and_then(|s| s.handled_request.as_ref())
                != Some(*v)
        });
    if let Some(p) = pending {
        println!("{name}: replacing the request '{p}' that was not carried out yet");
    }

    // The Events already recorded, so that the answer to this request can be told apart.
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), &ns);
    let mut event_stream = watcher(
        events,
        watcher::Config::default().fields(&super::canary_events_selector(Some(name))),
    )
    .default_backoff()
    .boxed();
    let mut known: HashSet<(String, i32)> = HashSet::new();
    let mut with_events = true;
    loop {
        let next = tokio::time::timeout_at(deadline, event_stream.next()).await;
        match next {
            Ok(Some(Ok(watcher::Event::InitApply(e)))) => {
                known.insert(super::event_key(&e));
            }
            Ok(Some(Ok(watcher::Event::InitDone))) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                // Without Events the acknowledgement in status still tells the outcome.
                eprintln!("serin: cannot list the Canary's Events, going on without them: {e}");
                with_events = false;
                break;
            }
            Ok(None) | Err(_) => {
                println!("{name}: cannot list the Canary's Events within the timeout");
                return Ok(1);
            }
        }
    }

    let value = format!(
        "{verb} {}",
        Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
    );
    let patch = json!({"metadata": {"annotations": {REQUEST_ANNOTATION: value}}});
    canaries
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    println!("{name}: requested {verb} ({REQUEST_ANNOTATION}: {value})");

    let mut canary_stream = watcher(
        canaries,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .map(Update::Canary)
    .boxed();
    let mut updates = futures::stream::select(&mut canary_stream, event_stream.map(Update::Event));
    let mut acknowledged: Option<Canary> = None;
    let mut answer: Option<KubeEvent> = None;
    let mut answer_deadline = deadline;
    loop {
        if let (Some(c), false) = (&acknowledged, with_events) {
            println!("{name}: the controller carried the request out");
            println!("{}", phase_line(c));
            return Ok(0);
        }
        if let (Some(c), Some(e)) = (&acknowledged, &answer) {
            println!("{name}: {}", super::event_text(e));
            println!("{}", phase_line(c));
            return Ok(if e.reason.as_deref() == Some("InvalidRequest") {
                1
            } else {
                0
            });
        }
        let update = match tokio::time::timeout_at(answer_deadline, updates.next()).await {
            Ok(Some(u)) => u,
            Ok(None) | Err(_) => break,
        };
        match update {
            Update::Canary(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => {
                let handled = c.status.as_ref().and_then(|s| s.handled_request.as_deref());
                if handled == Some(value.as_str()) && acknowledged.is_none() {
                    // The Event is recorded right after the status; give it a moment.
                    answer_deadline = deadline.max(Instant::now() + Duration::from_secs(5));
                    acknowledged = Some(c);
                } else if acknowledged.is_some() {
                    acknowledged = Some(c);
                }
            }
            Update::Canary(Ok(watcher::Event::Delete(_))) => {
                println!("{name}: the Canary was deleted before the request was carried out");
                return Ok(1);
            }
            Update::Event(Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e))) => {
                if !known.insert(super::event_key(&e)) {
                    continue;
                }
                match e.reason.as_deref() {
                    Some("Requested" | "InvalidRequest") if answer.is_none() => answer = Some(e),
                    _ => {}
                }
            }
            Update::Canary(Ok(_)) | Update::Event(Ok(_)) => {}
            Update::Canary(Err(e)) | Update::Event(Err(e)) => {
                eprintln!("serin: watch interrupted, retrying: {e}");
            }
        }
    }
    match acknowledged {
        Some(c) => {
            println!("{name}: the controller carried the request out");
            println!("{}", phase_line(&c));
            Ok(0)
        }
        None => {
            println!(
                "{name}: the controller did not carry the request out within {}; is `serin controller` running? The annotation stays and is carried out once when it runs",
                crate::api::duration::format(
                    chrono::Duration::from_std(timeout).unwrap_or_default()
                )
            );
            Ok(1)
        }
    }
}

/// Sets `spec.suspend` on Canary `name` and waits up to `timeout` for the controller to see it.
/// Exit code 0 when acknowledged (or nothing to change), 1 when the controller did not answer.
pub async fn set_suspend(
    kube: &KubeArgs,
    name: &str,
    suspend: bool,
    timeout: Duration,
) -> Result<u8, PluginError> {
    let (client, ns) = super::connect(kube).await?;
    let deadline = Instant::now() + timeout;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &ns);
    let canary = get(&canaries, &ns, name).await?;
    let (done, undone) = if suspend {
        ("paused", "resumed")
    } else {
        ("resumed", "paused")
    };
    if canary.spec.suspended() == suspend {
        println!("{name} is already {done}");
        return Ok(0);
    }
    let patch = json!({"spec": {"suspend": suspend}});
    let patched = canaries
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = patched.metadata.generation.unwrap_or(0);
    println!("{name}: spec.suspend set to {suspend}");
    let mut stream = watcher(
        canaries,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .boxed();
    loop {
        let c = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))) => c,
            Ok(Some(Ok(watcher::Event::Delete(_)))) => {
                println!("{name}: the Canary was deleted");
                return Ok(1);
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => {
                eprintln!("serin: watch interrupted, retrying: {e}");
                continue;
            }
            Ok(None) | Err(_) => {
                println!(
                    "{name}: the controller has not seen the change within {}; is `serin controller` running? It stays {done} and is {undone} only by `kubectl serin {}`",
                    crate::api::duration::format(
                        chrono::Duration::from_std(timeout).unwrap_or_default()
                    ),
                    if suspend { "resume" } else { "pause" }
                );
                return Ok(1);
            }
        };
        let Some(s) = &c.status else { continue };
        let seen = s.observed_generation.unwrap_or(0) >= generation;
        let suspended = s
            .condition(CONDITION_RECONCILING)
            .is_some_and(|r| r.reason == "Suspended");
        if seen && suspended == suspend {
            if suspend {
                println!(
                    "{name} is paused: nothing is reconciled until `kubectl serin resume {name}`"
                );
            } else {
                println!("{name} is resumed");
            }
            println!("{}", phase_line(&c));
            return Ok(0);
        }
    }
}
