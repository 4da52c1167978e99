//! Cross-field checks of a parsed configuration, each error naming its field path.
//!
//! Route rules (names, `match`, methods, hosts, provider references, `require`,
//! `set_request_headers`, `rate_limit`) are checked by compiling the routes with
//! [`crate::policy::Routes::new`], so validation and compilation can never disagree.
//! Provider-level rules (issuers, algorithms, URIs) and token sources are checked where
//! they are compiled (`providers`, `keycache`, `token`).

use crate::config::{ConfigError, FilterConfig};

/// Headers the filter never sets: pseudo-headers, hop-by-hop headers, and those that
/// change how the request is framed or routed.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// A header the filter may set: a lower-case RFC 9110 token, not a pseudo-header,
/// hop-by-hop, `host` or a framing header.
pub(crate) fn check_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.starts_with(':') {
        return Err(ConfigError::new(path, "pseudo-headers cannot be set"));
    }
    if !crate::policy::is_token(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            path,
            "expected a lower-case header name (letters, digits, `-`, ...)",
        ));
    }
    if FORBIDDEN_HEADERS.contains(&name) {
        return Err(ConfigError::new(
            path,
            format!("`{name}` is a hop-by-hop, framing or host header and cannot be set"),
        ));
    }
    Ok(())
}

/// Headers the filter manages itself (see `annotate`).
pub(crate) const REQUEST_ID_HEADERS: &[&str] = &["x-request-id", "x-ms-client-request-id"];

/// Check rules serde cannot express (exactly-one-of, references, ranges).
pub fn validate(cfg: &FilterConfig) -> Result<(), ConfigError> {
    if cfg.providers.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "expected at least one provider",
        ));
    }
    for (i, p) in cfg.providers.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                "expected a non-empty name",
            ));
        }
        if let Some(j) = cfg.providers.iter().take(i).position(|q| q.name == p.name) {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                format!("duplicate provider name (also providers[{j}].name)"),
            ));
        }
    }

    let routes =
        crate::policy::Routes::new(cfg, |n| cfg.providers.iter().position(|p| p.name == n))?;

    let token_headers: Vec<&str> = cfg
        .token_sources
        .iter()
        .filter_map(|t| t.header.as_deref())
        .collect();
    for (i, ch) in cfg.claims_to_headers.iter().enumerate() {
        let base = format!("claims_to_headers[{i}]");
        for alt in ch.claim.split('|') {
            crate::policy::require::check_claim_path(&format!("{base}.claim"), alt.trim())?;
        }
        let hp = format!("{base}.header");
        check_header_name(&hp, &ch.header)?;
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
        if ch.header == "cookie" || REQUEST_ID_HEADERS.contains(&ch.header.as_str()) {
            return Err(ConfigError::new(hp, "this header is managed by the filter"));
        }
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        for (name, _) in &r.set_request_headers {
            let p = format!("routes[{i}].set_request_headers.{name}");
            if let Some(j) = cfg.claims_to_headers.iter().position(|c| c.header == *name) {
                return Err(ConfigError::new(
                    p,
                    format!("also set from a claim by claims_to_headers[{j}].header"),
                ));
            }
            if name == "cookie" || REQUEST_ID_HEADERS.contains(&name.as_str()) {
                return Err(ConfigError::new(p, "this header is managed by the filter"));
            }
        }
    }
    debug_assert_eq!(routes.len(), cfg.routes.len());

    if cfg.realm.is_empty()
        || cfg.realm.len() > 256
        || cfg
            .realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(ConfigError::new(
            "realm",
            "expected 1 to 256 characters without quotes, backslashes or control characters",
        ));
    }
    if cfg.cache.max_entries == 0 {
        return Err(ConfigError::new("cache.max_entries", "expected at least 1"));
    }
    if !(1024..=65536).contains(&cfg.cache.max_token_bytes) {
        return Err(ConfigError::new(
            "cache.max_token_bytes",
            "expected a number of bytes from 1024 to 65536",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, parse};

    const BASE: &str = r#"{
        "providers": [{"name": "entra", "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
                       "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
                       "audiences": ["api://azureml-gateway"]}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}}]
    }"#;

    /// Replace the last `}` of BASE with `, <extra> }`.
    fn with(extra: &str) -> String {
        let i = BASE.rfind('}').unwrap();
        format!("{}, {extra}}}", &BASE[..i])
    }

    fn err(json: &str) -> ConfigError {
        let c = parse(json.as_bytes()).unwrap_or_else(|e| panic!("parse: {e}"));
        validate(&c).unwrap_err()
    }

    #[test]
    fn valid_configs_pass() {
        load(BASE.as_bytes()).unwrap();
        load(with(r#""claims_to_headers": [{"claim": "azp|appid", "header": "x-caller-app"}], "realm": "ml gw""#).as_bytes())
            .unwrap();
    }

    #[test]
    fn empty_providers_and_routes() {
        let no_prov = r#"{"providers": {}, "routes": [{"name": "a"}]}"#;
        assert_eq!(err(no_prov).path, "providers");
        let no_routes = BASE.replace(r#"[{"name": "all", "match": {"path_prefix": "/"}}]"#, "[]");
        assert_eq!(err(&no_routes).path, "routes");
    }

    #[test]
    fn duplicate_provider_names() {
        let mut c = parse(BASE.as_bytes()).unwrap();
        let p = c.providers[0].clone();
        c.providers.push(p);
        assert_eq!(validate(&c).unwrap_err().path, "providers[1].name");
    }

    #[test]
    fn route_errors_come_through_with_paths() {
        let e = err(&BASE.replace(
            r#"{"name": "all", "match": {"path_prefix": "/"}}"#,
            r#"{"name": "all", "providers": ["okta"]}"#,
        ));
        assert_eq!(e.path, "routes[0].providers[0]");
        let e = err(&BASE.replace(
            r#"{"name": "all", "match": {"path_prefix": "/"}}"#,
            r#"{"name": "a"}, {"name": "b", "require": {"any": [{"claim": "x"}]}}"#,
        ));
        assert_eq!(
            e.to_string(),
            "routes[1].require.any[0]: expected exactly one of equals, one_of, contains_any, contains_all, exists"
        );
    }

    #[test]
    fn claims_to_headers_rules() {
        let cases = [
            (
                r#"{"claim": "oid", "header": ":path"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "host"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "transfer-encoding"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "X-Caller"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "x caller"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "authorization"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "oid", "header": "x-request-id"}"#,
                "claims_to_headers[0].header",
            ),
            (
                r#"{"claim": "", "header": "x-a"}"#,
                "claims_to_headers[0].claim",
            ),
            (
                r#"{"claim": "a||b", "header": "x-a"}"#,
                "claims_to_headers[0].claim",
            ),
        ];
        for (entry, path) in cases {
            let e = err(&with(&format!(r#""claims_to_headers": [{entry}]"#)));
            assert_eq!(e.path, path, "{entry}: {e}");
        }
        let e = err(&with(
            r#""claims_to_headers": [{"claim": "oid", "header": "x-a"}, {"claim": "sub", "header": "x-a"}]"#,
        ));
        assert_eq!(e.path, "claims_to_headers[1].header");
    }

    #[test]
    fn set_request_headers_conflicts() {
        let e = err(&BASE.replace(
            r#""match": {"path_prefix": "/"}"#,
            r#""set_request_headers": {"x-caller-oid": "spoof"}"#,
        ));
        assert_eq!(e.path, "routes[0].set_request_headers.x-caller-oid");
        let e = err(&BASE.replace(
            r#""match": {"path_prefix": "/"}"#,
            r#""set_request_headers": {"x-request-id": "1"}"#,
        ));
        assert_eq!(e.path, "routes[0].set_request_headers.x-request-id");
        // Replacing the caller's Authorization with an endpoint key is the normal case.
        load(
            BASE.replace(
                r#""match": {"path_prefix": "/"}"#,
                r#""set_request_headers": {"authorization": "Bearer k", "azureml-model-deployment": "blue"}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn realm_rules() {
        for bad in [r#""""#, r#""a\"b""#, r#""a\nb""#, r#""a\\b""#] {
            assert_eq!(
                err(&with(&format!(r#""realm": {bad}"#))).path,
                "realm",
                "{bad}"
            );
        }
    }

    #[test]
    fn cache_rules() {
        let e = err(&with(r#""cache": {"max_entries": 0}"#));
        assert_eq!(e.path, "cache.max_entries");
        let e = err(&with(r#""cache": {"max_token_bytes": 1023}"#));
        assert_eq!(e.path, "cache.max_token_bytes");
        let e = err(&with(r#""cache": {"max_token_bytes": 65537}"#));
        assert_eq!(e.path, "cache.max_token_bytes");
        load(with(r#""cache": {"max_entries": 1, "max_token_bytes": 65536}"#).as_bytes()).unwrap();
        load(with(r#""cache": {"max_token_bytes": 1024}"#).as_bytes()).unwrap();
    }

    #[test]
    fn rate_limit_rules() {
        let e = err(&BASE.replace(
            r#""match": {"path_prefix": "/"}"#,
            r#""rate_limit": {"requests": 0, "window_seconds": 60}"#,
        ));
        assert_eq!(e.path, "routes[0].rate_limit.requests");
        let e = err(&BASE.replace(
            r#""match": {"path_prefix": "/"}"#,
            r#""rate_limit": {"requests": 5, "window_seconds": 0}"#,
        ));
        assert_eq!(e.path, "routes[0].rate_limit.window_seconds");
    }
}
