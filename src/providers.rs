//! Compiled identity providers, and choosing one from a token's `iss` (and `tid`)
//! before any signature work.
//!
//! Issuers are exact strings, or templates containing `{tenantid}` (Entra multi-tenant:
//! `https://login.microsoftonline.com/{tenantid}/v2.0`, v1
//! `https://sts.windows.net/{tenantid}/`). A template matches when the token's `tid`
//! (which must be a GUID) substituted into it gives exactly the token's `iss`; when the
//! provider lists `tenants`, the `tid` must be one of them.

use crate::claims::Claims;
use crate::config::{ConfigError, ProviderConfig};
use crate::jose::Alg;
use crate::reason::Reason;
use serde_json::Value;

/// The placeholder substituted by the token's `tid`.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";
/// Smallest accepted HMAC secret (bytes), RFC 7518 §3.2 for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Largest accepted `clock_skew_seconds`.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 3600;

/// An issuer string, split at its `{tenantid}` placeholder if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerTemplate {
    Exact(String),
    Tenant { prefix: String, suffix: String },
}

impl IssuerTemplate {
    pub fn parse(s: &str) -> Self {
        match s.split_once(TENANT_PLACEHOLDER) {
            Some((p, rest)) => IssuerTemplate::Tenant {
                prefix: p.to_string(),
                suffix: rest.to_string(),
            },
            None => IssuerTemplate::Exact(s.to_string()),
        }
    }

    /// Whether an `issuer` named by a discovery document is this one: equal, or this
    /// template with a GUID (a tenant's own document) or the template itself (Entra's
    /// `common`/`organizations` documents) in place of `{tenantid}`.
    pub fn matches_discovered(&self, issuer: &str) -> bool {
        match self {
            IssuerTemplate::Exact(s) => s == issuer,
            IssuerTemplate::Tenant { prefix, suffix } => issuer
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(suffix.as_str()))
                .is_some_and(|t| t == TENANT_PLACEHOLDER || is_guid(t)),
        }
    }
}

/// Where the provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OpenID discovery document; its `jwks_uri` gives the keys.
    Discovery(String),
    /// The JWKS document itself.
    Jwks(String),
    /// No remote keys: every allowed algorithm is HS* with `hmac_secret`.
    None,
}

/// A provider compiled from `providers[i]`.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub issuers: Vec<IssuerTemplate>,
    /// Lower-case tenant GUIDs; `None` = any tenant.
    pub tenants: Option<Vec<String>>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    hmac_secret: Option<Vec<u8>>,
    pub clock_skew: u64,
    pub max_lifetime: Option<u64>,
    pub key_source: KeySource,
    /// Where to dispatch the key fetch: configured `upstream`, else the URI's
    /// `host:port` (port defaulted from the scheme). Empty for `KeySource::None`.
    pub upstream: String,
    pub jwks_refresh_seconds: u64,
    pub jwks_min_refetch_seconds: u64,
    pub jwks_timeout_ms: u64,
}

impl core::fmt::Debug for Provider {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuers", &self.issuers)
            .field("tenants", &self.tenants)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("clock_skew", &self.clock_skew)
            .field("max_lifetime", &self.max_lifetime)
            .field("key_source", &self.key_source)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn allows(&self, alg: Alg) -> bool {
        self.algorithms.contains(&alg)
    }

    /// The HMAC secret for HS* (never logged; `Debug` redacts it).
    pub fn hmac_secret(&self) -> Option<&[u8]> {
        self.hmac_secret.as_deref()
    }

    /// Whether keys must be fetched (some allowed algorithm is asymmetric).
    pub fn needs_jwks(&self) -> bool {
        !matches!(self.key_source, KeySource::None)
    }

    /// The JWKS or discovery URI, if any.
    pub fn key_uri(&self) -> Option<&str> {
        match &self.key_source {
            KeySource::Discovery(u) | KeySource::Jwks(u) => Some(u),
            KeySource::None => None,
        }
    }

    /// Does the token's issuer match one of ours? `Ok(())` on a match; otherwise the
    /// most specific reason (`TenantNotAllowed` > `TenantInvalid` > `IssuerUnknown`).
    fn matches(&self, iss: &str, claims: &Claims) -> Result<(), Reason> {
        let mut err = Reason::IssuerUnknown;
        for t in &self.issuers {
            match t {
                IssuerTemplate::Exact(s) => {
                    if s == iss {
                        return Ok(());
                    }
                }
                IssuerTemplate::Tenant { prefix, suffix } => {
                    if iss.len() < prefix.len() + suffix.len()
                        || !iss.starts_with(prefix.as_str())
                        || !iss.ends_with(suffix.as_str())
                    {
                        continue;
                    }
                    let tid = match claims.get("tid") {
                        Some(Value::String(t)) if is_guid(t) => t,
                        _ => {
                            err = worse(err, Reason::TenantInvalid);
                            continue;
                        }
                    };
                    // `iss` is `prefix…suffix` (checked above): it is this template for
                    // `tid` when the middle is `tid`, with no string built per request.
                    let middle = iss.get(prefix.len()..iss.len() - suffix.len());
                    if middle != Some(tid.as_str()) {
                        continue;
                    }
                    if let Some(allowed) = &self.tenants {
                        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(tid)) {
                            err = worse(err, Reason::TenantNotAllowed);
                            continue;
                        }
                    }
                    return Ok(());
                }
            }
        }
        Err(err)
    }
}

fn rank(r: Reason) -> u8 {
    match r {
        Reason::TenantNotAllowed => 3,
        Reason::TenantInvalid => 2,
        _ => 1,
    }
}

fn worse(a: Reason, b: Reason) -> Reason {
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// `8-4-4-4-12` hexadecimal, either case.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// All configured providers, in configuration order.
#[derive(Debug, Clone)]
pub struct Providers {
    list: Vec<Provider>,
}

impl Providers {
    /// Compile the configuration's `providers`: every name first (routes refer to them),
    /// then each provider's fields.
    pub fn new(cfgs: &[ProviderConfig]) -> Result<Self, ConfigError> {
        if cfgs.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "expected at least one provider",
            ));
        }
        for (i, p) in cfgs.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("providers[{i}].name"),
                    "expected a non-empty name",
                ));
            }
            if let Some(j) = cfgs.iter().take(i).position(|q| q.name == p.name) {
                return Err(ConfigError::new(
                    format!("providers[{i}].name"),
                    format!("duplicate provider name (also providers[{j}].name)"),
                ));
            }
        }
        let list = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| compile(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Providers { list })
    }

    pub fn get(&self, i: usize) -> Option<&Provider> {
        self.list.get(i)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.list.iter()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|p| p.name == name)
    }

    /// Choose the provider for a (not yet verified) token from its `iss` (and `tid`),
    /// among `allowed` indices (a route's `providers`) or all. The first provider in
    /// configuration order that matches wins.
    ///
    /// Errors: `iss` missing → `IssuerUnknown`; `iss` not a string → `TokenMalformed`;
    /// no match → `IssuerUnknown`, or `TenantInvalid` (a template's shape matched but
    /// `tid` is missing or not a GUID), or `TenantNotAllowed` (matched, but `tid` is not
    /// in the provider's `tenants`).
    pub fn select(&self, claims: &Claims, allowed: Option<&[usize]>) -> Result<usize, Reason> {
        let iss = match claims.get("iss") {
            None => return Err(Reason::IssuerUnknown),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(Reason::TokenMalformed),
        };
        let mut err = Reason::IssuerUnknown;
        for (i, p) in self.list.iter().enumerate() {
            if let Some(a) = allowed {
                if !a.contains(&i) {
                    continue;
                }
            }
            match p.matches(iss, claims) {
                Ok(()) => return Ok(i),
                Err(e) => err = worse(err, e),
            }
        }
        Err(err)
    }
}

fn compile(i: usize, c: &ProviderConfig) -> Result<Provider, ConfigError> {
    let f = |field: &str| format!("providers[{i}].{field}");
    if c.issuers.is_empty() {
        return Err(ConfigError::new(
            f("issuers"),
            "at least one issuer is required",
        ));
    }
    let mut issuers = Vec::with_capacity(c.issuers.len());
    for (j, s) in c.issuers.iter().enumerate() {
        if s.trim().is_empty() {
            return Err(ConfigError::new(
                f(&format!("issuers[{j}]")),
                "must not be empty",
            ));
        }
        if s.matches(TENANT_PLACEHOLDER).count() > 1 {
            return Err(ConfigError::new(
                f(&format!("issuers[{j}]")),
                "{tenantid} may appear at most once",
            ));
        }
        issuers.push(IssuerTemplate::parse(s));
    }
    let tenants = match &c.tenants {
        None => None,
        Some(t) if t.is_empty() => {
            return Err(ConfigError::new(
                f("tenants"),
                "must not be empty (omit it to allow any tenant)",
            ))
        }
        Some(t) => {
            let mut out = Vec::with_capacity(t.len());
            for (j, g) in t.iter().enumerate() {
                if !is_guid(g) {
                    return Err(ConfigError::new(
                        f(&format!("tenants[{j}]")),
                        "expected a tenant id (GUID)",
                    ));
                }
                out.push(g.to_ascii_lowercase());
            }
            if !issuers
                .iter()
                .any(|t| matches!(t, IssuerTemplate::Tenant { .. }))
            {
                return Err(ConfigError::new(
                    f("tenants"),
                    "only applies to issuers containing {tenantid}",
                ));
            }
            Some(out)
        }
    };
    if c.audiences.is_empty() {
        return Err(ConfigError::new(
            f("audiences"),
            "at least one audience is required",
        ));
    }
    for (j, a) in c.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            return Err(ConfigError::new(
                f(&format!("audiences[{j}]")),
                "must not be empty",
            ));
        }
    }
    if c.algorithms.is_empty() {
        return Err(ConfigError::new(
            f("algorithms"),
            "at least one algorithm is required",
        ));
    }
    let mut algorithms: Vec<Alg> = Vec::with_capacity(c.algorithms.len());
    for (j, a) in c.algorithms.iter().enumerate() {
        let path = f(&format!("algorithms[{j}]"));
        let Some(alg) = Alg::parse(a) else {
            let msg = if a.eq_ignore_ascii_case("none") {
                "\"none\" is never allowed".to_string()
            } else {
                format!("unknown algorithm {a:?}")
            };
            return Err(ConfigError::new(path, msg));
        };
        if alg.is_hmac() && c.hmac_secret.is_none() {
            return Err(ConfigError::new(
                path,
                format!("{alg} requires hmac_secret"),
            ));
        }
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    let hmac_secret = match &c.hmac_secret {
        None => None,
        Some(s) => {
            if !algorithms.iter().any(|a| a.is_hmac()) {
                return Err(ConfigError::new(
                    f("hmac_secret"),
                    "set, but no HS256/HS384/HS512 algorithm is allowed",
                ));
            }
            if s.len() < MIN_HMAC_SECRET_BYTES {
                return Err(ConfigError::new(
                    f("hmac_secret"),
                    format!("must be at least {MIN_HMAC_SECRET_BYTES} bytes"),
                ));
            }
            Some(s.as_bytes().to_vec())
        }
    };
    let only_hmac = algorithms.iter().all(|a| a.is_hmac());
    let key_source = match (&c.discovery_uri, &c.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                f("jwks_uri"),
                "set only one of discovery_uri and jwks_uri",
            ))
        }
        (Some(d), None) => KeySource::Discovery(check_uri(&f("discovery_uri"), d)?),
        (None, Some(j)) => KeySource::Jwks(check_uri(&f("jwks_uri"), j)?),
        (None, None) if only_hmac => KeySource::None,
        (None, None) => {
            return Err(ConfigError::new(
                format!("providers[{i}]"),
                "one of discovery_uri or jwks_uri is required",
            ))
        }
    };
    let upstream = match (&c.upstream, &key_source) {
        (Some(u), _) if u.trim().is_empty() => {
            return Err(ConfigError::new(f("upstream"), "must not be empty"))
        }
        (Some(u), _) => u.clone(),
        (None, KeySource::Discovery(u) | KeySource::Jwks(u)) => host_port(u).unwrap_or_default(),
        (None, KeySource::None) => String::new(),
    };
    if c.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            f("clock_skew_seconds"),
            format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
        ));
    }
    if c.jwks_refresh_seconds == 0 {
        return Err(ConfigError::new(
            f("jwks_refresh_seconds"),
            "must be positive",
        ));
    }
    if c.jwks_timeout_ms == 0 {
        return Err(ConfigError::new(f("jwks_timeout_ms"), "must be positive"));
    }
    Ok(Provider {
        name: c.name.clone(),
        issuers,
        tenants,
        audiences: c.audiences.clone(),
        algorithms,
        hmac_secret,
        clock_skew: c.clock_skew_seconds,
        max_lifetime: (c.max_lifetime_seconds != 0).then_some(c.max_lifetime_seconds),
        key_source,
        upstream,
        jwks_refresh_seconds: c.jwks_refresh_seconds,
        jwks_min_refetch_seconds: c.jwks_min_refetch_seconds,
        jwks_timeout_ms: c.jwks_timeout_ms,
    })
}

/// `http(s)://host[:port]/...` with a non-empty host.
fn check_uri(path: &str, u: &str) -> Result<String, ConfigError> {
    if host_port(u).is_none() {
        return Err(ConfigError::new(
            path,
            "expected an http(s) URL with a host",
        ));
    }
    Ok(u.to_string())
}

/// `host:port` of an http(s) URL, the port defaulted from the scheme.
pub fn host_port(u: &str) -> Option<String> {
    let (rest, default_port) = if let Some(r) = u.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = u.strip_prefix("http://") {
        (r, 80)
    } else {
        return None;
    };
    let auth = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if auth.is_empty() || auth.contains('@') {
        return None;
    }
    // [v6]:port, host:port, host
    let (host, port) = if auth.starts_with('[') {
        let end = auth.find(']')?;
        let host = auth.get(..=end)?;
        let port = auth.get(end + 1..)?.strip_prefix(':');
        (host, port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = match port {
        None => default_port,
        Some(p) => p.parse().ok()?,
    };
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const T2: &str = "11111111-2222-3333-4444-555555555555";

    fn cfg(json: &str) -> ProviderConfig {
        crate::config::from_json::provider(json).unwrap()
    }

    fn entra(extra: &str) -> ProviderConfig {
        cfg(&format!(
            r#"{{"name":"entra","issuers":["https://login.microsoftonline.com/{{tenantid}}/v2.0","https://sts.windows.net/{{tenantid}}/"],
                "jwks_uri":"https://login.microsoftonline.com/common/discovery/v2.0/keys",
                "audiences":["api://gw"]{extra}}}"#
        ))
    }

    fn okta() -> ProviderConfig {
        cfg(
            r#"{"name":"okta","issuers":["https://dev-1.okta.com/oauth2/default"],
                "discovery_uri":"https://dev-1.okta.com/oauth2/default/.well-known/openid-configuration",
                "audiences":["api://default"],"algorithms":["RS256","ES256"],"upstream":"okta_cluster"}"#,
        )
    }

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_with_defaults() {
        let p = Providers::new(&[entra(""), okta()]).unwrap();
        assert_eq!(p.len(), 2);
        let e = p.get(0).unwrap();
        assert_eq!(e.algorithms, vec![Alg::RS256]);
        assert_eq!(e.clock_skew, 60);
        assert_eq!(e.upstream, "login.microsoftonline.com:443");
        assert!(e.needs_jwks());
        assert_eq!(p.get(1).unwrap().upstream, "okta_cluster");
        assert_eq!(p.index_of("okta"), Some(1));
        assert_eq!(p.index_of("nope"), None);
        assert!(p.get(2).is_none());
    }

    #[test]
    fn config_errors_name_the_field() {
        let secret = "0123456789abcdef0123456789abcdef";
        let cases: Vec<(Vec<ProviderConfig>, &str, &str)> = vec![
            (vec![], "providers", "at least one"),
            (vec![entra(""), entra("")], "providers[1].name", "duplicate"),
            (
                vec![okta(), entra(r#","algorithms":["RS256","XS256"]"#)],
                "providers[1].algorithms[1]",
                "unknown algorithm \"XS256\"",
            ),
            (
                vec![entra(r#","algorithms":["none"]"#)],
                "providers[0].algorithms[0]",
                "never",
            ),
            (
                vec![entra(r#","algorithms":[]"#)],
                "providers[0].algorithms",
                "at least one",
            ),
            (
                vec![entra(r#","algorithms":["HS256"]"#)],
                "providers[0].algorithms[0]",
                "requires hmac_secret",
            ),
            (
                vec![entra(
                    r#","algorithms":["RS256","HS256"],"hmac_secret":"short""#,
                )],
                "providers[0].hmac_secret",
                "at least 32 bytes",
            ),
            (
                vec![entra(&format!(r#","hmac_secret":"{secret}""#))],
                "providers[0].hmac_secret",
                "no HS256",
            ),
            (
                vec![entra(
                    r#","discovery_uri":"https://x/.well-known/openid-configuration""#,
                )],
                "providers[0].jwks_uri",
                "only one",
            ),
            (
                vec![cfg(r#"{"name":"a","issuers":["x"],"audiences":["a"]}"#)],
                "providers[0]",
                "one of discovery_uri or jwks_uri",
            ),
            (
                vec![cfg(
                    r#"{"name":"a","issuers":["x"],"audiences":["a"],"jwks_uri":"ftp://x"}"#,
                )],
                "providers[0].jwks_uri",
                "http",
            ),
            (
                vec![cfg(
                    r#"{"name":"a","issuers":[],"audiences":["a"],"jwks_uri":"https://x"}"#,
                )],
                "providers[0].issuers",
                "at least one",
            ),
            (
                vec![cfg(
                    r#"{"name":"a","issuers":["x"],"audiences":[],"jwks_uri":"https://x"}"#,
                )],
                "providers[0].audiences",
                "at least one",
            ),
            (
                vec![cfg(
                    r#"{"name":"a","issuers":["x"],"audiences":[""],"jwks_uri":"https://x"}"#,
                )],
                "providers[0].audiences[0]",
                "empty",
            ),
            (
                vec![cfg(
                    r#"{"name":"","issuers":["x"],"audiences":["a"],"jwks_uri":"https://x"}"#,
                )],
                "providers[0].name",
                "empty",
            ),
            (
                vec![cfg(
                    r#"{"name":"a","issuers":["{tenantid}{tenantid}"],"audiences":["a"],"jwks_uri":"https://x"}"#,
                )],
                "providers[0].issuers[0]",
                "at most once",
            ),
            (
                vec![entra(r#","tenants":["not-a-guid"]"#)],
                "providers[0].tenants[0]",
                "GUID",
            ),
            (
                vec![entra(r#","tenants":[]"#)],
                "providers[0].tenants",
                "empty",
            ),
            (
                vec![
                    okta(),
                    cfg(&format!(
                        r#"{{"name":"b","issuers":["x"],"audiences":["a"],"jwks_uri":"https://x","tenants":["{T1}"]}}"#
                    )),
                ],
                "providers[1].tenants",
                "only applies",
            ),
            (
                vec![entra(r#","clock_skew_seconds":99999"#)],
                "providers[0].clock_skew_seconds",
                "at most",
            ),
        ];
        for (cfgs, path, msg) in cases {
            let e = Providers::new(&cfgs).unwrap_err();
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn max_lifetime_defaults_to_36_hours_and_zero_switches_it_off() {
        let p = Providers::new(&[entra("")]).unwrap();
        assert_eq!(p.get(0).unwrap().max_lifetime, Some(129_600));
        let p = Providers::new(&[entra(r#","max_lifetime_seconds":0"#)]).unwrap();
        assert_eq!(p.get(0).unwrap().max_lifetime, None);
        let p = Providers::new(&[entra(r#","max_lifetime_seconds":3600"#)]).unwrap();
        assert_eq!(p.get(0).unwrap().max_lifetime, Some(3600));
    }

    #[test]
    fn hmac_only_provider_needs_no_jwks() {
        let p = Providers::new(&[cfg(
            r#"{"name":"svc","issuers":["svc"],"audiences":["a"],"algorithms":["HS256"],
                "hmac_secret":"0123456789abcdef0123456789abcdef"}"#,
        )])
        .unwrap();
        let p = p.get(0).unwrap();
        assert!(!p.needs_jwks());
        assert_eq!(p.hmac_secret().map(<[u8]>::len), Some(32));
        assert!(!format!("{p:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn select_entra_v1_v2_multi_tenant_and_okta() {
        let p = Providers::new(&[entra(""), okta()]).unwrap();
        let v2 = claims(&format!(
            r#"{{"iss":"https://login.microsoftonline.com/{T1}/v2.0","tid":"{T1}"}}"#
        ));
        let v1 = claims(&format!(
            r#"{{"iss":"https://sts.windows.net/{T2}/","tid":"{T2}"}}"#
        ));
        let ok = claims(r#"{"iss":"https://dev-1.okta.com/oauth2/default"}"#);
        assert_eq!(p.select(&v2, None), Ok(0));
        assert_eq!(p.select(&v1, None), Ok(0));
        assert_eq!(p.select(&ok, None), Ok(1));
        assert_eq!(p.select(&ok, Some(&[0])), Err(Reason::IssuerUnknown));
        assert_eq!(p.select(&v2, Some(&[1, 0])), Ok(0));

        let table: Vec<(String, Reason)> = vec![
            (r#"{"tid":"x"}"#.into(), Reason::IssuerUnknown),
            (r#"{"iss":5}"#.into(), Reason::TokenMalformed),
            (
                r#"{"iss":"https://evil.example/"}"#.into(),
                Reason::IssuerUnknown,
            ),
            // tid missing / not a GUID
            (
                format!(r#"{{"iss":"https://login.microsoftonline.com/{T1}/v2.0"}}"#),
                Reason::TenantInvalid,
            ),
            (
                r#"{"iss":"https://login.microsoftonline.com/common/v2.0","tid":"common"}"#.into(),
                Reason::TenantInvalid,
            ),
            // tid does not match the iss
            (
                format!(r#"{{"iss":"https://login.microsoftonline.com/{T1}/v2.0","tid":"{T2}"}}"#),
                Reason::IssuerUnknown,
            ),
            // path tricks around the template
            (
                format!(
                    r#"{{"iss":"https://login.microsoftonline.com/{T1}/v2.0/x","tid":"{T1}"}}"#
                ),
                Reason::IssuerUnknown,
            ),
            (
                format!(
                    r#"{{"iss":"https://login.microsoftonline.com/{T1}/v2.0","tid":"{T1}/v2.0/../{T1}"}}"#
                ),
                Reason::TenantInvalid,
            ),
        ];
        for (c, want) in table {
            assert_eq!(p.select(&claims(&c), None), Err(want), "{c}");
        }
    }

    #[test]
    fn tenant_allow_list() {
        let p =
            Providers::new(&[entra(&format!(r#","tenants":["{}"]"#, T1.to_uppercase()))]).unwrap();
        let t1 = claims(&format!(
            r#"{{"iss":"https://sts.windows.net/{T1}/","tid":"{T1}"}}"#
        ));
        let t2 = claims(&format!(
            r#"{{"iss":"https://sts.windows.net/{T2}/","tid":"{T2}"}}"#
        ));
        assert_eq!(p.select(&t1, None), Ok(0));
        assert_eq!(p.select(&t2, None), Err(Reason::TenantNotAllowed));
    }

    #[test]
    fn guid_and_host_port() {
        assert!(is_guid(T1) && is_guid(&T1.to_uppercase()));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4") && !is_guid("common"));
        assert!(!is_guid("72f988bf086f1041af091ab02d7cd011db47"));
        assert_eq!(host_port("https://a.b/c").as_deref(), Some("a.b:443"));
        assert_eq!(host_port("http://a:8080").as_deref(), Some("a:8080"));
        assert_eq!(host_port("http://[::1]:9/x").as_deref(), Some("[::1]:9"));
        assert_eq!(host_port("https://u@a/"), None);
        assert_eq!(host_port("https:///x"), None);
        assert_eq!(host_port("https://a:99999/"), None);
    }
}
