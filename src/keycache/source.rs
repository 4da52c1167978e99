//! Where a provider's keys come from: URI parsing, upstream selection, and the exact
//! request (headers, timeout) the adapter dispatches.

use crate::config::{ConfigError, ProviderConfig};

/// Default cap on a JWKS or discovery response body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed absolute `http(s)` URI (no userinfo, no fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUri {
    pub scheme: Scheme,
    /// Lower-cased host; an IPv6 literal keeps its brackets (`[::1]`).
    pub host: String,
    /// The explicit port, if the URI had one.
    pub port: Option<u16>,
    /// Path and query, always starting with `/`.
    pub path_and_query: String,
}

impl HttpUri {
    /// Parse `http://host[:port][/path][?query]`. Errors are short human messages.
    pub fn parse(s: &str) -> Result<HttpUri, String> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("URI must not contain spaces or control characters".into());
        }
        let (scheme, rest) = match s.find("://") {
            Some(i) => {
                let (sch, rest) = s.split_at(i);
                let rest = rest.get(3..).unwrap_or("");
                if sch.eq_ignore_ascii_case("https") {
                    (Scheme::Https, rest)
                } else if sch.eq_ignore_ascii_case("http") {
                    (Scheme::Http, rest)
                } else {
                    return Err(format!(
                        "unsupported scheme `{sch}` (expected http or https)"
                    ));
                }
            }
            None => return Err("expected an absolute http(s) URI".into()),
        };
        if rest.contains('#') {
            return Err("URI must not contain a fragment".into());
        }
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err("URI must not contain user information".into());
        }
        let (host, port) = split_host_port(authority)?;
        let path_and_query = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        Ok(HttpUri {
            scheme,
            host,
            port,
            path_and_query,
        })
    }

    /// The host is this machine (`localhost`, `127.x.x.x`, `[::1]`): where plain http
    /// is allowed for local mocks.
    pub fn is_loopback(&self) -> bool {
        let h = self.host.as_str();
        h == "localhost" || h == "[::1]" || h.starts_with("127.")
    }

    /// The port actually used (explicit or the scheme's default).
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `:authority` value: host, plus `:port` only when the URI named one that is
    /// not the scheme's default.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) if p != self.scheme.default_port() => format!("{}:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    /// `host:port` with the port always present (Kong's `dispatch_http_call` upstream).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.effective_port())
    }
}

impl core::fmt::Display for HttpUri {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    if authority.is_empty() {
        return Err("URI has no host".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']').ok_or("unterminated IPv6 literal")?;
        let (inner, after) = rest.split_at(close);
        let after = after.get(1..).unwrap_or("");
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("invalid IPv6 literal".into());
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("invalid text after IPv6 literal")?,
            ),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        let (h, p) = match authority.rfind(':') {
            Some(i) => {
                let (h, p) = authority.split_at(i);
                (h, Some(p.get(1..).unwrap_or("")))
            }
            None => (authority, None),
        };
        if h.is_empty() {
            return Err("URI has no host".into());
        }
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(format!("invalid host `{h}`"));
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("invalid port `{p}`"))?;
            Some(n)
        }
    };
    Ok((host, port))
}

/// Whether the provider names a discovery document or the JWKS directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Discovery,
    Jwks,
}

/// Which step of a fetch cycle a dispatched call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Discovery,
    Jwks,
}

impl Step {
    pub fn prefix(self) -> &'static str {
        match self {
            Step::Discovery => "discovery",
            Step::Jwks => "jwks",
        }
    }
}

/// A provider's key source, validated from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    pub provider: String,
    pub kind: SourceKind,
    /// The configured URI (discovery document or JWKS).
    pub uri: HttpUri,
    /// `dispatch_http_call` upstream: Kong `host:port`, Envoy cluster name.
    pub upstream: String,
    /// True when `upstream` was not configured (derived from the URI).
    pub upstream_defaulted: bool,
    /// The provider's issuer strings (for the discovery `issuer` cross-check).
    pub issuers: Vec<String>,
    pub refresh_ms: u64,
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
}

impl JwksSource {
    /// Whether a discovery document's `issuer` is one of the provider's issuers.
    pub fn issuer_fits(&self, issuer: &str) -> bool {
        self.issuers
            .iter()
            .any(|t| crate::providers::IssuerTemplate::parse(t).matches_discovered(issuer))
    }

    /// Validate the key-source fields of `cfg`. `path` is the provider's config path,
    /// e.g. `providers[0]`; errors name the field (`providers[0].jwks_uri: ...`).
    pub fn new(cfg: &ProviderConfig, path: &str) -> Result<JwksSource, ConfigError> {
        let (kind, field, raw) = match (&cfg.discovery_uri, &cfg.jwks_uri) {
            (Some(d), None) => (SourceKind::Discovery, "discovery_uri", d),
            (None, Some(j)) => (SourceKind::Jwks, "jwks_uri", j),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    path,
                    "set exactly one of `discovery_uri` or `jwks_uri`, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    path,
                    "one of `discovery_uri` or `jwks_uri` is required",
                ))
            }
        };
        let uri =
            HttpUri::parse(raw).map_err(|m| ConfigError::new(format!("{path}.{field}"), m))?;
        let (upstream, upstream_defaulted) = match &cfg.upstream {
            Some(u) => {
                if u.is_empty() || u.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(ConfigError::new(
                        format!("{path}.upstream"),
                        "expected a non-empty host[:port] or cluster name without spaces",
                    ));
                }
                (u.clone(), false)
            }
            None => (uri.host_port(), true),
        };
        if cfg.jwks_timeout_ms == 0 {
            return Err(ConfigError::new(
                format!("{path}.jwks_timeout_ms"),
                "must be at least 1",
            ));
        }
        if cfg.jwks_refresh_seconds == 0 {
            return Err(ConfigError::new(
                format!("{path}.jwks_refresh_seconds"),
                "must be at least 1",
            ));
        }
        Ok(JwksSource {
            provider: cfg.name.clone(),
            kind,
            uri,
            upstream,
            upstream_defaulted,
            issuers: cfg.issuers.clone(),
            refresh_ms: cfg.jwks_refresh_seconds.saturating_mul(1000),
            min_refetch_ms: cfg.jwks_min_refetch_seconds.saturating_mul(1000),
            timeout_ms: cfg.jwks_timeout_ms,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        })
    }

    /// Shared-data key of the key-set record: `amlk:jwks:<configured uri>`.
    pub fn shared_record_key(&self) -> String {
        format!("amlk:jwks:{}", self.uri)
    }

    /// Shared-data key of the record's stamp (see `shared::encode_stamp`):
    /// `amlk:jwks-stamp:<configured uri>`.
    pub fn shared_stamp_key(&self) -> String {
        format!("amlk:jwks-stamp:{}", self.uri)
    }

    /// Shared-data key of the fetch lease: `amlk:lease:<configured uri>`.
    pub fn shared_lease_key(&self) -> String {
        format!("amlk:lease:{}", self.uri)
    }

    /// The request for `target` (the configured URI, or a discovered `jwks_uri`).
    /// A discovered URI on another host keeps an explicitly configured `upstream`
    /// (Envoy cluster / Kong host) and only changes `:authority`; with a defaulted
    /// upstream it goes to the discovered URI's own `host:port`.
    pub(crate) fn request(&self, target: &HttpUri, step: Step, ticket: Ticket) -> FetchRequest {
        let upstream = if self.upstream_defaulted {
            target.host_port()
        } else {
            self.upstream.clone()
        };
        FetchRequest {
            ticket,
            step,
            upstream,
            headers: vec![
                (":method".into(), "GET".into()),
                (":path".into(), target.path_and_query.clone()),
                (":authority".into(), target.authority()),
                (":scheme".into(), target.scheme.as_str().into()),
                ("accept".into(), "application/json".into()),
            ],
            timeout_ms: self.timeout_ms,
            uri: target.to_string(),
        }
    }
}

/// Identifies one dispatched call. The adapter keeps `host token → (provider, Ticket)`
/// and hands the ticket back with the response; stale tickets are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// "Call `dispatch_http_call(upstream, headers, None, [], timeout_ms)`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub ticket: Ticket,
    pub step: Step,
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
    /// For logs only.
    pub uri: String,
}

impl FetchRequest {
    /// Headers as `&str` pairs, the shape `dispatch_http_call` takes.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}
