//! The object store behind the server: objects by (storage group, plural, namespace, name), the
//! global resourceVersion counter, the retained change history that watches replay from, the
//! open watches, and every write rule (preconditions, status split, generation, defaults,
//! validation, finalizers, deletion and garbage collection through ownerReferences).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::error::{ApiError, Cause};
use super::objects;
use super::patch;
use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector};

type Key = (String, String, String, String);

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    Scale,
}

/// The patch formats, by request Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as kept in the history and sent to watches.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: (String, String),
    pub namespace: String,
    pub kind: ChangeType,
    pub old: Option<Value>,
    pub new: Value,
}

/// One event sent to a watch: `type` (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR) and object.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

impl WatchEvent {
    pub fn to_json(&self) -> Value {
        json!({"type": self.kind, "object": self.object})
    }
}

/// What a watch is interested in.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, ns: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

struct Watcher {
    rt: ResourceType,
    filter: WatchFilter,
    bookmarks: bool,
    /// Opened over HTTP (closed by `cut_http_watches`), rather than in-process.
    http: bool,
    tx: UnboundedSender<WatchEvent>,
}

/// Options of a DELETE.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub orphan: bool,
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    pub dry_run: bool,
}

pub struct Store {
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted: u64,
    watchers: Vec<Watcher>,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The metadata map of an object (created when missing). Objects reaching the store are JSON
/// objects: request bodies are checked by `check_type` first.
fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj["metadata"] {
        Value::Object(ref mut m) => m,
        _ => unreachable!("metadata was just set to an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A stored object with resourceVersion removed, for "did this write change anything".
fn without_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let mut store = Self {
            types: resources::builtin(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
        };
        let ns_type = store.types[0].clone();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Creating a well-formed namespace in an empty store cannot fail.
            let _ = store.create(&ns_type, "", obj, false);
        }
        store
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The resource of `apiVersion` + `kind`, or an error naming both.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("the server could not find the requested resource: no kind {kind:?} in {api_version:?}"),
                )
            })
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
        let (g, p) = rt.storage_key();
        let ns = if rt.namespaced { ns } else { "" };
        (g, p, ns.to_string(), name.to_string())
    }

    fn stored(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.stored(rt, ns, name).map(|o| objects::to_view(rt, o))
    }

    /// The objects of `rt` in `ns` (all namespaces when `None`) that match the filter.
    pub fn items(&self, rt: &ResourceType, filter: &WatchFilter) -> Vec<Value> {
        let (g, p) = rt.storage_key();
        self.objects
            .iter()
            .filter(|((og, op, ns, _), obj)| *og == g && *op == p && filter.matches(ns, obj))
            .map(|(_, obj)| objects::to_view(rt, obj.clone()))
            .collect()
    }

    pub fn list(&self, rt: &ResourceType, filter: &WatchFilter) -> Value {
        json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": self.items(rt, filter),
        })
    }

    fn commit(
        &mut self,
        rt: &ResourceType,
        key: Key,
        kind: ChangeType,
        old: Option<Value>,
        mut new: Value,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        if kind == ChangeType::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), new.clone());
        }
        let change = Change {
            rv: self.rv,
            storage: rt.storage_key(),
            namespace: key.2.clone(),
            kind,
            old,
            new: new.clone(),
        };
        self.dispatch(&change);
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            self.register_crd(&new, kind == ChangeType::Deleted);
        }
        new
    }

    fn register_crd(&mut self, crd: &Value, deleted: bool) {
        let Ok(defined) = resources::from_crd(crd) else {
            return;
        };
        let builtin = resources::builtin();
        for t in defined {
            let same = |x: &ResourceType| {
                x.group == t.group && x.version == t.version && x.plural == t.plural
            };
            if builtin.iter().any(same) {
                continue;
            }
            self.types.retain(|x| !same(x));
            if !deleted {
                self.types.push(t);
            }
        }
    }

    fn event_for(w: &Watcher, change: &Change) -> Option<WatchEvent> {
        if w.rt.storage_key() != change.storage {
            return None;
        }
        let now = w.filter.matches(&change.namespace, &change.new);
        let before = change
            .old
            .as_ref()
            .is_some_and(|o| w.filter.matches(&change.namespace, o));
        let kind = match (change.kind, before, now) {
            (ChangeType::Added, _, true) => "ADDED",
            (ChangeType::Deleted, _, true) => "DELETED",
            (ChangeType::Modified, true, true) => "MODIFIED",
            (ChangeType::Modified, false, true) => "ADDED",
            (ChangeType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(WatchEvent {
            kind,
            object: objects::to_view(&w.rt, change.new.clone()),
        })
    }

    fn dispatch(&mut self, change: &Change) {
        self.watchers.retain(|w| match Self::event_for(w, change) {
            Some(ev) => w.tx.send(ev).is_ok(),
            None => !w.tx.is_closed(),
        });
    }

    /// Opens a watch. `rv`: `None`/`""`/`"0"` starts with ADDED for every current object (and,
    /// with `send_initial`, the initial-events-end BOOKMARK); a number replays the retained
    /// changes after it, or sends one 410 ERROR event and ends when it is older than the history.
    pub fn watch(
        &mut self,
        rt: &ResourceType,
        filter: WatchFilter,
        rv: Option<&str>,
        send_initial: bool,
        bookmarks: bool,
        http: bool,
    ) -> Result<UnboundedReceiver<WatchEvent>, ApiError> {
        let (tx, rx) = unbounded_channel();
        let from = match rv.filter(|s| !s.is_empty() && *s != "0") {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version {s:?}: expected a number"))
            })?),
        };
        match from {
            None => {
                for object in self.items(rt, &filter) {
                    let _ = tx.send(WatchEvent {
                        kind: "ADDED",
                        object,
                    });
                }
                if send_initial {
                    let _ = tx.send(WatchEvent {
                        kind: "BOOKMARK",
                        object: json!({
                            "kind": rt.kind,
                            "apiVersion": rt.api_version(),
                            "metadata": {
                                "resourceVersion": self.rv.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        }),
                    });
                }
            }
            Some(n) if n < self.compacted => {
                let err = ApiError::new(
                    410,
                    format!("too old resource version: {n} ({})", self.compacted),
                );
                let _ = tx.send(WatchEvent {
                    kind: "ERROR",
                    object: err.status(),
                });
                return Ok(rx);
            }
            Some(n) => {
                let w = Watcher {
                    rt: rt.clone(),
                    filter: filter.clone(),
                    bookmarks,
                    http,
                    tx: tx.clone(),
                };
                for change in self.history.iter().filter(|c| c.rv > n) {
                    if let Some(ev) = Self::event_for(&w, change) {
                        let _ = tx.send(ev);
                    }
                }
            }
        }
        self.watchers.push(Watcher {
            rt: rt.clone(),
            filter,
            bookmarks,
            http,
            tx,
        });
        Ok(rx)
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
    pub fn bookmark(&mut self) {
        let rv = self.rv.to_string();
        self.watchers.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let object = json!({
                "kind": w.rt.kind,
                "apiVersion": w.rt.api_version(),
                "metadata": {"resourceVersion": rv},
            });
            w.tx.send(WatchEvent {
                kind: "BOOKMARK",
                object,
            })
            .is_ok()
        });
    }

    /// Closes every watch opened over HTTP; returns how many were open.
    pub fn cut_http_watches(&mut self) -> usize {
        let before = self.watchers.len();
        self.watchers.retain(|w| !w.http);
        before - self.watchers.len()
    }

    pub fn open_http_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.iter().filter(|w| w.http).count()
    }

    /// Forgets the change history and moves the resourceVersion on: a watch resumed from any
    /// earlier resourceVersion gets 410 Expired and must list again.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.compacted = self.rv;
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let ns_type = &self.types[0];
        match self.objects.get(&Self::key(ns_type, "", ns)) {
            None => Err(ApiError::not_found(ns_type, ns)),
            Some(n) if meta_str(n, "deletionTimestamp").is_some() => Err(ApiError::new(
                403,
                format!(
                    "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    rt.qualified(),
                    meta_str(n, "name").unwrap_or_default()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn check_type(rt: &ResourceType, obj: &Value, sub: Sub) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        let (want_av, want_kind) = match sub {
            Sub::Scale => ("autoscaling/v1".to_string(), "Scale".to_string()),
            _ => (rt.api_version(), rt.kind.clone()),
        };
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(&want_av);
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or(&want_kind);
        if av != want_av || kind != want_kind {
            return Err(ApiError::bad_request(format!(
                "the body is a {kind} of {av}, but this endpoint serves {want_kind} of {want_av}"
            )));
        }
        Ok(())
    }

    /// POST: creates `body` (view form) in `ns`.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(rt, &body, Sub::Main)?;
        let mut obj = objects::from_view(rt, body);
        obj["apiVersion"] = json!(self.stored_api_version(rt));
        obj["kind"] = json!(rt.kind);
        let meta = meta_mut(&mut obj);
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::new(
                500,
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (
            meta.get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty()),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => format!("{prefix}{}", objects::name_suffix()),
            (None, None) => String::new(),
        };
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            match meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(body_ns) if body_ns != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                    )));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        for system in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(system);
        }
        meta.insert("uid".into(), json!(objects::uid()));
        meta.insert("creationTimestamp".into(), json!(objects::now()));
        if objects::tracks_generation(rt) {
            meta.insert("generation".into(), json!(1));
        }
        if rt.status
            && rt.kind != "Namespace"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        objects::apply_defaults(rt, &mut obj, None);
        objects::validate(rt, &obj, None)?;
        self.check_namespace(rt, ns)?;
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if dry_run {
            return Ok(objects::to_view(rt, obj));
        }
        let stored = self.commit(rt, key, ChangeType::Added, None, obj);
        Ok(objects::to_view(rt, stored))
    }

    fn stored_api_version(&self, rt: &ResourceType) -> String {
        match &rt.storage {
            Some(_) => "v1".into(),
            None => rt.api_version(),
        }
    }

    /// The write rules shared by PUT and PATCH of an existing object. `candidate` is the
    /// desired object in view form; `require_rv`: the write must carry a resourceVersion.
    fn write_existing(
        &mut self,
        rt: &ResourceType,
        (ns, name): (&str, &str),
        candidate: Value,
        sub: Sub,
        (require_rv, dry_run): (bool, bool),
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self.stored(rt, ns, name)?;
        Self::check_type(rt, &candidate, Sub::Main)?;
        let candidate = objects::from_view(rt, candidate);
        let old_rv = meta_str(&old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        match meta_str(&candidate, "resourceVersion") {
            Some(rv) if rv != old_rv => return Err(ApiError::conflict(rt, name)),
            None if require_rv => {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    vec![Cause::new(
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )],
                ));
            }
            _ => {}
        }
        if let Some(n) = meta_str(&candidate, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let mut new = match sub {
            Sub::Status => {
                let mut n = old.clone();
                match candidate.get("status") {
                    Some(s) if !s.is_null() => n["status"] = s.clone(),
                    _ => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                n
            }
            _ => {
                let mut n = candidate;
                if rt.status
                    && let Some(m) = n.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.remove("status");
                        }
                    }
                }
                n
            }
        };
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let meta = meta_mut(&mut new);
            for system in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(system) {
                    Some(v) => meta.insert(system.into(), v.clone()),
                    None => meta.remove(system),
                };
            }
            meta.remove("managedFields");
        }
        objects::apply_defaults(rt, &mut new, Some(&old));
        objects::validate(rt, &new, Some(&old))?;
        let deleting = meta_str(&old, "deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    vec![Cause::new(
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if objects::tracks_generation(rt)
            && objects::generation_part(rt, &new) != objects::generation_part(rt, &old)
        {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(objects::to_view(rt, old));
        }
        if dry_run {
            return Ok(objects::to_view(rt, new));
        }
        if deleting && finalizers(&new).is_empty() {
            let stored = self.commit(rt, key, ChangeType::Deleted, Some(old), new);
            self.collect_garbage(&stored, false);
            return Ok(objects::to_view(rt, stored));
        }
        let stored = self.commit(rt, key, ChangeType::Modified, Some(old), new);
        Ok(objects::to_view(rt, stored))
    }

    fn scale_of(obj: &Value) -> Value {
        let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
        let selector: Vec<String> = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
                "creationTimestamp": meta.get("creationTimestamp"),
            },
            "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
            "status": {
                "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
                "selector": selector.join(","),
            },
        })
    }

    /// GET of a subresource: the object for `status`, a Scale for `scale`.
    pub fn get_sub(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Sub,
    ) -> Result<Value, ApiError> {
        let obj = self.get(rt, ns, name)?;
        Ok(match sub {
            Sub::Scale => Self::scale_of(&obj),
            _ => obj,
        })
    }

    fn write_scale(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        scale: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(rt, &scale, Sub::Scale)?;
        let mut obj = self.get(rt, ns, name)?;
        if let Some(rv) = meta_str(&scale, "resourceVersion") {
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .cloned()
            .filter(Value::is_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    rt,
                    name,
                    vec![Cause::new("spec.replicas", "Required value: an integer")],
                )
            })?;
        obj["spec"]["replicas"] = replicas;
        let out = self.write_existing(rt, (ns, name), obj, Sub::Main, (false, dry_run))?;
        Ok(Self::scale_of(&out))
    }

    /// PUT.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if sub == Sub::Scale {
            return self.write_scale(rt, ns, name, body, dry_run);
        }
        self.write_existing(rt, (ns, name), body, sub, (rt.custom, dry_run))
    }

    /// PATCH. Returns the result and whether it created the object (server-side apply of an
    /// absent object).
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        (ns, name): (&str, &str),
        kind: PatchType,
        body: &Value,
        sub: Sub,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        if kind == PatchType::Strategic && rt.custom {
            return Err(ApiError::new(
                415,
                "strategic merge patch is not supported for custom resources: use a JSON merge patch or server-side apply",
            ));
        }
        let current = match self.get_sub(rt, ns, name, sub) {
            Ok(c) => c,
            Err(e) if e.code == 404 && kind == PatchType::Apply && sub == Sub::Main => {
                let mut obj = body.clone();
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                    m.insert("name".into(), json!(name));
                }
                return self.create(rt, ns, obj, dry_run).map(|o| (o, true));
            }
            Err(e) => return Err(e),
        };
        let patched = match kind {
            PatchType::Json => patch::json_patch(&current, body)
                .map_err(|e| ApiError::invalid(rt, name, vec![Cause::new("patch", e)]))?,
            PatchType::Merge | PatchType::Apply => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge(&current, body)
            }
            PatchType::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                patch::strategic_merge(&current, body)
            }
        };
        let out = match sub {
            Sub::Scale => self.write_scale(rt, ns, name, patched, dry_run)?,
            _ => self.write_existing(rt, (ns, name), patched, sub, (false, dry_run))?,
        };
        Ok((out, false))
    }

    /// DELETE. With finalizers the object only gets a deletionTimestamp; otherwise it is
    /// removed and its dependents are garbage-collected (or orphaned).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self.stored(rt, ns, name)?;
        let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
        if opts.uid.as_deref().is_some_and(|u| u != uid)
            || opts
                .resource_version
                .as_deref()
                .is_some_and(|r| Some(r) != meta_str(&old, "resourceVersion"))
        {
            return Err(ApiError::conflict(rt, name));
        }
        if !finalizers(&old).is_empty() {
            if meta_str(&old, "deletionTimestamp").is_some() || opts.dry_run {
                return Ok(objects::to_view(rt, old));
            }
            let mut new = old.clone();
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(objects::now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            let stored = self.commit(rt, key, ChangeType::Modified, Some(old), new);
            return Ok(objects::to_view(rt, stored));
        }
        if opts.dry_run {
            return Ok(objects::to_view(rt, old));
        }
        let stored = self.commit(rt, key, ChangeType::Deleted, Some(old.clone()), old);
        self.collect_garbage(&stored, opts.orphan);
        if rt.custom {
            return Ok(objects::to_view(rt, stored));
        }
        let mut details = json!({"name": name, "kind": rt.plural, "uid": uid});
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }))
    }

    /// Deletes what depended on `gone`: objects whose every owner is gone (owner references to
    /// `gone` are dropped when `orphan` or when other owners remain), and everything in a
    /// deleted namespace.
    fn collect_garbage(&mut self, gone: &Value, orphan: bool) {
        let mut work = vec![(gone.clone(), orphan)];
        while let Some((gone, orphan)) = work.pop() {
            let gone_uid = meta_str(&gone, "uid").unwrap_or_default().to_string();
            let gone_ns = if gone.get("kind") == Some(&json!("Namespace"))
                && gone.get("apiVersion") == Some(&json!("v1"))
            {
                meta_str(&gone, "name").map(str::to_string)
            } else {
                None
            };
            let keys: Vec<Key> = self.objects.keys().cloned().collect();
            for key in keys {
                let Some(obj) = self.objects.get(&key).cloned() else {
                    continue;
                };
                let Some(rt) = self.type_of_storage(&key.0, &key.1) else {
                    continue;
                };
                let in_ns = gone_ns.as_deref().is_some_and(|n| n == key.2);
                let owners = owner_uids(&obj);
                if !in_ns && !owners.contains(&gone_uid) {
                    continue;
                }
                let remaining: Vec<String> =
                    owners.iter().filter(|u| **u != gone_uid).cloned().collect();
                let alive = remaining.iter().any(|u| self.uid_exists(u));
                if !in_ns && (orphan || alive) {
                    let mut new = obj.clone();
                    if let Some(refs) = new
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| {
                            r.get("uid").and_then(Value::as_str) != Some(gone_uid.as_str())
                        });
                        if refs.is_empty()
                            && let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            m.remove("ownerReferences");
                        }
                    }
                    self.commit(&rt, key, ChangeType::Modified, Some(obj), new);
                    continue;
                }
                if !finalizers(&obj).is_empty() {
                    if meta_str(&obj, "deletionTimestamp").is_none() {
                        let mut new = obj.clone();
                        meta_mut(&mut new)
                            .insert("deletionTimestamp".into(), json!(objects::now()));
                        meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
                        self.commit(&rt, key, ChangeType::Modified, Some(obj), new);
                    }
                    continue;
                }
                let stored = self.commit(&rt, key, ChangeType::Deleted, Some(obj.clone()), obj);
                work.push((stored, false));
            }
        }
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects
            .values()
            .any(|o| meta_str(o, "uid") == Some(uid))
    }

    fn type_of_storage(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.storage.is_none() && t.group == group && t.plural == plural)
            .cloned()
    }

    /// DELETE of a collection: deletes every matching object.
    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        filter: &WatchFilter,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let victims: Vec<(String, String)> = self
            .items(rt, filter)
            .iter()
            .map(|o| {
                (
                    meta_str(o, "namespace").unwrap_or_default().to_string(),
                    meta_str(o, "name").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut items = Vec::new();
        for (ns, name) in victims {
            if let Ok(obj) = self.get(rt, &ns, &name) {
                self.delete(rt, &ns, &name, opts)?;
                items.push(obj);
            }
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Writes `obj` as a test fixture: created when absent, otherwise replaced (status
    /// included), with the usual defaults, validation, generation and watch events.
    pub fn put(&mut self, obj: Value) -> Result<Value, ApiError> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rt = self.find_kind(&av, &kind)?;
        let ns = meta_str(&obj, "namespace")
            .unwrap_or(if rt.namespaced { "default" } else { "" })
            .to_string();
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let status = obj.get("status").cloned();
        let mut body = obj;
        if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let written = match self.stored(&rt, &ns, &name) {
            Err(_) => self.create(&rt, &ns, body, false)?,
            Ok(_) => self.write_existing(&rt, (&ns, &name), body, Sub::Main, (false, false))?,
        };
        match status {
            Some(s) if rt.status && written.get("status") != Some(&s) => {
                let mut with = written;
                with["status"] = s;
                self.write_existing(&rt, (&ns, &name), with, Sub::Status, (false, false))
            }
            _ => Ok(written),
        }
    }

    /// Replaces the status of an object in place (no resourceVersion precondition).
    pub fn set_status(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let mut obj = self.get(rt, ns, name)?;
        obj["status"] = status;
        self.write_existing(rt, (ns, name), obj, Sub::Status, (false, false))
    }
}
