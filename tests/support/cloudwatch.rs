//! A CloudWatch stand-in on 127.0.0.1 that speaks the wire protocol of aws-sdk-cloudwatch 1.140
//! (Smithy RPC v2 CBOR: `POST /service/GraniteServiceVersion20100801/operation/<Op>`, CBOR
//! bodies, timestamps as CBOR tag 1, errors as `{"__type", "message"}` with HTTP 400).
//!
//! Models: `GetMetricData` with MetricStat (Sum, Average, Minimum, Maximum, SampleCount, pNN
//! by nearest rank) over period buckets aligned to the epoch, and metric-math Expressions with
//! numbers, query Ids, `+ - * /`, parentheses and `FILL(x, number)`, evaluated per timestamp
//! (a timestamp missing from an operand is dropped, as in CloudWatch); ReturnData; ScanBy.
//! `DescribeAlarms` by name and AlarmTypes (metric alarms only when none are given). Faults a test sets: an HTTP status,
//! a delay, a body that is not CBOR.
//!
//! Does not model: PutMetricData and every other operation (tests seed data in-process),
//! NextToken pagination, MaxDatapoints, Metrics Insights (`SELECT`), `SEARCH` and every math
//! function but `FILL`, Unit filtering, cross-account queries, retention and storage
//! resolution, request signatures (never checked).

// Several test binaries include this file, each using a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ciborium::Value;

/// A failure the stand-in produces instead of answering.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    Delay(Duration),
    NotCbor,
}

#[derive(Clone, Debug)]
struct Datum {
    namespace: String,
    name: String,
    dimensions: BTreeMap<String, String>,
    time: f64,
    value: f64,
}

#[derive(Default)]
struct World {
    data: Vec<Datum>,
    alarms: BTreeMap<String, (String, bool)>,
    fault: Option<Fault>,
    last_window: Option<(f64, f64)>,
    calls: usize,
}

/// The stand-in; stopped when dropped.
pub struct CloudWatchStandIn {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
    task: tokio::task::JoinHandle<()>,
}

impl CloudWatchStandIn {
    pub async fn start() -> CloudWatchStandIn {
        let world = Arc::new(Mutex::new(World::default()));
        let app = Router::new()
            .route(
                "/service/GraniteServiceVersion20100801/operation/{op}",
                post(operation),
            )
            .with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CloudWatchStandIn { addr, world, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Records one sample of a metric at `time` (seconds since the epoch).
    pub fn put(
        &self,
        namespace: &str,
        name: &str,
        dimensions: &[(&str, &str)],
        time: f64,
        value: f64,
    ) {
        self.world.lock().unwrap().data.push(Datum {
            namespace: namespace.into(),
            name: name.into(),
            dimensions: dimensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            time,
            value,
        });
    }

    /// Sets an alarm's state (`OK`, `ALARM`, `INSUFFICIENT_DATA`).
    pub fn set_alarm(&self, name: &str, state: &str, composite: bool) {
        self.world
            .lock()
            .unwrap()
            .alarms
            .insert(name.into(), (state.into(), composite));
    }

    /// Forgets every datapoint.
    pub fn clear_data(&self) {
        self.world.lock().unwrap().data.clear();
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        self.world.lock().unwrap().fault = fault;
    }

    /// Start and end (seconds) of the last GetMetricData call.
    pub fn last_window(&self) -> Option<(f64, f64)> {
        self.world.lock().unwrap().last_window
    }

    pub fn calls(&self) -> usize {
        self.world.lock().unwrap().calls
    }
}

impl Drop for CloudWatchStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cbor_response(status: StatusCode, body: &Value) -> Response {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(body, &mut bytes).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/cbor"));
    headers.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    (status, headers, bytes).into_response()
}

fn error(code: &str, message: &str) -> Response {
    cbor_response(
        StatusCode::BAD_REQUEST,
        &Value::Map(vec![
            (
                text("__type"),
                text(&format!("com.amazonaws.cloudwatch#{code}")),
            ),
            (text("message"), text(message)),
        ]),
    )
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn get_str(map: &Value, key: &str) -> Option<String> {
    match get(map, key) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(i128::from(*i) as f64),
        Value::Float(f) => Some(*f),
        Value::Tag(1, inner) => number(inner),
        _ => None,
    }
}

async fn operation(
    State(world): State<Arc<Mutex<World>>>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = {
        let mut w = world.lock().unwrap();
        w.calls += 1;
        w.fault.clone()
    };
    match fault {
        Some(Fault::Status(code)) => {
            return (
                StatusCode::from_u16(code).unwrap(),
                "stand-in failure on purpose",
            )
                .into_response();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::NotCbor) => {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("application/cbor"));
            h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
            return (StatusCode::OK, h, "<html>not cbor</html>").into_response();
        }
        None => {}
    }
    if headers.get("smithy-protocol").map(|v| v.as_bytes()) != Some(b"rpc-v2-cbor") {
        return error(
            "InvalidRequest",
            "missing header smithy-protocol: rpc-v2-cbor",
        );
    }
    let input: Value = match ciborium::de::from_reader(&body[..]) {
        Ok(v) => v,
        Err(e) => return error("SerializationException", &format!("body is not CBOR: {e}")),
    };
    match op.as_str() {
        "GetMetricData" => get_metric_data(&world, &input),
        "DescribeAlarms" => describe_alarms(&world, &input),
        other => error(
            "UnknownOperationException",
            &format!("the stand-in does not implement {other}"),
        ),
    }
}

enum Query {
    Stat {
        namespace: String,
        name: String,
        dimensions: BTreeMap<String, String>,
        period: f64,
        stat: String,
    },
    Expression(String),
}

fn get_metric_data(world: &Mutex<World>, input: &Value) -> Response {
    let (Some(start), Some(end)) = (
        get(input, "StartTime").and_then(number),
        get(input, "EndTime").and_then(number),
    ) else {
        return error("MissingParameter", "StartTime and EndTime are required");
    };
    let descending = get_str(input, "ScanBy").as_deref() != Some("TimestampAscending");
    let Some(Value::Array(items)) = get(input, "MetricDataQueries") else {
        return error("MissingParameter", "MetricDataQueries is required");
    };
    let mut queries: Vec<(String, Option<String>, bool, Query)> = Vec::new();
    for item in items {
        let Some(id) = get_str(item, "Id") else {
            return error("InvalidParameterValue", "every query needs an Id");
        };
        let label = get_str(item, "Label");
        let return_data = !matches!(get(item, "ReturnData"), Some(Value::Bool(false)));
        let q = if let Some(expr) = get_str(item, "Expression") {
            Query::Expression(expr)
        } else if let Some(ms) = get(item, "MetricStat") {
            let metric = get(ms, "Metric");
            let dims = match metric.and_then(|m| get(m, "Dimensions")) {
                Some(Value::Array(ds)) => ds
                    .iter()
                    .filter_map(|d| Some((get_str(d, "Name")?, get_str(d, "Value")?)))
                    .collect(),
                _ => BTreeMap::new(),
            };
            Query::Stat {
                namespace: metric
                    .and_then(|m| get_str(m, "Namespace"))
                    .unwrap_or_default(),
                name: metric
                    .and_then(|m| get_str(m, "MetricName"))
                    .unwrap_or_default(),
                dimensions: dims,
                period: get(ms, "Period").and_then(number).unwrap_or(60.0),
                stat: get_str(ms, "Stat").unwrap_or_default(),
            }
        } else {
            return error(
                "InvalidParameterValue",
                &format!("query {id} needs Expression or MetricStat"),
            );
        };
        queries.push((id, label, return_data, q));
    }
    let data = {
        let mut w = world.lock().unwrap();
        w.last_window = Some((start, end));
        w.data.clone()
    };
    let mut series: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for (id, _, _, q) in &queries {
        if let Query::Stat {
            namespace,
            name,
            dimensions,
            period,
            stat,
        } = q
        {
            match stat_series(
                &data, namespace, name, dimensions, *period, stat, start, end,
            ) {
                Ok(s) => {
                    series.insert(id.clone(), s);
                }
                Err(m) => return error("InvalidParameterValue", &m),
            }
        }
    }
    for (id, _, _, q) in &queries {
        if let Query::Expression(expr) = q {
            let parsed = match Parser::new(expr).parse() {
                Ok(p) => p,
                Err(m) => return error("ValidationError", &format!("{id}: {m}")),
            };
            match eval_series(&parsed, &series) {
                Ok(s) => {
                    series.insert(id.clone(), s);
                }
                Err(m) => return error("ValidationError", &format!("{id}: {m}")),
            }
        }
    }
    let mut results = Vec::new();
    for (id, label, return_data, _) in &queries {
        if !return_data {
            continue;
        }
        let mut points: Vec<(i64, f64)> = series
            .get(id)
            .map(|s| s.iter().map(|(t, v)| (*t, *v)).collect())
            .unwrap_or_default();
        if descending {
            points.reverse();
        }
        results.push(Value::Map(vec![
            (text("Id"), text(id)),
            (text("Label"), text(label.as_deref().unwrap_or(id))),
            (
                text("Timestamps"),
                Value::Array(
                    points
                        .iter()
                        .map(|(t, _)| Value::Tag(1, Box::new(Value::Float(*t as f64))))
                        .collect(),
                ),
            ),
            (
                text("Values"),
                Value::Array(points.iter().map(|(_, v)| Value::Float(*v)).collect()),
            ),
            (text("StatusCode"), text("Complete")),
        ]));
    }
    cbor_response(
        StatusCode::OK,
        &Value::Map(vec![
            (text("MetricDataResults"), Value::Array(results)),
            (text("Messages"), Value::Array(vec![])),
        ]),
    )
}

#[allow(clippy::too_many_arguments)]
fn stat_series(
    data: &[Datum],
    namespace: &str,
    name: &str,
    dimensions: &BTreeMap<String, String>,
    period: f64,
    stat: &str,
    start: f64,
    end: f64,
) -> Result<BTreeMap<i64, f64>, String> {
    let period = period.max(1.0);
    let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for d in data {
        if d.namespace != namespace || d.name != name || &d.dimensions != dimensions {
            continue;
        }
        if d.time < start || d.time >= end {
            continue;
        }
        let bucket = ((d.time / period).floor() * period) as i64;
        buckets.entry(bucket).or_default().push(d.value);
    }
    let mut out = BTreeMap::new();
    for (t, mut vs) in buckets {
        vs.sort_by(f64::total_cmp);
        let n = vs.len() as f64;
        let v = match stat {
            "Sum" => vs.iter().sum(),
            "Average" => vs.iter().sum::<f64>() / n,
            "Minimum" => vs[0],
            "Maximum" => vs[vs.len() - 1],
            "SampleCount" => n,
            p if p.starts_with('p') => {
                let q: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("unknown statistic {p}"))?;
                let rank = ((q / 100.0) * n).ceil().max(1.0) as usize;
                vs[rank.min(vs.len()) - 1]
            }
            other => return Err(format!("unknown statistic {other}")),
        };
        out.insert(t, v);
    }
    Ok(out)
}

#[derive(Debug)]
enum Expr {
    Num(f64),
    Id(String),
    Bin(char, Box<Expr>, Box<Expr>),
    Fill(Box<Expr>, f64),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser {
            s: s.as_bytes(),
            i: 0,
        }
    }

    fn parse(mut self) -> Result<Expr, String> {
        let e = self.sum()?;
        self.ws();
        if self.i != self.s.len() {
            return Err(format!("unexpected text at {}", self.i));
        }
        Ok(e)
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.product()?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            e = Expr::Bin(c as char, Box::new(e), Box::new(self.product()?));
        }
        Ok(e)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut e = self.atom()?;
        while let Some(c @ (b'*' | b'/')) = self.peek() {
            self.i += 1;
            e = Expr::Bin(c as char, Box::new(e), Box::new(self.atom()?));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                let e = self.sum()?;
                if self.peek() != Some(b')') {
                    return Err("missing )".into());
                }
                self.i += 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.')
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                t.parse()
                    .map(Expr::Num)
                    .map_err(|_| format!("bad number {t}"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i])
                    .unwrap()
                    .to_string();
                if self.peek() == Some(b'(') {
                    if word != "FILL" {
                        return Err(format!("function {word} is not supported by the stand-in"));
                    }
                    self.i += 1;
                    let inner = self.sum()?;
                    if self.peek() != Some(b',') {
                        return Err("FILL needs two arguments".into());
                    }
                    self.i += 1;
                    let Expr::Num(v) = self.atom()? else {
                        return Err("FILL's second argument must be a number".into());
                    };
                    if self.peek() != Some(b')') {
                        return Err("missing ) after FILL".into());
                    }
                    self.i += 1;
                    return Ok(Expr::Fill(Box::new(inner), v));
                }
                Ok(Expr::Id(word))
            }
            _ => Err(format!("unexpected character at {}", self.i)),
        }
    }
}

fn ids(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Num(_) => {}
        Expr::Id(id) => out.push(id.clone()),
        Expr::Bin(_, a, b) => {
            ids(a, out);
            ids(b, out);
        }
        Expr::Fill(a, _) => ids(a, out),
    }
}

fn eval_at(e: &Expr, t: i64, series: &BTreeMap<String, BTreeMap<i64, f64>>) -> Option<f64> {
    match e {
        Expr::Num(n) => Some(*n),
        Expr::Id(id) => series.get(id).and_then(|s| s.get(&t)).copied(),
        Expr::Fill(a, v) => eval_at(a, t, series).or(Some(*v)),
        Expr::Bin(op, a, b) => {
            let (x, y) = (eval_at(a, t, series)?, eval_at(b, t, series)?);
            match op {
                '+' => Some(x + y),
                '-' => Some(x - y),
                '*' => Some(x * y),
                _ if y == 0.0 => None,
                _ => Some(x / y),
            }
        }
    }
}

fn eval_series(
    e: &Expr,
    series: &BTreeMap<String, BTreeMap<i64, f64>>,
) -> Result<BTreeMap<i64, f64>, String> {
    let mut names = Vec::new();
    ids(e, &mut names);
    let mut times = std::collections::BTreeSet::new();
    for n in &names {
        let s = series
            .get(n)
            .ok_or_else(|| format!("unknown metric id {n} in the expression"))?;
        times.extend(s.keys().copied());
    }
    Ok(times
        .into_iter()
        .filter_map(|t| eval_at(e, t, series).map(|v| (t, v)))
        .collect())
}

fn describe_alarms(world: &Mutex<World>, input: &Value) -> Response {
    let names: Option<Vec<String>> = match get(input, "AlarmNames") {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| match v {
                    Value::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    // Without AlarmTypes, CloudWatch returns metric alarms only.
    let types: Vec<String> = match get(input, "AlarmTypes") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                Value::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => vec!["MetricAlarm".into()],
    };
    let alarms = world.lock().unwrap().alarms.clone();
    let mut metric = Vec::new();
    let mut composite = Vec::new();
    for (name, (state, is_composite)) in alarms {
        if names.as_ref().is_some_and(|n| !n.contains(&name)) {
            continue;
        }
        let kind = if is_composite {
            "CompositeAlarm"
        } else {
            "MetricAlarm"
        };
        if !types.iter().any(|t| t == kind) {
            continue;
        }
        let entry = Value::Map(vec![
            (text("AlarmName"), text(&name)),
            (text("StateValue"), text(&state)),
        ]);
        if is_composite {
            composite.push(entry);
        } else {
            metric.push(entry);
        }
    }
    cbor_response(
        StatusCode::OK,
        &Value::Map(vec![
            (text("MetricAlarms"), Value::Array(metric)),
            (text("CompositeAlarms"), Value::Array(composite)),
        ]),
    )
}
