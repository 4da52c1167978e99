//! Routes: matching a request to the first route that fits, and authorizing verified
//! claims against the route's `audiences` and `require`.
//!
//! Compiled once from the configuration by [`Routes::new`]; every route error names its
//! field path.
//!
//! Matching (see [`path`] for which request targets are refused before any route):
//! - `match.path` is a template (`{name}` segments bind path parameters), `match.path_prefix`
//!   a prefix at segment boundaries, neither = any path. A trailing `/` is ignored.
//! - `match.methods` are compared ASCII case-insensitively (a `post` request is treated
//!   as `POST`, so a rule cannot be dodged by case); `HEAD` is not implied by `GET`.
//! - `match.hosts` are compared case-insensitively to the client's host (Kong: the
//!   `host` header; Envoy: `:authority`) without its port and without a trailing dot.
//!   No wildcards.
//! - A target not in normal form ([`path::PathRejected`]) matches **no** route; the
//!   engine refuses it before matching.

pub mod path;
pub mod require;

use serde_json::Value;

use crate::claims::{check_claim_path, lookup, Claims};
use crate::config::{AuthMode, ConfigError, CorsPreflight, RouteConfig};
use crate::headers;
use crate::ratelimit::RateLimit;
use crate::reason::Reason;
use crate::request::RequestView;

pub use path::{normalize_path, PathRejected};
use path::{Prefix, Template};
pub use require::Requirement;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Any,
    Template(Template),
    Prefix(Prefix),
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub auth: AuthMode,
    /// Indexes into the provider list; `None` = all providers.
    pub providers: Option<Vec<usize>>,
    /// Per-route audience override: the token's `aud` must contain one of these.
    pub audiences: Option<Vec<String>>,
    /// Headers added after a successful check (lower-case names; secrets allowed).
    pub set_request_headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
    pub cors_preflight: CorsPreflight,
    require: Option<Requirement>,
    /// Does `require` read `groups`? (Entra group overage detection.)
    reads_groups: bool,
    path: PathMatch,
    /// Upper-case; `None` = any method.
    methods: Option<Vec<String>>,
    /// Lower-case, no port, no trailing dot; `None` = any host.
    hosts: Option<Vec<String>>,
}

/// The route a request matched, with its bound path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch<'r> {
    pub index: usize,
    pub route: &'r Route,
    pub params: Vec<(String, String)>,
}

/// Which part of a route's `match` a request fails ([`Route::mismatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Method,
    Host,
    Path,
}

/// All routes, in configuration order (first match wins).
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
}

/// `:authority` without port and trailing dot, lower-cased only when needed.
fn host_only(authority: &str) -> &str {
    let h = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => authority.get(..=i).unwrap_or(authority),
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) => authority.get(..i).unwrap_or(authority),
            None => authority,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

fn check_host(path: &str, h: &str) -> Result<String, ConfigError> {
    let body = h.strip_suffix('.').unwrap_or(h);
    let ok_name = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let ok_v6 = body.starts_with('[')
        && body.ends_with(']')
        && body.len() > 2
        && body
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'[' | b']'));
    if !(ok_name || ok_v6) {
        return Err(ConfigError::new(
            path,
            "expected a host name without port or wildcard (e.g. `ml.example.com`)",
        ));
    }
    Ok(body.to_ascii_lowercase())
}

fn compile_route(
    i: usize,
    r: &RouteConfig,
    provider_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<Route, ConfigError> {
    let base = format!("routes[{i}]");
    if r.name.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{base}.name"),
            "expected a non-empty name",
        ));
    }
    if r.name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            format!("{base}.name"),
            "control characters are not allowed",
        ));
    }
    let m = &r.matcher;
    let path = match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{base}.match"),
                "expected at most one of path, path_prefix",
            ))
        }
        (Some(p), None) => PathMatch::Template(Template::parse(&format!("{base}.match.path"), p)?),
        (None, Some(p)) => {
            PathMatch::Prefix(Prefix::parse(&format!("{base}.match.path_prefix"), p)?)
        }
        (None, None) => PathMatch::Any,
    };
    let methods = match &m.methods {
        None => None,
        Some(list) => {
            let p = format!("{base}.match.methods");
            if list.is_empty() {
                return Err(ConfigError::new(
                    p,
                    "expected at least one method (omit for any)",
                ));
            }
            for (j, meth) in list.iter().enumerate() {
                if !headers::is_token(meth) || meth.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(ConfigError::new(
                        format!("{p}[{j}]"),
                        "expected an upper-case HTTP method such as GET or POST",
                    ));
                }
            }
            Some(list.clone())
        }
    };
    let hosts = match &m.hosts {
        None => None,
        Some(list) => {
            let p = format!("{base}.match.hosts");
            if list.is_empty() {
                return Err(ConfigError::new(
                    p,
                    "expected at least one host (omit for any)",
                ));
            }
            Some(
                list.iter()
                    .enumerate()
                    .map(|(j, h)| check_host(&format!("{p}[{j}]"), h))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
    };
    let providers = match &r.providers {
        None => None,
        Some(list) => {
            let p = format!("{base}.providers");
            if list.is_empty() {
                return Err(ConfigError::new(
                    p,
                    "expected at least one provider name (omit for all providers)",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, name) in list.iter().enumerate() {
                match provider_index(name) {
                    Some(ix) => {
                        if !out.contains(&ix) {
                            out.push(ix);
                        }
                    }
                    None => {
                        return Err(ConfigError::new(
                            format!("{p}[{j}]"),
                            format!("no provider is named {name:?}"),
                        ))
                    }
                }
            }
            Some(out)
        }
    };
    if let Some(list) = &r.audiences {
        let p = format!("{base}.audiences");
        if list.is_empty() {
            return Err(ConfigError::new(
                p,
                "expected at least one audience (omit to use the providers' audiences)",
            ));
        }
        if let Some(j) = list.iter().position(|a| a.is_empty()) {
            return Err(ConfigError::new(
                format!("{p}[{j}]"),
                "expected a non-empty string",
            ));
        }
    }
    let mut set_request_headers = Vec::with_capacity(r.set_request_headers.len());
    for (name, value) in &r.set_request_headers {
        let p = format!("{base}.set_request_headers.{name}");
        headers::check_header_name(&p, name)?;
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ConfigError::new(
                p,
                "control characters are not allowed in a header value",
            ));
        }
        headers::check_not_managed(&p, name)?;
        set_request_headers.push((name.clone(), value.clone()));
    }
    let rate_limit = match &r.rate_limit {
        None => None,
        Some(rl) => {
            let p = format!("{base}.rate_limit");
            if rl.requests == 0 || rl.requests > u64::from(u32::MAX) {
                return Err(ConfigError::new(
                    format!("{p}.requests"),
                    "expected a number from 1 to 4294967295",
                ));
            }
            if rl.window_seconds == 0 || rl.window_seconds > 31_536_000 {
                return Err(ConfigError::new(
                    format!("{p}.window_seconds"),
                    "expected a number of seconds from 1 to 31536000",
                ));
            }
            for alt in rl.key.split('|') {
                check_claim_path(&format!("{p}.key"), alt.trim())?;
            }
            Some(RateLimit::new(rl.requests, rl.window_seconds, &rl.key))
        }
    };
    let param_names: Vec<&str> = match &path {
        PathMatch::Template(t) => t.param_names().collect(),
        _ => Vec::new(),
    };
    let require = match &r.require {
        None => None,
        Some(req) => Some(Requirement::compile(
            &format!("{base}.require"),
            req,
            &param_names,
        )?),
    };
    let reads_groups = require.as_ref().is_some_and(|q| q.reads_claim("groups"));
    Ok(Route {
        name: r.name.clone(),
        auth: r.auth,
        providers,
        audiences: r.audiences.clone(),
        set_request_headers,
        rate_limit,
        cors_preflight: r.cors_preflight,
        require,
        reads_groups,
        path,
        methods,
        hosts,
    })
}

impl Routes {
    /// Compile every route (the configuration's `routes`). `provider_index` maps a
    /// provider name to its index.
    pub fn new(
        config: &[RouteConfig],
        provider_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<Routes, ConfigError> {
        if config.is_empty() {
            return Err(ConfigError::new("routes", "expected at least one route"));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(config.len());
        for (i, r) in config.iter().enumerate() {
            let route = compile_route(i, r, &provider_index)?;
            if let Some(j) = routes.iter().position(|x| x.name == route.name) {
                return Err(ConfigError::new(
                    format!("routes[{i}].name"),
                    format!("duplicate route name (also routes[{j}].name)"),
                ));
            }
            routes.push(route);
        }
        Ok(Routes { routes })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The first route matching `method`, `host` (`:authority`, port allowed) and the
    /// raw `path` (query allowed). `None` also for unroutable paths.
    pub fn find(&self, method: &str, host: &str, path: &str) -> Option<RouteMatch<'_>> {
        self.find_with(host, path, |r| r.method_matches(method))
    }

    /// Like [`Routes::find`] for a request; a CORS preflight ([`is_cors_preflight`])
    /// matches a route that allows `OPTIONS` or the method in
    /// `Access-Control-Request-Method` (the route's `cors_preflight` then decides).
    pub fn find_request(&self, req: &RequestView<'_>) -> Option<RouteMatch<'_>> {
        if is_cors_preflight(req) {
            let wanted = req.header("access-control-request-method").unwrap_or("");
            self.find_with(req.authority, req.path, |r| {
                r.method_matches(req.method) || r.method_matches(wanted.trim())
            })
        } else {
            self.find(req.method, req.authority, req.path)
        }
    }

    fn find_with(
        &self,
        host: &str,
        path: &str,
        method_ok: impl Fn(&Route) -> bool,
    ) -> Option<RouteMatch<'_>> {
        let norm = normalize_path(path).ok()?;
        let host = host_only(host);
        let mut params = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            if !method_ok(route) || !route.host_matches(host) {
                continue;
            }
            let ok = match &route.path {
                PathMatch::Any => true,
                PathMatch::Prefix(p) => p.matches(norm),
                PathMatch::Template(t) => t.matches(norm, &mut params),
            };
            if ok {
                return Some(RouteMatch {
                    index,
                    route,
                    params,
                });
            }
        }
        None
    }
}

fn aud_contains(claims: &Claims, wanted: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(s)) => wanted.iter().any(|w| w == s),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .any(|s| wanted.iter().any(|w| w == s)),
        _ => false,
    }
}

impl Route {
    fn method_matches(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
        }
    }

    fn host_matches(&self, host: &str) -> bool {
        match &self.hosts {
            None => true,
            Some(list) => list.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }

    /// Whether the route has a `require` block.
    pub fn has_requirement(&self) -> bool {
        self.require.is_some()
    }

    /// The compiled `require` block (for tools that explain a decision).
    pub fn requirement(&self) -> Option<&Requirement> {
        self.require.as_ref()
    }

    /// Why this route does not take `req` (the first test that fails, in the order
    /// [`Routes::find_request`] applies them), `None` when it does. For `explain`; the
    /// request path uses [`Routes::find_request`].
    pub fn mismatch(&self, req: &RequestView<'_>) -> Option<Mismatch> {
        let Ok(norm) = normalize_path(req.path) else {
            return Some(Mismatch::Path);
        };
        let method_ok = if is_cors_preflight(req) {
            let wanted = req.header("access-control-request-method").unwrap_or("");
            self.method_matches(req.method) || self.method_matches(wanted.trim())
        } else {
            self.method_matches(req.method)
        };
        if !method_ok {
            return Some(Mismatch::Method);
        }
        if !self.host_matches(host_only(req.authority)) {
            return Some(Mismatch::Host);
        }
        let ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => p.matches(norm),
            PathMatch::Template(t) => t.matches(norm, &mut Vec::new()),
        };
        (!ok).then_some(Mismatch::Path)
    }

    /// Authorize verified claims: the route's `audiences` override first
    /// (→ [`Reason::RouteAudienceMismatch`]), then `require`. A failed requirement that
    /// reads `groups` on a token with Entra group overage (`_claim_names.groups` present,
    /// `groups` absent) → [`Reason::GroupsOverage`]; any other failure →
    /// [`Reason::InsufficientScope`].
    pub fn authorize(&self, claims: &Claims, params: &[(String, String)]) -> Result<(), Reason> {
        if let Some(auds) = &self.audiences {
            if !aud_contains(claims, auds) {
                return Err(Reason::RouteAudienceMismatch);
            }
        }
        let Some(req) = &self.require else {
            return Ok(());
        };
        if req.eval(&require::EvalInput { claims, params }) {
            return Ok(());
        }
        if self.reads_groups
            && claims.get("groups").is_none()
            && lookup(claims, "_claim_names.groups").is_some()
        {
            return Err(Reason::GroupsOverage);
        }
        Err(Reason::InsufficientScope)
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_cors_preflight(req: &RequestView<'_>) -> bool {
    req.method.eq_ignore_ascii_case("OPTIONS")
        && req.header("origin").is_some_and(|v| !v.trim().is_empty())
        && req
            .header("access-control-request-method")
            .is_some_and(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;

    const PROVIDERS: &str = r#""providers": [
        {"name": "entra", "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
         "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
         "audiences": ["api://azureml-gateway"]},
        {"name": "okta", "issuers": ["https://example.okta.com"],
         "jwks_uri": "https://example.okta.com/keys", "audiences": ["api://x"]}]"#;

    fn cfg(routes: &str) -> FilterConfig {
        crate::config::parse(format!(r#"{{{PROVIDERS}, "routes": {routes}}}"#).as_bytes()).unwrap()
    }

    fn index(cfg: &FilterConfig) -> impl Fn(&str) -> Option<usize> + '_ {
        move |n| cfg.providers.iter().position(|p| p.name == n)
    }

    fn routes(r: &str) -> Routes {
        let c = cfg(r);
        Routes::new(&c.routes, index(&c)).unwrap()
    }

    fn err(r: &str) -> ConfigError {
        let c = cfg(r);
        Routes::new(&c.routes, index(&c)).unwrap_err()
    }

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    const TEAM: &str = r#"[
        {"name": "team-score",
         "match": {"path": "/teams/{team}/endpoints/{endpoint}/score", "methods": ["POST"],
                   "hosts": ["ML.example.com"]},
         "providers": ["entra"],
         "require": {"all": [
            {"claim": "roles", "contains_any": ["Endpoint.Score"]},
            {"claim": "team", "equals": "{path.team}"},
            {"not": {"claim": "idtyp", "equals": "app"}}]}},
        {"name": "fraud", "match": {"path_prefix": "/fraud/"}},
        {"name": "health", "match": {"path": "/health"}, "auth": "none"}
    ]"#;

    fn find<'a>(
        r: &'a Routes,
        m: &str,
        h: &str,
        p: &str,
    ) -> Option<(&'a str, Vec<(String, String)>)> {
        r.find(m, h, p).map(|x| (x.route.name.as_str(), x.params))
    }

    #[test]
    fn first_match_with_params() {
        let r = routes(TEAM);
        let (name, params) =
            find(&r, "POST", "ml.example.com", "/teams/a/endpoints/e1/score").unwrap();
        assert_eq!(name, "team-score");
        assert_eq!(
            params,
            vec![
                ("team".into(), "a".into()),
                ("endpoint".into(), "e1".into())
            ]
        );
        assert_eq!(r.find("GET", "x", "/health").unwrap().index, 2);
        assert_eq!(find(&r, "GET", "x", "/fraud/m/score").unwrap().0, "fraud");
        assert!(find(&r, "GET", "x", "/other").is_none());
    }

    #[test]
    fn targets_not_in_normal_form_match_no_route() {
        let r = routes(TEAM);
        let h = "ml.example.com";
        for p in [
            "/teams/a/../b/endpoints/e/score",
            "/teams/x/%2e%2e/b/endpoints/e/score",
            "//teams//b/endpoints/./e/score",
            "/teams/%62/endpoints/e/score",
            "/x/../teams/b/endpoints/e/score#frag",
            "/teams/a%2F..%2Fb/endpoints/e/score",
            "/teams/a/%252e%252e/b/endpoints/e/score",
        ] {
            assert!(find(&r, "POST", h, p).is_none(), "{p}");
        }
        for p in [
            "/teams/b/endpoints/e/score/",
            "/teams/b/endpoints/e/score?team=a",
            "/teams/b/endpoints/e/score?x=/../a",
        ] {
            let (name, params) = find(&r, "POST", h, p).unwrap_or_else(|| panic!("{p}"));
            assert_eq!(name, "team-score", "{p}");
            assert_eq!(params[0].1, "b", "{p}");
        }
        // Not even a catch-all route matches a refused target.
        let r2 = routes(
            r#"[{"name": "t", "match": {"path": "/teams/{team}/score"}},
                {"name": "any", "auth": "none"}]"#,
        );
        assert!(r2.find("GET", "h", "/teams/a%2fb/score").is_none());
        assert!(r2.find("GET", "h", "/teams/a\\..\\b/score").is_none());
        assert!(r2.find("GET", "h", "/teams/a/../../health").is_none());
        assert_eq!(find(&r2, "GET", "h", "/elsewhere").unwrap().0, "any");
        // Prefix boundaries.
        assert!(find(&r, "GET", "x", "/fraudster").is_none());
        assert_eq!(find(&r, "GET", "x", "/fraud").unwrap().0, "fraud");
        assert_eq!(find(&r, "GET", "x", "/health/").unwrap().0, "health");
    }

    #[test]
    fn methods_and_hosts() {
        let r = routes(TEAM);
        let p = "/teams/a/endpoints/e/score";
        assert!(r.find("GET", "ml.example.com", p).is_none());
        assert!(r.find("post", "ml.example.com", p).is_some());
        assert!(r.find("POST", "ML.Example.COM:8443", p).is_some());
        assert!(r.find("POST", "ml.example.com.", p).is_some());
        assert!(r.find("POST", "other.example.com", p).is_none());
        assert!(r.find("POST", "ml.example.com.evil", p).is_none());
        let v6 = routes(r#"[{"name": "v6", "match": {"hosts": ["[::1]"]}}]"#);
        assert!(v6.find("GET", "[::1]:8080", "/").is_some());
        assert!(v6.find("GET", "[::2]", "/").is_none());
    }

    #[test]
    fn cors_preflight_matching() {
        let r = routes(
            r#"[{"name": "s", "match": {"path": "/score", "methods": ["POST"]}, "cors_preflight": "allow"}]"#,
        );
        let h = vec![
            ("origin".to_string(), "https://app".to_string()),
            (
                "access-control-request-method".to_string(),
                "POST".to_string(),
            ),
        ];
        let req = RequestView {
            method: "OPTIONS",
            path: "/score",
            authority: "h",
            headers: &h,
        };
        assert!(is_cors_preflight(&req));
        let m = r.find_request(&req).unwrap();
        assert_eq!(m.route.cors_preflight, CorsPreflight::Allow);
        let plain = RequestView {
            headers: &[],
            ..req
        };
        assert!(!is_cors_preflight(&plain));
        assert!(r.find_request(&plain).is_none());
        let get = RequestView {
            method: "GET",
            ..req
        };
        assert!(!is_cors_preflight(&get));
    }

    #[test]
    fn authorize_requirements_and_cross_team_guard() {
        let r = routes(TEAM);
        let m = r
            .find("POST", "ml.example.com", "/teams/a/endpoints/e/score")
            .unwrap();
        let ok = claims(r#"{"roles":["Endpoint.Score"],"team":"a","idtyp":"user"}"#);
        assert_eq!(m.route.authorize(&ok, &m.params), Ok(()));
        let other_team = claims(r#"{"roles":["Endpoint.Score"],"team":"b"}"#);
        assert_eq!(
            m.route.authorize(&other_team, &m.params),
            Err(Reason::InsufficientScope)
        );
        let app = claims(r#"{"roles":["Endpoint.Score"],"team":"a","idtyp":"app"}"#);
        assert_eq!(
            m.route.authorize(&app, &m.params),
            Err(Reason::InsufficientScope)
        );
        // A dot-segment trick matches no route at all.
        assert!(r
            .find("POST", "ml.example.com", "/teams/a/../b/endpoints/e/score")
            .is_none());
        // No require: any valid token.
        let f = r.find("GET", "h", "/fraud/x").unwrap();
        assert_eq!(f.route.authorize(&Claims::new(), &f.params), Ok(()));
    }

    #[test]
    fn route_audiences() {
        let r = routes(r#"[{"name": "f", "audiences": ["api://fraud", "api://x"]}]"#);
        let m = r.find("GET", "h", "/").unwrap();
        let a = |j: &str| m.route.authorize(&claims(j), &m.params);
        assert_eq!(a(r#"{"aud":"api://fraud"}"#), Ok(()));
        assert_eq!(a(r#"{"aud":["api://y","api://x"]}"#), Ok(()));
        assert_eq!(
            a(r#"{"aud":"api://y"}"#),
            Err(Reason::RouteAudienceMismatch)
        );
        assert_eq!(a(r#"{}"#), Err(Reason::RouteAudienceMismatch));
    }

    #[test]
    fn groups_overage() {
        let r = routes(
            r#"[{"name": "g", "require": {"any": [
                {"claim": "groups", "contains_any": ["g1"]},
                {"claim": "roles", "contains_any": ["Admin"]}]}},
               {"name": "r", "match": {"path": "/r"}, "require": {"claim": "roles", "contains_any": ["x"]}}]"#,
        );
        let over = claims(
            r#"{"_claim_names":{"groups":"src1"},"_claim_sources":{"src1":{"endpoint":"https://graph"}}}"#,
        );
        let g = r.find("GET", "h", "/").unwrap();
        assert_eq!(g.route.authorize(&over, &[]), Err(Reason::GroupsOverage));
        // Satisfied another way: allowed despite overage.
        let mut admin = over.clone();
        admin.insert("roles".into(), serde_json::json!(["Admin"]));
        assert_eq!(g.route.authorize(&admin, &[]), Ok(()));
        // Groups present: ordinary failure.
        let member = claims(r#"{"groups":["g2"]}"#);
        assert_eq!(
            g.route.authorize(&member, &[]),
            Err(Reason::InsufficientScope)
        );
        // A route that does not read groups: ordinary failure.
        assert_eq!(
            r.get(1).unwrap().authorize(&over, &[]),
            Err(Reason::InsufficientScope)
        );
    }

    #[test]
    fn providers_resolved() {
        let r = routes(r#"[{"name": "a", "providers": ["okta", "entra", "okta"]}, {"name": "b"}]"#);
        assert_eq!(r.get(0).unwrap().providers, Some(vec![1, 0]));
        assert_eq!(r.get(1).unwrap().providers, None);
    }

    #[test]
    fn route_config_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"[]"#, "routes"),
            (r#"[{"name": ""}]"#, "routes[0].name"),
            (r#"[{"name": "a"}, {"name": "a"}]"#, "routes[1].name"),
            (
                r#"[{"name": "a", "providers": ["nope"]}]"#,
                "routes[0].providers[0]",
            ),
            (r#"[{"name": "a", "providers": []}]"#, "routes[0].providers"),
            (r#"[{"name": "a", "audiences": []}]"#, "routes[0].audiences"),
            (
                r#"[{"name": "a", "match": {"path": "/a", "path_prefix": "/b"}}]"#,
                "routes[0].match",
            ),
            (
                r#"[{"name": "a", "match": {"path": "a/{x}"}}]"#,
                "routes[0].match.path",
            ),
            (
                r#"[{"name": "a", "match": {"path": "/a/x{y}"}}]"#,
                "routes[0].match.path",
            ),
            (
                r#"[{"name": "a", "match": {"path": "/{y}/{y}"}}]"#,
                "routes[0].match.path",
            ),
            (
                r#"[{"name": "a", "match": {"path_prefix": "fraud"}}]"#,
                "routes[0].match.path_prefix",
            ),
            (
                r#"[{"name": "a", "match": {"methods": ["GET", "post"]}}]"#,
                "routes[0].match.methods[1]",
            ),
            (
                r#"[{"name": "a", "match": {"methods": ["GE T"]}}]"#,
                "routes[0].match.methods[0]",
            ),
            (
                r#"[{"name": "a", "match": {"methods": []}}]"#,
                "routes[0].match.methods",
            ),
            (
                r#"[{"name": "a", "match": {"hosts": ["h:443"]}}]"#,
                "routes[0].match.hosts[0]",
            ),
            (
                r#"[{"name": "a", "match": {"hosts": ["*.h"]}}]"#,
                "routes[0].match.hosts[0]",
            ),
            (
                r#"[{"name": "a", "set_request_headers": {"Bad Name": "x"}}]"#,
                "routes[0].set_request_headers.Bad Name",
            ),
            (
                r#"[{"name": "a", "set_request_headers": {"connection": "x"}}]"#,
                "routes[0].set_request_headers.connection",
            ),
            (
                r#"[{"name": "a", "set_request_headers": {"x-a": "a\nb"}}]"#,
                "routes[0].set_request_headers.x-a",
            ),
            (
                r#"[{"name": "a", "rate_limit": {"requests": 0, "window_seconds": 1}}]"#,
                "routes[0].rate_limit.requests",
            ),
            (
                r#"[{"name": "a", "rate_limit": {"requests": 1, "window_seconds": 0}}]"#,
                "routes[0].rate_limit.window_seconds",
            ),
            (
                r#"[{"name": "a", "rate_limit": {"requests": 1, "window_seconds": 1, "key": "a|"}}]"#,
                "routes[0].rate_limit.key",
            ),
            (
                r#"[{"name": "a"}, {"name": "b", "require": {"any": [{"claim": "x"}]}}]"#,
                "routes[1].require.any[0]",
            ),
            (
                r#"[{"name": "a", "match": {"path": "/t/{team}"}, "require": {"claim": "t", "equals": "{path.teem}"}}]"#,
                "routes[0].require.equals",
            ),
        ];
        for (routes, path) in cases {
            let e = err(routes);
            assert_eq!(e.path, *path, "{routes}: {e}");
        }
        let e = err(r#"[{"name": "a"}, {"name": "b", "require": {"any": [{"claim": "x"}]}}]"#);
        assert_eq!(
            e.to_string(),
            "routes[1].require.any[0]: expected exactly one of equals, one_of, contains_any, contains_all, exists"
        );
    }
}
