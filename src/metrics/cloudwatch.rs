//! The CloudWatch providers: `cloudwatch` runs `GetMetricData` with a template's
//! MetricDataQueries JSON over 10 × the metric interval and returns the newest datapoint of the
//! first returned series; `cloudwatch-alarms` counts the listed alarms that are in ALARM
//! (`DescribeAlarms`). Also the AWS clients: region from the template, credentials from the
//! default chain, an HTTP client on rustls with ring.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{
    AlarmType, Dimension, Metric, MetricDataQuery, MetricDataResult, MetricStat, ScanBy,
    StandardUnit, StateValue,
};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::http::excerpt;
use super::{MetricsConfig, MetricsError, MetricsProvider, Point, TimeRange};

pub const KIND: &str = "cloudwatch";
pub const ALARMS_KIND: &str = "cloudwatch-alarms";

/// How far back `GetMetricData` looks, in metric intervals (FB §4.4).
pub const WINDOW_INTERVALS: u32 = 10;

/// AWS SDK clients per region and endpoint, built once.
pub(crate) struct AwsClients {
    timeout: Duration,
    credentials: Option<Credentials>,
    clients: tokio::sync::Mutex<HashMap<(String, Option<String>), Client>>,
}

impl AwsClients {
    pub fn new(config: &MetricsConfig) -> AwsClients {
        AwsClients {
            timeout: config.timeout,
            credentials: config.aws_credentials.clone(),
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn sdk_config(&self, region: &str, endpoint: Option<&str>) -> aws_config::SdkConfig {
        super::http::install_crypto_provider();
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.timeout)
            .operation_attempt_timeout(self.timeout)
            .build();
        // Three attempts with short backoff: a check is bounded by about 3 × timeout + 2 s.
        let retries = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(1));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(c) = &self.credentials {
            loader = loader.credentials_provider(c.clone());
        }
        if let Some(e) = endpoint {
            loader = loader.endpoint_url(e);
        }
        loader.load().await
    }

    /// The CloudWatch client for `region`, at `endpoint` when set.
    pub async fn client(
        &self,
        region: &str,
        endpoint: Option<&str>,
    ) -> Result<Client, MetricsError> {
        let key = (region.to_string(), endpoint.map(str::to_string));
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let conf = self.sdk_config(region, endpoint).await;
        let client = Client::new(&conf);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Credentials for SigV4 signing outside the SDK (Amazon Managed Service for Prometheus).
    pub async fn credentials(
        &self,
        region: &str,
    ) -> Result<SharedCredentialsProvider, MetricsError> {
        if let Some(c) = &self.credentials {
            return Ok(SharedCredentialsProvider::new(c.clone()));
        }
        self.sdk_config(region, None)
            .await
            .credentials_provider()
            .ok_or_else(|| MetricsError::Aws {
                provider: super::prometheus::KIND,
                detail: "no AWS credentials provider is configured for SigV4".into(),
            })
    }
}

fn describe<E>(
    provider: &'static str,
    at: &str,
    timeout: Duration,
    e: &SdkError<E, HttpResponse>,
) -> MetricsError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match e {
        SdkError::TimeoutError(_) => MetricsError::Timeout {
            provider,
            at: at.to_string(),
            after: timeout,
        },
        SdkError::DispatchFailure(_) => MetricsError::Transport {
            provider,
            at: at.to_string(),
            detail: DisplayErrorContext(e).to_string(),
        },
        SdkError::ServiceError(s) => {
            let err = s.err();
            let status = s.raw().status().as_u16();
            let body = s
                .raw()
                .body()
                .bytes()
                .map(|b| excerpt(&String::from_utf8_lossy(b), 200))
                .unwrap_or_default();
            if status < 300 {
                return MetricsError::BadResponse {
                    provider,
                    detail: format!(
                        "{at}: the answer is not CloudWatch's protocol ({}); it starts with: {body}",
                        DisplayErrorContext(e)
                    ),
                };
            }
            match (err.code(), err.message()) {
                (Some(code), message) if status < 500 => MetricsError::Aws {
                    provider,
                    detail: format!("{at}: {code}: {}", message.unwrap_or("no message")),
                },
                (code, message) => MetricsError::Http {
                    provider,
                    at: at.to_string(),
                    status,
                    body: match (code, message) {
                        (Some(c), Some(m)) => format!("{c}: {m}"),
                        (Some(c), None) => c.to_string(),
                        _ => body,
                    },
                },
            }
        }
        SdkError::ResponseError(_) => MetricsError::BadResponse {
            provider,
            detail: format!("{at}: {}", DisplayErrorContext(e)),
        },
        _ => MetricsError::Aws {
            provider,
            detail: format!("{at}: {}", DisplayErrorContext(e)),
        },
    }
}

fn region_of(client: &Client) -> String {
    client
        .config()
        .region()
        .map_or_else(|| "no region".to_string(), |r| r.to_string())
}

/// `GetMetricData` with the template's MetricDataQueries.
pub struct CloudWatch {
    client: Client,
    at: String,
    timeout: Duration,
}

impl CloudWatch {
    pub fn from_client(client: Client) -> CloudWatch {
        let at = region_of(&client);
        let timeout = client
            .config()
            .timeout_config()
            .and_then(|t| t.operation_attempt_timeout())
            .unwrap_or(Duration::from_secs(15));
        CloudWatch {
            client,
            at,
            timeout,
        }
    }

    /// The results of `queries` between `start` and `end`, newest datapoints first.
    pub async fn metric_data(
        &self,
        queries: Vec<MetricDataQuery>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<MetricDataResult>, MetricsError> {
        let out = self
            .client
            .get_metric_data()
            .set_metric_data_queries(Some(queries))
            .start_time(aws_time(start))
            .end_time(aws_time(end))
            .scan_by(ScanBy::TimestampDescending)
            .max_datapoints(100)
            .send()
            .await
            .map_err(|e| describe(KIND, &self.at, self.timeout, &e))?;
        Ok(out.metric_data_results.unwrap_or_default())
    }

    async fn newest(&self, query: &str, window: Duration) -> Result<f64, MetricsError> {
        let queries = parse_queries(query)?;
        let end = Utc::now();
        let span = chrono::Duration::from_std(window * WINDOW_INTERVALS)
            .unwrap_or(chrono::Duration::minutes(10));
        let results = self.metric_data(queries, end - span, end).await?;
        let no_data = |detail: String| MetricsError::NoData {
            provider: KIND,
            query: query.to_string(),
            detail,
        };
        let Some(first) = results.first() else {
            return Err(no_data(
                "no results (does any query have ReturnData true?)".into(),
            ));
        };
        let newest = first
            .timestamps()
            .iter()
            .zip(first.values())
            .filter(|(_, v)| !v.is_nan())
            .max_by_key(|(t, _)| (t.secs(), t.subsec_nanos()))
            .map(|(_, v)| *v);
        newest.ok_or_else(|| {
            let messages: Vec<String> = first
                .messages()
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.code().unwrap_or("message"),
                        m.value().unwrap_or("")
                    )
                })
                .collect();
            let id = first.id().unwrap_or("?");
            let mut detail = format!(
                "no datapoints for '{id}' in the last {}",
                crate::api::duration::format(span)
            );
            if !messages.is_empty() {
                detail.push_str(&format!(" ({})", messages.join("; ")));
            }
            no_data(detail)
        })
    }

    async fn series(&self, query: &str, range: TimeRange) -> Result<Vec<Point>, MetricsError> {
        let queries = parse_queries(query)?;
        let results = self.metric_data(queries, range.start, range.end).await?;
        let first = results.first().ok_or_else(|| MetricsError::NoData {
            provider: KIND,
            query: query.to_string(),
            detail: "no results".into(),
        })?;
        let mut points: Vec<Point> = first
            .timestamps()
            .iter()
            .zip(first.values())
            .filter(|(_, v)| !v.is_nan())
            .filter_map(|(t, v)| {
                DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                    .map(|time| Point { time, value: *v })
            })
            .collect();
        points.sort_by_key(|p| p.time);
        if points.is_empty() {
            return Err(MetricsError::NoData {
                provider: KIND,
                query: query.to_string(),
                detail: "no datapoints in the range".into(),
            });
        }
        Ok(points)
    }
}

fn aws_time(t: DateTime<Utc>) -> AwsDateTime {
    AwsDateTime::from_millis(t.timestamp_millis())
}

impl MetricsProvider for CloudWatch {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instant<'a>(
        &'a self,
        query: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<f64, MetricsError>> {
        self.newest(query, window).boxed()
    }

    fn range<'a>(
        &'a self,
        query: &'a str,
        range: TimeRange,
    ) -> BoxFuture<'a, Result<Vec<Point>, MetricsError>> {
        self.series(query, range).boxed()
    }
}

/// `cloudwatch-alarms`: the value is the number of listed alarms in state ALARM, so a metric
/// with `thresholdRange: {max: 0}` fails while any of them fires. The query is a JSON array of
/// alarm names (metric or composite alarms); a listed alarm that does not exist is an error.
pub struct CloudWatchAlarms {
    client: Client,
    at: String,
    timeout: Duration,
}

impl CloudWatchAlarms {
    pub fn from_client(client: Client) -> CloudWatchAlarms {
        let cw = CloudWatch::from_client(client);
        CloudWatchAlarms {
            client: cw.client,
            at: cw.at,
            timeout: cw.timeout,
        }
    }

    /// State of each listed alarm.
    pub async fn states(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, StateValue>, MetricsError> {
        let mut states = BTreeMap::new();
        for chunk in names.chunks(100) {
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .max_records(100)
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| describe(ALARMS_KIND, &self.at, self.timeout, &e))?;
                for a in out.metric_alarms() {
                    if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                        states.insert(n.to_string(), s.clone());
                    }
                }
                for a in out.composite_alarms() {
                    if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                        states.insert(n.to_string(), s.clone());
                    }
                }
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(states)
    }

    async fn firing(&self, query: &str) -> Result<f64, MetricsError> {
        let names = parse_alarm_names(query)?;
        let states = self.states(&names).await?;
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !states.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(MetricsError::Aws {
                provider: ALARMS_KIND,
                detail: format!(
                    "{}: no alarm named {} (check the names and the template's region)",
                    self.at,
                    missing.join(", ")
                ),
            });
        }
        let firing: Vec<&str> = states
            .iter()
            .filter(|(_, s)| **s == StateValue::Alarm)
            .map(|(n, _)| n.as_str())
            .collect();
        if !firing.is_empty() {
            tracing::info!(alarms = %firing.join(", "), "CloudWatch alarms in ALARM");
        }
        Ok(firing.len() as f64)
    }
}

impl MetricsProvider for CloudWatchAlarms {
    fn kind(&self) -> &'static str {
        ALARMS_KIND
    }

    fn instant<'a>(
        &'a self,
        query: &'a str,
        _window: Duration,
    ) -> BoxFuture<'a, Result<f64, MetricsError>> {
        self.firing(query).boxed()
    }

    fn range<'a>(
        &'a self,
        _query: &'a str,
        _range: TimeRange,
    ) -> BoxFuture<'a, Result<Vec<Point>, MetricsError>> {
        async {
            Err(MetricsError::Unsupported {
                provider: ALARMS_KIND,
                what: "range queries: an alarm has a state, not a series".into(),
            })
        }
        .boxed()
    }
}

/// Reads a `cloudwatch-alarms` query: a JSON array of alarm names.
pub fn parse_alarm_names(query: &str) -> Result<Vec<String>, MetricsError> {
    let bad = |why: &str| {
        MetricsError::Config(format!(
            "cloudwatch-alarms query {why}; write a JSON array of alarm names, for example [\"podinfo-5xx\", \"podinfo-latency\"]"
        ))
    };
    let names: Vec<String> =
        serde_json::from_str(query.trim()).map_err(|_| bad("is not a JSON array of strings"))?;
    if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
        return Err(bad("has no names or an empty name"));
    }
    Ok(names)
}

/// A JSON object read with case-insensitive keys (as Flagger's Go decoding does), which
/// reports keys it did not use.
struct Fields<'a> {
    path: String,
    fields: Vec<(&'a str, &'a Value, bool)>,
}

impl<'a> Fields<'a> {
    fn new(path: String, v: &'a Value) -> Result<Fields<'a>, MetricsError> {
        let obj = v
            .as_object()
            .ok_or_else(|| query_error(&path, "must be a JSON object"))?;
        Ok(Fields {
            path,
            fields: obj.iter().map(|(k, v)| (k.as_str(), v, false)).collect(),
        })
    }

    fn take(&mut self, name: &str) -> Option<&'a Value> {
        let f = self
            .fields
            .iter_mut()
            .find(|(k, _, _)| k.eq_ignore_ascii_case(name))?;
        f.2 = true;
        Some(f.1)
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, MetricsError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(query_error(
                &format!("{}.{name}", self.path),
                "must be a string",
            )),
        }
    }

    fn int(&mut self, name: &str) -> Result<Option<i32>, MetricsError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    query_error(
                        &format!("{}.{name}", self.path),
                        "must be a whole number of seconds",
                    )
                }),
        }
    }

    fn bool(&mut self, name: &str) -> Result<Option<bool>, MetricsError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(query_error(
                &format!("{}.{name}", self.path),
                "must be true or false",
            )),
        }
    }

    fn object(&mut self, name: &str) -> Result<Option<Fields<'a>>, MetricsError> {
        let path = format!("{}.{name}", self.path);
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Fields::new(path, v).map(Some),
        }
    }

    fn finish(self, known: &str) -> Result<(), MetricsError> {
        match self.fields.iter().find(|(_, _, used)| !used) {
            None => Ok(()),
            Some((k, _, _)) => Err(query_error(
                &format!("{}.{k}", self.path),
                &format!("is not a field here (known: {known})"),
            )),
        }
    }
}

fn query_error(path: &str, what: &str) -> MetricsError {
    MetricsError::Config(format!("cloudwatch query {path} {what}"))
}

/// Reads a `cloudwatch` query: a JSON array of MetricDataQuery objects in the AWS API shape
/// (`Id`, `Expression`, `Label`, `MetricStat{Metric{Namespace, MetricName, Dimensions[{Name,
/// Value}]}, Period, Stat, Unit}`, `ReturnData`, `Period`, `AccountId`; keys in any case).
pub fn parse_queries(query: &str) -> Result<Vec<MetricDataQuery>, MetricsError> {
    let v: Value = serde_json::from_str(query.trim()).map_err(|e| {
        MetricsError::Config(format!(
            "cloudwatch query is not JSON ({e}); write a JSON array of MetricDataQuery objects"
        ))
    })?;
    let items = v.as_array().ok_or_else(|| {
        MetricsError::Config(
            "cloudwatch query must be a JSON array of MetricDataQuery objects, for example [{\"Id\": \"m1\", \"MetricStat\": {...}}]".into(),
        )
    })?;
    if items.is_empty() {
        return Err(MetricsError::Config(
            "cloudwatch query is an empty array; add at least one MetricDataQuery".into(),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_query(format!("[{i}]"), item))
        .collect()
}

fn parse_query(path: String, item: &Value) -> Result<MetricDataQuery, MetricsError> {
    let mut f = Fields::new(path.clone(), item)?;
    let id = f.string("Id")?.filter(|s| !s.is_empty()).ok_or_else(|| {
        query_error(
            &format!("{path}.Id"),
            "is required (a lowercase name such as m1)",
        )
    })?;
    let expression = f.string("Expression")?;
    let stat = match f.object("MetricStat")? {
        Some(ms) => Some(parse_metric_stat(ms)?),
        None => None,
    };
    let label = f.string("Label")?;
    let return_data = f.bool("ReturnData")?;
    let period = f.int("Period")?;
    let account = f.string("AccountId")?;
    f.finish("Id, Expression, MetricStat, Label, ReturnData, Period, AccountId")?;
    if expression.is_some() == stat.is_some() {
        return Err(query_error(
            &path,
            "needs exactly one of Expression or MetricStat",
        ));
    }
    let q = MetricDataQuery::builder()
        .id(id)
        .set_expression(expression)
        .set_metric_stat(stat)
        .set_label(label)
        .set_return_data(return_data)
        .set_period(period)
        .set_account_id(account)
        .build();
    Ok(q)
}

fn parse_metric_stat(mut ms: Fields<'_>) -> Result<MetricStat, MetricsError> {
    let path = ms.path.clone();
    let mut m = ms
        .object("Metric")?
        .ok_or_else(|| query_error(&format!("{path}.Metric"), "is required"))?;
    let mut dims = Vec::new();
    if let Some(d) = m.take("Dimensions") {
        let list = d.as_array().ok_or_else(|| {
            query_error(
                &format!("{}.Dimensions", m.path),
                "must be an array of {Name, Value}",
            )
        })?;
        for (i, dv) in list.iter().enumerate() {
            let mut df = Fields::new(format!("{}.Dimensions[{i}]", m.path), dv)?;
            let dim = Dimension::builder()
                .set_name(df.string("Name")?)
                .set_value(df.string("Value")?)
                .build();
            df.finish("Name, Value")?;
            dims.push(dim);
        }
    }
    let metric = Metric::builder()
        .set_namespace(m.string("Namespace")?)
        .set_metric_name(m.string("MetricName")?)
        .set_dimensions(Some(dims))
        .build();
    m.finish("Namespace, MetricName, Dimensions")?;
    let period = ms.int("Period")?.ok_or_else(|| {
        query_error(
            &format!("{path}.Period"),
            "is required (seconds, for example 60)",
        )
    })?;
    let stat = ms.string("Stat")?.ok_or_else(|| {
        query_error(
            &format!("{path}.Stat"),
            "is required (for example Sum, Average or p99)",
        )
    })?;
    let unit = ms.string("Unit")?.map(|u| StandardUnit::from(u.as_str()));
    ms.finish("Metric, Period, Stat, Unit")?;
    Ok(MetricStat::builder()
        .metric(metric)
        .period(period)
        .stat(stat)
        .set_unit(unit)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_in_any_key_case() {
        let q = parse_queries(
            r#"[{"id":"e1","expression":"100*(m2/m1)","label":"rate"},
                {"Id":"m1","MetricStat":{"Metric":{"Namespace":"AWS/ApplicationELB","MetricName":"RequestCount",
                  "Dimensions":[{"Name":"TargetGroup","Value":"tg"}]},"Period":60,"Stat":"Sum"},"ReturnData":false}]"#,
        )
        .unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].expression(), Some("100*(m2/m1)"));
        let ms = q[1].metric_stat().unwrap();
        assert_eq!(ms.stat(), Some("Sum"));
        assert_eq!(ms.period(), Some(60));
        assert_eq!(ms.metric().unwrap().dimensions()[0].value(), Some("tg"));
        assert_eq!(q[1].return_data(), Some(false));
    }

    #[test]
    fn query_mistakes_name_the_field() {
        let err =
            parse_queries(r#"[{"Id":"m1","MetricStat":{"Metric":{},"Period":"60","Stat":"Sum"}}]"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("[0].MetricStat.Period"), "{err}");
        let err = parse_queries(r#"[{"Id":"m1","Expresion":"1"}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0].Expresion is not a field"), "{err}");
        let err = parse_queries(r#"{"Id":"m1"}"#).unwrap_err().to_string();
        assert!(err.contains("JSON array"), "{err}");
        let err = parse_queries(r#"[{"Id":"m1"}]"#).unwrap_err().to_string();
        assert!(
            err.contains("exactly one of Expression or MetricStat"),
            "{err}"
        );
    }

    #[test]
    fn alarm_names_are_a_json_array() {
        assert_eq!(
            parse_alarm_names(r#"["a","b"]"#).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(parse_alarm_names("a,b").is_err());
        assert!(parse_alarm_names("[]").is_err());
    }
}
