//! A Kubernetes API server for tests, served over HTTP on 127.0.0.1 from memory, that kube-rs
//! (`Api`, `watcher`, `reflector`, `Controller`, `Recorder`, finalizers) and `kubectl`
//! (`--server` or `--kubeconfig`) work against. Started by a test, stopped when dropped:
//!
//! ```ignore
//! #[path = "support/apiserver/mod.rs"]
//! mod apiserver;
//! let api = apiserver::ApiServer::start().await;
//! let client = api.client();                       // kube::Client
//! api.put(serde_json::json!({...}));               // fixtures, no HTTP
//! api.fail_next("patch", "virtualrouters", 2, 409); // faults
//! api.cut_watches();                                // close watch streams
//! ```
//!
//! What it models: discovery (`/api`, `/apis`, `/apis/<group>[/<version>]`, `/version`) for the
//! kinds of `resources.rs` and for kinds defined by stored CustomResourceDefinitions; get, list,
//! create, update, patch (JSON merge, JSON patch, strategic merge, server-side apply as a merge
//! that creates when absent), delete and deletecollection; list and watch with label and field
//! selectors; watch from a resourceVersion replayed from a bounded history (410 Expired when
//! older), bookmarks, `sendInitialEvents`, `timeoutSeconds`; one global resourceVersion counter,
//! uid, creationTimestamp, generation bumped on spec changes; 409 on a stale resourceVersion and
//! on create of an existing name; the status subresource split and the Deployment scale
//! subresource; defaulting of the built-in kinds a controller reads back (Deployment, Pod spec,
//! Service with a cluster IP, Secret `stringData`, Namespace); name, label and a few kind
//! validations (Deployment selector matches template and is immutable, Service ports);
//! namespaces must exist; finalizers and deletionTimestamp; garbage collection through
//! ownerReferences (background, or orphan) and of a deleted namespace's objects; one storage for
//! core v1 and events.k8s.io/v1 Events; dry runs; a request log and fault injection.
//!
//! What it does not model: authentication, authorization and RBAC; admission webhooks and
//! admission policies; OpenAPI schemas (`/openapi/v2` is an empty document, so kubectl's
//! client-side validation passes everything; `/openapi/v3` is 404), CRD schema validation,
//! pruning and defaulting of custom resources; managedFields, field ownership and apply conflicts (apply is a merge, `force` is
//! accepted and ignored, fields a manager stops applying are not removed); pagination (`limit`
//! and `continue` are ignored, lists are complete); `resourceVersion` on get and list (always
//! the latest) and `resourceVersionMatch`; protobuf and CBOR; server-side printing (Table);
//! foreground deletion (treated as background); graceful pod deletion; API priority and
//! fairness (429s come only from injected faults); aggregated discovery; multiple versions of
//! a kind with conversion (except Events); controllers other than the garbage collector (no
//! ReplicaSets or Pods are created: see `kubelet.rs` for Deployment status).

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

mod error;
mod http;
mod objects;
mod patch;
mod resources;
mod selector;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

pub use store::WatchEvent;
use store::{DeleteOptions, Store, WatchFilter};

/// One request the server answered, for tests to assert what a client did.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// HTTP method: GET, POST, PUT, PATCH, DELETE.
    pub method: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    pub content_type: String,
    pub user_agent: String,
    /// Plural resource name (`deployments`), empty for discovery and other paths.
    pub resource: String,
    /// `status`, `scale` or empty.
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP status code of the answer.
    pub status: u16,
}

impl Request {
    /// A query parameter, percent-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        http::parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `patch canaries/status 409` style summary, handy in assertion messages.
    pub fn summary(&self) -> String {
        let res = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        format!(
            "{} {} {}/{} {}",
            self.verb, res, self.namespace, self.name, self.status
        )
    }
}

#[derive(Clone, Debug)]
struct Fault {
    verb: String,
    resource: String,
    remaining: usize,
    code: u16,
}

/// State shared by the HTTP handlers and the test's handle.
pub struct Shared {
    store: Mutex<Store>,
    log: Mutex<Vec<Request>>,
    faults: Mutex<Vec<Fault>>,
    addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock (a failing test thread) must not hide the state from
    // the assertions that follow.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn lock_store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn record(&self, r: Request) {
        lock(&self.log).push(r);
    }

    /// The code of an injected fault for this request, consuming one.
    fn take_fault(&self, verb: &str, plural: &str, sub: Option<&str>) -> Option<u16> {
        let resource = match sub {
            Some(s) => format!("{plural}/{s}"),
            None => plural.to_string(),
        };
        let mut faults = lock(&self.faults);
        let f = faults.iter_mut().find(|f| {
            f.remaining > 0
                && (f.verb == "*" || f.verb == verb)
                && (f.resource == "*" || f.resource == resource)
        })?;
        f.remaining -= 1;
        let code = f.code;
        faults.retain(|f| f.remaining > 0);
        Some(code)
    }
}

/// Tunables of a server.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many changes are kept for watches to resume from (older ones get 410).
    pub history_limit: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running API server; stopped (and its temp directory removed) when dropped. Derefs to
/// [`Handle`] for the in-process helpers.
pub struct ApiServer {
    handle: Handle,
    url: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// In-process access to a running server's objects, request log and faults; cheap to clone
/// (helper tasks such as the kubelet stand-in keep one).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl std::ops::Deref for ApiServer {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a server on 127.0.0.1 (a free port) in a runtime of its own, so a test that
    /// blocks its own thread (e.g. on `std::process::Command`) does not stall it.
    pub async fn start_with(opts: Options) -> Self {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("apiserver: cannot build a tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("apiserver: cannot bind 127.0.0.1:0");
                    let addr = listener.local_addr().expect("apiserver: no local address");
                    let shared = Arc::new(Shared {
                        store: Mutex::new(Store::new(opts.history_limit)),
                        log: Mutex::new(Vec::new()),
                        faults: Mutex::new(Vec::new()),
                        addr,
                    });
                    let ticker = shared.clone();
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(opts.bookmark_interval);
                        loop {
                            every.tick().await;
                            ticker.lock_store().bookmark();
                        }
                    });
                    let app = http::router(shared.clone());
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    });
                    let _ = ready_tx.send((shared, tokio::runtime::Handle::current()));
                    let _ = stop_rx.await;
                });
                rt.shutdown_background();
            })
            .expect("apiserver: cannot start its thread");
        let (shared, runtime) = ready_rx.await.expect("apiserver: failed to start");
        let url = format!("http://{}", shared.addr);
        let dir = std::env::temp_dir().join(format!(
            "serin-apiserver-{}-{}",
            std::process::id(),
            shared.addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("apiserver: cannot create its temp directory");
        let kubeconfig = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    \
             user: test\n    namespace: default\ncurrent-context: test\n"
        );
        std::fs::write(&kubeconfig, config).expect("apiserver: cannot write the kubeconfig");
        Self {
            handle: Handle { shared, runtime },
            url,
            dir,
            kubeconfig,
            stop: Some(stop_tx),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client for this server, default namespace `default`. Call inside a runtime.
    pub fn client(&self) -> kube::Client {
        let url = self.url.parse().expect("apiserver: its own URL is valid");
        kube::Client::try_from(kube::Config::new(url))
            .expect("apiserver: cannot build a kube client")
    }

    /// A kubeconfig file naming this server (context `test`, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl --kubeconfig <this> --cache-dir <temp>`, ready for more arguments; killed
    /// when dropped.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .kill_on_drop(true);
        cmd
    }

    /// A handle that helper tasks can keep.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Handle {
    /// The runtime the server runs on, for helper tasks that should outlive test code.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.lock_store()
    }

    /// The object, as a GET would return it. `namespace` is "" for cluster-scoped kinds.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.store();
        let rt = store.find_kind(api_version, kind).ok()?;
        store.get(&rt, namespace, name).ok()
    }

    /// The objects of a kind in `namespace` ("" = all namespaces), ordered by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let store = self.store();
        let Ok(rt) = store.find_kind(api_version, kind) else {
            panic!("apiserver: no kind {kind} in {api_version}");
        };
        let filter = WatchFilter {
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            ..WatchFilter::default()
        };
        store.items(&rt, &filter)
    }

    /// Creates or replaces an object (status included) as a test fixture, with defaults,
    /// validation, generation and watch events as for an API write. Panics with the server's
    /// message when the object is invalid.
    pub fn put(&self, obj: Value) -> Value {
        match self.store().put(obj) {
            Ok(v) => v,
            Err(e) => panic!(
                "apiserver: put rejected ({} {}): {}",
                e.code, e.reason, e.message
            ),
        }
    }

    /// Replaces the status of an object; panics when it does not exist.
    pub fn put_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Value {
        let mut store = self.store();
        let result = store
            .find_kind(api_version, kind)
            .and_then(|rt| store.set_status(&rt, namespace, name, status));
        match result {
            Ok(v) => v,
            Err(e) => panic!(
                "apiserver: put_status rejected ({} {}): {}",
                e.code, e.reason, e.message
            ),
        }
    }

    /// Replaces the status of an object; `None` when it does not exist.
    pub fn try_put_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Option<Value> {
        let mut store = self.store();
        let rt = store.find_kind(api_version, kind).ok()?;
        store.set_status(&rt, namespace, name, status).ok()
    }

    /// Deletes an object as a DELETE would (finalizers, garbage collection); false when absent.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let mut store = self.store();
        let Ok(rt) = store.find_kind(api_version, kind) else {
            return false;
        };
        store
            .delete(&rt, namespace, name, &DeleteOptions::default())
            .is_ok()
    }

    /// Creates a namespace (no-op when it exists).
    pub fn create_namespace(&self, name: &str) {
        if self.get("v1", "Namespace", "", name).is_none() {
            self.put(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
        }
    }

    /// Polls until the object exists and `pred` holds; panics after `timeout` showing the last
    /// state seen.
    pub async fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let obj = self.get(api_version, kind, namespace, name);
            if let Some(o) = &obj
                && pred(o)
            {
                return o.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                let shown = obj.map_or("absent".to_string(), |o| {
                    serde_json::to_string_pretty(&o).unwrap_or_default()
                });
                panic!(
                    "apiserver: {kind} {namespace}/{name} did not reach the expected state in {timeout:?}; last seen: {shown}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An in-process watch of a kind (not in the request log, not cut by `cut_watches`):
    /// ADDED for every current object, then every change.
    pub fn subscribe(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> UnboundedReceiver<WatchEvent> {
        let mut store = self.store();
        let Ok(rt) = store.find_kind(api_version, kind) else {
            panic!("apiserver: no kind {kind} in {api_version}");
        };
        let filter = WatchFilter {
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            ..WatchFilter::default()
        };
        match store.watch(&rt, filter, None, false, false, false) {
            Ok(rx) => rx,
            Err(e) => panic!("apiserver: subscribe failed: {}", e.message),
        }
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    /// Requests with this verb on this resource (`deployments`, `canaries/status`).
    pub fn requests_for(&self, verb: &str, resource: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| {
                let res = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                r.verb == verb && res == resource
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// The next `n` requests with this verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`, or `*`) on this resource (`virtualrouters`,
    /// `canaries/status`, or `*`) fail with `code` (409, 429, 500, 503, …) and a `Status` body
    /// worded like the real error.
    pub fn fail_next(&self, verb: &str, resource: &str, n: usize, code: u16) {
        lock(&self.shared.faults).push(Fault {
            verb: verb.to_string(),
            resource: resource.to_string(),
            remaining: n,
            code,
        });
    }

    /// How many injected faults have not fired yet.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults).iter().map(|f| f.remaining).sum()
    }

    /// Closes every open watch stream (clients see the stream end and watch again); returns how
    /// many were open.
    pub fn cut_watches(&self) -> usize {
        self.store().cut_http_watches()
    }

    /// Watch streams currently open over HTTP.
    pub fn open_watches(&self) -> usize {
        self.store().open_http_watches()
    }

    /// Forgets the change history: a watch resumed from any resourceVersion seen so far gets
    /// 410 Expired ("too old resource version") and the client must list again. Combine with
    /// `cut_watches` to make every watcher go through that.
    pub fn compact(&self) {
        self.store().compact();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.handle.store().cut_http_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
