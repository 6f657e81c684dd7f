//! Outbound HTTP plumbing shared by webhooks and alerts: building reqwest clients on the ring
//! crypto provider, reading response bodies with a size limit, and turning errors into messages
//! that never contain the URL (webhook and alert URLs often carry tokens).

use std::time::Duration;

/// Largest response body read from a webhook or alert endpoint.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest piece of a response body quoted in an error message (and so in Events).
pub const MAX_QUOTED_CHARS: usize = 512;

/// Installs ring as the process-wide rustls provider unless one is installed already; reqwest
/// is built without a provider and needs one before the first client is built.
pub fn ensure_crypto_provider() {
    // An error means another provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with Serin's user agent; `verify_tls: false` accepts any server certificate.
pub fn client(verify_tls: bool, proxy: Option<&str>) -> Result<reqwest::Client, String> {
    ensure_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("serin/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .tls_danger_accept_invalid_certs(!verify_tls);
    if let Some(proxy) = proxy {
        let proxy = reqwest::Proxy::all(proxy)
            .map_err(|e| format!("proxy is not a usable URL: {}", chain(&e.without_url())))?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| chain(&e.without_url()))
}

/// A response body read up to [`MAX_RESPONSE_BYTES`].
pub enum Body {
    Complete(Vec<u8>),
    /// The server sent more than the limit; reading stopped there.
    TooLarge,
}

/// Reads the body of `resp`, stopping at [`MAX_RESPONSE_BYTES`].
pub async fn read_body(mut resp: reqwest::Response) -> Result<Body, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(Body::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body::Complete(buf))
}

/// A body as text fit for a message: control characters replaced, cut at
/// [`MAX_QUOTED_CHARS`], and binary data described rather than quoted.
pub fn quote(body: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(body) else {
        return format!("<{} bytes of non-text data>", body.len());
    };
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out
}

/// An error with its sources, `a: b: c`, without repeating a source already in the message.
/// Callers strip URLs first (`reqwest::Error::without_url`).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_bodies_and_describes_binary_ones() {
        assert_eq!(quote(b"  denied\r\nby policy "), "denied  by policy");
        let long = "x".repeat(MAX_QUOTED_CHARS + 10);
        let q = quote(long.as_bytes());
        assert_eq!(q.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(q.ends_with('…'));
        assert_eq!(quote(&[0xff, 0xfe, 0x00]), "<3 bytes of non-text data>");
    }
}
