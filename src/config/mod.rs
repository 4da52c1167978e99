//! The filter's configuration: the JSON contract (see README "Configuration reference").
//!
//! Plain data: `parse` turns bytes into the raw model below (`read`: unknown fields and
//! repeated names rejected, field paths in errors) and nothing more. Loading goes on in
//! `engine::Filter::compile`: each part is compiled into its runtime form by the module
//! that owns it (providers, token sources, routes, identity headers, key sources), then
//! `validate` checks the rules that span parts.

use serde_json::Value;

mod read;

/// Parts of the configuration from JSON text, for unit tests of the modules that compile them.
#[cfg(test)]
pub(crate) mod from_json {
    use super::*;

    fn doc(json: &str) -> Value {
        serde_json::from_str(json).expect("test JSON")
    }
    pub fn provider(json: &str) -> Result<ProviderConfig, ConfigError> {
        read::provider(&doc(json), "")
    }
    pub fn requirement(json: &str) -> Result<RequirementConfig, ConfigError> {
        read::requirement(&doc(json), "")
    }
    pub fn upstream_credential(json: &str) -> Result<UpstreamCredentialConfig, ConfigError> {
        read::upstream_credential(&doc(json), "")
    }
}

/// A configuration error that names the field at fault, e.g.
/// `routes[2].require.any[0].claim: expected a string`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub providers: Vec<ProviderConfig>,
    pub token_sources: Vec<TokenSourceConfig>,
    pub routes: Vec<RouteConfig>,
    pub on_no_route: OnNoRoute,
    pub claims_to_headers: Vec<ClaimHeaderConfig>,
    pub forward_token: bool,
    pub realm: String,
    pub audit: AuditConfig,
    pub cache: CacheConfig,
    pub upstream_credentials: Vec<UpstreamCredentialConfig>,
    /// Who owns which client app (compiled by `callers::Registry::compile`).
    pub callers: Vec<CallerConfig>,
    pub unknown_callers: UnknownCallers,
}

/// `callers[]`: one registered client application (or several app ids of one caller).
#[derive(Debug, Clone)]
pub struct CallerConfig {
    pub name: String,
    pub app_ids: Vec<String>,
    pub owner: Option<String>,
    pub contact: Option<String>,
}

/// `unknown_callers`: what a verified token from an unregistered app gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownCallers {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub issuers: Vec<String>,
    pub tenants: Option<Vec<String>>,
    pub discovery_uri: Option<String>,
    pub jwks_uri: Option<String>,
    /// Kong: `host[:port]`; Envoy: a cluster name. Default: the URI's `host:port`.
    pub upstream: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/384/512; those algorithms are refused without it.
    pub hmac_secret: Option<String>,
    pub clock_skew_seconds: u64,
    /// 0 switches the check off.
    pub max_lifetime_seconds: u64,
    pub jwks_refresh_seconds: u64,
    pub jwks_min_refetch_seconds: u64,
    pub jwks_timeout_ms: u64,
}

/// Exactly one of `header`, `query`, `cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSourceConfig {
    pub header: Option<String>,
    /// Only with `header`; matched case-insensitively (e.g. `"Bearer "`).
    pub prefix: Option<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: MatchConfig,
    pub auth: AuthMode,
    pub providers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub require: Option<RequirementConfig>,
    pub set_request_headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimitConfig>,
    /// CORS preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) without a token.
    pub cors_preflight: CorsPreflight,
    /// Name of an `upstream_credentials` entry: allowed requests go upstream with the
    /// gateway's own token instead of the caller's.
    pub upstream_credential: Option<String>,
    pub concurrency_limit: Option<ConcurrencyLimitConfig>,
    /// Allow-list of registered caller names (`callers[].name`).
    pub callers: Option<Vec<String>>,
}

/// `routes[].concurrency_limit`: requests of one key in flight upstream at once, per node.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitConfig {
    pub max_in_flight: u64,
    pub key: String,
}

/// `managed_identity.resource` default: the Azure ML data plane.
pub const DEFAULT_RESOURCE: &str = "https://ml.azure.com";
/// `managed_identity.endpoint` default: Azure IMDS.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// `client_credentials.scope` default.
pub const DEFAULT_SCOPE: &str = "https://ml.azure.com/.default";

/// `upstream_credentials[]`: the gateway's own identity towards Azure ML (compiled by
/// `credential::spec::compile`).
#[derive(Debug, Clone)]
pub struct UpstreamCredentialConfig {
    pub name: String,
    pub managed_identity: Option<ManagedIdentityConfig>,
    pub client_credentials: Option<ClientCredentialsConfig>,
}

#[derive(Debug, Clone)]
pub struct ManagedIdentityConfig {
    pub resource: String,
    pub client_id: Option<String>,
    pub endpoint: String,
    pub upstream: Option<String>,
}

#[derive(Clone)]
pub struct ClientCredentialsConfig {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
    pub upstream: Option<String>,
}

// The secret never reaches a log, not even through a debug print of the config.
impl core::fmt::Debug for ClientCredentialsConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("upstream", &self.upstream)
            .finish()
    }
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.into()
}
fn default_imds_endpoint() -> String {
    DEFAULT_IMDS_ENDPOINT.into()
}
fn default_scope() -> String {
    DEFAULT_SCOPE.into()
}

#[derive(Debug, Clone, Default)]
pub struct MatchConfig {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CorsPreflight {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnNoRoute {
    #[default]
    Deny,
    AllowAuthenticated,
}

/// One node of the requirement grammar. Exactly one form per object:
/// `{"all": [..]}`, `{"any": [..]}`, `{"not": R}`, or `{"claim": PATH, OP: VALUE}`.
#[derive(Debug, Clone, Default)]
pub struct RequirementConfig {
    pub all: Option<Vec<RequirementConfig>>,
    pub any: Option<Vec<RequirementConfig>>,
    pub not: Option<Box<RequirementConfig>>,
    pub claim: Option<String>,
    pub equals: Option<Value>,
    pub one_of: Option<Vec<Value>>,
    pub contains_any: Option<Vec<String>>,
    pub contains_all: Option<Vec<String>>,
    pub exists: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub requests: u64,
    pub window_seconds: u64,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeaderConfig {
    /// Claim path; `a|b` takes the first of the alternatives present (e.g. `azp|appid`).
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    #[default]
    Warn,
    Error,
}

#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    pub log_level: LogLevel,
    /// Kong only: read `kong.route_name` (for audit lines) and publish the decision in
    /// `kong.ctx.shared.azure_ml_kong_*`. Off by default: Kong's `kong.*` properties run a Lua
    /// handler through a LuaJIT FFI callback that, in Kong 3.9 (ngx_wasm_module 9136e463,
    /// `lib/resty/wasmx/proxy_wasm.lua`), executes on whatever Lua thread last made an FFI
    /// call and re-points that thread at the current request (`thread.exdata`). A suspended
    /// timer or request coroutine then resumes with this request: worker SIGSEGV or a double
    /// free once the request is freed, or Lua code of one request acting on another.
    pub kong_lua_properties: bool,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_entries: usize,
    pub max_token_bytes: usize,
    /// Share JWKS, fetch leases and rate-limit windows across workers through Proxy-Wasm
    /// shared data. Set false on a Kong without an `nginx_wasm_shm_kv` zone (touching shared
    /// data there traps): each worker then fetches and counts on its own.
    pub shared_data: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_cache_entries(),
            max_token_bytes: default_max_token_bytes(),
            shared_data: true,
        }
    }
}

fn default_token_sources() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig {
        header: Some("authorization".into()),
        prefix: Some("Bearer ".into()),
        query: None,
        cookie: None,
    }]
}

fn default_claims_to_headers() -> Vec<ClaimHeaderConfig> {
    [
        ("oid", "x-caller-oid"),
        ("tid", "x-caller-tid"),
        ("azp|appid", "x-caller-app"),
        ("sub", "x-caller-sub"),
    ]
    .iter()
    .map(|(c, h)| ClaimHeaderConfig {
        claim: (*c).into(),
        header: (*h).into(),
    })
    .collect()
}

/// `realm` when the configuration names none (also while none is loaded).
pub fn default_realm() -> String {
    "azure-ml".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_clock_skew() -> u64 {
    60
}
/// 36 h: Entra CAE tokens live up to 28 h.
fn default_max_lifetime() -> u64 {
    129_600
}
fn default_jwks_refresh() -> u64 {
    3600
}
fn default_jwks_min_refetch() -> u64 {
    300
}
fn default_jwks_timeout_ms() -> u64 {
    3000
}
fn default_rate_limit_key() -> String {
    "oid".into()
}
fn default_cache_entries() -> usize {
    4096
}
fn default_max_token_bytes() -> usize {
    16384
}

/// Parse the filter configuration (raw model) with field paths in errors.
pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
    // Not JSON, or a repeated name: serde_json says where it stopped (its messages never
    // quote a value), not in which field.
    let doc = crate::strict_json::from_slice(bytes).map_err(|e| {
        let offset = crate::json_path::offset_of(bytes, e.line(), e.column());
        ConfigError::new(
            crate::json_path::at_offset(bytes, offset),
            clean_serde_message(&e),
        )
    })?;
    read::filter_config(&doc).map_err(|e| {
        if holds_secret(&e.path) {
            ConfigError::new(
                e.path,
                "invalid value (not shown: the field holds a secret)",
            )
        } else {
            e
        }
    })
}

/// Fields whose values are secrets (an error may quote a value): client and HMAC secrets,
/// and headers set upstream (endpoint keys).
fn holds_secret(path: &str) -> bool {
    let mut fields = path.split('.');
    let last = path.rsplit('.').next().unwrap_or_default();
    matches!(last, "client_secret" | "hmac_secret")
        || fields.any(|f| f.split('[').next() == Some("set_request_headers"))
}

/// serde_json appends " at line X column Y"; keep the message about the value only.
fn clean_serde_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_secret_fields_never_quote_the_value() {
        let cases = [
            (
                r#"{"upstream_credentials": [{"name": "a", "client_credentials": {"token_endpoint": "https://h/t", "client_id": "c", "client_secret": 987654321}}]}"#,
                "987654321",
            ),
            (
                r#"{"providers": [{"name": "p", "issuers": ["i"], "audiences": ["a"], "hmac_secret": ["s3cr3t-hmac"]}]}"#,
                "s3cr3t-hmac",
            ),
            (
                r#"{"routes": [{"name": "r", "set_request_headers": {"authorization": 123456789}}]}"#,
                "123456789",
            ),
        ];
        for (json, secret) in cases {
            let e = parse(json.as_bytes()).unwrap_err();
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(
                e.path.contains("secret") || e.path.contains("set_request_headers"),
                "{e}"
            );
        }
    }

    const MINIMAL: &str = r#"{
        "providers": [{"name": "entra", "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
                       "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
                       "audiences": ["api://azureml-gateway"]}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}}]
    }"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL.as_bytes()).unwrap();
        assert_eq!(c.providers[0].algorithms, vec!["RS256"]);
        assert_eq!(c.providers[0].clock_skew_seconds, 60);
        assert_eq!(c.token_sources.len(), 1);
        assert_eq!(c.realm, "azure-ml");
        assert_eq!(c.claims_to_headers.len(), 4);
        assert_eq!(c.routes[0].auth, AuthMode::Required);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let bad = MINIMAL.replace(r#""match""#, r#""matchh""#);
        let e = parse(bad.as_bytes()).unwrap_err();
        assert_eq!(e.path, "routes[0].matchh");
        assert!(e.message.contains("matchh"), "{e}");
    }

    #[test]
    fn wrong_type_names_nested_path() {
        let bad = MINIMAL.replace(
            r#""match": {"path_prefix": "/"}"#,
            r#""require": {"any": [{"claim": 5}]}"#,
        );
        let e = parse(bad.as_bytes()).unwrap_err();
        assert_eq!(e.path, "routes[0].require.any[0].claim", "{e}");
    }

    fn err(json: &str) -> ConfigError {
        parse(json.as_bytes()).unwrap_err()
    }
    fn with_route(route_fields: &str) -> String {
        MINIMAL.replace(
            r#""match": {"path_prefix": "/"}"#,
            &format!(r#""match": {{"path_prefix": "/"}}, {route_fields}"#),
        )
    }

    #[test]
    fn null_is_absent_only_for_optional_fields() {
        let c = parse(with_route(r#""require": null, "upstream_credential": null"#).as_bytes());
        assert!(c.unwrap().routes[0].require.is_none());
        let e = err(&with_route(r#""auth": null"#));
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (
                "routes[0].auth",
                "invalid type: null, expected one of `required`, `optional`, `none`"
            )
        );
        let e = err(&with_route(r#""providers": null"#));
        assert_eq!(e.path, "routes[0].providers", "{e}");
        let e = err(&MINIMAL.replace(r#""routes""#, r#""forward_token": null, "routes""#));
        assert_eq!(
            e.to_string(),
            "forward_token: invalid type: null, expected a boolean"
        );
    }

    #[test]
    fn missing_fields_name_the_object_that_lacks_them() {
        let e = err(r#"{"providers": []}"#);
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("", "missing field `routes`")
        );
        let e = err(&MINIMAL.replace(r#""name": "all", "#, ""));
        assert_eq!(e.to_string(), "routes[0]: missing field `name`");
    }

    #[test]
    fn enums_and_numbers_say_what_was_wrong() {
        let e = err(&with_route(r#""auth": "requird""#));
        assert_eq!(e.to_string(), "routes[0].auth: unknown variant `requird`, expected one of `required`, `optional`, `none`");
        let e = err(&with_route(
            r#""rate_limit": {"requests": -1, "window_seconds": 1}"#,
        ));
        assert_eq!(e.to_string(), "routes[0].rate_limit.requests: invalid value: integer `-1`, expected a non-negative integer");
        let e = err(&with_route(
            r#""rate_limit": {"requests": 1.5, "window_seconds": 1}"#,
        ));
        assert_eq!(e.path, "routes[0].rate_limit.requests", "{e}");
    }

    #[test]
    fn a_repeated_field_is_refused_where_it_repeats() {
        let e = err(&with_route(r#""auth": "none", "auth": "required""#));
        assert_eq!(e.path, "routes[0].auth", "{e}");
        assert!(e.message.starts_with("duplicate field `auth`"), "{e}");
        // Headers too: which copy wins would be up to the parser.
        let e = err(&with_route(
            r#""set_request_headers": {"a": "1", "a": "2"}"#,
        ));
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn request_headers_keep_their_values() {
        let c = parse(with_route(r#""set_request_headers": {"x-b": "2", "x-a": "1"}"#).as_bytes())
            .unwrap();
        let mut h = c.routes[0].set_request_headers.clone();
        h.sort();
        assert_eq!(
            h,
            vec![("x-a".into(), "1".into()), ("x-b".into(), "2".into())]
        );
        let c = parse(with_route(r#""set_request_headers": []"#).as_bytes()).unwrap();
        assert!(c.routes[0].set_request_headers.is_empty());
        let e = err(&with_route(
            r#""set_request_headers": {"authorization": 5}"#,
        ));
        assert_eq!(e.path, "routes[0].set_request_headers.authorization");
    }

    #[test]
    fn kong_empty_object_for_empty_array() {
        let c = MINIMAL.replace(r#""routes""#, r#""token_sources": {}, "routes""#);
        let c = parse(c.as_bytes()).unwrap();
        assert!(c.token_sources.is_empty());
    }
}
