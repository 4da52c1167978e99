//! The last stage of loading a configuration: the rules that span its parts and the
//! settings no compile step owns. Runs on the parsed data after every part compiled
//! (`engine::Filter::compile`); every other rule is checked once, where that part is
//! compiled:
//! - routes, `match`, provider references, `require`, `rate_limit` and each
//!   `set_request_headers` name and value: `policy::Routes::new`;
//! - providers: `providers::Providers::new`, key sources: `keycache::JwksSource::new`;
//! - token sources: `token::TokenExtractor::new`;
//! - `claims_to_headers` (and its clashes with token sources): `annotate::Annotator::new`;
//! - header-name rules: `headers`; claim-path syntax: `claims`.

use crate::config::{ConfigError, FilterConfig};

/// Check rules that span parts (a route setting a header that is also set from a claim)
/// and the settings no part compiles (`realm`, `cache`).
pub fn check(cfg: &FilterConfig) -> Result<(), ConfigError> {
    for (i, r) in cfg.routes.iter().enumerate() {
        for (name, _) in &r.set_request_headers {
            if let Some(j) = cfg.claims_to_headers.iter().position(|c| c.header == *name) {
                return Err(ConfigError::new(
                    format!("routes[{i}].set_request_headers.{name}"),
                    format!("also set from a claim by claims_to_headers[{j}].header"),
                ));
            }
        }
    }
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
    //! Through the whole load (parse, compile, these checks): each error must name its
    //! field whichever stage finds it.

    use super::*;
    use crate::config::parse;
    use crate::engine::Filter;

    fn load(json: &[u8]) -> Result<Filter, ConfigError> {
        Filter::from_json(json)
    }

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
        match Filter::compile(c) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        }
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
        let Err(e) = Filter::compile(c) else {
            panic!("accepted a duplicate provider name")
        };
        assert_eq!(e.path, "providers[1].name");
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
