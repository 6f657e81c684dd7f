//! End to end with real traffic: the `serin controller` binary against the Kubernetes API server
//! stand-in rolls out the App Mesh example while requests flow through real Envoys.
//!
//! The data plane: two backends (primary and canary) whose error rate the test sets; in front of
//! each a real Envoy "sidecar" whose admin `/stats/prometheus` is what the App Mesh metrics read;
//! and a front Envoy that sends each request to the canary sidecar with the probability held in
//! its runtime key `routing.canary`, else to the primary. A follower task copies the canary
//! weight of the VirtualRouter the controller writes into that runtime key (admin
//! `POST /runtime_modify`), so the traffic follows Serin's weights; a load generator sends 50
//! requests per second to the front Envoy for the whole test.
//!
//! The analysis reads the canary's success rate either from Debian's Prometheus scraping both
//! sidecars (labelled with `kubernetes_namespace` and `kubernetes_pod_name` as App Mesh's
//! relabelling does), through the built-in `request-success-rate`, or from the canary pods'
//! sidecar directly with a `scrape` MetricTemplate. A healthy canary is promoted; a canary
//! whose backend starts answering 5xx after the first step is rolled back. The timings observed
//! are printed, never asserted.

#[path = "support/apiserver/mod.rs"]
mod apiserver;
#[path = "support/backends.rs"]
mod backends;
#[path = "support/e2e.rs"]
mod e2e;
#[allow(dead_code)]
#[path = "support/envoy.rs"]
mod envoy;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Handle};
use backends::{Backend, Load};
use e2e::{
    ControllerProcess, NS, canary, events, image, kubelet, phase, replicas, series, set_image,
    wait_event, wait_phase, weights,
};
use envoy::Envoy;
use prometheus::{Prometheus, ScrapeTarget};
use serde_json::{Value, json};

const OLD_IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.0.0";
const NEW_IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
/// The pod names Prometheus attaches to each sidecar's series: a canary pod matches the built-in
/// queries' `podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)`, a primary pod does not.
const CANARY_POD: &str = "podinfo-6b5f7c9d8-x2x7z";
const PRIMARY_POD: &str = "podinfo-primary-7d9f8c6b5-abcde";
/// Requests per second the load generator sends to the front Envoy.
const RPS: u32 = 50;

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The front Envoy: sends `routing.canary` percent of the requests to the canary sidecar and
/// the rest to the primary sidecar. Killed when dropped.
struct FrontEnvoy {
    listen_port: u16,
    admin_port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl FrontEnvoy {
    async fn start(canary_port: u16, primary_port: u16) -> FrontEnvoy {
        use std::os::unix::process::CommandExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (listen_port, admin_port) = (free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("serin-front-envoy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("front envoy dir");
        let cluster = |name: &str, port: u16| {
            json!({
                "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
                }]}]}
            })
        };
        let config = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
            "static_resources": {
                "listeners": [{
                    "name": "apex",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "apex",
                            "route_config": {"virtual_hosts": [{
                                "name": "podinfo", "domains": ["*"],
                                "routes": [
                                    {"match": {"prefix": "/", "runtime_fraction": {
                                        "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                                        "runtime_key": "routing.canary"}},
                                     "route": {"cluster": "canary", "timeout": "5s"}},
                                    {"match": {"prefix": "/"}, "route": {"cluster": "primary", "timeout": "5s"}}
                                ]
                            }]},
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }]
                        }
                    }]}]
                }],
                "clusters": [cluster("canary", canary_port), cluster("primary", primary_port)]
            }
        });
        let config_path = dir.join("envoy.json");
        std::fs::write(&config_path, config.to_string()).expect("front envoy config");
        let log = std::fs::File::create(dir.join("envoy.log")).expect("front envoy log");
        let base_id = 500_000 + (std::process::id() % 10_000) * 50 + n;
        let child = std::process::Command::new(envoy::envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warn", "--base-id", &base_id.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the front envoy");
        let mut front = FrontEnvoy {
            listen_port,
            admin_port,
            child,
            dir,
        };
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = front.child.try_wait() {
                let log = std::fs::read_to_string(front.dir.join("envoy.log")).unwrap_or_default();
                panic!("the front envoy exited with {status} before it was ready:\n{log}");
            }
            let ready = client
                .get(format!("http://127.0.0.1:{admin_port}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return front;
            }
            assert!(
                Instant::now() < deadline,
                "front envoy not ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listen_port)
    }
}

impl Drop for FrontEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Requests an Envoy sent to `cluster` since it started (`upstream_rq_total`, from its admin).
async fn upstream_requests(client: &reqwest::Client, admin_port: u16, cluster: &str) -> u64 {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter=upstream_rq_total");
    let text = client
        .get(&url)
        .send()
        .await
        .expect("envoy admin /stats")
        .text()
        .await
        .expect("envoy admin /stats body");
    let key = format!("cluster.{cluster}.upstream_rq_total: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the stats of envoy :{admin_port}:\n{text}"))
}

/// The request counts (canary, primary) of the sidecars with these admin ports.
async fn counts(client: &reqwest::Client, admin_ports: (u16, u16)) -> (u64, u64) {
    (
        upstream_requests(client, admin_ports.0, "podinfo-canary").await,
        upstream_requests(client, admin_ports.1, "podinfo-primary").await,
    )
}

/// Backends, their sidecars and the front Envoy.
struct Mesh {
    canary_backend: Backend,
    _primary_backend: Backend,
    canary: Envoy,
    primary: Envoy,
    front: FrontEnvoy,
}

impl Mesh {
    async fn start() -> Mesh {
        let canary_backend = Backend::start().await;
        let primary_backend = Backend::start().await;
        canary_backend.set(0.0, Duration::ZERO);
        primary_backend.set(0.0, Duration::ZERO);
        let canary = Envoy::start("podinfo-canary", canary_backend.addr);
        let primary = Envoy::start("podinfo-primary", primary_backend.addr);
        let front = FrontEnvoy::start(canary.listen_port, primary.listen_port).await;
        Mesh {
            canary_backend,
            _primary_backend: primary_backend,
            canary,
            primary,
            front,
        }
    }
}

/// A canary weight the front Envoy was set to, when, and the sidecars' request counts (canary,
/// primary) just before and just after the switch. A phase's requests are those between the
/// count after its switch and the count before the next one, so requests routed while the
/// switch was being made belong to no phase.
#[derive(Clone, Debug)]
struct Applied {
    weight: i64,
    at: Instant,
    before: (u64, u64),
    after: (u64, u64),
}

/// Copies the VirtualRouter's canary weight into the front Envoy's runtime whenever it changes.
struct Follower {
    applied: Arc<Mutex<Vec<Applied>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(api: Handle, mesh: &Mesh) -> Follower {
        let applied = Arc::new(Mutex::new(Vec::<Applied>::new()));
        let log = applied.clone();
        let front_admin = mesh.front.admin_port;
        let ports = (mesh.canary.admin_port, mesh.primary.admin_port);
        let task = tokio::spawn(async move {
            let client = http();
            let mut last = None;
            loop {
                // Before the controller created it, the apex route has all traffic on the
                // primary.
                let weight = weights(&api).map_or(0, |(_, canary)| canary);
                if last != Some(weight) {
                    let before = counts(&client, ports).await;
                    let url = format!(
                        "http://127.0.0.1:{front_admin}/runtime_modify?routing.canary={weight}"
                    );
                    let switched = client
                        .post(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if switched {
                        let at = Instant::now();
                        let after = counts(&client, ports).await;
                        log.lock().unwrap().push(Applied {
                            weight,
                            at,
                            before,
                            after,
                        });
                        last = Some(weight);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Follower { applied, task }
    }

    /// The weight the front Envoy applies now.
    fn current(&self) -> Option<i64> {
        self.applied.lock().unwrap().last().map(|a| a.weight)
    }

    /// Waits until the front Envoy applies the VirtualRouter's current canary weight.
    async fn caught_up(&self, api: &ApiServer) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let want = weights(api).map_or(0, |(_, c)| c);
            if self.current() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the front envoy does not follow the VirtualRouter (weight {want}); applied {:?}",
                self.applied.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each weight applied, how long it held, and the requests each sidecar served meanwhile
    /// (the last one until `now`).
    fn phases(&self, now: (u64, u64)) -> Vec<(i64, Duration, u64, u64)> {
        let applied = self.applied.lock().unwrap().clone();
        let end = Applied {
            weight: -1,
            at: Instant::now(),
            before: now,
            after: now,
        };
        applied
            .iter()
            .zip(applied.iter().skip(1).chain(std::iter::once(&end)))
            .map(|(a, b)| {
                (
                    a.weight,
                    b.at - a.at,
                    b.before.0 - a.after.0,
                    b.before.1 - a.after.1,
                )
            })
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks that the sidecars served what the applied weights asked for, and prints the phases.
fn assert_traffic_followed(phases: &[(i64, Duration, u64, u64)], weights: &[i64]) {
    for (w, d, c, p) in phases {
        let share = if c + p > 0 {
            *c as f64 * 100.0 / (c + p) as f64
        } else {
            0.0
        };
        println!(
            "weight {w:>3}: {:>5.1} s, canary sidecar {c:>4} requests, primary sidecar {p:>4} ({share:.1} % canary)",
            d.as_secs_f64()
        );
    }
    let applied: Vec<i64> = phases.iter().map(|p| p.0).collect();
    assert_eq!(applied, weights, "canary weights the front envoy applied");
    for (w, _, c, p) in phases {
        if *w == 0 {
            // Only a request already on its way when the weight changed may still arrive.
            assert!(*c <= 2, "weight 0, yet the canary served {c} requests");
        } else if c + p >= 100 {
            let share = *c as f64 * 100.0 / (c + p) as f64;
            assert!(
                (share - *w as f64).abs() < 12.0,
                "weight {w}: the canary served {share:.1} % of {} requests",
                c + p
            );
        } else {
            panic!("weight {w} held for only {} requests", c + p);
        }
    }
}

/// Where the analysis reads the canary's success rate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// The built-in `request-success-rate`, from Prometheus scraping both sidecars.
    Prometheus,
    /// A `scrape` MetricTemplate: the canary pods' sidecar admin, scraped by the controller.
    Scrape,
}

impl Source {
    /// The metric's name in the Canary (and in the controller's metrics and Events).
    fn metric(self) -> &'static str {
        match self {
            Source::Prometheus => "request-success-rate",
            Source::Scrape => "envoy-success-rate",
        }
    }

    /// How Events name the metric: Flagger's wording for the built-in.
    fn label(self) -> &'static str {
        match self {
            Source::Prometheus => "success rate",
            Source::Scrape => "envoy-success-rate",
        }
    }
}

/// Everything one scenario runs, stopped in this order when dropped: the controller first.
struct Stand {
    controller: ControllerProcess,
    follower: Follower,
    _load: Load,
    _prometheus: Option<Prometheus>,
    mesh: Mesh,
    _kubelet: tokio::task::JoinHandle<()>,
    api: ApiServer,
    source: Source,
}

impl Drop for Stand {
    fn drop(&mut self) {
        self._kubelet.abort();
    }
}

impl Stand {
    /// Starts the data plane, the analysis source, the load, the cluster objects and the
    /// controller, and waits until the Canary is initialized and the source has data.
    async fn start(source: Source) -> Stand {
        let started = Instant::now();
        let mesh = Mesh::start().await;
        let prometheus = (source == Source::Prometheus).then(|| {
            let target = |port: u16, pod: &str| ScrapeTarget {
                address: format!("127.0.0.1:{port}"),
                path: "/stats/prometheus".into(),
                labels: vec![
                    ("kubernetes_namespace".into(), NS.into()),
                    ("kubernetes_pod_name".into(), pod.into()),
                ],
            };
            Prometheus::start(&[
                target(mesh.canary.admin_port, CANARY_POD),
                target(mesh.primary.admin_port, PRIMARY_POD),
            ])
        });
        let load = Load::start(vec![mesh.front.url()], RPS);
        let api = ApiServer::start().await;
        let kubelet = kubelet(&api, Duration::from_millis(300));
        let follower = Follower::start(api.handle(), &mesh);
        fixtures(&api, source, mesh.canary.admin_port);
        let server = prometheus.as_ref().map_or("scrape", |p| p.url.as_str());
        let controller = ControllerProcess::start(&api, server, &["--leader-election=false"]);
        wait_phase(&api, "Initialized", Duration::from_secs(30)).await;
        if let Some(p) = &prometheus {
            wait_for_series(p, PRIMARY_POD).await;
        }
        println!(
            "{source:?}: stand ready (Envoys, source, controller, Canary initialized) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Stand {
            controller,
            follower,
            _load: load,
            _prometheus: prometheus,
            mesh,
            _kubelet: kubelet,
            api,
            source,
        }
    }

    /// The sidecars' request counts now.
    async fn served(&self) -> (u64, u64) {
        counts(
            &http(),
            (self.mesh.canary.admin_port, self.mesh.primary.admin_port),
        )
        .await
    }

    /// The controller's last value and verdicts of the metric.
    async fn metric(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let m = self.controller.metrics().await;
        let name = self.source.metric();
        let verdict = |v: &str| {
            series(
                &m,
                "serin_canary_metric_verdict",
                &[("metric", name), ("verdict", v)],
            )
        };
        (
            series(&m, "serin_canary_metric_value", &[("metric", name)]),
            verdict("Pass"),
            verdict("Fail"),
        )
    }
}

/// Waits until Prometheus holds the request counter of `pod`'s sidecar.
async fn wait_for_series(prometheus: &Prometheus, pod: &str) {
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Option<Value> = async {
            client
                .get(format!("{}/api/v1/query", prometheus.url))
                .query(&[(
                    "query",
                    format!("envoy_cluster_upstream_rq{{kubernetes_pod_name=\"{pod}\"}}"),
                )])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        if answer.is_some_and(|a| {
            a["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has no envoy_cluster_upstream_rq of {pod} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The App Mesh example: podinfo with a ConfigMap and an HPA, and a Canary that checks the
/// canary's success rate (at least 99 %) every 10 s over 15 s, in steps of 25 up to 50.
fn fixtures(api: &ApiServer, source: Source, canary_admin_port: u16) {
    api.create_namespace(NS);
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": NS, "labels": {"app": "podinfo"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}},
                "spec": {"containers": [{"name": "podinfod", "image": OLD_IMAGE,
                    "envFrom": [{"configMapRef": {"name": "podinfo-env"}}]}]},
            },
        },
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "podinfo-env", "namespace": NS},
        "data": {"PODINFO_UI_COLOR": "#34577c"},
    }));
    api.put(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                 "minReplicas": 1, "maxReplicas": 2},
    }));
    let metric = match source {
        Source::Prometheus => json!({
            "name": source.metric(), "thresholdRange": {"min": 99}, "interval": "15s",
        }),
        Source::Scrape => {
            api.put(json!({
                "apiVersion": "serin.dev/v1beta1", "kind": "MetricTemplate",
                "metadata": {"name": "envoy-success-rate", "namespace": NS},
                "spec": {
                    "provider": {"type": "scrape", "address": format!(":{canary_admin_port}/stats/prometheus")},
                    "query": "request-success-rate",
                },
            }));
            json!({
                "name": source.metric(), "templateRef": {"name": "envoy-success-rate"},
                "thresholdRange": {"min": 99}, "interval": "15s",
            })
        }
    };
    api.put(json!({
        "apiVersion": "serin.dev/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": NS},
        "spec": {
            "provider": "appmesh:v1beta2",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 9898, "timeout": "15s"},
            "analysis": {
                "interval": "10s",
                "threshold": 2,
                "maxWeight": 50,
                "stepWeight": 25,
                "metrics": [metric],
            },
        },
    }));
}

/// Event messages in the order the Canary recorded them contain `expected` in that order.
fn assert_events_in_order(api: &ApiServer, expected: &[&str]) {
    let notes: Vec<String> = events(api).into_iter().map(|(_, n)| n).collect();
    let mut at = 0;
    for n in &notes {
        if at < expected.len() && n == expected[at] {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "events in order: {notes:#?}");
}

/// A new image whose canary Envoy serves it healthily is analysed through real traffic and
/// promoted.
async fn healthy_canary_is_promoted(source: Source) {
    let stand = Stand::start(source).await;
    let api = &stand.api;
    let start = Instant::now();
    set_image(api, NEW_IMAGE).await;
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while phase(&canary(api)) != "Succeeded" {
        assert!(
            Instant::now() < deadline,
            "not promoted; weights {seen:?}; events {:#?}",
            events(api)
        );
        if let Some(w) = weights(api)
            && seen.last().map(|(w, _)| w) != Some(&w)
        {
            seen.push((w, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = start.elapsed();
    // The last weights, written just before the phase.
    if let Some(w) = weights(api)
        && seen.last().map(|(w, _)| w) != Some(&w)
    {
        seen.push((w, promoted));
    }
    for (w, at) in &seen {
        println!(
            "{source:?}: weights {w:?} at {:.1} s after the new image",
            at.as_secs_f64()
        );
    }
    println!(
        "{source:?}: Succeeded {:.1} s after the new image",
        promoted.as_secs_f64()
    );
    let seen: Vec<(i64, i64)> = seen.into_iter().map(|(w, _)| w).collect();
    assert_eq!(
        seen,
        vec![(100, 0), (75, 25), (50, 50), (100, 0)],
        "weights step as configured"
    );
    assert_eq!(image(api, "podinfo-primary"), NEW_IMAGE);
    assert_eq!(replicas(api, "podinfo"), 0, "the canary is scaled down");
    assert_events_in_order(
        api,
        &[
            "New revision detected! Scaling up podinfo.test",
            "Starting canary analysis for podinfo.test",
            "Advance podinfo.test canary weight 25",
            "Advance podinfo.test canary weight 50",
            "Copying podinfo.test template spec to podinfo-primary.test",
            "Routing all traffic to primary podinfo.test",
            "Promotion completed! Scaling down podinfo.test",
        ],
    );
    assert!(
        !events(api).iter().any(|(r, _)| r == "CheckFailed"),
        "a healthy canary failed a check: {:#?}",
        events(api)
    );
    let (value, pass, fail) = stand.metric().await;
    assert_eq!(
        value,
        Some(100.0),
        "the healthy canary's success rate, as measured"
    );
    assert_eq!((pass, fail), (Some(1.0), Some(0.0)), "verdict Pass");

    // All traffic is back on the primary, which now runs the new version.
    stand.follower.caught_up(api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let phases = stand.follower.phases(stand.served().await);
    assert_traffic_followed(&phases, &[0, 25, 50, 0]);
}

/// A canary whose backend starts answering 5xx after the first step fails its checks on the
/// real success rate and is rolled back: all traffic returns to the primary.
async fn failing_canary_is_rolled_back(source: Source) {
    let stand = Stand::start(source).await;
    let api = &stand.api;
    let start = Instant::now();
    set_image(api, NEW_IMAGE).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stand.follower.current() != Some(25) {
        assert!(
            Instant::now() < deadline,
            "the first step (weight 25) did not reach the front envoy; events {:#?}",
            events(api)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{source:?}: weight 25 in the front envoy {:.1} s after the new image",
        start.elapsed().as_secs_f64()
    );
    // From now on every fifth answer of the canary is a 500.
    stand.mesh.canary_backend.set(0.2, Duration::ZERO);
    let failing = Instant::now();
    let mut first_check_failed = None;
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(90);
    while phase(&canary(api)) != "Failed" {
        assert!(
            Instant::now() < deadline,
            "not rolled back; weights {seen:?}; events {:#?}",
            events(api)
        );
        if first_check_failed.is_none() && events(api).iter().any(|(r, _)| r == "CheckFailed") {
            first_check_failed = Some(failing.elapsed());
        }
        if let Some(w) = weights(api)
            && seen.last() != Some(&w)
        {
            seen.push(w);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failing.elapsed();
    if let Some(w) = weights(api)
        && seen.last() != Some(&w)
    {
        seen.push(w);
    }
    if let Some(at) = first_check_failed {
        println!(
            "{source:?}: first failed check {:.1} s after the canary started failing",
            at.as_secs_f64()
        );
    }
    println!(
        "{source:?}: Failed (rolled back) {:.1} s after the canary started failing",
        failed.as_secs_f64()
    );
    let c = canary(api);
    assert_eq!(c["status"]["failedChecks"], 2, "threshold 2 reached");
    assert_eq!(weights(api), Some((100, 0)), "all traffic on the primary");
    assert!(
        seen.iter().all(|(_, canary)| *canary <= 25),
        "no step after the failure: {seen:?}"
    );
    assert_eq!(replicas(api, "podinfo"), 0, "the canary is scaled down");
    assert_eq!(image(api, "podinfo-primary"), OLD_IMAGE, "not promoted");
    wait_event(api, "RolledBack").await;
    let label = source.label();
    let evs = events(api);
    let failed_checks: Vec<&String> = evs
        .iter()
        .filter(|(r, _)| r == "CheckFailed")
        .map(|(_, n)| n)
        .collect();
    // Two checks failed (status.failedChecks above); two that read the same value are one
    // Event seen twice.
    assert!(
        !failed_checks.is_empty()
            && failed_checks.iter().all(|n| n
                .contains(&format!("Halt podinfo.test advancement {label} "))
                && n.contains("< 99")),
        "the checks failed on the success rate: {evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|(r, n)| r == "RolledBack" && n == "Canary failed! Scaling down podinfo.test"),
        "{evs:#?}"
    );
    // Every fifth answer failed: the success rate measured is 80 %, within sampling error.
    let (value, pass, fail) = stand.metric().await;
    let value = value.unwrap_or(f64::NAN);
    assert!(
        (value - 80.0).abs() < 5.0,
        "20 % errors gave a success rate of {value}"
    );
    assert_eq!((pass, fail), (Some(0.0), Some(1.0)), "verdict Fail");

    // The front envoy followed the rollback: the canary gets no more requests.
    stand.follower.caught_up(api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let phases = stand.follower.phases(stand.served().await);
    assert_traffic_followed(&phases, &[0, 25, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_healthy_canary_is_promoted() {
    healthy_canary_is_promoted(Source::Prometheus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_failing_canary_is_rolled_back() {
    failing_canary_is_rolled_back(Source::Prometheus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_healthy_canary_is_promoted() {
    healthy_canary_is_promoted(Source::Scrape).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_failing_canary_is_rolled_back() {
    failing_canary_is_rolled_back(Source::Scrape).await;
}
