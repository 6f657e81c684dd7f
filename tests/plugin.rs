//! The kubectl plugin as a user runs it: `serin get|wait|promote|abort|retry|pause|resume` as
//! processes against the Kubernetes API server stand-in, with the real `serin controller`
//! process rolling out the Canary (Deployments made ready by a kubelet loop, metrics from a
//! Prometheus API the test controls), and `serin convert` on Flagger manifests. Each test reads
//! what the user sees: exit codes and output, and the cluster's objects.

#[path = "support/apiserver/mod.rs"]
mod apiserver;
#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/promapi.rs"]
mod promapi;

use std::process::{Output, Stdio};
use std::time::Duration;

use apiserver::ApiServer;
use e2e::{
    ControllerProcess, NS, analysis, canary, fixtures, image, kubelet, phase, replicas, set_image,
    wait_event, wait_phase, weights,
};
use promapi::PromApi;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const SERIN: &str = env!("CARGO_BIN_EXE_serin");

/// An API server with the fixtures, a kubelet and a running controller.
struct Cluster {
    api: ApiServer,
    prom: PromApi,
    _kubelet: tokio::task::JoinHandle<()>,
    _controller: ControllerProcess,
}

async fn cluster() -> Cluster {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), false);
    let controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    Cluster {
        api,
        prom,
        _kubelet: kubelet,
        _controller: controller,
    }
}

/// `serin <args> --kubeconfig <the stand-in's> -n test`, killed when dropped.
fn serin(api: &ApiServer, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(SERIN);
    cmd.args(args)
        .arg("--kubeconfig")
        .arg(api.kubeconfig_path())
        .args(["-n", NS])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(api: &ApiServer, args: &[&str]) -> Output {
    serin(api, args).output().await.expect("serin runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn wait_weight(api: &ApiServer, weight: i64, timeout: Duration) -> Value {
    api.wait_for("serin.dev/v1beta1", "Canary", NS, "podinfo", timeout, |c| {
        c["status"]["canaryWeight"] == weight && phase(c) == "Progressing"
    })
    .await
}

/// Every distinct (primary, canary) weight pair of the VirtualRouter from now on.
fn record_weights(api: &ApiServer) -> std::sync::Arc<std::sync::Mutex<Vec<(i64, i64)>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut changes = api.subscribe("appmesh.k8s.aws/v1beta2", "VirtualRouter", NS);
    let handle = api.handle();
    let out = seen.clone();
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            if let Some(w) = weights(&handle) {
                let mut seen = out.lock().unwrap_or_else(|e| e.into_inner());
                if seen.last() != Some(&w) {
                    seen.push(w);
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_succeeds_on_a_first_deploy_and_follows_a_second_image_to_its_promotion() {
    let c = cluster().await;
    let api = &c.api;

    // A first deploy: done once the primary runs the target's revision.
    let first = run(api, &["wait", "podinfo", "--timeout", "60s"]).await;
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    assert!(
        stdout(&first).contains("is live on the primary"),
        "{}",
        show(&first)
    );
    assert_eq!(phase(&canary(api)), "Initialized");

    // CI pushes an image, then waits; a second image arrives during the analysis.
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    let waiting = serin(api, &["wait", "podinfo", "--timeout", "150s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serin wait starts");
    wait_weight(api, 25, Duration::from_secs(40)).await;
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.3").await;
    let done = waiting.wait_with_output().await.expect("serin wait ends");
    let text = stdout(&done);
    assert_eq!(done.status.code(), Some(0), "{}", show(&done));
    assert_eq!(
        image(api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.3",
        "wait returned once the newest image was promoted"
    );
    assert_eq!(phase(&canary(api)), "Succeeded");
    let line = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(line("following it"), "{text}");
    assert!(line("Progressing  weight 25  step 1/2"), "{text}");
    assert!(
        line("event Normal   WeightAdvanced: Advance podinfo.test canary weight 25"),
        "{text}"
    );
    assert!(line("event Normal   Restarted"), "{text}");
    assert!(line("promoted"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_fails_on_rollback_and_times_out_and_retry_runs_the_revision_again() {
    let c = cluster().await;
    let api = &c.api;
    wait_phase(api, "Initialized", Duration::from_secs(30)).await;
    c.prom.set(Some(12.5));
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.2").await;

    let short = run(api, &["wait", "podinfo", "--timeout", "2s"]).await;
    assert_eq!(short.status.code(), Some(2), "{}", show(&short));
    assert!(
        stdout(&short).contains("timed out after 2s"),
        "{}",
        show(&short)
    );

    let failed = run(api, &["wait", "podinfo", "--timeout", "90s"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", show(&failed));
    let text = stdout(&failed);
    assert!(text.contains("was rolled back"), "{text}");
    assert!(
        text.contains(
            "event Warning  CheckFailed: Halt podinfo.test advancement error-rate 12.50 > 1"
        ),
        "{text}"
    );
    assert_eq!(phase(&canary(api)), "Failed");
    assert_eq!(weights(&api.handle()), Some((100, 0)));

    // The revision is healthy after all: run it again without a new image.
    c.prom.set(Some(0.0));
    let retried = run(api, &["retry", "podinfo"]).await;
    assert_eq!(retried.status.code(), Some(0), "{}", show(&retried));
    assert!(
        stdout(&retried).contains("Requested: Retry requested: running podinfo.test again"),
        "{}",
        show(&retried)
    );
    let again = run(api, &["wait", "podinfo", "--timeout", "90s"]).await;
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    assert_eq!(
        image(api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_reports_missing_invalid_and_stalled_canaries_with_exit_code_3() {
    let api = ApiServer::start().await;
    let prom = PromApi::start(Some(0.0)).await;
    let _kubelet = kubelet(&api, Duration::from_millis(300));
    fixtures(&api, prom.url(), analysis(), false);

    let missing = run(&api, &["wait", "backend", "--timeout", "10s"]).await;
    assert_eq!(missing.status.code(), Some(3), "{}", show(&missing));
    assert!(
        stdout(&missing).contains("Canary backend not found in namespace test"),
        "{}",
        show(&missing)
    );

    // A spec the controller would refuse, caught before waiting.
    let mut invalid = canary(&api);
    invalid["metadata"] = json!({"name": "invalid", "namespace": NS});
    invalid["spec"]["analysis"]["iterations"] = json!(5);
    api.put(invalid);
    let out = run(&api, &["wait", "invalid", "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        stdout(&out).contains("spec.analysis: set exactly one of stepWeight, stepWeights"),
        "{}",
        show(&out)
    );
    api.delete("serin.dev/v1beta1", "Canary", NS, "invalid");

    // A reference the controller cannot resolve: it reports Stalled, wait gives up.
    api.delete("serin.dev/v1beta1", "MetricTemplate", NS, "error-rate");
    let _controller = ControllerProcess::start(&api, prom.url(), &["--leader-election=false"]);
    let stalled = run(&api, &["wait", "podinfo", "--timeout", "60s"]).await;
    assert_eq!(stalled.status.code(), Some(3), "{}", show(&stalled));
    assert!(
        stdout(&stalled)
            .contains("stalled: MetricTemplateNotFound: MetricTemplate error-rate.test"),
        "{}",
        show(&stalled)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_rolls_back_within_one_reconcile() {
    let c = cluster().await;
    let api = &c.api;
    wait_phase(api, "Initialized", Duration::from_secs(30)).await;
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    wait_weight(api, 25, Duration::from_secs(40)).await;
    assert_eq!(weights(&api.handle()), Some((75, 25)));

    let out = run(api, &["abort", "podinfo"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("podinfo: Warning  Requested: Abort requested: rolling back podinfo.test"),
        "{text}"
    );
    assert!(
        text.contains("podinfo: phase Failed, canary weight 0"),
        "{text}"
    );
    // Acknowledged means carried out: the reconcile that read the request rolled back.
    assert_eq!(weights(&api.handle()), Some((100, 0)));
    assert_eq!(phase(&canary(api)), "Failed");
    assert_eq!(replicas(api, "podinfo"), 0, "the canary is scaled down");
    wait_event(api, "RolledBack").await;
    assert_eq!(
        image(api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.0"
    );
    let handled = canary(api)["status"]["handledRequest"].clone();
    assert!(
        handled.as_str().is_some_and(|h| h.starts_with("abort 20")),
        "{handled}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_opens_no_gate_when_none_waits_and_promote_full_skips_the_remaining_steps() {
    let c = cluster().await;
    let api = &c.api;
    wait_phase(api, "Initialized", Duration::from_secs(30)).await;
    let seen = record_weights(api);
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    wait_weight(api, 25, Duration::from_secs(40)).await;

    let once = run(api, &["promote", "podinfo"]).await;
    assert_eq!(once.status.code(), Some(0), "{}", show(&once));
    assert!(
        stdout(&once).contains("nothing to do; no gate is waiting"),
        "{}",
        show(&once)
    );

    let started = Instant::now();
    let full = run(api, &["promote", "podinfo", "--full"]).await;
    assert_eq!(full.status.code(), Some(0), "{}", show(&full));
    assert!(
        stdout(&full)
            .contains("Full promotion requested: skipping the remaining steps of podinfo.test"),
        "{}",
        show(&full)
    );
    wait_phase(api, "Succeeded", Duration::from_secs(30)).await;
    println!(
        "promote --full: Succeeded {:.1}s after the request (analysis interval 10s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        image(api, "podinfo-primary"),
        "ghcr.io/stefanprodan/podinfo:6.0.1"
    );
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        seen,
        vec![(100, 0), (75, 25), (100, 0)],
        "weight 50 was skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_new_revision_until_resume() {
    let c = cluster().await;
    let api = &c.api;
    wait_phase(api, "Initialized", Duration::from_secs(30)).await;

    let paused = run(api, &["pause", "podinfo"]).await;
    assert_eq!(paused.status.code(), Some(0), "{}", show(&paused));
    assert!(
        stdout(&paused).contains(
            "podinfo is paused: nothing is reconciled until `kubectl serin resume podinfo`"
        ),
        "{}",
        show(&paused)
    );
    assert_eq!(canary(api)["spec"]["suspend"], true);
    wait_event(api, "Suspended").await;
    let again = run(api, &["pause", "podinfo"]).await;
    assert!(
        stdout(&again).contains("podinfo is already paused"),
        "{}",
        show(&again)
    );

    // A paused Canary refuses requests rather than queueing them silently.
    let refused = run(api, &["promote", "podinfo"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));

    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        phase(&canary(api)),
        "Initialized",
        "nothing moves while paused"
    );
    assert_eq!(replicas(api, "podinfo"), 0);
    assert_eq!(weights(&api.handle()), Some((100, 0)));

    let resumed = run(api, &["resume", "podinfo"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", show(&resumed));
    assert!(
        stdout(&resumed).contains("podinfo is resumed"),
        "{}",
        show(&resumed)
    );
    wait_event(api, "Resumed").await;
    wait_phase(api, "Progressing", Duration::from_secs(15)).await;
}

/// Lines a process prints, with when they arrived.
fn lines(
    child: &mut tokio::process::Child,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, String)> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send((Instant::now(), l)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line containing `needle`, within `timeout`.
async fn line_with(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
    needle: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, l))) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return Some(at);
                }
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_table_and_get_w_shows_each_change_within_a_second() {
    let c = cluster().await;
    let api = &c.api;
    wait_phase(api, "Initialized", Duration::from_secs(30)).await;

    let table = run(api, &["get"]).await;
    assert_eq!(table.status.code(), Some(0), "{}", show(&table));
    let text = stdout(&table);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("NAME      PHASE         WEIGHT   FAILED   STEP   CHECKS   AGE"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("podinfo   Initialized   0        0/2      -      -        "),
        "{text}"
    );
    let all = tokio::process::Command::new(SERIN)
        .args(["get", "-A", "--kubeconfig"])
        .arg(api.kubeconfig_path())
        .output()
        .await
        .expect("serin runs");
    assert_eq!(all.status.code(), Some(0), "{}", show(&all));
    assert!(
        stdout(&all)
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("test        podinfo   Initialized")),
        "{}",
        show(&all)
    );
    let both = serin(api, &["get", "-A"])
        .output()
        .await
        .expect("serin runs");
    assert_eq!(
        both.status.code(),
        Some(2),
        "-A and -n conflict: {}",
        show(&both)
    );
    let missing = run(api, &["get", "nothing"]).await;
    assert_eq!(missing.status.code(), Some(2), "{}", show(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("Canary nothing not found in namespace test")
    );

    // Installed as kubectl-serin, it is a kubectl plugin.
    let bin = tempdir();
    std::os::unix::fs::symlink(SERIN, bin.join("kubectl-serin")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = tokio::process::Command::new("kubectl")
        .args(["serin", "get", "-n", NS])
        .env("PATH", path)
        .env("KUBECONFIG", api.kubeconfig_path())
        .output()
        .await
        .expect("kubectl runs");
    assert_eq!(plugin.status.code(), Some(0), "{}", show(&plugin));
    assert_eq!(
        stdout(&plugin).lines().nth(1).and_then(without_age),
        rows.get(1).copied().and_then(without_age),
        "{}",
        show(&plugin)
    );

    // The live view.
    let mut watch = serin(api, &["get", "podinfo", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("serin get -w starts");
    let mut rx = lines(&mut watch);
    let mut seen = Vec::new();
    assert!(
        line_with(
            &mut rx,
            "podinfo   Initialized",
            Duration::from_secs(10),
            &mut seen
        )
        .await
        .is_some(),
        "{seen:#?}"
    );
    let mut phases = api.subscribe("serin.dev/v1beta1", "Canary", NS);
    set_image(api, "ghcr.io/stefanprodan/podinfo:6.0.1").await;
    let changed = loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), phases.recv())
            .await
            .expect("the controller starts the rollout")
            .expect("watch open");
        if phase(&ev.object) == "Progressing" {
            break Instant::now();
        }
    };
    let shown = line_with(
        &mut rx,
        "podinfo   Progressing",
        Duration::from_secs(5),
        &mut seen,
    )
    .await;
    let shown = shown.unwrap_or_else(|| panic!("no Progressing row: {seen:#?}"));
    let delay = shown.saturating_duration_since(changed);
    println!(
        "get -w showed Progressing {} ms after the status changed",
        delay.as_millis()
    );
    assert!(delay < Duration::from_secs(1), "shown after {delay:?}");
    let event = "NewRevision: New revision detected! Scaling up podinfo.test";
    let shown_event = seen.iter().any(|l| l.contains(event))
        || line_with(&mut rx, event, Duration::from_secs(5), &mut seen)
            .await
            .is_some();
    assert!(shown_event, "the Event is shown as it arrives: {seen:#?}");
    let weight = line_with(
        &mut rx,
        "podinfo   Progressing   25       0/2      1/2",
        Duration::from_secs(40),
        &mut seen,
    )
    .await;
    assert!(weight.is_some(), "{seen:#?}");
    let _ = watch.kill().await;
}

/// A table row without its last column (the age, which ticks between two runs).
fn without_age(row: &str) -> Option<&str> {
    row.rsplit_once(' ').map(|(rest, _)| rest.trim_end())
}

/// A temporary directory, removed at the end of the test process.
fn tempdir() -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "serin-plugin-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn convert_writes_a_serin_manifest_and_reports_what_it_could_not_carry() {
    let dir = tempdir();
    let input = dir.join("flagger.yaml");
    std::fs::write(
        &input,
        r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  provider: appmesh
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service:
    port: 9898
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  analysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 5
    metrics:
      - {name: request-success-rate, thresholdRange: {min: 99}, interval: 1m}
"#,
    )
    .expect("write input");
    let output = dir.join("serin.yaml");
    let out = std::process::Command::new(SERIN)
        .args(["convert", "-f"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("serin runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("flagger.yaml: document 1 (Canary podinfo): spec.service.trafficPolicy: dropped: the DestinationRule traffic policy is Istio only"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.provider: changed: appmesh"),
        "{stderr}"
    );
    let converted = std::fs::read_to_string(&output).expect("output written");
    assert!(
        converted.starts_with("apiVersion: serin.dev/v1beta1\nkind: Canary\n"),
        "{converted}"
    );
    assert!(
        converted.contains("provider: appmesh:v1beta2"),
        "{converted}"
    );
    let valid = std::process::Command::new(SERIN)
        .arg("validate")
        .arg(&output)
        .output()
        .expect("serin runs");
    assert_eq!(
        valid.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );

    let daemonset = dir.join("daemonset.yaml");
    std::fs::write(
        &daemonset,
        "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: agent}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: DaemonSet, name: agent}\n  service: {port: 80}\n  analysis: {interval: 1m, iterations: 3}\n",
    )
    .expect("write input");
    let out = std::process::Command::new(SERIN)
        .args(["convert", "-f"])
        .arg(&daemonset)
        .output()
        .expect("serin runs");
    assert_eq!(out.status.code(), Some(1), "an object to edit");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.targetRef.kind: invalid: DaemonSet targets are not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = std::process::Command::new(SERIN)
        .args(["convert", "-f"])
        .arg(dir.join("absent.yaml"))
        .output()
        .expect("serin runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.yaml: cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}
