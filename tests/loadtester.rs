//! `serin loadtester` as a process on 127.0.0.1: Flagger's gate endpoints, the built-in load
//! generator against a real backend, allow-listed commands, and bad input.

#[path = "support/http.rs"]
mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Loadtester, Reply, TestServer, client};
use serde_json::{Value, json};

fn payload(metadata: Value) -> Value {
    json!({"name": "podinfo", "namespace": "test", "phase": "Progressing", "metadata": metadata})
}

fn podinfo() -> Value {
    json!({"name": "podinfo", "namespace": "test", "phase": "Initialized"})
}

#[tokio::test]
async fn gates_are_closed_until_opened_and_kept_per_canary() {
    let lt = Loadtester::start(&[]);
    assert_eq!(
        lt.post("/gate/check", podinfo()).await,
        (403, "Forbidden".into())
    );
    assert_eq!(
        lt.post("/gate/open", podinfo()).await,
        (202, "Gate opened".into())
    );
    assert_eq!(
        lt.post("/gate/check", podinfo()).await,
        (200, "Approved".into())
    );
    let other = json!({"name": "podinfo", "namespace": "staging"});
    assert_eq!(
        lt.post("/gate/check", other).await.0,
        403,
        "keyed by name and namespace"
    );
    assert_eq!(
        lt.post("/rollback/check", podinfo()).await.0,
        403,
        "the rollback gate is separate"
    );
    assert_eq!(
        lt.post("/gate/close", podinfo()).await,
        (202, "Gate closed".into())
    );
    assert_eq!(lt.post("/gate/check", podinfo()).await.0, 403);

    assert_eq!(lt.post("/rollback/open", podinfo()).await.0, 202);
    assert_eq!(
        lt.post("/rollback/check", podinfo()).await,
        (200, "Approved".into())
    );
    assert_eq!(lt.post("/rollback/close", podinfo()).await.0, 202);
    assert_eq!(lt.post("/rollback/check", podinfo()).await.0, 403);

    assert_eq!(
        lt.post("/gate/approve", podinfo()).await,
        (200, "Approved".into())
    );
    assert_eq!(
        lt.post("/gate/halt", podinfo()).await,
        (403, "Forbidden".into())
    );
    let health = client()
        .get(lt.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn payloads_that_are_not_webhook_payloads_are_answered_400_with_the_reason() {
    let lt = Loadtester::start(&[]);
    let (status, body) = lt.post("/gate/open", json!({"name": "podinfo"})).await;
    assert_eq!(status, 400);
    assert!(body.contains("needs name and namespace"), "{body}");

    let resp = client()
        .post(lt.url("/gate/check"))
        .body("not json")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap_or_default()
            .contains("not a webhook payload")
    );

    let (status, body) = lt.post("/", podinfo()).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("metadata not found in payload"), "{body}");

    let (status, body) = lt.post("/", payload(json!({"type": "ngrinder-ish"}))).await;
    assert_eq!(status, 400, "an unknown task type is refused, not a crash");
    assert_eq!(
        body,
        "unknown task type \"ngrinder-ish\" in metadata.type: use load, cmd, bash, kubectl or helm"
    );

    let (status, body) = lt
        .post(
            "/",
            payload(json!({"type": "load", "url": "podinfo-canary:9898"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.starts_with("metadata.url:"), "{body}");

    let (status, body) = lt
        .post(
            "/",
            payload(json!({"type": "load", "url": "http://x/", "rps": "lots"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("metadata.rps: expected requests per second"),
        "{body}"
    );

    let huge = client()
        .post(lt.url("/"))
        .header("content-type", "application/json")
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(huge.status(), 413, "request bodies are bounded");
    assert_eq!(
        lt.post("/gate/approve", podinfo()).await.0,
        200,
        "the server keeps serving"
    );
}

#[tokio::test]
async fn namespaces_outside_the_served_list_are_refused() {
    let lt = Loadtester::start(&["--namespace", "test"]);
    assert_eq!(lt.post("/gate/open", podinfo()).await.0, 202);
    let (status, body) = lt
        .post(
            "/gate/open",
            json!({"name": "podinfo", "namespace": "prod"}),
        )
        .await;
    assert_eq!(status, 403);
    assert!(body.contains("namespace prod is not served"), "{body}");
}

/// A backend failing every tenth request with 500.
async fn backend_failing_one_in_ten() -> TestServer {
    let n = Arc::new(AtomicUsize::new(0));
    TestServer::start(move |_, _| {
        if n.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
            Reply::status(500)
        } else {
            Reply::status(200).body("ok")
        }
    })
    .await
}

async fn load_json(lt: &Loadtester, metadata: Value) -> (u16, Value) {
    let resp = client()
        .post(lt.url("/"))
        .header("accept", "application/json")
        .json(&payload(metadata))
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON report"))
}

#[tokio::test]
async fn the_generator_measures_a_backend_failing_ten_percent_as_about_ninety_percent_success() {
    let lt = Loadtester::start(&[]);
    let backend = backend_failing_one_in_ten().await;
    let (status, report) = load_json(
        &lt,
        json!({"type": "load", "url": backend.url("/"), "rps": "100", "duration": "2s",
               "concurrency": "4", "minSuccessRate": "80"}),
    )
    .await;
    println!("report: {report}");
    assert_eq!(status, 200, "80% is met: {report}");
    let rate = report["successRate"].as_f64().expect("successRate");
    assert!((85.0..=95.0).contains(&rate), "success rate {rate}");
    let requests = report["requests"].as_u64().expect("requests");
    assert_eq!(
        backend.requests().len() as u64,
        requests,
        "every request counted"
    );
    assert_eq!(
        report["failures"]["500"].as_u64(),
        Some(requests - report["succeeded"].as_u64().unwrap_or(0))
    );
    assert!(report["p50Ms"].as_f64().is_some() && report["p99Ms"].as_f64().is_some());
}

#[tokio::test]
async fn a_missed_threshold_fails_the_webhook_with_a_readable_report() {
    let lt = Loadtester::start(&[]);
    let backend = backend_failing_one_in_ten().await;
    let (status, body) = lt
        .post(
            "/",
            payload(
                json!({"type": "load", "url": backend.url("/"), "rps": "50", "duration": "1s",
                           "minSuccessRate": "99"}),
            ),
        )
        .await;
    println!("report: {body}");
    assert_eq!(status, 412);
    assert!(
        body.starts_with("load test missed its thresholds: success rate "),
        "{body}"
    );
    assert!(body.contains("is below minSuccessRate 99%"), "{body}");
    assert!(body.contains("failures: 500 ×"), "{body}");

    let slow = TestServer::start(|_, _| Reply::status(200).delay(Duration::from_millis(120))).await;
    let (status, body) = lt
        .post(
            "/",
            payload(
                json!({"type": "load", "url": slow.url("/"), "rps": "20", "duration": "1s",
                           "maxP99": "50ms", "minSuccessRate": "99"}),
            ),
        )
        .await;
    println!("report: {body}");
    assert_eq!(status, 412);
    assert!(body.contains("is above maxP99 50ms"), "{body}");
    assert!(
        !body.contains("minSuccessRate"),
        "the success rate was met: {body}"
    );
}

#[tokio::test]
async fn the_generator_sends_the_method_headers_and_body_asked_for() {
    let lt = Loadtester::start(&[]);
    let backend = TestServer::answering(200).await;
    let (status, _) = load_json(
        &lt,
        json!({"type": "load", "url": backend.url("/api/echo"), "rps": "10", "duration": "1s",
               "method": "post", "headers": "X-Canary: insider\nContent-Type: application/json",
               "body": "{\"ping\":1}"}),
    )
    .await;
    assert_eq!(status, 200);
    let reqs = backend.requests();
    assert!(!reqs.is_empty());
    for r in reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/echo");
        assert_eq!(r.headers["x-canary"], "insider");
        assert_eq!(r.body, b"{\"ping\":1}");
    }
}

#[tokio::test]
async fn blocking_commands_run_only_when_allowed_and_report_their_exit() {
    let lt = Loadtester::start(&["--allow-cmd", "echo", "--allow-cmd", "grep"]);
    let (status, body) = lt
        .post(
            "/",
            payload(
                json!({"type": "bash", "cmd": "echo 'token: abc' | grep token",
                           "returnCmdOutput": "true"}),
            ),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "token: abc\n"));

    let (status, body) = lt
        .post("/", payload(json!({"type": "bash", "cmd": "echo hello"})))
        .await;
    assert_eq!((status, body.as_str()), (200, ""), "output only when asked");

    let (status, body) = lt
        .post(
            "/",
            payload(json!({"type": "bash", "cmd": "echo nothing here | grep token"})),
        )
        .await;
    assert_eq!(status, 500, "a non-zero exit fails the webhook");
    assert_eq!(
        body,
        "command grep exited with status 1 and printed nothing"
    );

    let (status, body) = lt
        .post(
            "/",
            payload(json!({"type": "bash", "cmd": "grep -q x /no/such/file"})),
        )
        .await;
    assert_eq!(status, 500);
    assert!(body.contains("No such file"), "stderr is reported: {body}");

    let (status, body) = lt
        .post(
            "/",
            payload(json!({"type": "bash", "cmd": "echo ok | sh -c 'rm -rf /tmp/x'"})),
        )
        .await;
    assert_eq!(status, 403, "every stage is checked");
    assert_eq!(
        body,
        "sh is not allowed: this load tester runs only echo, grep (--allow-cmd)"
    );

    let (status, body) = lt
        .post("/", payload(json!({"type": "bash", "cmd": "echo ok; id"})))
        .await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("metadata.cmd: shell syntax ';' is not supported"),
        "{body}"
    );

    let (status, body) = lt.post("/", payload(json!({"type": "bash"}))).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("metadata.cmd is missing"), "{body}");
}

#[tokio::test]
async fn without_an_allow_list_no_command_runs() {
    let lt = Loadtester::start(&[]);
    let (status, body) = lt
        .post(
            "/",
            payload(json!({"cmd": "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "hey is not allowed: this load tester runs no commands (start it with --allow-cmd hey to allow it)"
    );
}

#[tokio::test]
async fn flagger_style_cmd_tasks_run_in_the_background_once_at_a_time() {
    let lt = Loadtester::start(&["--allow-cmd", "sleep"]);
    let task = payload(json!({"cmd": "sleep 2"}));
    assert_eq!(
        lt.post("/", task.clone()).await,
        (202, "task accepted".into())
    );
    assert_eq!(
        lt.post("/", task).await,
        (202, "task already running".into()),
        "the same command for the same canary is not started twice"
    );
}

#[tokio::test]
async fn tasks_beyond_the_limit_are_answered_429() {
    let lt = Loadtester::start(&["--allow-cmd", "sleep", "--max-tasks", "1"]);
    assert_eq!(
        lt.post("/", payload(json!({"cmd": "sleep 2"}))).await.0,
        202
    );
    let (status, body) = lt
        .post("/", payload(json!({"type": "bash", "cmd": "sleep 0"})))
        .await;
    assert_eq!(status, 429);
    assert!(body.contains("--max-tasks"), "{body}");
}

#[tokio::test]
async fn a_command_running_past_the_task_timeout_is_stopped() {
    let lt = Loadtester::start(&["--allow-cmd", "sleep", "--timeout", "1s"]);
    let (status, body) = lt
        .post("/", payload(json!({"type": "bash", "cmd": "sleep 30"})))
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        "the command ran longer than 1s (--timeout) and was stopped"
    );
}

#[test]
fn bad_flags_and_busy_ports_exit_with_a_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["loadtester", "--timeout", "soon"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["loadtester", "--bind", "127.0.0.1", "--port", &port])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
}
