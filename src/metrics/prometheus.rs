//! The Prometheus provider: PromQL through the HTTP API (`/api/v1/query`,
//! `/api/v1/query_range`), with bearer/basic auth and extra headers from the template, retries
//! on transport errors, and SigV4 signing for Amazon Managed Service for Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::config::{ProvideCredentials, SharedCredentialsProvider};
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::http::{chain, display_url, excerpt, retryable, transport_error};
use super::{MetricsError, MetricsProvider, Point, TimeRange, format_labels};

pub const KIND: &str = "prometheus";

enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

struct SigV4 {
    region: String,
    credentials: SharedCredentialsProvider,
}

/// A Prometheus server (or anything speaking its HTTP query API).
pub struct Prometheus {
    client: reqwest::Client,
    base: Url,
    at: String,
    headers: HeaderMap,
    auth: Auth,
    retries: usize,
    timeout: Duration,
    sigv4: Option<SigV4>,
}

impl Prometheus {
    /// `address` is the server URL (a path prefix is kept); `headers` are sent with every
    /// query; `secret` may hold `token` (bearer) or `username` and `password` (basic).
    pub fn new(
        client: reqwest::Client,
        address: &str,
        headers: &BTreeMap<String, String>,
        secret: Option<&BTreeMap<String, String>>,
    ) -> Result<Prometheus, MetricsError> {
        let base = Url::parse(address.trim()).map_err(|e| {
            MetricsError::Config(format!(
                "Prometheus address '{address}' is not a URL ({e}); write it like http://prometheus.monitoring:9090"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(MetricsError::Config(format!(
                "Prometheus address '{address}' must be an http:// or https:// URL with a host"
            )));
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                MetricsError::Config(format!(
                    "provider.headers: '{k}' is not a valid HTTP header name"
                ))
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                MetricsError::Config(format!(
                    "provider.headers: the value of '{k}' is not a valid HTTP header value"
                ))
            })?;
            map.insert(name, value);
        }
        let auth = match secret {
            None => Auth::None,
            Some(s) => match (s.get("token"), s.get("username"), s.get("password")) {
                (Some(t), _, _) => Auth::Bearer(t.trim().to_string()),
                (None, Some(u), Some(p)) => Auth::Basic {
                    username: u.clone(),
                    password: p.clone(),
                },
                (None, Some(_), None) => {
                    return Err(MetricsError::Config(
                        "the template's secret has 'username' but no 'password'; add 'password' (or use 'token')".into(),
                    ));
                }
                (None, None, Some(_)) => {
                    return Err(MetricsError::Config(
                        "the template's secret has 'password' but no 'username'; add 'username' (or use 'token')".into(),
                    ));
                }
                (None, None, None) => {
                    return Err(MetricsError::Config(
                        "the template's secret has neither 'token' nor 'username' and 'password'; add one of them".into(),
                    ));
                }
            },
        };
        let at = display_url(&base);
        Ok(Prometheus {
            client,
            base,
            at,
            headers: map,
            auth,
            retries: 2,
            timeout: Duration::from_secs(5),
            sigv4: None,
        })
    }

    /// Extra attempts after transport errors (default 2).
    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The client's timeout, for messages.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Signs every request with SigV4 for service `aps` in `region` (Amazon Managed Service
    /// for Prometheus); template auth is then not sent.
    pub fn with_sigv4(mut self, region: String, credentials: SharedCredentialsProvider) -> Self {
        self.sigv4 = Some(SigV4 {
            region,
            credentials,
        });
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn endpoint(&self, api: &str, params: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}/{api}", self.base.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url.query_pairs_mut().extend_pairs(params);
        url
    }

    async fn call(&self, url: &Url) -> Result<Data, MetricsError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(self.retries)
            .with_jitter();
        (|| self.call_once(url))
            .retry(backoff)
            .when(retryable)
            .await
    }

    async fn call_once(&self, url: &Url) -> Result<Data, MetricsError> {
        let mut req = self.client.get(url.clone()).headers(self.headers.clone());
        match &self.sigv4 {
            Some(s) => {
                for (name, value) in self.sign(s, url).await? {
                    req = req.header(name, value);
                }
            }
            None => match &self.auth {
                Auth::None => {}
                Auth::Bearer(t) => req = req.bearer_auth(t),
                Auth::Basic { username, password } => {
                    req = req.basic_auth(username, Some(password))
                }
            },
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(KIND, &self.at, self.timeout, &e))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(KIND, &self.at, self.timeout, &e))?;
        let parsed = serde_json::from_str::<ApiResponse>(&body);
        if !status.is_success() {
            let detail = match &parsed {
                Ok(ApiResponse {
                    error: Some(err),
                    error_type,
                    ..
                }) => match error_type {
                    Some(t) => format!("{t}: {err}"),
                    None => err.clone(),
                },
                _ => excerpt(&body, 200),
            };
            return Err(MetricsError::Http {
                provider: KIND,
                at: self.at.clone(),
                status: status.as_u16(),
                body: detail,
            });
        }
        let parsed = parsed.map_err(|e| MetricsError::BadResponse {
            provider: KIND,
            detail: format!(
                "the answer of {} is not Prometheus API JSON ({e}); it starts with: {}",
                self.at,
                excerpt(&body, 120)
            ),
        })?;
        if parsed.status != "success" {
            return Err(MetricsError::BadResponse {
                provider: KIND,
                detail: format!(
                    "query failed: {}",
                    parsed.error.unwrap_or_else(|| parsed.status.clone())
                ),
            });
        }
        parsed.data.ok_or_else(|| MetricsError::BadResponse {
            provider: KIND,
            detail: "the answer has status success but no data".into(),
        })
    }

    async fn sign(&self, s: &SigV4, url: &Url) -> Result<Vec<(String, String)>, MetricsError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;
        let fail = |what: &str, e: &dyn std::error::Error| MetricsError::Aws {
            provider: KIND,
            detail: format!("SigV4 {what}: {}", chain(e)),
        };
        let creds = s
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| fail("credentials", &e))?;
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&s.region)
            .name("aps")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail("parameters", &e))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            url.as_str(),
            std::iter::empty(),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| fail("request", &e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| fail("signing", &e))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The one value of an instant query.
    pub async fn query(&self, query: &str) -> Result<f64, MetricsError> {
        let url = self.endpoint("api/v1/query", &[("query", query)]);
        let data = self.call(&url).await?;
        instant_value(query, data)
    }

    /// The one series of a range query, oldest first; NaN points are left out.
    pub async fn query_range(
        &self,
        query: &str,
        range: TimeRange,
    ) -> Result<Vec<Point>, MetricsError> {
        let start = range.start.timestamp_millis() as f64 / 1000.0;
        let end = range.end.timestamp_millis() as f64 / 1000.0;
        let step = range.step.as_secs_f64().max(0.001);
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        let url = self.endpoint(
            "api/v1/query_range",
            &[
                ("query", query),
                ("start", &start),
                ("end", &end),
                ("step", &step),
            ],
        );
        let data = self.call(&url).await?;
        range_values(query, data)
    }
}

impl MetricsProvider for Prometheus {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instant<'a>(
        &'a self,
        query: &'a str,
        _window: Duration,
    ) -> BoxFuture<'a, Result<f64, MetricsError>> {
        self.query(query).boxed()
    }

    fn range<'a>(
        &'a self,
        query: &'a str,
        range: TimeRange,
    ) -> BoxFuture<'a, Result<Vec<Point>, MetricsError>> {
        self.query_range(query, range).boxed()
    }
}

/// The region of an Amazon Managed Service for Prometheus endpoint
/// (`aps-workspaces.<region>.amazonaws.com`), which is signed with SigV4.
pub fn amp_region(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let rest = host
        .strip_prefix("aps-workspaces.")
        .or_else(|| host.strip_prefix("aps-workspaces-fips."))?;
    let (region, domain) = rest.split_once('.')?;
    let aws = domain == "amazonaws.com" || domain == "amazonaws.com.cn" || domain == "api.aws";
    (aws && !region.is_empty()).then(|| region.to_string())
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: HashMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    metric: HashMap<String, String>,
    values: Vec<(f64, String)>,
}

fn bad(detail: String) -> MetricsError {
    MetricsError::BadResponse {
        provider: KIND,
        detail,
    }
}

/// Prometheus sample values are strings: numbers, `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Result<f64, MetricsError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        other => other
            .parse::<f64>()
            .map_err(|_| bad(format!("sample value '{other}' is not a number"))),
    }
}

fn series_list<'a>(labels: impl Iterator<Item = &'a HashMap<String, String>>) -> String {
    let all: Vec<String> = labels.map(format_labels).collect();
    let shown: Vec<&str> = all.iter().take(3).map(String::as_str).collect();
    let more = all.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn no_data(query: &str, detail: &str) -> MetricsError {
    MetricsError::NoData {
        provider: KIND,
        query: query.to_string(),
        detail: detail.to_string(),
    }
}

fn instant_value(query: &str, data: Data) -> Result<f64, MetricsError> {
    let value = match data.result_type.as_str() {
        "vector" => {
            let samples: Vec<VectorSample> = serde_json::from_value(data.result)
                .map_err(|e| bad(format!("malformed vector result: {e}")))?;
            match samples.as_slice() {
                [] => return Err(no_data(query, "an empty result")),
                [one] => parse_value(&one.value.1)?,
                many => {
                    return Err(MetricsError::MultipleSeries {
                        provider: KIND,
                        query: query.to_string(),
                        count: many.len(),
                        series: series_list(many.iter().map(|s| &s.metric)),
                    });
                }
            }
        }
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| bad(format!("malformed scalar result: {e}")))?;
            parse_value(&v)?
        }
        "matrix" => {
            return Err(bad(format!(
                "`{query}` returned a range vector; a check needs one value: wrap the range selector in a function such as rate() or avg_over_time()"
            )));
        }
        other => {
            return Err(bad(format!(
                "`{query}` returned a {other} result; a check needs a number"
            )));
        }
    };
    if value.is_nan() {
        return Err(no_data(query, "NaN"));
    }
    Ok(value)
}

fn range_values(query: &str, data: Data) -> Result<Vec<Point>, MetricsError> {
    if data.result_type != "matrix" {
        return Err(bad(format!(
            "a range query returned a {} result instead of a matrix",
            data.result_type
        )));
    }
    let series: Vec<MatrixSeries> = serde_json::from_value(data.result)
        .map_err(|e| bad(format!("malformed matrix result: {e}")))?;
    let one = match series.as_slice() {
        [] => return Err(no_data(query, "an empty result")),
        [one] => one,
        many => {
            return Err(MetricsError::MultipleSeries {
                provider: KIND,
                query: query.to_string(),
                count: many.len(),
                series: series_list(many.iter().map(|s| &s.metric)),
            });
        }
    };
    let mut points = Vec::with_capacity(one.values.len());
    for (ts, v) in &one.values {
        let value = parse_value(v)?;
        if value.is_nan() {
            continue;
        }
        let millis = (ts * 1000.0).round() as i64;
        let time = chrono::DateTime::from_timestamp_millis(millis)
            .ok_or_else(|| bad(format!("timestamp {ts} is out of range")))?;
        points.push(Point { time, value });
    }
    if points.is_empty() {
        return Err(no_data(query, "only NaN values"));
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Data {
        serde_json::from_str::<ApiResponse>(json)
            .unwrap()
            .data
            .unwrap()
    }

    #[test]
    fn one_series_gives_its_value() {
        let d = data(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"99.5"]}]}}"#,
        );
        assert_eq!(instant_value("q", d).unwrap(), 99.5);
    }

    #[test]
    fn nan_and_empty_are_no_data_and_inf_is_a_value() {
        let nan = data(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
        );
        assert!(matches!(
            instant_value("q", nan),
            Err(MetricsError::NoData { .. })
        ));
        let empty = data(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
        assert!(matches!(
            instant_value("q", empty),
            Err(MetricsError::NoData { .. })
        ));
        let inf = data(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#,
        );
        assert_eq!(instant_value("q", inf).unwrap(), f64::INFINITY);
    }

    #[test]
    fn several_series_are_an_error_that_names_them() {
        let d = data(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"pod":"a"},"value":[1,"1"]},{"metric":{"pod":"b"},"value":[1,"2"]}]}}"#,
        );
        let err = instant_value("q", d).unwrap_err().to_string();
        assert!(err.contains("2 series"), "{err}");
        assert!(
            err.contains(r#"{pod="a"}"#) && err.contains(r#"{pod="b"}"#),
            "{err}"
        );
    }

    #[test]
    fn scalars_work_and_matrices_are_explained() {
        let s = data(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#);
        assert_eq!(instant_value("q", s).unwrap(), 2.0);
        let m = data(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"2"]]}]}}"#,
        );
        let err = instant_value("up[1m]", m).unwrap_err().to_string();
        assert!(err.contains("range vector"), "{err}");
    }

    #[test]
    fn amp_hosts_are_recognised() {
        let u =
            Url::parse("https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1").unwrap();
        assert_eq!(amp_region(&u).as_deref(), Some("eu-west-1"));
        let other = Url::parse("http://prometheus.monitoring:9090").unwrap();
        assert_eq!(amp_region(&other), None);
        let spoof = Url::parse("https://aps-workspaces.eu-west-1.example.com").unwrap();
        assert_eq!(amp_region(&spoof), None);
    }

    #[test]
    fn secrets_need_a_token_or_both_basic_fields() {
        super::super::http::install_crypto_provider();
        let client = reqwest::Client::new();
        let mut s = BTreeMap::new();
        s.insert("username".to_string(), "u".to_string());
        let err = Prometheus::new(client.clone(), "http://p:9090", &BTreeMap::new(), Some(&s))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no 'password'"), "{err}");
        let err = Prometheus::new(client, "prometheus:9090", &BTreeMap::new(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("http://"), "{err}");
    }
}
