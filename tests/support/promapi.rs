//! A Prometheus HTTP API for tests: `/api/v1/query` answers every query with one sample whose
//! value the test sets (or an empty result), and logs the queries. It does not evaluate PromQL.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Default)]
struct Shared {
    value: Option<f64>,
    queries: Vec<String>,
}

/// Stopped when dropped.
pub struct PromApi {
    shared: Arc<Mutex<Shared>>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn query(
    State(s): State<Arc<Mutex<Shared>>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
    s.queries.push(q.get("query").cloned().unwrap_or_default());
    let result = match s.value {
        Some(v) => json!([{"metric": {}, "value": [1.0, v.to_string()]}]),
        None => json!([]),
    };
    axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
}

impl PromApi {
    pub async fn start(value: Option<f64>) -> PromApi {
        let shared = Arc::new(Mutex::new(Shared {
            value,
            queries: vec![],
        }));
        let app = Router::new()
            .route("/api/v1/query", get(query).post(query))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        PromApi {
            shared,
            url,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The value every query answers from now on; `None` answers an empty result.
    pub fn set(&self, value: Option<f64>) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).value = value;
    }

    pub fn queries(&self) -> Vec<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queries
            .clone()
    }
}

impl Drop for PromApi {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
