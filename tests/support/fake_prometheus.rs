//! A scripted Prometheus HTTP API on 127.0.0.1 for the provider's protocol and outage tests:
//! it answers every `/api/v1/*` request with what the test set (a body, an HTTP status, a
//! delay) and records each request's path, query parameters and headers. Stopped when dropped.

// Several test binaries include this file, each using a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn ok(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// A vector with one series and `value` (a Prometheus value string such as "99.5").
    pub fn value(value: &str) -> Answer {
        Answer::ok(&format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.5,"{value}"]}}]}}}}"#
        ))
    }

    pub fn empty() -> Answer {
        Answer::ok(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
    }

    pub fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(self, delay: Duration) -> Answer {
        Answer { delay, ..self }
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub params: HashMap<String, String>,
    pub headers: HashMap<String, String>,
}

struct Script {
    answer: Answer,
    requests: Vec<Recorded>,
}

pub struct FakePrometheus {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePrometheus {
    pub async fn start(answer: Answer) -> FakePrometheus {
        let script = Arc::new(Mutex::new(Script {
            answer,
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePrometheus { addr, script, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        self.script.lock().unwrap().answer = answer;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let answer = {
        let mut s = script.lock().unwrap();
        s.requests.push(Recorded {
            path: uri.path().to_string(),
            params,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        });
        s.answer.clone()
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    (
        StatusCode::from_u16(answer.status).unwrap(),
        [("content-type", "application/json")],
        answer.body,
    )
        .into_response()
}

/// An address where nothing listens (connection refused).
pub fn refused_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}
