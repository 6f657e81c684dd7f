//! Webhook calls against real HTTP servers on 127.0.0.1: Flagger's payload, gate and rollback
//! semantics, retries, timeouts, bounded answers and TLS verification.

#[path = "support/http.rs"]
mod http;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Reply, TestServer, canary};
use serde_json::json;
use serin::api::{CanaryStatus, HookType, Phase};
use serin::engine::{Event, EventType, Reason};
use serin::hooks::{Hooks, checksum};

fn hook(kind: &str, name: &str, url: &str) -> serde_json::Value {
    json!({"type": kind, "name": name, "url": url})
}

fn hooks() -> Hooks {
    Hooks::new().expect("hooks client")
}

#[tokio::test]
async fn payload_is_flaggers_with_metadata_only_when_set() {
    let server = TestServer::answering(200).await;
    let mut c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "pre-rollout", "name": "acceptance", "url": server.url("/a"),
         "metadata": {"type": "bash", "cmd": "curl -s http://podinfo-canary.test:9898/"}},
        hook("pre-rollout", "smoke", &server.url("/b")),
    ]}));
    let status = CanaryStatus {
        last_applied_spec: Some("5f7d9c".into()),
        ..Default::default()
    };
    c.status = Some(status.clone());
    let result = hooks()
        .run(&c, HookType::PreRollout, Phase::Progressing)
        .await;
    assert!(result.ok, "{result:?}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "both hooks called");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/a");
    assert_eq!(reqs[0].headers["content-type"], "application/json");
    assert_eq!(
        reqs[0].json(),
        json!({"name": "podinfo", "namespace": "test", "phase": "Progressing",
               "checksum": checksum(&status),
               "metadata": {"type": "bash", "cmd": "curl -s http://podinfo-canary.test:9898/"}})
    );
    assert_eq!(
        reqs[1].json(),
        json!({"name": "podinfo", "namespace": "test", "phase": "Progressing",
               "checksum": checksum(&status)}),
        "metadata is left out when the hook has none"
    );
}

#[tokio::test]
async fn gates_are_asked_in_spec_order_and_the_first_closed_one_decides() {
    let server = TestServer::start(|_, r| match r.path.as_str() {
        "/closed" => Reply::status(403).body("waiting for QA sign-off"),
        _ => Reply::status(200),
    })
    .await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        hook("confirm-promotion", "release-window", &server.url("/open")),
        hook("confirm-promotion", "qa", &server.url("/closed")),
        hook("confirm-promotion", "never-asked", &server.url("/later")),
        hook("confirm-rollout", "other-type", &server.url("/other")),
    ]}));
    let result = hooks()
        .run(&c, HookType::ConfirmPromotion, Phase::Progressing)
        .await;
    assert!(!result.ok);
    assert_eq!(result.hook, "qa");
    assert_eq!(result.message, "answered 403: waiting for QA sign-off");
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/open", "/closed"],
        "later hooks and other types are not called"
    );
}

#[tokio::test]
async fn success_means_a_status_of_at_most_202() {
    for (status, ok) in [
        (200, true),
        (202, true),
        (203, false),
        (204, false),
        (302, false),
    ] {
        let server = TestServer::answering(status).await;
        let c = canary(json!({"interval": "1m", "stepWeight": 10,
            "webhooks": [hook("rollout", "check", &server.url("/"))]}));
        let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
        assert_eq!(result.ok, ok, "status {status}: {result:?}");
    }
}

#[tokio::test]
async fn no_hooks_of_a_type_is_the_quiet_answer() {
    let c = canary(json!({"interval": "1m", "stepWeight": 10}));
    assert!(
        hooks()
            .run(&c, HookType::ConfirmRollout, Phase::Initialized)
            .await
            .ok
    );
    assert!(
        !hooks()
            .run(&c, HookType::Rollback, Phase::Progressing)
            .await
            .ok
    );
}

#[tokio::test]
async fn a_webhook_failing_once_passes_after_one_retry() {
    let server = TestServer::start(|i, _| {
        if i == 0 {
            Reply::status(503).body("warming up")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "rollout", "name": "conformance", "url": server.url("/"), "retries": 2}]}));
    let started = Instant::now();
    let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(server.requests().len(), 2, "one retry");
    println!("report: passed after one retry in {:?}", started.elapsed());
}

#[tokio::test]
async fn exhausted_retries_count_as_one_failure_with_the_last_error() {
    let server = TestServer::start(|_, _| Reply::status(500).body("database down")).await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "rollout", "name": "conformance", "url": server.url("/"), "retries": 1}]}));
    let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
    assert!(!result.ok);
    assert_eq!(
        result.message,
        "giving up after 2 attempt(s), last: answered 500: database down"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn answers_that_cannot_improve_are_not_retried() {
    for status in [501, 400, 403, 404] {
        let server = TestServer::answering(status).await;
        let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
            {"type": "rollout", "name": "conformance", "url": server.url("/"), "retries": 3}]}));
        let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
        assert!(!result.ok);
        assert_eq!(server.requests().len(), 1, "status {status} is final");
        assert!(
            result.message.starts_with(&format!("answered {status}")),
            "{}",
            result.message
        );
    }
}

#[tokio::test]
async fn retry_after_from_a_429_sets_the_wait() {
    let server = TestServer::start(|i, _| {
        if i == 0 {
            Reply::status(429).header("Retry-After", "0")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "rollout", "name": "rate-limited", "url": server.url("/"), "retries": 1}]}));
    let started = Instant::now();
    let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(server.requests().len(), 2);
    println!(
        "report: 429 with Retry-After: 0 passed in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hanging_webhook_times_out_and_fails_the_check() {
    let server = TestServer::start(|_, _| Reply::status(200).delay(Duration::from_secs(60))).await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "pre-rollout", "name": "slow", "url": server.url("/"), "timeout": "500ms"}]}));
    let started = Instant::now();
    let result = hooks()
        .run(&c, HookType::PreRollout, Phase::Progressing)
        .await;
    assert!(!result.ok);
    assert_eq!(result.hook, "slow");
    assert_eq!(
        result.message,
        "no answer within 500ms; raise the webhook's timeout if it needs longer"
    );
    println!(
        "report: hanging webhook failed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_huge_answer_fails_the_call_with_the_size_limit() {
    let server = TestServer::start(|_, _| Reply::status(200).body(vec![b'x'; 1024 * 1024])).await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10,
        "webhooks": [hook("confirm-rollout", "gate", &server.url("/"))]}));
    let result = hooks()
        .run(&c, HookType::ConfirmRollout, Phase::Initialized)
        .await;
    assert!(!result.ok);
    assert_eq!(
        result.message,
        "answered 200 with a body larger than 65536 bytes; a webhook must answer with at most 65536 bytes"
    );
}

#[tokio::test]
async fn a_binary_error_answer_is_described_not_quoted() {
    let server =
        TestServer::start(|_, _| Reply::status(500).body(vec![0xff, 0x00, 0xfe, 0x9c])).await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10,
        "webhooks": [hook("rollout", "garbage", &server.url("/"))]}));
    let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
    assert!(!result.ok);
    assert_eq!(result.message, "answered 500: <4 bytes of non-text data>");
}

#[tokio::test]
async fn an_unreachable_webhook_fails_without_naming_its_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/hooks/secret-token-123");
    let c = canary(json!({"interval": "1m", "stepWeight": 10,
        "webhooks": [hook("rollout", "gone", &url)]}));
    let result = hooks().run(&c, HookType::Rollout, Phase::Progressing).await;
    assert!(!result.ok);
    assert!(
        result.message.starts_with("request failed:"),
        "{}",
        result.message
    );
    assert!(
        !result.message.contains("secret-token-123"),
        "the URL may hold a token: {}",
        result.message
    );
}

#[tokio::test]
async fn rollback_is_requested_by_the_first_hook_that_answers_success() {
    let server = TestServer::start(|_, r| match r.path.as_str() {
        "/manual" => Reply::status(200).body("rollback requested by on-call"),
        _ => Reply::status(403),
    })
    .await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        hook("rollback", "quiet", &server.url("/quiet")),
        hook("rollback", "manual", &server.url("/manual")),
    ]}));
    let result = hooks()
        .run(&c, HookType::Rollback, Phase::Progressing)
        .await;
    assert!(result.ok);
    assert_eq!(result.hook, "manual");
    assert_eq!(result.message, "rollback requested by on-call");

    let quiet = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        hook("rollback", "quiet", &server.url("/quiet")),
        hook("rollback", "also-quiet", &server.url("/other")),
    ]}));
    let result = hooks()
        .run(&quiet, HookType::Rollback, Phase::Progressing)
        .await;
    assert!(!result.ok, "nobody asked for a rollback");
}

#[tokio::test]
async fn post_rollout_hooks_are_all_called_and_failures_become_warnings() {
    let server = TestServer::start(|_, r| match r.path.as_str() {
        "/notify-ci" => Reply::status(500).body("ci unavailable"),
        _ => Reply::status(200),
    })
    .await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        hook("post-rollout", "notify-ci", &server.url("/notify-ci")),
        hook("post-rollout", "cleanup", &server.url("/cleanup")),
    ]}));
    let events = hooks()
        .run_all(&c, HookType::PostRollout, Phase::Succeeded)
        .await;
    assert_eq!(
        events,
        vec![Event {
            type_: EventType::Warning,
            reason: Reason::HookFailed,
            message: "Post-rollout hook notify-ci failed answered 500: ci unavailable".into(),
        }]
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "a failure does not stop the others");
    assert_eq!(reqs[1].json()["phase"], "Succeeded");
}

#[tokio::test]
async fn events_reach_event_hooks_with_message_type_and_timestamp() {
    let server = TestServer::answering(202).await;
    let c = canary(json!({"interval": "1m", "stepWeight": 10, "webhooks": [
        {"type": "event", "name": "audit", "url": server.url("/events"),
         "metadata": {"team": "payments", "eventType": "overridden?"}},
        hook("rollout", "not-an-event-hook", &server.url("/rollout")),
    ]}));
    let event = Event {
        type_: EventType::Warning,
        reason: Reason::CheckFailed,
        message: "Halt podinfo.test advancement success rate 97.50% < 99%".into(),
    };
    let before = chrono::Utc::now().timestamp_millis();
    hooks().send_event(&c, &event, Phase::Progressing).await;
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "only event hooks get events");
    let body = reqs[0].json();
    assert_eq!(body["phase"], "Progressing");
    assert_eq!(body["metadata"]["team"], "payments");
    assert_eq!(
        body["metadata"]["eventMessage"],
        "Halt podinfo.test advancement success rate 97.50% < 99%"
    );
    assert_eq!(body["metadata"]["eventType"], "Warning", "not overridable");
    let ts: i64 = body["metadata"]["timestamp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("timestamp in ms as a string");
    assert!(ts >= before);
}

// ---- TLS -----------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1, generated for these tests only (not a secret).
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUeJijB5ajuXZgLTwsiinOFn0OMUEwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyMjAyMTMxMVoYDzIxMjYxMDI5
MDIxMzExWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQ+qA3nW0U/7Jq34lvzhp4AYgwiamPR+INK1Sp6XnrOo/8+Jr5/Y1pa
IyHxBiqONjSqWY0ZoZDIPZsE0OM8jv3Ho28wbTAdBgNVHQ4EFgQU2m8pxqhd/oqB
ZBgU2gmkPdZqiRIwHwYDVR0jBBgwFoAU2m8pxqhd/oqBZBgU2gmkPdZqiRIwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSAAwRQIhANVi5dKZu/hvCNbh+4N2fJZgQjwoq8ejVFWDxHLweXVBAiB9
/ljX3ZRLyfwyyAW3UJzrbMb6LVN2yf8PI2uPhos1IQ==
-----END CERTIFICATE-----
";
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgG7CuGOFXtZKwbo+u
DTSjQiU/VLFR8VOHv+l40tYMptGhRANCAAQ+qA3nW0U/7Jq34lvzhp4AYgwiamPR
+INK1Sp6XnrOo/8+Jr5/Y1paIyHxBiqONjSqWY0ZoZDIPZsE0OM8jv3H
-----END PRIVATE KEY-----
";

/// An HTTPS server with the self-signed certificate, answering 200 to every request; stops
/// when dropped.
struct TlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start() -> TlsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if head.ends_with(b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&head).to_lowercase();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    let _ = tls.read_exact(&mut body);
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        TlsServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn tls_certificates_are_verified_unless_the_hook_disables_it() {
    let server = TlsServer::start();
    let url = format!("https://127.0.0.1:{}/", server.port);
    let verified = canary(json!({"interval": "1m", "stepWeight": 10,
        "webhooks": [hook("rollout", "self-signed", &url)]}));
    let result = hooks()
        .run(&verified, HookType::Rollout, Phase::Progressing)
        .await;
    assert!(
        !result.ok,
        "a self-signed certificate is refused by default"
    );
    assert!(
        result.message.to_lowercase().contains("certificate"),
        "the message says why: {}",
        result.message
    );
    let skipped = canary(json!({"interval": "1m", "stepWeight": 10,
        "webhooks": [{"type": "rollout", "name": "self-signed", "url": url, "disableTLS": true}]}));
    let result = hooks()
        .run(&skipped, HookType::Rollout, Phase::Progressing)
        .await;
    assert!(result.ok, "disableTLS skips verification: {result:?}");
}
