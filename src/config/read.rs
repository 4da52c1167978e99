//! The configuration's JSON, read field by field into the raw model.
//!
//! Written out rather than derived: serde's derived deserializers for these structs were
//! about a tenth of the filter module. Walking a parsed `Value` also gives every error its
//! exact field path. Messages follow serde's wording (`missing field `name``, `unknown field
//! `x`, expected one of …`, `invalid type: …, expected …`), which `diagnose` reads.
//!
//! Rules shared by every field: an unknown field is an error; an absent field takes its
//! default; `null` means absent only for optional fields (`Option<…>` in the model); a list
//! may also be written `{}` (Kong re-encodes an empty array as an empty object).

use serde_json::{Map, Value};

use super::*;

type Result<T> = core::result::Result<T, ConfigError>;

/// `parent.key`, or `key` at the top level.
fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// What a value is, as serde says it: `integer `5``, `string "x"`, `map`.
fn unexpected(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => format!("integer `{u}`"),
            (None, Some(i)) => format!("integer `{i}`"),
            // No float formatting in the module for an error message.
            _ => "floating point number".into(),
        },
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

fn invalid_type(path: &str, v: &Value, expected: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("invalid type: {}, expected {expected}", unexpected(v)),
    )
}

/// `` `a`, `b`, `c` ``
fn names(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

fn string(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(invalid_type(path, v, "a string")),
    }
}

fn boolean(v: &Value, path: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(invalid_type(path, v, "a boolean")),
    }
}

fn unsigned(v: &Value, path: &str) -> Result<u64> {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Ok(u),
            (None, Some(i)) => Err(ConfigError::new(
                path,
                format!("invalid value: integer `{i}`, expected a non-negative integer"),
            )),
            _ => Err(invalid_type(path, v, "a non-negative integer")),
        },
        _ => Err(invalid_type(path, v, "a non-negative integer")),
    }
}

fn size(v: &Value, path: &str) -> Result<usize> {
    let n = unsigned(v, path)?;
    usize::try_from(n).map_err(|_| {
        ConfigError::new(
            path,
            format!(
                "invalid value: integer `{n}`, expected at most {}",
                usize::MAX
            ),
        )
    })
}

/// One of the `variants`' names, exactly.
fn variant<T: Copy>(v: &Value, path: &str, variants: &[(&str, T)]) -> Result<T> {
    let all: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
    match v {
        Value::String(s) => variants
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                ConfigError::new(
                    path,
                    format!("unknown variant `{s}`, expected one of {}", names(&all)),
                )
            }),
        _ => Err(invalid_type(path, v, &format!("one of {}", names(&all)))),
    }
}

/// A list (or `{}` for an empty one), each element read by `item` at `path[i]`.
fn list<T>(v: &Value, path: &str, item: impl Fn(&Value, &str) -> Result<T>) -> Result<Vec<T>> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| item(x, &format!("{path}[{i}]")))
            .collect(),
        Value::Object(m) if m.is_empty() => Ok(Vec::new()),
        Value::Object(_) => Err(ConfigError::new(path, "expected a list")),
        _ => Err(invalid_type(path, v, "a list")),
    }
}

fn strings(v: &Value, path: &str) -> Result<Vec<String>> {
    list(v, path, string)
}

/// An object of string → string (`{}` or `[]` when empty).
fn string_map(v: &Value, path: &str) -> Result<Vec<(String, String)>> {
    const EXPECTED: &str = "an object of header: value";
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| Ok((k.clone(), string(x, &key_path(path, k))?)))
            .collect(),
        Value::Array(a) if a.is_empty() => Ok(Vec::new()),
        Value::Array(_) => Err(ConfigError::new(path, format!("expected {EXPECTED}"))),
        _ => Err(invalid_type(path, v, EXPECTED)),
    }
}

/// Any JSON value (`equals`, `one_of`).
fn any(v: &Value, _path: &str) -> Result<Value> {
    Ok(v.clone())
}

/// One object of the configuration, its fields read by name.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    /// `v` as an object whose fields are all among `fields`.
    fn new(v: &'a Value, path: &'a str, fields: &[&str]) -> Result<Self> {
        let Value::Object(map) = v else {
            return Err(invalid_type(path, v, "an object"));
        };
        if let Some(k) = map.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(ConfigError::new(
                key_path(path, k),
                format!("unknown field `{k}`, expected one of {}", names(fields)),
            ));
        }
        Ok(Obj { map, path })
    }

    /// The field read by `read` when present (`null` included), else `None`.
    fn get<T>(&self, key: &str, read: impl Fn(&Value, &str) -> Result<T>) -> Result<Option<T>> {
        self.map
            .get(key)
            .map(|v| read(v, &key_path(self.path, key)))
            .transpose()
    }

    /// An optional field: absent or `null` is `None`.
    fn opt<T>(&self, key: &str, read: impl Fn(&Value, &str) -> Result<T>) -> Result<Option<T>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v, &key_path(self.path, key)).map(Some),
        }
    }

    /// A required field, once the fields present have been read (serde's order).
    fn need<T>(&self, got: Option<T>, key: &str) -> Result<T> {
        got.ok_or_else(|| ConfigError::new(self.path, format!("missing field `{key}`")))
    }
}

pub(crate) fn filter_config(v: &Value) -> Result<FilterConfig> {
    let o = Obj::new(
        v,
        "",
        &[
            "providers",
            "token_sources",
            "routes",
            "on_no_route",
            "claims_to_headers",
            "forward_token",
            "realm",
            "audit",
            "cache",
            "upstream_credentials",
            "callers",
            "unknown_callers",
        ],
    )?;
    let providers = o.get("providers", |v, p| list(v, p, provider))?;
    let token_sources = o.get("token_sources", |v, p| list(v, p, token_source))?;
    let routes = o.get("routes", |v, p| list(v, p, route))?;
    let on_no_route = o.get("on_no_route", |v, p| {
        variant(
            v,
            p,
            &[
                ("deny", OnNoRoute::Deny),
                ("allow_authenticated", OnNoRoute::AllowAuthenticated),
            ],
        )
    })?;
    let claims_to_headers = o.get("claims_to_headers", |v, p| list(v, p, claim_header))?;
    let forward_token = o.get("forward_token", boolean)?;
    let realm = o.get("realm", string)?;
    let audit = o.get("audit", audit)?;
    let cache = o.get("cache", cache)?;
    let upstream_credentials = o.get("upstream_credentials", |v, p| {
        list(v, p, upstream_credential)
    })?;
    let callers = o.get("callers", |v, p| list(v, p, caller))?;
    let unknown_callers = o.get("unknown_callers", |v, p| {
        variant(
            v,
            p,
            &[
                ("allow", UnknownCallers::Allow),
                ("deny", UnknownCallers::Deny),
            ],
        )
    })?;
    Ok(FilterConfig {
        providers: o.need(providers, "providers")?,
        token_sources: token_sources.unwrap_or_else(default_token_sources),
        routes: o.need(routes, "routes")?,
        on_no_route: on_no_route.unwrap_or_default(),
        claims_to_headers: claims_to_headers.unwrap_or_else(default_claims_to_headers),
        forward_token: forward_token.unwrap_or_default(),
        realm: realm.unwrap_or_else(default_realm),
        audit: audit.unwrap_or_default(),
        cache: cache.unwrap_or_default(),
        upstream_credentials: upstream_credentials.unwrap_or_default(),
        callers: callers.unwrap_or_default(),
        unknown_callers: unknown_callers.unwrap_or_default(),
    })
}

pub(crate) fn provider(v: &Value, path: &str) -> Result<ProviderConfig> {
    let o = Obj::new(
        v,
        path,
        &[
            "name",
            "issuers",
            "tenants",
            "discovery_uri",
            "jwks_uri",
            "upstream",
            "audiences",
            "algorithms",
            "hmac_secret",
            "clock_skew_seconds",
            "max_lifetime_seconds",
            "jwks_refresh_seconds",
            "jwks_min_refetch_seconds",
            "jwks_timeout_ms",
        ],
    )?;
    let name = o.get("name", string)?;
    let issuers = o.get("issuers", strings)?;
    let tenants = o.get("tenants", strings)?;
    let discovery_uri = o.opt("discovery_uri", string)?;
    let jwks_uri = o.opt("jwks_uri", string)?;
    let upstream = o.opt("upstream", string)?;
    let audiences = o.get("audiences", strings)?;
    let algorithms = o.get("algorithms", strings)?;
    let hmac_secret = o.opt("hmac_secret", string)?;
    let clock_skew = o.get("clock_skew_seconds", unsigned)?;
    let max_lifetime = o.get("max_lifetime_seconds", unsigned)?;
    let refresh = o.get("jwks_refresh_seconds", unsigned)?;
    let min_refetch = o.get("jwks_min_refetch_seconds", unsigned)?;
    let timeout = o.get("jwks_timeout_ms", unsigned)?;
    Ok(ProviderConfig {
        name: o.need(name, "name")?,
        issuers: o.need(issuers, "issuers")?,
        tenants,
        discovery_uri,
        jwks_uri,
        upstream,
        audiences: o.need(audiences, "audiences")?,
        algorithms: algorithms.unwrap_or_else(default_algorithms),
        hmac_secret,
        clock_skew_seconds: clock_skew.unwrap_or_else(default_clock_skew),
        max_lifetime_seconds: max_lifetime.unwrap_or_else(default_max_lifetime),
        jwks_refresh_seconds: refresh.unwrap_or_else(default_jwks_refresh),
        jwks_min_refetch_seconds: min_refetch.unwrap_or_else(default_jwks_min_refetch),
        jwks_timeout_ms: timeout.unwrap_or_else(default_jwks_timeout_ms),
    })
}

fn token_source(v: &Value, path: &str) -> Result<TokenSourceConfig> {
    let o = Obj::new(v, path, &["header", "prefix", "query", "cookie"])?;
    Ok(TokenSourceConfig {
        header: o.opt("header", string)?,
        prefix: o.opt("prefix", string)?,
        query: o.opt("query", string)?,
        cookie: o.opt("cookie", string)?,
    })
}

fn route(v: &Value, path: &str) -> Result<RouteConfig> {
    let o = Obj::new(
        v,
        path,
        &[
            "name",
            "match",
            "auth",
            "providers",
            "audiences",
            "require",
            "set_request_headers",
            "rate_limit",
            "cors_preflight",
            "upstream_credential",
            "concurrency_limit",
            "callers",
        ],
    )?;
    let name = o.get("name", string)?;
    let matcher = o.get("match", match_config)?;
    let auth = o.get("auth", |v, p| {
        variant(
            v,
            p,
            &[
                ("required", AuthMode::Required),
                ("optional", AuthMode::Optional),
                ("none", AuthMode::None),
            ],
        )
    })?;
    let providers = o.get("providers", strings)?;
    let audiences = o.get("audiences", strings)?;
    let require = o.opt("require", requirement)?;
    let set_request_headers = o.get("set_request_headers", string_map)?;
    let rate_limit = o.opt("rate_limit", rate_limit)?;
    let cors_preflight = o.get("cors_preflight", |v, p| {
        variant(
            v,
            p,
            &[
                ("deny", CorsPreflight::Deny),
                ("allow", CorsPreflight::Allow),
            ],
        )
    })?;
    let upstream_credential = o.opt("upstream_credential", string)?;
    let concurrency_limit = o.opt("concurrency_limit", concurrency_limit)?;
    let callers = o.get("callers", strings)?;
    Ok(RouteConfig {
        name: o.need(name, "name")?,
        matcher: matcher.unwrap_or_default(),
        auth: auth.unwrap_or_default(),
        providers,
        audiences,
        require,
        set_request_headers: set_request_headers.unwrap_or_default(),
        rate_limit,
        cors_preflight: cors_preflight.unwrap_or_default(),
        upstream_credential,
        concurrency_limit,
        callers,
    })
}

fn match_config(v: &Value, path: &str) -> Result<MatchConfig> {
    let o = Obj::new(v, path, &["path", "path_prefix", "methods", "hosts"])?;
    Ok(MatchConfig {
        path: o.opt("path", string)?,
        path_prefix: o.opt("path_prefix", string)?,
        methods: o.get("methods", strings)?,
        hosts: o.get("hosts", strings)?,
    })
}

pub(crate) fn requirement(v: &Value, path: &str) -> Result<RequirementConfig> {
    let o = Obj::new(
        v,
        path,
        &[
            "all",
            "any",
            "not",
            "claim",
            "equals",
            "one_of",
            "contains_any",
            "contains_all",
            "exists",
        ],
    )?;
    Ok(RequirementConfig {
        all: o.get("all", |v, p| list(v, p, requirement))?,
        any: o.get("any", |v, p| list(v, p, requirement))?,
        not: o.opt("not", |v, p| requirement(v, p).map(Box::new))?,
        claim: o.opt("claim", string)?,
        equals: o.opt("equals", any)?,
        one_of: o.get("one_of", |v, p| list(v, p, any))?,
        contains_any: o.get("contains_any", strings)?,
        contains_all: o.get("contains_all", strings)?,
        exists: o.opt("exists", boolean)?,
    })
}

fn rate_limit(v: &Value, path: &str) -> Result<RateLimitConfig> {
    let o = Obj::new(v, path, &["requests", "window_seconds", "key"])?;
    let requests = o.get("requests", unsigned)?;
    let window = o.get("window_seconds", unsigned)?;
    let key = o.get("key", string)?;
    Ok(RateLimitConfig {
        requests: o.need(requests, "requests")?,
        window_seconds: o.need(window, "window_seconds")?,
        key: key.unwrap_or_else(default_rate_limit_key),
    })
}

fn concurrency_limit(v: &Value, path: &str) -> Result<ConcurrencyLimitConfig> {
    let o = Obj::new(v, path, &["max_in_flight", "key"])?;
    let max = o.get("max_in_flight", unsigned)?;
    let key = o.get("key", string)?;
    Ok(ConcurrencyLimitConfig {
        max_in_flight: o.need(max, "max_in_flight")?,
        key: key.unwrap_or_else(default_rate_limit_key),
    })
}

fn claim_header(v: &Value, path: &str) -> Result<ClaimHeaderConfig> {
    let o = Obj::new(v, path, &["claim", "header"])?;
    let claim = o.get("claim", string)?;
    let header = o.get("header", string)?;
    Ok(ClaimHeaderConfig {
        claim: o.need(claim, "claim")?,
        header: o.need(header, "header")?,
    })
}

fn audit(v: &Value, path: &str) -> Result<AuditConfig> {
    let o = Obj::new(v, path, &["log_level", "kong_lua_properties"])?;
    let log_level = o.get("log_level", |v, p| {
        variant(
            v,
            p,
            &[
                ("trace", LogLevel::Trace),
                ("debug", LogLevel::Debug),
                ("info", LogLevel::Info),
                ("warn", LogLevel::Warn),
                ("error", LogLevel::Error),
            ],
        )
    })?;
    Ok(AuditConfig {
        log_level: log_level.unwrap_or_default(),
        kong_lua_properties: o.get("kong_lua_properties", boolean)?.unwrap_or_default(),
    })
}

fn cache(v: &Value, path: &str) -> Result<CacheConfig> {
    let o = Obj::new(v, path, &["max_entries", "max_token_bytes", "shared_data"])?;
    let d = CacheConfig::default();
    Ok(CacheConfig {
        max_entries: o.get("max_entries", size)?.unwrap_or(d.max_entries),
        max_token_bytes: o.get("max_token_bytes", size)?.unwrap_or(d.max_token_bytes),
        shared_data: o.get("shared_data", boolean)?.unwrap_or(d.shared_data),
    })
}

pub(crate) fn upstream_credential(v: &Value, path: &str) -> Result<UpstreamCredentialConfig> {
    let o = Obj::new(v, path, &["name", "managed_identity", "client_credentials"])?;
    let name = o.get("name", string)?;
    let managed_identity = o.opt("managed_identity", managed_identity)?;
    let client_credentials = o.opt("client_credentials", client_credentials)?;
    Ok(UpstreamCredentialConfig {
        name: o.need(name, "name")?,
        managed_identity,
        client_credentials,
    })
}

fn managed_identity(v: &Value, path: &str) -> Result<ManagedIdentityConfig> {
    let o = Obj::new(v, path, &["resource", "client_id", "endpoint", "upstream"])?;
    Ok(ManagedIdentityConfig {
        resource: o.get("resource", string)?.unwrap_or_else(default_resource),
        client_id: o.opt("client_id", string)?,
        endpoint: o
            .get("endpoint", string)?
            .unwrap_or_else(default_imds_endpoint),
        upstream: o.opt("upstream", string)?,
    })
}

fn client_credentials(v: &Value, path: &str) -> Result<ClientCredentialsConfig> {
    let o = Obj::new(
        v,
        path,
        &[
            "token_endpoint",
            "client_id",
            "client_secret",
            "scope",
            "upstream",
        ],
    )?;
    let token_endpoint = o.get("token_endpoint", string)?;
    let client_id = o.get("client_id", string)?;
    let client_secret = o.get("client_secret", string)?;
    let scope = o.get("scope", string)?;
    let upstream = o.opt("upstream", string)?;
    Ok(ClientCredentialsConfig {
        token_endpoint: o.need(token_endpoint, "token_endpoint")?,
        client_id: o.need(client_id, "client_id")?,
        client_secret: o.need(client_secret, "client_secret")?,
        scope: scope.unwrap_or_else(default_scope),
        upstream,
    })
}

fn caller(v: &Value, path: &str) -> Result<CallerConfig> {
    let o = Obj::new(v, path, &["name", "app_ids", "owner", "contact"])?;
    let name = o.get("name", string)?;
    let app_ids = o.get("app_ids", strings)?;
    let owner = o.opt("owner", string)?;
    let contact = o.opt("contact", string)?;
    Ok(CallerConfig {
        name: o.need(name, "name")?,
        app_ids: o.need(app_ids, "app_ids")?,
        owner,
        contact,
    })
}
