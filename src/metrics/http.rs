//! The HTTP clients of the metrics providers (one that verifies TLS, one for
//! `insecureSkipVerify`), the rustls crypto provider they need, and error descriptions.

use std::time::Duration;

use super::MetricsError;

/// Installs ring as rustls' process-wide crypto provider unless one is installed already;
/// reqwest is built without one and needs it before the first client.
pub(crate) fn install_crypto_provider() {
    // An error only means a provider is installed already, which is what we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) struct Clients {
    pub verify: reqwest::Client,
    pub insecure: reqwest::Client,
}

impl Clients {
    pub fn new(timeout: Duration) -> Result<Clients, MetricsError> {
        install_crypto_provider();
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .tls_danger_accept_invalid_certs(insecure)
                .build()
                .map_err(|e| {
                    MetricsError::Config(format!("cannot build the HTTP client: {}", chain(&e)))
                })
        };
        Ok(Clients {
            verify: build(false)?,
            insecure: build(true)?,
        })
    }
}

/// An error with its sources, `a: b: c`, so "connection refused" is visible.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Maps a reqwest error to a provider error; `at` names the endpoint without credentials.
pub(crate) fn transport_error(
    provider: &'static str,
    at: &str,
    timeout: Duration,
    e: &reqwest::Error,
) -> MetricsError {
    if e.is_timeout() {
        return MetricsError::Timeout {
            provider,
            at: at.to_string(),
            after: timeout,
        };
    }
    // reqwest's message repeats the URL (which may hold a query); keep the causes only.
    let detail = match std::error::Error::source(e) {
        Some(s) => chain(s),
        None => e.to_string(),
    };
    MetricsError::Transport {
        provider,
        at: at.to_string(),
        detail,
    }
}

/// True for errors worth another attempt: no answer came (refused, reset), and it was not a
/// timeout (which would multiply the check's duration).
pub(crate) fn retryable(e: &MetricsError) -> bool {
    matches!(e, MetricsError::Transport { .. })
}

/// A URL for messages: scheme, host, port and path, without user info or query.
pub(crate) fn display_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// The first `max` characters of a response body, on one line.
pub(crate) fn excerpt(body: &str, max: usize) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max).collect();
    format!("{cut}…")
}
