//! Small HTTP backends for the metrics tests, whose error rate and latency a test sets while
//! they run, and an open-loop load generator. Errors are spread evenly (with a rate of 10 %,
//! exactly every tenth request fails), so the expected success rate is exact.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;

#[derive(Default)]
struct Behaviour {
    error_rate: f64,
    latency: Duration,
    owed: f64,
}

/// A backend on 127.0.0.1; stopped when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let app = Router::new().fallback(handle).with_state(behaviour.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            addr,
            behaviour,
            task,
        }
    }

    /// From now on, `error_rate` (0–1) of the requests answer 500 and every answer takes
    /// `latency`.
    pub fn set(&self, error_rate: f64, latency: Duration) {
        let mut b = self.behaviour.lock().unwrap();
        b.error_rate = error_rate;
        b.latency = latency;
        b.owed = 0.0;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(behaviour): State<Arc<Mutex<Behaviour>>>) -> (StatusCode, &'static str) {
    let (fail, latency) = {
        let mut b = behaviour.lock().unwrap();
        b.owed += b.error_rate;
        let fail = b.owed >= 1.0 - 1e-9;
        if fail {
            b.owed -= 1.0;
        }
        (fail, b.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if fail {
        (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Sends `rps` requests per second to each URL until dropped, without waiting for answers.
pub struct Load {
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(urls: Vec<String>, rps: u32) -> Load {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                for url in &urls {
                    let c = client.clone();
                    let u = url.clone();
                    tokio::spawn(async move {
                        let _ = c.get(u).send().await;
                    });
                }
            }
        });
        Load { task }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}
