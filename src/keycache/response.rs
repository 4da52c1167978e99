//! Pure helpers: classifying a dispatched call's response (including the hosts'
//! failure shapes), `Cache-Control` → TTL, the discovery document, and backoff.

use super::source::{HttpUri, Scheme, Step};

/// A dispatched call's response as the adapter reads it in `on_http_call_response`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// `get_http_call_response_headers()` (pseudo-headers included).
    pub headers: Vec<(String, String)>,
    /// The `body_size` argument of `on_http_call_response`.
    pub body_size: usize,
    /// The body, read only when `body_size <= max_body_bytes` (else `None`).
    pub body: Option<Vec<u8>>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a fetch failed. [`FailReason::code`] gives the stable metric/log code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// A status other than 200.
    Http(u16),
    /// The host reported a timeout, or no answer arrived within timeout + margin.
    Timeout,
    /// `dispatch_http_call` failed, or the host reported a connection/TLS/DNS
    /// failure (Kong: `:dispatch_status`; Envoy: a response without `:status`).
    DispatchFailed,
    /// Not JSON / not a key set / not a discovery document.
    Garbage,
    /// A key set without usable keys.
    Empty,
    /// Body above the cap.
    TooLarge,
    /// Discovery document whose `jwks_uri` is missing, not http(s), a downgrade, or
    /// plain http on another host.
    BadJwksUri,
    /// Discovery document whose `issuer` is missing or none of the provider's
    /// (OpenID Connect Discovery 1.0 §4.3): its keys are not used.
    IssuerMismatch,
}

impl FailReason {
    /// `jwks_http_500`, `jwks_timeout`, `jwks_garbage`, `jwks_empty`, `jwks_too_large`,
    /// `jwks_dispatch_failed`, and the same with `discovery_` for the discovery step
    /// (plus `discovery_bad_jwks_uri`, `discovery_issuer_mismatch`).
    pub fn code(self, step: Step) -> String {
        let p = step.prefix();
        match self {
            FailReason::Http(s) => format!("{p}_http_{s}"),
            FailReason::Timeout => format!("{p}_timeout"),
            FailReason::DispatchFailed => format!("{p}_dispatch_failed"),
            FailReason::Garbage => format!("{p}_garbage"),
            FailReason::Empty => format!("{p}_empty"),
            FailReason::TooLarge => format!("{p}_too_large"),
            FailReason::BadJwksUri => format!("{p}_bad_jwks_uri"),
            FailReason::IssuerMismatch => format!("{p}_issuer_mismatch"),
        }
    }
}

/// Check status and size; on success return the body. `detail` is for logs.
pub fn classify(resp: &HttpResponse, max_body: usize) -> Result<&[u8], (FailReason, String)> {
    // Kong's engine tags every call's result: `ok` beside `:status` on success, the
    // failure's reason (and no `:status`) otherwise. Envoy adds no such header.
    if let Some(ds) = resp
        .header(":dispatch_status")
        .filter(|ds| !ds.eq_ignore_ascii_case("ok"))
    {
        let l = ds.to_ascii_lowercase();
        let r = if l.contains("timeout") || l.contains("timed out") {
            FailReason::Timeout
        } else {
            FailReason::DispatchFailed
        };
        return Err((r, format!("host dispatch status: {ds}")));
    }
    let Some(status) = resp.header(":status") else {
        return Err((
            FailReason::DispatchFailed,
            "response without :status".into(),
        ));
    };
    let status: u16 = match status.trim().parse() {
        Ok(s) => s,
        Err(_) => return Err((FailReason::Garbage, format!("invalid :status `{status}`"))),
    };
    if status != 200 {
        return Err((FailReason::Http(status), format!("HTTP {status}")));
    }
    let body = resp.body.as_deref().unwrap_or(&[]);
    if resp.body_size > max_body || body.len() > max_body {
        return Err((
            FailReason::TooLarge,
            format!(
                "body of {} bytes exceeds {max_body}",
                resp.body_size.max(body.len())
            ),
        ));
    }
    if body.is_empty() {
        return Err((FailReason::Garbage, "empty body".into()));
    }
    Ok(body)
}

/// The minimum cache TTL.
pub const MIN_TTL_MS: u64 = 60_000;

/// TTL for a fetched key set: the refresh period, tightened by `max-age`, clamped to
/// [60 s, refresh period]; `no-store`/`no-cache` give the minimum.
pub fn ttl_ms(cache_control: Option<&str>, refresh_ms: u64) -> u64 {
    let floor = MIN_TTL_MS.min(refresh_ms);
    let Some(cc) = cache_control else {
        return refresh_ms;
    };
    let mut ttl = refresh_ms;
    for d in cc.split(',') {
        let d = d.trim();
        let (name, val) = match d.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (d, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return floor;
        }
        if name.eq_ignore_ascii_case("max-age") {
            if let Some(secs) = val.and_then(|v| v.parse::<u64>().ok()) {
                ttl = ttl.min(secs.saturating_mul(1000));
            }
        }
    }
    ttl.clamp(floor, refresh_ms.max(floor))
}

/// What the discovery document told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_uri: HttpUri,
    pub issuer: Option<String>,
}

/// Parse an OpenID discovery document. The `jwks_uri` must be http(s), must not be
/// plain http when the document came over https, and must be https on another host
/// (`host:port`) unless that host is loopback (local mocks). The `issuer` is checked by
/// the caller.
pub fn parse_discovery(body: &[u8], via: &HttpUri) -> Result<Discovered, (FailReason, String)> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| (FailReason::Garbage, format!("discovery document: {e}")))?;
    let obj = v.as_object().ok_or((
        FailReason::Garbage,
        "discovery document is not an object".to_string(),
    ))?;
    let raw = obj
        .get("jwks_uri")
        .and_then(|u| u.as_str())
        .ok_or((FailReason::BadJwksUri, "no string `jwks_uri`".to_string()))?;
    let jwks_uri = HttpUri::parse(raw)
        .map_err(|e| (FailReason::BadJwksUri, format!("jwks_uri `{raw}`: {e}")))?;
    if via.scheme == Scheme::Https && jwks_uri.scheme == Scheme::Http {
        return Err((
            FailReason::BadJwksUri,
            format!("jwks_uri `{raw}` downgrades https to http"),
        ));
    }
    if jwks_uri.scheme == Scheme::Http
        && jwks_uri.host_port() != via.host_port()
        && !jwks_uri.is_loopback()
    {
        return Err((
            FailReason::BadJwksUri,
            format!("jwks_uri `{raw}` is plain http on another host"),
        ));
    }
    let issuer = obj
        .get("issuer")
        .and_then(|i| i.as_str())
        .map(str::to_string);
    Ok(Discovered { jwks_uri, issuer })
}

pub const BACKOFF_BASE_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// Delay before attempt `streak + 1` after `streak` (≥ 1) consecutive failures:
/// 1 s doubling to 60 s, then ±20 % jitter from `random`.
pub fn backoff_ms(streak: u32, random: u64) -> u64 {
    let exp = streak.saturating_sub(1).min(16);
    let base = BACKOFF_BASE_MS
        .saturating_mul(1u64 << exp)
        .min(BACKOFF_MAX_MS);
    // factor in [800, 1200] per mille
    base.saturating_mul(800 + random % 401) / 1000
}

#[cfg(test)]
mod host_shapes {
    //! The result shapes each host really delivers to `on_http_call_response`.
    use super::*;

    fn resp(headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        HttpResponse {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body_size: body.len(),
            body: Some(body.to_vec()),
        }
    }

    #[test]
    fn kong_success_carries_dispatch_status_ok() {
        let r = resp(
            &[
                (":status", "200"),
                ("content-type", "application/json"),
                ("connection", "close"),
                (":dispatch_status", "ok"),
            ],
            br#"{"keys":[]}"#,
        );
        assert_eq!(classify(&r, 1024), Ok(&br#"{"keys":[]}"#[..]));
    }

    #[test]
    fn kong_http_error_with_dispatch_status_ok_is_an_http_failure() {
        let r = resp(&[(":status", "500"), (":dispatch_status", "ok")], b"x");
        assert_eq!(
            classify(&r, 1024).map_err(|e| e.0),
            Err(FailReason::Http(500))
        );
    }

    #[test]
    fn kong_failures_have_a_reason_and_no_status() {
        for (ds, want) in [
            ("timeout", FailReason::Timeout),
            ("broken connection", FailReason::DispatchFailed),
            ("tls handshake failure", FailReason::DispatchFailed),
            ("resolver failure", FailReason::DispatchFailed),
        ] {
            let r = HttpResponse {
                headers: vec![(":dispatch_status".into(), ds.into())],
                body_size: 0,
                body: None,
            };
            assert_eq!(classify(&r, 1024).map_err(|e| e.0), Err(want), "{ds}");
        }
    }

    #[test]
    fn ok_without_status_is_a_failure() {
        let r = resp(&[(":dispatch_status", "ok")], b"");
        assert_eq!(
            classify(&r, 1024).map_err(|e| e.0),
            Err(FailReason::DispatchFailed)
        );
    }

    #[test]
    fn envoy_success_and_failure() {
        let ok = resp(&[(":status", "200"), ("content-length", "2")], b"{}");
        assert!(classify(&ok, 1024).is_ok());
        let failed = HttpResponse::default();
        assert_eq!(
            classify(&failed, 1024).map_err(|e| e.0),
            Err(FailReason::DispatchFailed)
        );
    }
}
