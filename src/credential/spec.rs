//! `upstream_credentials[]`: the raw configuration (plain serde data) and its compiled
//! form, the exact token request the adapter dispatches.

use crate::config::{
    AuthMode, ClientCredentialsConfig, ConfigError, FilterConfig, ManagedIdentityConfig,
    UpstreamCredentialConfig,
};
use crate::keycache::source::{HttpUri, Scheme};

pub const IMDS_API_VERSION: &str = "2018-02-01";
/// Budget for one token request (IMDS answers in milliseconds, Entra in well under 1 s).
pub const TOKEN_TIMEOUT_MS: u64 = 5000;

/// How the token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    ManagedIdentity,
    ClientCredentials,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::ManagedIdentity => "managed_identity",
            GrantKind::ClientCredentials => "client_credentials",
        }
    }
}

/// A compiled credential: the request that obtains its token.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    pub name: String,
    pub kind: GrantKind,
    /// Kong: `host:port`; Envoy: a cluster name.
    pub upstream: String,
    /// Pseudo-headers and headers, in dispatch order.
    pub headers: Vec<(String, String)>,
    /// The form body of a client-credentials request (holds the secret).
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    /// Endpoint without query, for logs (never the body).
    pub uri_for_logs: String,
}

impl core::fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CredentialSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("upstream", &self.upstream)
            .field("uri", &self.uri_for_logs)
            .finish_non_exhaustive()
    }
}

impl CredentialSpec {
    /// Headers as `&str` pairs, the shape `dispatch_http_call` takes.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Shared-data key of the node's token for this credential.
    pub fn shared_key(&self) -> String {
        format!("amlk:cred:{}", self.name)
    }

    /// Shared-data key of the lease on refreshing it.
    pub fn lease_key(&self) -> String {
        format!("amlk:cred-lease:{}", self.name)
    }
}

/// Every configured credential, and which one each route uses.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub specs: Vec<CredentialSpec>,
    /// Indexed like `routes`: the route's `upstream_credential` as an index into `specs`.
    pub by_route: Vec<Option<usize>>,
}

impl Credentials {
    /// The credential of the route at `route_index`, if it has one.
    pub fn for_route(&self, route_index: usize) -> Option<usize> {
        self.by_route.get(route_index).copied().flatten()
    }
}

/// Compile `upstream_credentials` and resolve each route's `upstream_credential`.
pub fn compile_all(cfg: &FilterConfig) -> Result<Credentials, ConfigError> {
    let mut specs: Vec<CredentialSpec> = Vec::with_capacity(cfg.upstream_credentials.len());
    for (i, c) in cfg.upstream_credentials.iter().enumerate() {
        let spec = compile(c, &format!("upstream_credentials[{i}]"))?;
        if let Some(j) = specs.iter().position(|s| s.name == spec.name) {
            return Err(ConfigError::new(
                format!("upstream_credentials[{i}].name"),
                format!("duplicate credential name (also upstream_credentials[{j}].name)"),
            ));
        }
        specs.push(spec);
    }
    let mut by_route = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        let Some(name) = &r.upstream_credential else {
            by_route.push(None);
            continue;
        };
        let path = format!("routes[{i}].upstream_credential");
        let Some(index) = specs.iter().position(|s| s.name == *name) else {
            return Err(ConfigError::new(
                path,
                format!("no upstream_credentials entry is named `{name}`"),
            ));
        };
        // The gateway's identity is lent to verified callers only.
        if r.auth != AuthMode::Required {
            return Err(ConfigError::new(
                path,
                "needs `auth: required` (the gateway's identity is lent to verified callers only)",
            ));
        }
        if r.set_request_headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case("authorization"))
        {
            return Err(ConfigError::new(
                format!("routes[{i}].set_request_headers.authorization"),
                "conflicts with upstream_credential, which sets authorization",
            ));
        }
        by_route.push(Some(index));
    }
    Ok(Credentials { specs, by_route })
}

/// Compile `upstream_credentials[i]` (`path` names it in errors).
pub fn compile(cfg: &UpstreamCredentialConfig, path: &str) -> Result<CredentialSpec, ConfigError> {
    if cfg.name.is_empty()
        || !cfg
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must be non-empty letters, digits, `-` or `_`",
        ));
    }
    match (&cfg.managed_identity, &cfg.client_credentials) {
        (Some(mi), None) => managed_identity(&cfg.name, mi, &format!("{path}.managed_identity")),
        (None, Some(cc)) => {
            client_credentials(&cfg.name, cc, &format!("{path}.client_credentials"))
        }
        _ => Err(ConfigError::new(
            path,
            "set exactly one of `managed_identity` or `client_credentials`",
        )),
    }
}

fn managed_identity(
    name: &str,
    mi: &ManagedIdentityConfig,
    path: &str,
) -> Result<CredentialSpec, ConfigError> {
    let uri = endpoint(&mi.endpoint, &format!("{path}.endpoint"))?;
    non_empty(&mi.resource, &format!("{path}.resource"))?;
    if let Some(id) = &mi.client_id {
        non_empty(id, &format!("{path}.client_id"))?;
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("api-version", IMDS_API_VERSION);
    query.append_pair("resource", &mi.resource);
    if let Some(id) = &mi.client_id {
        query.append_pair("client_id", id);
    }
    let sep = if uri.path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    let full_path = format!("{}{sep}{}", uri.path_and_query, query.finish());
    Ok(CredentialSpec {
        name: name.into(),
        kind: GrantKind::ManagedIdentity,
        upstream: upstream(mi.upstream.as_deref(), &uri, &format!("{path}.upstream"))?,
        headers: vec![
            (":method".into(), "GET".into()),
            (":scheme".into(), uri.scheme.as_str().into()),
            (":authority".into(), uri.authority()),
            (":path".into(), full_path),
            ("metadata".into(), "true".into()),
            ("accept".into(), "application/json".into()),
        ],
        body: None,
        timeout_ms: TOKEN_TIMEOUT_MS,
        uri_for_logs: without_query(&uri),
    })
}

fn client_credentials(
    name: &str,
    cc: &ClientCredentialsConfig,
    path: &str,
) -> Result<CredentialSpec, ConfigError> {
    let uri = endpoint(&cc.token_endpoint, &format!("{path}.token_endpoint"))?;
    if uri.scheme != Scheme::Https && !uri.is_loopback() {
        return Err(ConfigError::new(
            format!("{path}.token_endpoint"),
            "must be https (the request carries the client secret)",
        ));
    }
    non_empty(&cc.client_id, &format!("{path}.client_id"))?;
    non_empty(&cc.client_secret, &format!("{path}.client_secret"))?;
    non_empty(&cc.scope, &format!("{path}.scope"))?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &cc.client_id)
        .append_pair("client_secret", &cc.client_secret)
        .append_pair("scope", &cc.scope)
        .finish()
        .into_bytes();
    Ok(CredentialSpec {
        name: name.into(),
        kind: GrantKind::ClientCredentials,
        upstream: upstream(cc.upstream.as_deref(), &uri, &format!("{path}.upstream"))?,
        headers: vec![
            (":method".into(), "POST".into()),
            (":scheme".into(), uri.scheme.as_str().into()),
            (":authority".into(), uri.authority()),
            (":path".into(), uri.path_and_query.clone()),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("accept".into(), "application/json".into()),
        ],
        body: Some(body),
        timeout_ms: TOKEN_TIMEOUT_MS,
        uri_for_logs: without_query(&uri),
    })
}

fn endpoint(s: &str, path: &str) -> Result<HttpUri, ConfigError> {
    HttpUri::parse(s).map_err(|m| ConfigError::new(path, m))
}

fn non_empty(s: &str, path: &str) -> Result<(), ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(())
}

fn upstream(configured: Option<&str>, uri: &HttpUri, path: &str) -> Result<String, ConfigError> {
    match configured {
        Some(u) if u.trim().is_empty() || u.bytes().any(|b| b <= b' ') => Err(ConfigError::new(
            path,
            "must be a host:port or a cluster name",
        )),
        Some(u) => Ok(u.to_string()),
        None => Ok(uri.host_port()),
    }
}

fn without_query(uri: &HttpUri) -> String {
    let p = uri.path_and_query.split('?').next().unwrap_or("/");
    format!("{}://{}{p}", uri.scheme.as_str(), uri.authority())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> UpstreamCredentialConfig {
        crate::config::from_json::upstream_credential(json).unwrap()
    }

    fn header<'a>(s: &'a CredentialSpec, name: &str) -> &'a str {
        &s.headers.iter().find(|(k, _)| k == name).unwrap().1
    }

    #[test]
    fn managed_identity_defaults_to_imds_for_azure_ml() {
        let s = compile(
            &parse(r#"{"name":"aml","managed_identity":{}}"#),
            "upstream_credentials[0]",
        )
        .unwrap();
        assert_eq!(s.kind, GrantKind::ManagedIdentity);
        assert_eq!(s.upstream, "169.254.169.254:80");
        assert_eq!(header(&s, ":method"), "GET");
        assert_eq!(header(&s, ":authority"), "169.254.169.254");
        assert_eq!(
            header(&s, ":path"),
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fml.azure.com"
        );
        assert_eq!(header(&s, "metadata"), "true");
        assert!(s.body.is_none());
        assert!(!s
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for")));
    }

    #[test]
    fn user_assigned_identity_adds_client_id_and_keeps_a_configured_upstream() {
        let s = compile(
            &parse(r#"{"name":"aml","managed_identity":{"client_id":"1111-2222","endpoint":"http://127.0.0.1:9000/msi/token?x=1","upstream":"imds"}}"#),
            "upstream_credentials[0]",
        )
        .unwrap();
        assert_eq!(s.upstream, "imds");
        assert_eq!(
            header(&s, ":path"),
            "/msi/token?x=1&api-version=2018-02-01&resource=https%3A%2F%2Fml.azure.com&client_id=1111-2222"
        );
        assert_eq!(s.uri_for_logs, "http://127.0.0.1:9000/msi/token");
    }

    #[test]
    fn client_credentials_post_a_form_and_never_show_the_secret() {
        let s = compile(
            &parse(r#"{"name":"aml-sp","client_credentials":{"token_endpoint":"https://login.microsoftonline.com/t1/oauth2/v2.0/token","client_id":"app","client_secret":"s3cr&t=x"}}"#),
            "upstream_credentials[1]",
        )
        .unwrap();
        assert_eq!(s.upstream, "login.microsoftonline.com:443");
        assert_eq!(header(&s, ":method"), "POST");
        assert_eq!(
            header(&s, "content-type"),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            String::from_utf8(s.body.clone().unwrap()).unwrap(),
            "grant_type=client_credentials&client_id=app&client_secret=s3cr%26t%3Dx&scope=https%3A%2F%2Fml.azure.com%2F.default"
        );
        assert!(!format!("{s:?}").contains("s3cr"));
        let raw = parse(
            r#"{"name":"x","client_credentials":{"token_endpoint":"https://h/t","client_id":"a","client_secret":"s3cr"}}"#,
        );
        assert!(!format!("{raw:?}").contains("s3cr"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"name":"","managed_identity":{}}"#,
                "upstream_credentials[0].name",
            ),
            (
                r#"{"name":"a b","managed_identity":{}}"#,
                "upstream_credentials[0].name",
            ),
            (r#"{"name":"a"}"#, "upstream_credentials[0]"),
            (
                r#"{"name":"a","managed_identity":{},"client_credentials":{"token_endpoint":"https://h/t","client_id":"a","client_secret":"s"}}"#,
                "upstream_credentials[0]",
            ),
            (
                r#"{"name":"a","managed_identity":{"endpoint":"ftp://x"}}"#,
                "upstream_credentials[0].managed_identity.endpoint",
            ),
            (
                r#"{"name":"a","managed_identity":{"resource":" "}}"#,
                "upstream_credentials[0].managed_identity.resource",
            ),
            (
                r#"{"name":"a","managed_identity":{"upstream":""}}"#,
                "upstream_credentials[0].managed_identity.upstream",
            ),
            (
                r#"{"name":"a","client_credentials":{"token_endpoint":"http://login.example/t","client_id":"a","client_secret":"s"}}"#,
                "upstream_credentials[0].client_credentials.token_endpoint",
            ),
            (
                r#"{"name":"a","client_credentials":{"token_endpoint":"https://h/t","client_id":"a","client_secret":""}}"#,
                "upstream_credentials[0].client_credentials.client_secret",
            ),
        ];
        for (json, field) in cases {
            let e = compile(&parse(json), "upstream_credentials[0]").unwrap_err();
            assert_eq!(e.path, field, "{json}: {e}");
        }
        assert!(crate::config::from_json::upstream_credential(
            r#"{"name":"a","managed_identity":{"resourse":"x"}}"#
        )
        .is_err());
    }

    #[test]
    fn loopback_token_endpoints_may_be_plain_http_for_local_tests() {
        let s = compile(
            &parse(
                r#"{"name":"a","client_credentials":{"token_endpoint":"http://127.0.0.1:8080/t/oauth2/v2.0/token","client_id":"a","client_secret":"s"}}"#,
            ),
            "upstream_credentials[0]",
        );
        assert!(s.is_ok());
    }
}
