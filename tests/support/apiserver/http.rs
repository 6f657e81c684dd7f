//! The HTTP face of the server: one fallback handler that parses Kubernetes API paths, records
//! every request, applies injected faults, and dispatches to discovery or the store; watches are
//! streamed as newline-delimited JSON.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::error::ApiError;
use super::resources::{self, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{DeleteOptions, PatchType, Sub, WatchFilter};
use super::{Request, Shared};

pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        );
        match (bytes[i], pair) {
            (b'+', _) => out.push(b' '),
            (b'%', (Some(hi), Some(lo))) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// A request for a resource: which type, namespace, name and subresource.
struct Target {
    rt: ResourceType,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion(String, String),
    Version,
    OpenApiV2,
    Health,
    Resource(Box<Target>),
    NotFound,
}

fn route(shared: &Shared, path: &str) -> Route {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v] => return Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["version"] => return Route::Version,
        ["openapi", "v2"] => return Route::OpenApiV2,
        ["healthz" | "readyz" | "livez"] => return Route::Health,
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let store = shared.lock_store();
    let find = |plural: &str| store.find(group, version, plural);
    let target =
        |plural: &str, ns: &str, name: Option<&str>, sub: Option<&str>, namespaced: bool| {
            find(plural)
                .filter(|rt| rt.namespaced == namespaced)
                .map(|rt| {
                    Route::Resource(Box::new(Target {
                        rt,
                        namespace: ns.to_string(),
                        name: name.map(str::to_string),
                        sub: sub.map(str::to_string),
                    }))
                })
                .unwrap_or(Route::NotFound)
        };
    match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] => {
            target("namespaces", "", Some(ns), Some(sub), false)
        }
        ["namespaces", ns, plural] => target(plural, ns, None, None, true),
        ["namespaces", ns, plural, name] => target(plural, ns, Some(name), None, true),
        ["namespaces", ns, plural, name, sub] => target(plural, ns, Some(name), Some(sub), true),
        [plural] => match find(plural) {
            Some(rt) => Route::Resource(Box::new(Target {
                rt,
                namespace: String::new(),
                name: None,
                sub: None,
            })),
            None => Route::NotFound,
        },
        [plural, name] => target(plural, "", Some(name), None, false),
        [plural, name, sub] => target(plural, "", Some(name), Some(sub), false),
        _ => Route::NotFound,
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response {
    let mut resp = json_response(e.code, &e.status());
    if e.code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the request body is neither JSON nor UTF-8 YAML"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        ApiError::bad_request(format!("the request body is neither JSON nor YAML: {e}"))
    })
}

fn filter_from(params: &Params, namespace: &str) -> Result<WatchFilter, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
    let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("fieldSelector: {e}")))?;
    Ok(WatchFilter {
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        labels,
        fields,
    })
}

fn verb_of(method: &Method, target: &Target, params: &Params) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if params.flag("watch") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unsupported",
    }
}

fn sub_of(target: &Target) -> Result<Sub, ApiError> {
    match target.sub.as_deref() {
        None => Ok(Sub::Main),
        Some("status") if target.rt.status => Ok(Sub::Status),
        Some("scale") if target.rt.scale => Ok(Sub::Scale),
        Some("finalize") if target.rt.kind == "Namespace" => Ok(Sub::Main),
        Some(other) => Err(ApiError::new(
            404,
            format!(
                "the server could not find the requested resource: {}/{other}",
                target.rt.qualified()
            ),
        )),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let params = Params(parse_query(&query));
    let header_text = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut record = Request {
        method: method.to_string(),
        verb: String::new(),
        path: path.clone(),
        query: query.clone(),
        content_type: header_text(header::CONTENT_TYPE),
        user_agent: header_text(header::USER_AGENT),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        status: 0,
    };
    let resp = match route(&shared, &path) {
        Route::Resource(target) => {
            let verb = verb_of(&method, &target, &params);
            record.verb = verb.to_string();
            record.resource = target.rt.plural.clone();
            record.subresource = target.sub.clone().unwrap_or_default();
            record.namespace = target.namespace.clone();
            record.name = target.name.clone().unwrap_or_default();
            match shared.take_fault(verb, &target.rt.plural, target.sub.as_deref()) {
                Some(code) => error_response(&ApiError::injected(
                    code,
                    &target.rt,
                    target.name.as_deref().unwrap_or_default(),
                )),
                None => {
                    resource(&shared, verb, *target, &params, &record.content_type, &body).await
                }
            }
        }
        other => {
            record.verb = if method == Method::GET {
                "get".into()
            } else {
                "unsupported".into()
            };
            nonresource(&shared, &method, other)
        }
    };
    record.status = resp.status().as_u16();
    shared.record(record);
    resp
}

/// An OpenAPI v2 document with no definitions, in the protobuf encoding kubectl asks for
/// (`openapi.v2.Document{swagger: "2.0", info: {title, version}}`): kubectl's client-side
/// validation finds no schema for any kind and lets every object through.
fn openapi_v2() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let info = [field(0x0a, b"Kubernetes"), field(0x12, b"v1.33.0")].concat();
    [field(0x0a, b"2.0"), field(0x12, &info)].concat()
}

fn nonresource(shared: &Shared, method: &Method, route: Route) -> Response {
    if method != Method::GET {
        return error_response(&ApiError::new(
            405,
            format!("the server does not allow {method} here"),
        ));
    }
    let store = shared.lock_store();
    let doc = match route {
        Route::CoreVersions => Some(resources::core_versions(&shared.addr.to_string())),
        Route::Groups => Some(resources::group_list(store.types())),
        Route::Group(g) => resources::group(store.types(), &g),
        Route::GroupVersion(g, v) => resources::resource_list(store.types(), &g, &v),
        Route::Version => Some(resources::version()),
        Route::Health => return (StatusCode::OK, "ok").into_response(),
        Route::OpenApiV2 => {
            let mut resp = (StatusCode::OK, openapi_v2()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return resp;
        }
        Route::Resource(_) | Route::NotFound => None,
    };
    match doc {
        Some(d) => json_response(200, &d),
        None => error_response(&ApiError::new(
            404,
            "the server could not find the requested resource",
        )),
    }
}

async fn resource(
    shared: &Arc<Shared>,
    verb: &str,
    target: Target,
    params: &Params,
    content_type: &str,
    body: &[u8],
) -> Response {
    let result = match verb {
        "watch" => return watch(shared, &target, params),
        _ => serve(shared, verb, &target, params, content_type, body),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

fn serve(
    shared: &Shared,
    verb: &str,
    t: &Target,
    params: &Params,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let rt = &t.rt;
    let ns = t.namespace.as_str();
    let name = t.name.as_deref().unwrap_or_default();
    let dry_run = params.get("dryRun") == Some("All");
    let sub = sub_of(t)?;
    let mut store = shared.lock_store();
    match verb {
        "list" => {
            let filter = filter_from(params, ns)?;
            Ok((200, store.list(rt, &filter)))
        }
        "get" => store.get_sub(rt, ns, name, sub).map(|v| (200, v)),
        "create" => {
            let obj = parse_body(body)?;
            store.create(rt, ns, obj, dry_run).map(|v| (201, v))
        }
        "update" => {
            let obj = parse_body(body)?;
            store
                .update(rt, ns, name, obj, sub, dry_run)
                .map(|v| (200, v))
        }
        "patch" => {
            let mime = content_type.split(';').next().unwrap_or_default().trim();
            let kind = match mime {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" => PatchType::Apply,
                other => {
                    return Err(ApiError::new(
                        415,
                        format!(
                            "the body of the request was in an unknown format {other:?} - accepted media types include: \
                             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                             application/strategic-merge-patch+json"
                        ),
                    ));
                }
            };
            if kind == PatchType::Apply && params.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    vec![super::error::Cause::new(
                        "fieldManager",
                        "Required value: is required for apply patch",
                    )],
                ));
            }
            let patch = parse_body(body)?;
            store
                .patch(rt, (ns, name), kind, &patch, sub, dry_run)
                .map(|(v, created)| (if created { 201 } else { 200 }, v))
        }
        "delete" | "deletecollection" => {
            let opts_body = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_body(body)?
            };
            let policy = params
                .get("propagationPolicy")
                .map(str::to_string)
                .or_else(|| {
                    opts_body
                        .get("propagationPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            let body_dry = opts_body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All"));
            let opts = DeleteOptions {
                orphan: policy.as_deref() == Some("Orphan")
                    || opts_body.get("orphanDependents") == Some(&json!(true)),
                resource_version: opts_body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                uid: opts_body
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                dry_run: dry_run || body_dry,
            };
            if verb == "delete" {
                store.delete(rt, ns, name, &opts).map(|v| (200, v))
            } else {
                let filter = filter_from(params, ns)?;
                store
                    .delete_collection(rt, &filter, &opts)
                    .map(|v| (200, v))
            }
        }
        other => Err(ApiError::new(
            405,
            format!("{other} is not supported on this path"),
        )),
    }
}

fn watch(shared: &Arc<Shared>, t: &Target, params: &Params) -> Response {
    let opened = (|| {
        let filter = filter_from(params, &t.namespace)?;
        let timeout = match params.get("timeoutSeconds") {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "timeoutSeconds: invalid value {s:?}: expected a number of seconds"
                ))
            })?),
        };
        let rx = shared.lock_store().watch(
            &t.rt,
            filter,
            params.get("resourceVersion"),
            params.flag("sendInitialEvents"),
            params.flag("allowWatchBookmarks"),
            true,
        )?;
        Ok::<_, ApiError>((rx, timeout))
    })();
    let (rx, timeout) = match opened {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = ev.to_json().to_string().into_bytes();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    let deadline = Box::pin(tokio::time::sleep(Duration::from_secs(
        timeout.unwrap_or(1800),
    )));
    let body = Body::from_stream(events.take_until(deadline));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
