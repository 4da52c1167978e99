//! The filter's configuration: the JSON contract (see README "Configuration reference").
//!
//! Plain data: `parse` turns bytes into the raw model below (serde, unknown fields
//! rejected, field paths in errors) and nothing more. Loading goes on in
//! `engine::Filter::compile`: each part is compiled into its runtime form by the module
//! that owns it (providers, token sources, routes, identity headers, key sources), then
//! `validate` checks the rules that span parts.

use serde::Deserialize;
use serde_json::Value;

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(deserialize_with = "lenient_vec")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default = "default_token_sources", deserialize_with = "lenient_vec")]
    pub token_sources: Vec<TokenSourceConfig>,
    #[serde(deserialize_with = "lenient_vec")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub on_no_route: OnNoRoute,
    #[serde(
        default = "default_claims_to_headers",
        deserialize_with = "lenient_vec"
    )]
    pub claims_to_headers: Vec<ClaimHeaderConfig>,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub upstream_credentials: Vec<UpstreamCredentialConfig>,
    /// Who owns which client app (compiled by `callers::Registry::compile`).
    #[serde(default, deserialize_with = "lenient_vec")]
    pub callers: Vec<CallerConfig>,
    #[serde(default)]
    pub unknown_callers: UnknownCallers,
}

/// `callers[]`: one registered client application (or several app ids of one caller).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    #[serde(deserialize_with = "lenient_vec")]
    pub app_ids: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub contact: Option<String>,
}

/// `unknown_callers`: what a verified token from an unregistered app gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCallers {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    #[serde(deserialize_with = "lenient_vec")]
    pub issuers: Vec<String>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub tenants: Option<Vec<String>>,
    #[serde(default)]
    pub discovery_uri: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Kong: `host[:port]`; Envoy: a cluster name. Default: the URI's `host:port`.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(deserialize_with = "lenient_vec")]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms", deserialize_with = "lenient_vec")]
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/384/512; those algorithms are refused without it.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// 0 switches the check off.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: u64,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    #[serde(default = "default_jwks_timeout_ms")]
    pub jwks_timeout_ms: u64,
}

/// Exactly one of `header`, `query`, `cookie`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    #[serde(default)]
    pub header: Option<String>,
    /// Only with `header`; matched case-insensitively (e.g. `"Bearer "`).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub providers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub require: Option<RequirementConfig>,
    #[serde(default, deserialize_with = "lenient_map")]
    pub set_request_headers: Vec<(String, String)>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// CORS preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) without a token.
    #[serde(default)]
    pub cors_preflight: CorsPreflight,
    /// Name of an `upstream_credentials` entry: allowed requests go upstream with the
    /// gateway's own token instead of the caller's.
    #[serde(default)]
    pub upstream_credential: Option<String>,
    #[serde(default)]
    pub concurrency_limit: Option<ConcurrencyLimitConfig>,
    /// Allow-list of registered caller names (`callers[].name`).
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub callers: Option<Vec<String>>,
}

/// `routes[].concurrency_limit`: requests of one key in flight upstream at once, per node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    pub max_in_flight: u64,
    #[serde(default = "default_rate_limit_key")]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCredentialConfig {
    pub name: String,
    #[serde(default)]
    pub managed_identity: Option<ManagedIdentityConfig>,
    #[serde(default)]
    pub client_credentials: Option<ClientCredentialsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedIdentityConfig {
    #[serde(default = "default_resource")]
    pub resource: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_imds_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub upstream: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsConfig {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CorsPreflight {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNoRoute {
    #[default]
    Deny,
    AllowAuthenticated,
}

/// One node of the requirement grammar. Exactly one form per object:
/// `{"all": [..]}`, `{"any": [..]}`, `{"not": R}`, or `{"claim": PATH, OP: VALUE}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementConfig {
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub all: Option<Vec<RequirementConfig>>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub any: Option<Vec<RequirementConfig>>,
    #[serde(default)]
    pub not: Option<Box<RequirementConfig>>,
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub contains_any: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_opt_vec")]
    pub contains_all: Option<Vec<String>>,
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u64,
    pub window_seconds: u64,
    #[serde(default = "default_rate_limit_key")]
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderConfig {
    /// Claim path; `a|b` takes the first of the alternatives present (e.g. `azp|appid`).
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    #[default]
    Warn,
    Error,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub log_level: LogLevel,
    /// Kong only: read `kong.route_name` (for audit lines) and publish the decision in
    /// `kong.ctx.shared.azure_ml_kong_*`. Off by default: Kong's `kong.*` properties run a Lua
    /// handler through a LuaJIT FFI callback that, in Kong 3.9 (ngx_wasm_module 9136e463,
    /// `lib/resty/wasmx/proxy_wasm.lua`), executes on whatever Lua thread last made an FFI
    /// call and re-points that thread at the current request (`thread.exdata`). A suspended
    /// timer or request coroutine then resumes with this request: worker SIGSEGV or a double
    /// free once the request is freed, or Lua code of one request acting on another.
    #[serde(default)]
    pub kong_lua_properties: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Share JWKS, fetch leases and rate-limit windows across workers through Proxy-Wasm
    /// shared data. Set false on a Kong without an `nginx_wasm_shm_kv` zone (touching shared
    /// data there traps): each worker then fetches and counts on its own.
    #[serde(default = "default_true")]
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
fn default_true() -> bool {
    true
}

/// Kong re-encodes the config from its schema and may turn an empty array into `{}`:
/// accept an empty object where a list is expected. A visitor (not an intermediate
/// `Value`) keeps element paths in error messages.
fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(core::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            if map.next_key::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(Vec::new());
            }
            // Read the object to its end first: serde_json places the error where the
            // deserializer stands, and `parse` names the field from that place.
            map.next_value::<serde::de::IgnoredAny>()?;
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Err(serde::de::Error::custom("expected a list"))
        }
    }
    d.deserialize_any(V(core::marker::PhantomData))
}

fn lenient_opt_vec<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    lenient_vec(d).map(Some)
}

/// An object of string → string, kept in order; `{}` or `[]` mean empty. A visitor, so
/// that serde_json places an error at the entry that caused it (see `parse`).
fn lenient_map<'de, D>(d: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("an object of header: value")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                // A repeated name: the last one wins, as in a JSON object.
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = value,
                    None => out.push((name, value)),
                }
            }
            Ok(out)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            match seq.next_element::<serde::de::IgnoredAny>()? {
                None => Ok(Vec::new()),
                Some(_) => Err(serde::de::Error::custom(
                    "expected an object of header: value",
                )),
            }
        }
    }
    d.deserialize_any(V)
}

/// Parse the filter configuration (raw model) with field paths in errors.
pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let offset = crate::json_path::offset_of(bytes, e.line(), e.column());
        // An enum written as an object stops just after its key (`unknown variant`): the
        // field is the object, not the key.
        let path = if e.to_string().starts_with("unknown variant") {
            crate::json_path::of_value_at(bytes, offset)
        } else {
            crate::json_path::at_offset(bytes, offset)
        };
        let message = if holds_secret(&path) {
            "invalid value (not shown: the field holds a secret)".to_string()
        } else {
            clean_serde_message(&e)
        };
        ConfigError::new(path, message)
    })
}

/// Fields whose values are secrets (serde's messages quote the value): client and HMAC
/// secrets, and headers set upstream (endpoint keys).
fn holds_secret(path: &str) -> bool {
    path.ends_with("client_secret")
        || path.ends_with("hmac_secret")
        || path.contains("set_request_headers")
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

    #[test]
    fn kong_empty_object_for_empty_array() {
        let c = MINIMAL.replace(r#""routes""#, r#""token_sources": {}, "routes""#);
        let c = parse(c.as_bytes()).unwrap();
        assert!(c.token_sources.is_empty());
    }
}
