//! The request header plan applied to an allowed request: identity headers from verified
//! claims, removal of the caller's credential, the route's `set_request_headers`, and the
//! request-id headers.
//!
//! The plan follows the recipe in KONG.md ("Request headers in Kong: removal does not
//! remove") so it is correct on Kong and Envoy alike:
//! - every header the filter owns must arrive at most once ([`Annotator::check_inbound`]
//!   → 400 `duplicate_identity_header`), because Kong forwards a second copy untouched;
//! - headers are only ever *set in place*; a header is never removed and then added;
//! - "removing" is [`HeaderOp::Clear`]: the adapter does `set(name, Some(""))` then
//!   `set(name, None)`: Kong forwards an empty header, Envoy removes it.
//!
//! Decisions where the contract is silent:
//! - Identity headers (`claims_to_headers`) are always set, to `""` when the claim is
//!   absent or the request is unauthenticated (auth `none`/`optional` without a token, a
//!   CORS preflight), so a spoofed copy never reaches the backend. A string, number or
//!   bool claim is rendered as text; an array as its scalar items joined with `,`; an
//!   array with an item containing `,` is dropped (`""`), so that `["a,b"]` and
//!   `["a","b"]` never produce the same value; an object or `null` counts as absent. A value containing a control
//!   character or longer than [`MAX_VALUE_BYTES`] is replaced by `""` (dropped, not
//!   truncated: a truncated identity would be a different identity).
//! - The caller's credential is removed from every configured token source present in
//!   the request (not only the one the token was taken from), unless `forward_token` is
//!   true; a header the route sets itself (`set_request_headers.authorization`) is
//!   overwritten in place instead of cleared.
//! - Owned headers: every `claims_to_headers` header, the route's `set_request_headers`,
//!   `x-request-id`, `x-ms-client-request-id`, and — unless `forward_token` — the token
//!   source headers and (with a cookie token source) `cookie`.
//! - The identity namespace `x-caller-*` is the filter's: a client's `x-caller-*` header
//!   the filter does not set is cleared (two copies of one → 400
//!   `duplicate_identity_header`), and a spelling with `_` of an owned or `x-caller-*`
//!   header (`x_caller_oid`, read by CGI/WSGI backends as `x-caller-oid`) → 400
//!   `duplicate_identity_header`.
//! - `x-request-id`: a client value of 1–128 characters from `A-Za-z0-9._:+/=-` is kept
//!   (and used as the request id), anything else is replaced by the generated id.
//! - `x-ms-client-request-id`: kept when it follows Azure ML's rule (1–40 letters,
//!   digits, `-`, `_`), otherwise cleared.

use serde_json::Value;

use crate::claims::{check_claim_path, lookup, Claims};
use crate::config::{ConfigError, FilterConfig};
use crate::headers::{self, X_MS_CLIENT_REQUEST_ID, X_REQUEST_ID};
use crate::policy::Route;
use crate::request::{RequestView, TokenLocation};

/// Longest identity header value forwarded; longer values are replaced by `""`.
pub const MAX_VALUE_BYTES: usize = 1024;

/// One change to the request, applied by the adapter in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// `set_http_request_header(name, Some(value))`: overwrite in place (or add).
    Set { name: String, value: String },
    /// `set(name, Some(""))` then `set(name, None)`: Kong forwards an empty header,
    /// Envoy removes it. Never remove first.
    Clear { name: String },
    /// A header for the response to the client (e.g. `RateLimit`), set in its
    /// response-headers phase; nothing in the request changes.
    SetResponse { name: String, value: String },
    /// A query-string token was removed: `path` is the new `:path` (what Envoy forwards).
    /// Kong forwards its own `upstream_uri`, not `:path`: the adapter removes the
    /// `strip` parameters from it too (`token::strip_query_param`).
    SetPath { path: String, strip: Vec<String> },
}

#[derive(Debug, Clone)]
struct IdentityHeader {
    header: String,
    /// Claim path alternatives; the first present wins.
    claims: Vec<String>,
}

/// The annotation plan compiled from the configuration.
#[derive(Debug, Clone)]
pub struct Annotator {
    identity: Vec<IdentityHeader>,
    forward_token: bool,
    /// Lower-case token source header names.
    token_headers: Vec<String>,
    token_queries: Vec<String>,
    token_cookies: Vec<String>,
    /// `x-caller-name` is the filter's (the caller registry is in use).
    caller_header: bool,
}

impl Annotator {
    /// Compile `claims_to_headers`, `token_sources` and `forward_token`. Each identity
    /// header must be one the filter may set, set once, and neither carry the token nor
    /// be one the filter manages.
    pub fn new(cfg: &FilterConfig) -> Result<Annotator, ConfigError> {
        let token_headers: Vec<&str> = cfg
            .token_sources
            .iter()
            .filter_map(|t| t.header.as_deref())
            .collect();
        let mut identity = Vec::with_capacity(cfg.claims_to_headers.len());
        for (i, ch) in cfg.claims_to_headers.iter().enumerate() {
            let base = format!("claims_to_headers[{i}]");
            for alt in ch.claim.split('|') {
                check_claim_path(&format!("{base}.claim"), alt.trim())?;
            }
            let hp = format!("{base}.header");
            headers::check_header_name(&hp, &ch.header)?;
            if let Some(j) = cfg
                .claims_to_headers
                .iter()
                .take(i)
                .position(|o| o.header == ch.header)
            {
                return Err(ConfigError::new(
                    hp,
                    format!("duplicate header (also claims_to_headers[{j}].header)"),
                ));
            }
            if token_headers
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&ch.header))
            {
                return Err(ConfigError::new(
                    hp,
                    "this header carries the caller's token (token_sources)",
                ));
            }
            headers::check_not_managed(&hp, &ch.header)?;
            identity.push(IdentityHeader {
                header: ch.header.to_ascii_lowercase(),
                claims: ch.claim.split('|').map(|s| s.trim().to_string()).collect(),
            });
        }
        let mut a = Annotator {
            identity,
            forward_token: cfg.forward_token,
            token_headers: Vec::new(),
            token_queries: Vec::new(),
            token_cookies: Vec::new(),
            caller_header: !cfg.callers.is_empty(),
        };
        for s in &cfg.token_sources {
            if let Some(h) = &s.header {
                a.token_headers.push(h.to_ascii_lowercase());
            } else if let Some(q) = &s.query {
                a.token_queries.push(q.clone());
            } else if let Some(c) = &s.cookie {
                a.token_cookies.push(c.clone());
            }
        }
        Ok(a)
    }

    /// Names of the headers the filter owns on `route` (see the module docs).
    pub fn owned_headers<'s>(&'s self, route: Option<&'s Route>) -> impl Iterator<Item = &'s str> {
        let strip = !self.forward_token;
        self.identity
            .iter()
            .map(|i| i.header.as_str())
            .chain(
                route
                    .into_iter()
                    .flat_map(|r| r.set_request_headers.iter().map(|(n, _)| n.as_str())),
            )
            .chain([X_REQUEST_ID, X_MS_CLIENT_REQUEST_ID])
            .chain(self.caller_header.then_some(crate::callers::X_CALLER_NAME))
            .chain(
                self.token_headers
                    .iter()
                    .filter(move |_| strip)
                    .map(String::as_str),
            )
            .chain((strip && !self.token_cookies.is_empty()).then_some("cookie"))
    }

    /// Refuse a request carrying more than one copy of a header the filter owns.
    pub fn check_inbound(
        &self,
        req: &RequestView<'_>,
        route: Option<&Route>,
    ) -> Result<(), crate::reason::Reason> {
        if self.owned_headers(route).any(|h| req.header_count(h) > 1) {
            return Err(crate::reason::Reason::DuplicateIdentityHeader);
        }
        // `x_caller_oid` next to (or instead of) `x-caller-oid`: CGI/WSGI backends read both
        // as HTTP_X_CALLER_OID, and Kong forwards underscores (`underscores_in_headers on`).
        // Such a spelling cannot be cleared reliably in Kong, so it is refused.
        let alias_of_owned = |name: &str| {
            name.contains('_')
                && (headers::in_identity_namespace(name)
                    || self
                        .owned_headers(route)
                        .any(|h| same_but_separators(h, name)))
        };
        if req.headers.iter().any(|(k, _)| alias_of_owned(k)) {
            return Err(crate::reason::Reason::DuplicateIdentityHeader);
        }
        // An `x-caller-*` header the filter does not set is cleared by the plan; Kong's
        // in-place set reaches only the first copy, so a second one is refused.
        for (k, _) in req.headers.iter() {
            if self.foreign_identity_header(k, route) && req.header_count(k) > 1 {
                return Err(crate::reason::Reason::DuplicateIdentityHeader);
            }
        }
        Ok(())
    }

    /// An inbound `x-caller-*` header (hyphen spelling) the filter does not set itself.
    fn foreign_identity_header(&self, name: &str, route: Option<&Route>) -> bool {
        headers::in_identity_namespace(name)
            && !name.contains('_')
            && !self
                .owned_headers(route)
                .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The header operations for an allowed request. `claims` is `None` when the request
    /// is unauthenticated; `token` is where the verified token was found.
    pub fn plan(
        &self,
        route: Option<&Route>,
        claims: Option<&Claims>,
        token: Option<&TokenLocation>,
        req: &RequestView<'_>,
        request_id: &str,
    ) -> Vec<HeaderOp> {
        let route_sets = |name: &str| {
            route.is_some_and(|r| {
                r.set_request_headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            })
        };
        let mut ops = Vec::with_capacity(self.identity.len() + 4);

        if !self.forward_token {
            // Token headers: clear (or leave to the route's in-place Set).
            let located = match token {
                Some(TokenLocation::Header(h)) => Some(h.as_str()),
                _ => None,
            };
            let mut cleared: Vec<&str> = Vec::new();
            for h in self.token_headers.iter().map(String::as_str).chain(located) {
                if cleared.iter().any(|c| c.eq_ignore_ascii_case(h)) {
                    continue;
                }
                cleared.push(h);
                if !route_sets(h) && req.header(h).is_some() {
                    ops.push(HeaderOp::Clear {
                        name: h.to_ascii_lowercase(),
                    });
                }
            }
            // Query tokens: rewrite :path.
            let located_q = match token {
                Some(TokenLocation::Query(q)) => Some(q.as_str()),
                _ => None,
            };
            if req.query().is_some() {
                let mut path = std::borrow::Cow::Borrowed(req.path);
                let mut strip = Vec::new();
                for q in self
                    .token_queries
                    .iter()
                    .map(String::as_str)
                    .chain(located_q)
                {
                    let stripped = crate::token::strip_query_param(&path, q);
                    if stripped != *path {
                        path = std::borrow::Cow::Owned(stripped);
                        strip.push(q.to_string());
                    }
                }
                if !strip.is_empty() {
                    ops.push(HeaderOp::SetPath {
                        path: path.into_owned(),
                        strip,
                    });
                }
            }
            // Cookie tokens: rewrite the cookie header without them.
            let located_c = match token {
                Some(TokenLocation::Cookie(c)) => Some(c.as_str()),
                _ => None,
            };
            if !self.token_cookies.is_empty() || located_c.is_some() {
                if let Some(cookie) = req.header("cookie") {
                    let names: Vec<&str> = self
                        .token_cookies
                        .iter()
                        .map(String::as_str)
                        .chain(located_c)
                        .collect();
                    if let Some(rest) = strip_cookies(cookie, &names) {
                        ops.push(if rest.is_empty() {
                            HeaderOp::Clear {
                                name: "cookie".into(),
                            }
                        } else {
                            HeaderOp::Set {
                                name: "cookie".into(),
                                value: rest,
                            }
                        });
                    }
                }
            }
        }

        // The client's own `x-caller-*` headers the filter does not set: cleared.
        let mut foreign: Vec<String> = Vec::new();
        for (k, _) in req.headers.iter() {
            if self.foreign_identity_header(k, route) {
                let name = k.to_ascii_lowercase();
                if !foreign.contains(&name) {
                    foreign.push(name);
                }
            }
        }
        ops.extend(foreign.into_iter().map(|name| HeaderOp::Clear { name }));

        for i in &self.identity {
            let value = claims
                .and_then(|c| {
                    i.claims
                        .iter()
                        .find_map(|alt| lookup(c, alt).filter(|v| !v.is_null()))
                })
                .and_then(render)
                .filter(|v| v.len() <= MAX_VALUE_BYTES && !crate::audit::has_control(v))
                .unwrap_or_default();
            ops.push(HeaderOp::Set {
                name: i.header.clone(),
                value,
            });
        }

        if let Some(r) = route {
            for (n, v) in &r.set_request_headers {
                ops.push(HeaderOp::Set {
                    name: n.clone(),
                    value: v.clone(),
                });
            }
        }

        if !req.header(X_REQUEST_ID).is_some_and(sane_request_id) {
            ops.push(HeaderOp::Set {
                name: X_REQUEST_ID.into(),
                value: request_id.to_string(),
            });
        }
        if let Some(v) = req.header(X_MS_CLIENT_REQUEST_ID) {
            if !azure_client_request_id(v) {
                ops.push(HeaderOp::Clear {
                    name: X_MS_CLIENT_REQUEST_ID.into(),
                });
            }
        }
        ops
    }
}

/// `a` and `b` name the same CGI variable: equal ignoring case, with `-` and `_` alike.
fn same_but_separators(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let n = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            n(x) == n(y)
        })
}

/// The cookie header without the named cookies; `None` when none of them is there.
fn strip_cookies(cookie: &str, names: &[&str]) -> Option<String> {
    let mut removed = false;
    let mut kept: Vec<&str> = Vec::new();
    for crumb in cookie.split(';') {
        let c = crumb.trim_matches([' ', '\t']);
        if c.is_empty() {
            continue;
        }
        let name = c.split_once('=').map_or(c, |(n, _)| n).trim();
        if names.contains(&name) {
            removed = true;
        } else {
            kept.push(c);
        }
    }
    removed.then(|| kept.join("; "))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An array is joined with `,`; an array with an item that itself contains `,` is
/// dropped whole, so `["a,b"]` and `["a","b"]` never render alike.
fn render(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            if parts.iter().any(|p| p.contains(',')) {
                return None;
            }
            Some(parts.join(","))
        }
        other => scalar_text(other),
    }
}

fn sane_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'/' | b'=' | b'-')
        })
}

/// Azure ML's rule for `x-ms-client-request-id`: letters, digits, `-`, `_`, at most 40.
fn azure_client_request_id(v: &str) -> bool {
    (1..=40).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id of this request: the client's `x-request-id` when it is sane, otherwise 16
/// hex digits from `random` (the host's non-cryptographic randomness is fine here).
pub fn request_id(req: &RequestView<'_>, random: u64) -> String {
    match req.header(X_REQUEST_ID) {
        Some(v) if sane_request_id(v) => v.to_string(),
        _ => format!("{random:016x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Routes;

    fn cfg(extra: &str) -> FilterConfig {
        crate::config::parse(
            format!(
                r#"{{
            "providers": [{{"name": "entra", "issuers": ["https://i"], "jwks_uri": "https://i/keys",
                           "audiences": ["api://gw"]}}],
            "routes": [
              {{"name": "keyed", "match": {{"path_prefix": "/keyed"}},
                "set_request_headers": {{"authorization": "Bearer ml-key", "azureml-model-deployment": "blue"}}}},
              {{"name": "plain", "match": {{"path_prefix": "/"}}}}
            ]{extra}
        }}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    struct Fx {
        cfg: FilterConfig,
    }

    impl Fx {
        fn new(extra: &str) -> Fx {
            Fx { cfg: cfg(extra) }
        }
        fn parts(&self) -> (Annotator, Routes) {
            let a = Annotator::new(&self.cfg).unwrap();
            let r = Routes::new(&self.cfg.routes, |_| Some(0)).unwrap();
            (a, r)
        }
    }

    fn hdrs(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req<'a>(path: &'a str, h: &'a [(String, String)]) -> RequestView<'a> {
        RequestView {
            method: "POST",
            path,
            authority: "h",
            headers: h,
        }
    }

    fn set(n: &str, v: &str) -> HeaderOp {
        HeaderOp::Set {
            name: n.into(),
            value: v.into(),
        }
    }
    fn clear(n: &str) -> HeaderOp {
        HeaderOp::Clear { name: n.into() }
    }

    fn claims() -> Claims {
        serde_json::from_str(
            r#"{"oid":"o-1","tid":"t-1","appid":"app-1","sub":"s-1","roles":["A","B"]}"#,
        )
        .unwrap()
    }

    #[test]
    fn header_token_cleared_and_identity_set() {
        let fx = Fx::new("");
        let (a, r) = fx.parts();
        let h = hdrs(&[
            ("authorization", "Bearer tok"),
            ("x-caller-oid", "spoofed"),
            ("x-request-id", "abc-123"),
        ]);
        let rq = req("/score", &h);
        let m = r.find_request(&rq).unwrap();
        assert_eq!(a.check_inbound(&rq, Some(m.route)), Ok(()));
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Header("authorization".into())),
            &rq,
            "abc-123",
        );
        assert_eq!(
            ops,
            vec![
                clear("authorization"),
                set("x-caller-oid", "o-1"),
                set("x-caller-tid", "t-1"),
                set("x-caller-app", "app-1"),
                set("x-caller-sub", "s-1"),
            ]
        );
    }

    #[test]
    fn route_key_replaces_token_in_place() {
        let fx = Fx::new("");
        let (a, r) = fx.parts();
        let h = hdrs(&[("authorization", "Bearer tok")]);
        let rq = req("/keyed/score", &h);
        let m = r.find_request(&rq).unwrap();
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Header("authorization".into())),
            &rq,
            "rid",
        );
        assert!(!ops.contains(&clear("authorization")), "{ops:?}");
        assert!(ops.contains(&set("authorization", "Bearer ml-key")));
        assert!(ops.contains(&set("azureml-model-deployment", "blue")));
        assert!(ops.contains(&set("x-request-id", "rid")));
        // The Set comes once, and nothing removes the header first.
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, HeaderOp::Set { name, .. } | HeaderOp::Clear { name } if name == "authorization"))
                .count(),
            1
        );
    }

    #[test]
    fn forward_token_keeps_it() {
        let fx = Fx::new(r#", "forward_token": true"#);
        let (a, r) = fx.parts();
        let h = hdrs(&[
            ("authorization", "Bearer tok"),
            ("authorization", "Bearer two"),
        ]);
        let rq = req("/score", &h);
        let m = r.find_request(&rq).unwrap();
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Header("authorization".into())),
            &rq,
            "rid",
        );
        assert!(!ops.iter().any(|o| matches!(o, HeaderOp::Clear { .. })));
        // Not owned when forwarded: duplicates are token.rs's business (token_ambiguous).
        assert_eq!(a.check_inbound(&rq, Some(m.route)), Ok(()));
    }

    #[test]
    fn duplicate_owned_headers_rejected() {
        let fx = Fx::new(
            r#", "token_sources": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "aml_token"}]"#,
        );
        let (a, r) = fx.parts();
        let keyed = r.get(0).unwrap();
        let dup = |h: &[(&str, &str)], route: Option<&Route>| {
            let h = hdrs(h);
            a.check_inbound(&req("/", &h), route)
        };
        let deny = Err(crate::reason::Reason::DuplicateIdentityHeader);
        assert_eq!(
            dup(&[("x-caller-oid", "a"), ("X-Caller-Oid", "b")], None),
            deny
        );
        assert_eq!(dup(&[("x-caller-oid", "a")], None), Ok(()));
        assert_eq!(
            dup(&[("x-request-id", "a"), ("x-request-id", "b")], None),
            deny
        );
        assert_eq!(
            dup(
                &[
                    ("azureml-model-deployment", "a"),
                    ("azureml-model-deployment", "b")
                ],
                Some(keyed)
            ),
            deny
        );
        assert_eq!(
            dup(
                &[
                    ("azureml-model-deployment", "a"),
                    ("azureml-model-deployment", "b")
                ],
                None
            ),
            Ok(())
        );
        assert_eq!(
            dup(&[("authorization", "a"), ("authorization", "b")], None),
            deny
        );
        assert_eq!(dup(&[("cookie", "a=1"), ("cookie", "b=2")], None), deny);
        // Underscore aliases of owned headers are spoofs too (CGI reads both the same).
        assert_eq!(dup(&[("x_caller_oid", "evil")], None), deny);
        assert_eq!(
            dup(&[("X_Caller-OID", "evil"), ("x-caller-oid", "x")], None),
            deny
        );
        assert_eq!(dup(&[("x_other", "fine")], None), Ok(()));
        assert_eq!(dup(&[("x-other", "a"), ("x-other", "b")], None), Ok(()));
        let owned: Vec<&str> = a.owned_headers(Some(keyed)).collect();
        for h in [
            "x-caller-oid",
            "x-caller-app",
            "authorization",
            "azureml-model-deployment",
            "x-request-id",
            "x-ms-client-request-id",
            "cookie",
        ] {
            assert!(owned.contains(&h), "{h} in {owned:?}");
        }
    }

    #[test]
    fn unauthenticated_requests_blank_identity_headers() {
        let fx = Fx::new("");
        let (a, r) = fx.parts();
        let h = hdrs(&[
            ("x-caller-oid", "spoofed"),
            ("x-request-id", "bad id with spaces"),
        ]);
        let rq = req("/health", &h);
        let m = r.find_request(&rq).unwrap();
        let ops = a.plan(Some(m.route), None, None, &rq, "0000000000000001");
        assert_eq!(
            ops,
            vec![
                set("x-caller-oid", ""),
                set("x-caller-tid", ""),
                set("x-caller-app", ""),
                set("x-caller-sub", ""),
                set("x-request-id", "0000000000000001"),
            ]
        );
    }

    #[test]
    fn query_token_stripped() {
        let fx = Fx::new(r#", "token_sources": [{"query": "access_token"}]"#);
        let (a, r) = fx.parts();
        let h = hdrs(&[]);
        let rq = req("/score?a=1&access_token=eyJ.x.y&b=2", &h);
        let m = r.find_request(&rq).unwrap();
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Query("access_token".into())),
            &rq,
            "r",
        );
        assert_eq!(
            ops.first(),
            Some(&HeaderOp::SetPath {
                path: "/score?a=1&b=2".into(),
                strip: vec!["access_token".into()]
            })
        );
        let rq = req("/score?access_token=eyJ.x.y", &h);
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Query("access_token".into())),
            &rq,
            "r",
        );
        assert_eq!(
            ops.first(),
            Some(&HeaderOp::SetPath {
                path: "/score".into(),
                strip: vec!["access_token".into()]
            })
        );
        // No token parameter: the path is left alone.
        let rq = req("/score?a=1", &h);
        let ops = a.plan(Some(m.route), None, None, &rq, "r");
        assert!(!ops.iter().any(|o| matches!(o, HeaderOp::SetPath { .. })));
    }

    #[test]
    fn cookie_token_stripped() {
        let fx = Fx::new(r#", "token_sources": [{"cookie": "aml_token"}]"#);
        let (a, r) = fx.parts();
        let h = hdrs(&[("cookie", "a=1; aml_token=eyJ.x.y;b=2")]);
        let rq = req("/score", &h);
        let m = r.find_request(&rq).unwrap();
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Cookie("aml_token".into())),
            &rq,
            "r",
        );
        assert_eq!(ops.first(), Some(&set("cookie", "a=1; b=2")));
        let h = hdrs(&[("cookie", "aml_token=eyJ.x.y")]);
        let rq = req("/score", &h);
        let ops = a.plan(
            Some(m.route),
            Some(&claims()),
            Some(&TokenLocation::Cookie("aml_token".into())),
            &rq,
            "r",
        );
        assert_eq!(ops.first(), Some(&clear("cookie")));
        let h = hdrs(&[("cookie", "a=1")]);
        let rq = req("/score", &h);
        let ops = a.plan(Some(m.route), None, None, &rq, "r");
        assert!(!ops.iter().any(|o| matches!(o, HeaderOp::Set { name, .. } | HeaderOp::Clear { name } if name == "cookie")));
    }

    #[test]
    fn claim_rendering_and_dropping() {
        let fx = Fx::new(
            r#", "claims_to_headers": [
                {"claim": "roles", "header": "x-roles"},
                {"claim": "azp|appid", "header": "x-app"},
                {"claim": "bad", "header": "x-bad"},
                {"claim": "big", "header": "x-big"},
                {"claim": "n", "header": "x-n"},
                {"claim": "obj", "header": "x-obj"},
                {"claim": "ctx.team", "header": "x-team"}]"#,
        );
        let (a, _) = fx.parts();
        let mut c = claims();
        c.insert("azp".into(), "azp-1".into());
        c.insert("bad".into(), "a\r\nx-injected: 1".into());
        c.insert("big".into(), "x".repeat(MAX_VALUE_BYTES + 1).into());
        c.insert("n".into(), 42.into());
        c.insert("obj".into(), serde_json::json!({"k": "v"}));
        c.insert("ctx".into(), serde_json::json!({"team": "t1"}));
        let h = hdrs(&[]);
        let ops = a.plan(None, Some(&c), None, &req("/", &h), "r");
        for want in [
            set("x-roles", "A,B"),
            set("x-app", "azp-1"),
            set("x-bad", ""),
            set("x-big", ""),
            set("x-n", "42"),
            set("x-obj", ""),
            set("x-team", "t1"),
        ] {
            assert!(ops.contains(&want), "{want:?} in {ops:?}");
        }
        c.remove("azp");
        let ops = a.plan(None, Some(&c), None, &req("/", &h), "r");
        assert!(ops.contains(&set("x-app", "app-1")));
    }

    #[test]
    fn identity_namespace_is_the_filters() {
        let fx = Fx::new("");
        let (a, r) = fx.parts();
        let plain = r.get(1);
        let h = hdrs(&[
            ("X-Caller-Admin", "true"),
            ("x-caller-oid", "spoof"),
            ("x-caller-team", "evil"),
            ("x-other", "kept"),
        ]);
        let rq = req("/", &h);
        assert_eq!(a.check_inbound(&rq, plain), Ok(()));
        let ops = a.plan(plain, Some(&claims()), None, &rq, "r");
        assert!(ops.contains(&clear("x-caller-admin")), "{ops:?}");
        assert!(ops.contains(&clear("x-caller-team")), "{ops:?}");
        assert!(!ops.contains(&clear("x-other")), "{ops:?}");
        assert!(!ops.contains(&clear("x-caller-oid")), "{ops:?}");
        // Unauthenticated requests too.
        let ops = a.plan(plain, None, None, &rq, "r");
        assert!(ops.contains(&clear("x-caller-admin")), "{ops:?}");
        let deny = Err(crate::reason::Reason::DuplicateIdentityHeader);
        for spoof in [
            vec![("x_caller_team", "evil")],
            vec![("X_CALLER_ROLES", "Admin")],
            vec![("x-caller_admin", "1")],
            vec![("x-caller-admin", "1"), ("X-CALLER-ADMIN", "2")],
        ] {
            let h = hdrs(&spoof);
            assert_eq!(a.check_inbound(&req("/", &h), plain), deny, "{spoof:?}");
        }
    }

    #[test]
    fn array_claims_render_unambiguously() {
        let fx =
            Fx::new(r#", "claims_to_headers": [{"claim": "roles", "header": "x-caller-roles"}]"#);
        let (a, _) = fx.parts();
        let h = hdrs(&[]);
        let value = |roles: serde_json::Value| {
            let mut c = claims();
            c.insert("roles".into(), roles);
            a.plan(None, Some(&c), None, &req("/", &h), "r")
                .into_iter()
                .find_map(|op| match op {
                    HeaderOp::Set { name, value } if name == "x-caller-roles" => Some(value),
                    _ => None,
                })
                .unwrap()
        };
        let joined = value(serde_json::json!(["Reader", "Gateway.Admin"]));
        assert_eq!(joined, "Reader,Gateway.Admin");
        assert_eq!(value(serde_json::json!(["Reader,Gateway.Admin"])), "");
        assert_eq!(value(serde_json::json!(["Reader", "x,Gateway.Admin"])), "");
        assert_eq!(value(serde_json::json!(["Reader"])), "Reader");
    }

    #[test]
    fn request_ids() {
        let h = hdrs(&[("x-request-id", "client-42")]);
        assert_eq!(request_id(&req("/", &h), 7), "client-42");
        let h = hdrs(&[("x-request-id", "has space")]);
        assert_eq!(request_id(&req("/", &h), 0xab), "00000000000000ab");
        let long = "a".repeat(129);
        let h = hdrs(&[("x-request-id", long.as_str())]);
        assert_eq!(request_id(&req("/", &h), 1).len(), 16);
        assert_eq!(request_id(&req("/", &[]), u64::MAX), "ffffffffffffffff");
    }

    #[test]
    fn ms_client_request_id() {
        let fx = Fx::new("");
        let (a, _) = fx.parts();
        let ok = hdrs(&[("x-ms-client-request-id", "abc_DEF-123")]);
        let ops = a.plan(None, None, None, &req("/", &ok), "r");
        assert!(!ops
            .iter()
            .any(|o| matches!(o, HeaderOp::Clear { name } if name == X_MS_CLIENT_REQUEST_ID)));
        let long = "a".repeat(41);
        for bad in ["has space", "a.b", long.as_str(), ""] {
            let h = hdrs(&[("x-ms-client-request-id", bad)]);
            let ops = a.plan(None, None, None, &req("/", &h), "r");
            assert!(ops.contains(&clear(X_MS_CLIENT_REQUEST_ID)), "{bad}");
        }
    }
}
