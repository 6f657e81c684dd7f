//! `serin loadtester`: an HTTP server for Canary webhooks, compatible with Flagger's load
//! tester endpoints. It keeps manual gates per Canary (`/gate/*`, `/rollback/*`, in memory),
//! and runs tasks named by a webhook's metadata (`/`): a built-in HTTP load generator with
//! success-rate and latency thresholds, and commands whose executables are on an allow-list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;

use crate::hooks::http;

/// Largest webhook payload accepted.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest command output kept (stdout, and stderr of each stage).
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Bounds of the load generator's settings.
const MAX_RPS: f64 = 5000.0;
const MAX_CONCURRENCY: usize = 512;

/// Arguments of `serin loadtester`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtesterArgs {
    /// Port to listen on; 0 picks a free port. The address is printed on stdout once listening.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// An executable that `cmd`, `bash`, `kubectl` and `helm` tasks may run: a name looked up
    /// on PATH, or an absolute path. Repeat for more; without any, only load tests and gates run.
    #[arg(long = "allow-cmd", value_name = "EXECUTABLE")]
    pub allow_cmd: Vec<String>,
    /// Longest a task may run before it is stopped, for example 10m.
    #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Tasks (commands and load tests) running at once; more are answered 429.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_tasks: u32,
    /// Serve only payloads from these namespaces (repeat for more); others are answered 403.
    /// Default: every namespace.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::api::duration::parse(s)?
        .to_std()
        .map_err(|_| format!("{s}: a task timeout must be positive"))
}

/// What the server allows.
#[derive(Clone, Debug)]
pub struct Config {
    pub allow_cmd: Vec<String>,
    pub task_timeout: Duration,
    pub max_tasks: usize,
    pub namespaces: Vec<String>,
}

impl From<&LoadtesterArgs> for Config {
    fn from(a: &LoadtesterArgs) -> Config {
        Config {
            allow_cmd: a.allow_cmd.clone(),
            task_timeout: a.timeout,
            max_tasks: a.max_tasks as usize,
            namespaces: a.namespaces.clone(),
        }
    }
}

/// Runs the load tester until SIGINT or SIGTERM; returns the exit code.
pub fn run(args: &LoadtesterArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serin loadtester: cannot start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        let addr = SocketAddr::new(args.bind, args.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "serin loadtester: cannot listen on {addr}: {e}; choose another --port or --bind"
                );
                return 1;
            }
        };
        match listener.local_addr() {
            Ok(local) => {
                use std::io::Write;
                println!("serin loadtester listening on {local}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => eprintln!("serin loadtester: {e}"),
        }
        match serve(listener, Config::from(args), shutdown_signal()).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("serin loadtester: {e}");
                1
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves the load tester on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config).map_err(std::io::Error::other)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The load tester's routes.
pub fn router(config: Config) -> Result<Router, String> {
    let state = Arc::new(Tester {
        tasks: Arc::new(Semaphore::new(config.max_tasks.max(1))),
        config,
        gates: Mutex::new(HashMap::new()),
        running: Arc::new(Mutex::new(HashSet::new())),
        verifying: http::client(true, None)?,
        insecure: http::client(false, None)?,
    });
    Ok(Router::new()
        .route("/healthz", any(|| async { "OK" }))
        .route(
            "/gate/approve",
            any(|| async { (StatusCode::OK, "Approved") }),
        )
        .route(
            "/gate/halt",
            any(|| async { (StatusCode::FORBIDDEN, "Forbidden") }),
        )
        .route("/gate/check", any(gate_check))
        .route("/gate/open", any(gate_open))
        .route("/gate/close", any(gate_close))
        .route("/rollback/check", any(rollback_check))
        .route("/rollback/open", any(rollback_open))
        .route("/rollback/close", any(rollback_close))
        .route("/", any(task))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(state))
}

struct Tester {
    config: Config,
    /// Gate state by `name.namespace` (confirm gates) and `rollback.name.namespace`.
    gates: Mutex<HashMap<String, bool>>,
    tasks: Arc<Semaphore>,
    /// Background `cmd` tasks running, by canary and command.
    running: Arc<Mutex<HashSet<String>>>,
    verifying: reqwest::Client,
    insecure: reqwest::Client,
}

type Shared = Arc<Tester>;

/// The webhook payload, as far as the load tester reads it.
#[derive(Deserialize, Debug)]
struct Payload {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// An error answer: status and a message for the webhook's caller (and its Events).
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(msg: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.into())
}

impl Tester {
    fn payload(&self, body: &Bytes) -> Result<Payload, Failure> {
        let p: Payload = serde_json::from_slice(body).map_err(|e| {
            bad_request(format!(
                "the body is not a webhook payload ({e}); send JSON like {{\"name\":\"podinfo\",\"namespace\":\"test\"}}"
            ))
        })?;
        if p.name.is_empty() || p.namespace.is_empty() {
            return Err(bad_request(
                "the payload needs name and namespace, for example {\"name\":\"podinfo\",\"namespace\":\"test\"}",
            ));
        }
        if !self.config.namespaces.is_empty() && !self.config.namespaces.contains(&p.namespace) {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                format!(
                    "namespace {} is not served by this load tester (--namespace)",
                    p.namespace
                ),
            ));
        }
        Ok(p)
    }

    fn gate(&self, key: &str) -> bool {
        let gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        gates.get(key).copied().unwrap_or(false)
    }

    fn set_gate(&self, key: String, open: bool) {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        gates.insert(key, open);
    }
}

fn gate_key(p: &Payload) -> String {
    format!("{}.{}", p.name, p.namespace)
}

fn rollback_key(p: &Payload) -> String {
    format!("rollback.{}.{}", p.name, p.namespace)
}

fn check(t: &Tester, body: &Bytes, key: fn(&Payload) -> String) -> Result<Response, Failure> {
    let p = t.payload(body)?;
    Ok(if t.gate(&key(&p)) {
        (StatusCode::OK, "Approved").into_response()
    } else {
        (StatusCode::FORBIDDEN, "Forbidden").into_response()
    })
}

fn set(
    t: &Tester,
    body: &Bytes,
    key: fn(&Payload) -> String,
    open: bool,
    what: &str,
) -> Result<Response, Failure> {
    let p = t.payload(body)?;
    let k = key(&p);
    t.set_gate(k, open);
    let state = if open { "opened" } else { "closed" };
    tracing::info!(canary = %format!("{}/{}", p.namespace, p.name), "{what} {state}");
    Ok((StatusCode::ACCEPTED, format!("{what} {state}")).into_response())
}

async fn gate_check(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    check(&t, &body, gate_key)
}

async fn gate_open(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    set(&t, &body, gate_key, true, "Gate")
}

async fn gate_close(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    set(&t, &body, gate_key, false, "Gate")
}

async fn rollback_check(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    check(&t, &body, rollback_key)
}

async fn rollback_open(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    set(&t, &body, rollback_key, true, "Rollback gate")
}

async fn rollback_close(State(t): State<Shared>, body: Bytes) -> Result<Response, Failure> {
    set(&t, &body, rollback_key, false, "Rollback gate")
}

/// `/`: runs the task the metadata names.
async fn task(
    State(t): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let p = t.payload(&body)?;
    if p.metadata.is_empty() {
        return Err(bad_request(
            "metadata not found in payload: set the webhook's metadata, for example {type: load, url: http://podinfo-canary.test:9898/}",
        ));
    }
    let kind = p.metadata.get("type").map_or("cmd", |s| s.trim());
    let canary = format!("{}/{}", p.namespace, p.name);
    match kind {
        "load" => {
            let spec = LoadSpec::from_metadata(&p.metadata, t.config.task_timeout)?;
            let permit = acquire(&t)?;
            tracing::info!(%canary, task = "load", url = %spec.url, rps = spec.rps, duration = ?spec.duration, "load test started");
            let report = generate_load(&t, &spec).await;
            drop(permit);
            let missed = spec.missed(&report);
            tracing::info!(%canary, task = "load", requests = report.requests, success_rate = report.success_rate(), p50_ms = report.p50_ms(), p99_ms = report.p99_ms(), passed = missed.is_empty(), "load test finished");
            let wants_json = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/json"));
            let status = if missed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::PRECONDITION_FAILED
            };
            Ok(if wants_json {
                (
                    status,
                    [(header::CONTENT_TYPE, "application/json")],
                    report.json(&missed).to_string(),
                )
                    .into_response()
            } else {
                (status, report.summary(&missed)).into_response()
            })
        }
        "cmd" | "bash" | "kubectl" | "helm" | "helmv3" => {
            let cmd = p.metadata.get("cmd").map(|c| c.trim()).unwrap_or_default();
            if cmd.is_empty() {
                return Err(bad_request(format!(
                    "metadata.cmd is missing: a {kind} task runs the command in metadata.cmd"
                )));
            }
            let line = match kind {
                "kubectl" => format!("kubectl {cmd}"),
                "helm" | "helmv3" => format!("helm {cmd}"),
                _ => cmd.to_string(),
            };
            let stages =
                parse_command(&line).map_err(|e| bad_request(format!("metadata.cmd: {e}")))?;
            for stage in &stages {
                allowed(&t.config.allow_cmd, &stage[0])
                    .map_err(|e| Failure(StatusCode::FORBIDDEN, e))?;
            }
            let flag = |k: &str| p.metadata.get(k).is_some_and(|v| v.trim() == "true");
            if kind == "cmd" {
                run_in_background(&t, canary, line, stages, flag("logCmdOutput"))
            } else {
                let permit = acquire(&t)?;
                tracing::info!(%canary, task = kind, command = %stages[0][0], "command started");
                let started = Instant::now();
                let out = run_pipeline(&stages, t.config.task_timeout).await;
                drop(permit);
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match out {
                    Ok(out) => {
                        tracing::info!(%canary, task = kind, elapsed_ms, "command succeeded");
                        let body = if flag("returnCmdOutput") {
                            String::from_utf8_lossy(&out.stdout).into_owned()
                        } else {
                            String::new()
                        };
                        Ok((StatusCode::OK, body).into_response())
                    }
                    Err(e) => {
                        tracing::warn!(%canary, task = kind, elapsed_ms, error = %e, "command failed");
                        Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, e))
                    }
                }
            }
        }
        "concord" | "ngrinder" => Err(bad_request(format!(
            "task type {kind} is not supported by serin loadtester; use type load, or type bash with an allowed executable"
        ))),
        other => Err(bad_request(format!(
            "unknown task type {other:?} in metadata.type: use load, cmd, bash, kubectl or helm"
        ))),
    }
}

fn acquire(t: &Tester) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
    t.tasks.clone().try_acquire_owned().map_err(|_| {
        Failure(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} tasks are running, the most this load tester runs at once (--max-tasks); try again later",
                t.config.max_tasks
            ),
        )
    })
}

/// Flagger's asynchronous `cmd`: answers 202 at once and runs the command in the background;
/// the same command for the same Canary is not started twice while it runs.
fn run_in_background(
    t: &Shared,
    canary: String,
    line: String,
    stages: Vec<Vec<String>>,
    log_output: bool,
) -> Result<Response, Failure> {
    let key = format!("{canary} {line}");
    {
        let mut running = t.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.contains(&key) {
            return Ok((StatusCode::ACCEPTED, "task already running").into_response());
        }
        let permit = acquire(t)?;
        running.insert(key.clone());
        let running = t.running.clone();
        let timeout = t.config.task_timeout;
        tokio::spawn(async move {
            tracing::info!(%canary, task = "cmd", command = %stages[0][0], "command started");
            let started = Instant::now();
            let out = run_pipeline(&stages, timeout).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match out {
                Ok(out) if log_output => {
                    tracing::info!(%canary, task = "cmd", elapsed_ms, output = %String::from_utf8_lossy(&out.stdout), "command succeeded")
                }
                Ok(_) => tracing::info!(%canary, task = "cmd", elapsed_ms, "command succeeded"),
                Err(e) => {
                    tracing::warn!(%canary, task = "cmd", elapsed_ms, error = %e, "command failed")
                }
            }
            drop(permit);
            running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
    }
    Ok((StatusCode::ACCEPTED, "task accepted").into_response())
}

// ---- commands -----------------------------------------------------------------------------

/// Splits a command line into pipeline stages of words, with shell quoting (`'…'`, `"…"`,
/// backslash) and `|`, but no other shell syntax: commands run without a shell, so every
/// executable of a pipeline can be checked against the allow-list.
pub fn parse_command(line: &str) -> Result<Vec<Vec<String>>, String> {
    let unsupported = |c: char| {
        format!(
            "shell syntax '{c}' is not supported: commands run without a shell (only quoting and '|' pipelines); put the logic in a script and allow its interpreter"
        )
    };
    let mut stages = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote (') is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote (\") is not closed".into()),
                        },
                        Some(c @ ('$' | '`')) => return Err(unsupported(c)),
                        Some(c) => word.push(c),
                        None => return Err("a double quote (\") is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("the command ends with a backslash".into()),
            },
            '|' => {
                if chars.peek() == Some(&'|') {
                    return Err(unsupported('|').replace("'|' is", "'||' is"));
                }
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if words.is_empty() {
                    return Err("a '|' has no command before it".into());
                }
                stages.push(std::mem::take(&mut words));
            }
            ';' | '&' | '>' | '<' | '`' | '$' | '(' | ')' | '\n' | '\r' => {
                return Err(unsupported(c));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(if stages.is_empty() {
            "the command is empty".into()
        } else {
            "a '|' has no command after it".into()
        });
    }
    stages.push(words);
    Ok(stages)
}

/// Whether `exe` may run: a bare name must be allowed by name and found on PATH, a path must be
/// allowed as that exact path.
fn allowed(allow: &[String], exe: &str) -> Result<(), String> {
    if !allow.iter().any(|a| a == exe) {
        return Err(if allow.is_empty() {
            format!(
                "{exe} is not allowed: this load tester runs no commands (start it with --allow-cmd {exe} to allow it)"
            )
        } else {
            format!(
                "{exe} is not allowed: this load tester runs only {} (--allow-cmd)",
                allow.join(", ")
            )
        });
    }
    if exe.contains('/') {
        return Ok(());
    }
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(exe).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!(
            "{exe} is allowed but not installed: it is not found on the load tester's PATH"
        ))
    }
}

struct CmdOutput {
    stdout: Vec<u8>,
}

/// Runs the stages as a pipeline within `timeout`; the last stage's exit status decides, as in
/// a shell. Output beyond [`MAX_OUTPUT_BYTES`] is drained and dropped.
async fn run_pipeline(stages: &[Vec<String>], timeout: Duration) -> Result<CmdOutput, String> {
    let mut children = Vec::new();
    let mut stderrs = Vec::new();
    let mut previous: Option<Stdio> = None;
    for (i, stage) in stages.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(&stage[0]);
        cmd.args(&stage[1..])
            .stdin(previous.take().unwrap_or_else(Stdio::null))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", stage[0]))?;
        if let Some(err) = child.stderr.take() {
            stderrs.push(tokio::spawn(read_bounded(err)));
        }
        if i + 1 < stages.len()
            && let Some(out) = child.stdout.take()
        {
            previous = Some(
                out.try_into()
                    .map_err(|e| format!("cannot connect the pipeline after {}: {e}", stage[0]))?,
            );
        }
        children.push(child);
    }
    let last_out = children
        .last_mut()
        .and_then(|c| c.stdout.take())
        .map(|out| tokio::spawn(read_bounded(out)));
    let wait_all = async {
        let mut last = None;
        for child in &mut children {
            last = Some(child.wait().await);
        }
        last
    };
    let status = match tokio::time::timeout(timeout, wait_all).await {
        Ok(Some(Ok(status))) => status,
        Ok(Some(Err(e))) => return Err(format!("waiting for the command failed: {e}")),
        Ok(None) => return Err("the command is empty".into()),
        Err(_) => {
            return Err(format!(
                "the command ran longer than {} (--timeout) and was stopped",
                crate::api::duration::format(
                    chrono::Duration::from_std(timeout).unwrap_or_default()
                )
            ));
        }
    };
    let stdout = match last_out {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut stderr = Vec::new();
    for h in stderrs {
        stderr.extend(h.await.unwrap_or_default());
    }
    if status.success() {
        Ok(CmdOutput { stdout })
    } else {
        let code = status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
        let detail = http::quote(if stderr.is_empty() { &stdout } else { &stderr });
        let exe = stages.last().map_or("", |s| s[0].as_str());
        Err(if detail.is_empty() {
            format!("command {exe} exited with {code} and printed nothing")
        } else {
            format!("command {exe} exited with {code}: {detail}")
        })
    }
}

/// Reads up to [`MAX_OUTPUT_BYTES`], then drains the rest so the writer never blocks.
async fn read_bounded(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

// ---- the load generator ---------------------------------------------------------------------

/// A load test, from a webhook's metadata.
#[derive(Debug, Clone)]
struct LoadSpec {
    url: reqwest::Url,
    method: reqwest::Method,
    headers: Vec<(String, String)>,
    body: Option<String>,
    rps: f64,
    duration: Duration,
    concurrency: usize,
    request_timeout: Duration,
    insecure: bool,
    min_success_rate: Option<f64>,
    max_p50: Option<Duration>,
    max_p99: Option<Duration>,
}

impl LoadSpec {
    fn from_metadata(
        m: &BTreeMap<String, String>,
        max_duration: Duration,
    ) -> Result<LoadSpec, Failure> {
        let get = |k: &str| m.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let url = get("url").ok_or_else(|| {
            bad_request("metadata.url is missing: a load task needs the URL to send requests to")
        })?;
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                bad_request(format!(
                    "metadata.url: {url:?} is not an absolute http:// or https:// URL"
                ))
            })?;
        let method =
            match get("method") {
                None => reqwest::Method::GET,
                Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(
                    |_| bad_request(format!("metadata.method: {m:?} is not an HTTP method")),
                )?,
            };
        let number = |k: &str, what: &str| -> Result<Option<f64>, Failure> {
            match get(k) {
                None => Ok(None),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        bad_request(format!("metadata.{k}: expected {what}, got {v:?}"))
                    }),
            }
        };
        let duration = |k: &str| -> Result<Option<Duration>, Failure> {
            match get(k) {
                None => Ok(None),
                Some(v) => crate::api::duration::parse(v)
                    .ok()
                    .and_then(|d| d.to_std().ok())
                    .filter(|d| !d.is_zero())
                    .map(Some)
                    .ok_or_else(|| {
                        bad_request(format!(
                            "metadata.{k}: expected a duration like 500ms, 30s or 1m, got {v:?}"
                        ))
                    }),
            }
        };
        let rps = match number("rps", "requests per second, for example 20")? {
            Some(r) => Some(r),
            None => number("rate", "requests per second, for example 20")?,
        }
        .unwrap_or(10.0);
        if rps <= 0.0 || rps > MAX_RPS {
            return Err(bad_request(format!(
                "metadata.rps: {rps} is out of range; use more than 0 and at most {MAX_RPS}"
            )));
        }
        let total = duration("duration")?.unwrap_or(Duration::from_secs(10));
        if total > max_duration {
            return Err(bad_request(format!(
                "metadata.duration is longer than this load tester's task timeout ({}); shorten it",
                crate::api::duration::format(
                    chrono::Duration::from_std(max_duration).unwrap_or_default()
                )
            )));
        }
        let concurrency = number(
            "concurrency",
            "a number of parallel requests, for example 4",
        )?
        .unwrap_or(4.0);
        if !(1.0..=MAX_CONCURRENCY as f64).contains(&concurrency) || concurrency.fract() != 0.0 {
            return Err(bad_request(format!(
                "metadata.concurrency: {concurrency} is out of range; use a whole number from 1 to {MAX_CONCURRENCY}"
            )));
        }
        let mut headers = Vec::new();
        for line in get("headers").unwrap_or_default().lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .filter(|(n, _)| reqwest::header::HeaderName::from_bytes(n.trim().as_bytes()).is_ok())
                .ok_or_else(|| {
                    bad_request(format!(
                        "metadata.headers: {line:?} is not a header; write one 'Name: value' per line"
                    ))
                })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let min_success_rate = number("minSuccessRate", "a percentage, for example 99")?;
        Ok(LoadSpec {
            url,
            method,
            headers,
            body: m.get("body").cloned(),
            rps,
            duration: total,
            concurrency: concurrency as usize,
            request_timeout: duration("requestTimeout")?.unwrap_or(Duration::from_secs(5)),
            insecure: get("disableTLS") == Some("true"),
            min_success_rate,
            max_p50: duration("maxP50")?,
            max_p99: duration("maxP99")?,
        })
    }

    /// The thresholds the report misses, in words.
    fn missed(&self, r: &LoadReport) -> Vec<String> {
        let mut out = Vec::new();
        if r.requests == 0 {
            out.push("no request completed".to_string());
            return out;
        }
        if let Some(min) = self.min_success_rate
            && r.success_rate() < min
        {
            out.push(format!(
                "success rate {:.2}% is below minSuccessRate {min}%",
                r.success_rate()
            ));
        }
        for (name, limit, got) in [
            ("maxP50", self.max_p50, r.p50_ms()),
            ("maxP99", self.max_p99, r.p99_ms()),
        ] {
            if let Some(limit) = limit
                && got > limit.as_secs_f64() * 1000.0
            {
                out.push(format!(
                    "{} {got:.1}ms is above {name} {}",
                    &name[3..].to_lowercase(),
                    crate::api::duration::format(
                        chrono::Duration::from_std(limit).unwrap_or_default()
                    )
                ));
            }
        }
        out
    }
}

/// What a load test measured.
#[derive(Debug, Default)]
struct LoadReport {
    requests: u64,
    succeeded: u64,
    /// Latencies of completed requests, sorted.
    latencies: Vec<Duration>,
    /// Failures by kind: `500`, `timeout`, `connection`.
    failures: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl LoadReport {
    fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.succeeded as f64 * 100.0 / self.requests as f64
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn p50_ms(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(99.0)
    }

    fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }

    fn summary(&self, missed: &[String]) -> String {
        let failures = if self.failures.is_empty() {
            String::new()
        } else {
            format!(
                ", failures: {}",
                self.failures
                    .iter()
                    .map(|(k, n)| format!("{k} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let verdict = if missed.is_empty() {
            String::new()
        } else {
            format!("load test missed its thresholds: {}; ", missed.join("; "))
        };
        format!(
            "{verdict}{} requests in {:.1}s ({:.1} rps): success rate {:.2}%, p50 {:.1}ms, p99 {:.1}ms{failures}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.success_rate(),
            self.p50_ms(),
            self.p99_ms()
        )
    }

    fn json(&self, missed: &[String]) -> serde_json::Value {
        serde_json::json!({
            "passed": missed.is_empty(),
            "missed": missed,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "successRate": self.success_rate(),
            "p50Ms": self.p50_ms(),
            "p99Ms": self.p99_ms(),
            "rps": self.rps(),
            "elapsedSeconds": self.elapsed.as_secs_f64(),
            "failures": self.failures,
        })
    }
}

/// Sends `spec.rps` requests a second for `spec.duration`, at most `spec.concurrency` at once.
/// A request succeeds when it gets an answer below 500 within `requestTimeout`.
async fn generate_load(t: &Tester, spec: &LoadSpec) -> LoadReport {
    let client = if spec.insecure {
        &t.insecure
    } else {
        &t.verifying
    };
    let slots = Arc::new(Semaphore::new(spec.concurrency));
    let mut running = tokio::task::JoinSet::new();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / spec.rps);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = LoadReport::default();
    let record =
        |report: &mut LoadReport,
         r: Result<(Result<u16, String>, Duration), tokio::task::JoinError>| {
            report.requests += 1;
            match r {
                Ok((Ok(code), latency)) => {
                    report.latencies.push(latency);
                    if code < 500 {
                        report.succeeded += 1;
                    } else {
                        *report.failures.entry(code.to_string()).or_default() += 1;
                    }
                }
                Ok((Err(kind), _)) => *report.failures.entry(kind).or_default() += 1,
                Err(_) => *report.failures.entry("aborted".into()).or_default() += 1,
            }
        };
    loop {
        ticks.tick().await;
        if started.elapsed() >= spec.duration {
            break;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        while let Some(done) = running.try_join_next() {
            record(&mut report, done);
        }
        let mut req = client
            .request(spec.method.clone(), spec.url.clone())
            .timeout(spec.request_timeout);
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        if let Some(b) = &spec.body {
            req = req.body(b.clone());
        }
        running.spawn(async move {
            let begin = Instant::now();
            let outcome = match req.send().await {
                Ok(mut resp) => {
                    let code = resp.status().as_u16();
                    loop {
                        match resp.chunk().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(code),
                            Err(e) if e.is_timeout() => break Err("timeout".to_string()),
                            Err(_) => break Err("broken response".to_string()),
                        }
                    }
                }
                Err(e) if e.is_timeout() => Err("timeout".to_string()),
                Err(_) => Err("connection".to_string()),
            };
            drop(slot);
            (outcome, begin.elapsed())
        });
    }
    while let Some(done) = running.join_next().await {
        record(&mut report, done);
    }
    report.elapsed = started.elapsed();
    report.latencies.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_into_pipelines_with_shell_quoting() {
        assert_eq!(
            parse_command("curl -sd 'test' http://podinfo-canary.test:9898/token | grep token")
                .unwrap(),
            vec![
                vec![
                    "curl",
                    "-sd",
                    "test",
                    "http://podinfo-canary.test:9898/token"
                ],
                vec!["grep", "token"]
            ]
        );
        assert_eq!(
            parse_command(r#"echo "a \"b\" c" '' x\ y"#).unwrap(),
            vec![vec!["echo", r#"a "b" c"#, "", "x y"]]
        );
    }

    #[test]
    fn shell_syntax_beyond_pipes_is_refused_with_the_reason() {
        for bad in [
            "curl x; rm -rf /",
            "curl x && echo ok",
            "curl x || true",
            "curl x > /tmp/out",
            "echo $HOME",
            "echo \"$(id)\"",
            "echo `id`",
            "curl x &",
        ] {
            let e = parse_command(bad).unwrap_err();
            assert!(e.contains("not supported"), "{bad}: {e}");
        }
        assert!(
            parse_command("echo 'open")
                .unwrap_err()
                .contains("not closed")
        );
        assert!(parse_command("| grep x").unwrap_err().contains("before"));
        assert!(parse_command("curl x |").unwrap_err().contains("after"));
        assert!(parse_command("   ").unwrap_err().contains("empty"));
        assert_eq!(
            parse_command("echo '$HOME; ok'").unwrap(),
            vec![vec!["echo", "$HOME; ok"]]
        );
    }

    #[test]
    fn only_allowed_executables_run() {
        let allow = vec![
            "sh".to_string(),
            "/bin/true".to_string(),
            "no-such-tool-xyz".to_string(),
        ];
        assert!(allowed(&allow, "sh").is_ok());
        assert!(allowed(&allow, "/bin/true").is_ok());
        assert!(
            allowed(&allow, "/tmp/sh")
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(
            allowed(&allow, "curl")
                .unwrap_err()
                .contains("runs only sh, /bin/true")
        );
        assert!(
            allowed(&allow, "no-such-tool-xyz")
                .unwrap_err()
                .contains("not installed")
        );
        assert!(
            allowed(&[], "curl")
                .unwrap_err()
                .contains("--allow-cmd curl")
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let report = LoadReport {
            requests: 100,
            succeeded: 90,
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Default::default()
        };
        assert_eq!(report.p50_ms(), 50.0);
        assert_eq!(report.p99_ms(), 99.0);
        assert_eq!(report.success_rate(), 90.0);
    }
}
