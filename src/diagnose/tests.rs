use super::*;

const BASE: &str = r#"{
    "providers": [{"name": "entra", "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
                   "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
                   "audiences": ["api://azureml-gateway"]}],
    "routes": [{"name": "all", "match": {"path_prefix": "/"}}]
}"#;

fn paths(json: &str) -> Vec<String> {
    all_errors(json.as_bytes())
        .into_iter()
        .map(|e| e.path)
        .collect()
}

/// The first error is the filter's, whatever the config.
fn first_is_the_filters(json: &str) {
    let all = all_errors(json.as_bytes());
    match Filter::from_json(json.as_bytes()) {
        Ok(_) => assert!(all.is_empty(), "{json}: {all:?}"),
        Err(e) => assert_eq!(all.first(), Some(&e), "{json}"),
    }
}

#[test]
fn a_valid_config_has_no_errors() {
    assert!(all_errors(BASE.as_bytes()).is_empty());
}

#[test]
fn independent_errors_in_different_sections_are_all_found() {
    let bad = r#"{
        "providers": [
            {"name": "entra", "issuers": ["https://login.microsoftonline.com/{tenantid}/v2.0"],
             "tenants": ["not-a-guid"],
             "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
             "audiences": ["api://azureml-gateway"]},
            {"name": "okta", "issuers": [], "jwks_uri": "https://okta.example/keys", "audiences": ["a"]}
        ],
        "routes": [
            {"name": "score", "providers": ["entra"], "require": {"any": [{"claim": "roles"}]},
             "rate_limit": {"requests": 0, "window_seconds": 60}},
            {"name": "admin", "providers": ["okta"], "callers": ["nobody"]}
        ],
        "callers": [{"name": "Fraud Team", "app_ids": ["11111111-1111-1111-1111-111111111111"]}],
        "realm": "",
        "cache": {"max_entries": 0}
    }"#;
    first_is_the_filters(bad);
    let got = paths(bad);
    for want in [
        "providers[0].tenants[0]",
        "providers[1].issuers",
        "routes[0].require.any[0]",
        "routes[0].rate_limit.requests",
        "routes[1].callers[0]",
        "callers[0].name",
        "realm",
        "cache.max_entries",
    ] {
        assert!(got.iter().any(|p| p == want), "{want} missing from {got:?}");
    }
    // Each error once, and none made up by setting a part aside.
    assert_eq!(got.len(), 8, "{got:?}");
}

#[test]
fn parse_errors_and_semantic_errors_together() {
    let bad = BASE
        .replace(r#""match""#, r#""matchh""#)
        .replace(
            r#""audiences": ["api://azureml-gateway"]"#,
            r#""audiences": ["api://azureml-gateway"], "clock_skew_seconds": "sixty""#,
        )
        .replace(r#""routes""#, r#""forward_tokens": true, "routes""#);
    first_is_the_filters(&bad);
    let got = paths(&bad);
    for want in [
        "providers[0].clock_skew_seconds",
        "routes[0].matchh",
        "forward_tokens",
    ] {
        assert!(got.iter().any(|p| p == want), "{want} missing from {got:?}");
    }
}

#[test]
fn missing_required_lists_and_references() {
    let no_providers = r#"{"routes": [{"name": "a", "require": {"claim": "x"}}], "realm": "a\"b"}"#;
    first_is_the_filters(no_providers);
    let got = paths(no_providers);
    assert_eq!(got.first().map(String::as_str), Some(""), "{got:?}");
    assert!(got.iter().any(|p| p == "routes[0].require"), "{got:?}");
    assert!(got.iter().any(|p| p == "realm"), "{got:?}");

    let refs = BASE.replace(
        r#"{"name": "all", "match": {"path_prefix": "/"}}"#,
        r#"{"name": "a", "providers": ["nope"], "upstream_credential": "none",
            "set_request_headers": {"x-caller-oid": "spoof", "x-ok": "1"}}"#,
    );
    first_is_the_filters(&refs);
    let got = paths(&refs);
    for want in [
        "routes[0].providers[0]",
        "routes[0].upstream_credential",
        "routes[0].set_request_headers.x-caller-oid",
    ] {
        assert!(got.iter().any(|p| p == want), "{want} missing from {got:?}");
    }
}

#[test]
fn a_missing_required_field_does_not_hide_the_elements_other_errors() {
    let bad = BASE.replace(
        r#""audiences": ["api://azureml-gateway"]"#,
        r#""jwks_timeout_ms": 0"#,
    );
    first_is_the_filters(&bad);
    assert_eq!(
        paths(&bad),
        ["providers[0]", "providers[0].jwks_timeout_ms"]
    );
}

#[test]
fn the_first_error_is_always_the_filters() {
    let cases = [
        BASE.to_string(),
        "[]".to_string(),
        "not json".to_string(),
        "{}".to_string(),
        r#"{"providers": 5, "routes": "x"}"#.to_string(),
        r#"{"providers": [], "routes": []}"#.to_string(),
        r#"{"providers": [1, 2], "routes": [null, {"name": 3}]}"#.to_string(),
        BASE.replace(r#""entra""#, r#""""#),
        BASE.replace(r#"[{"name": "all""#, r#"[{"name": "all"}, {"name": "all""#),
        BASE.replace(r#""routes""#, r#""token_sources": [{}], "claims_to_headers": [{"claim": "", "header": "Host"}], "routes""#),
        BASE.replace(r#""routes""#, r#""upstream_credentials": [{"name": "a b"}, {"name": "c", "client_credentials": {"token_endpoint": "ftp://x", "client_id": "", "client_secret": "s3cr3t"}}], "routes""#),
        BASE.replace(r#""routes""#, r#""callers": [{"name": "a", "app_ids": []}, {"name": "a", "app_ids": ["x"]}], "unknown_callers": "maybe", "routes""#),
    ];
    for c in &cases {
        first_is_the_filters(c);
    }
}

#[test]
fn secrets_stay_out_of_every_error() {
    let bad = BASE.replace(
        r#""routes""#,
        r#""upstream_credentials": [{"name": "c", "client_credentials": {"token_endpoint": "https://h/t", "client_id": "c", "client_secret": 987654321}}],
           "realm": "", "routes""#,
    );
    let all = all_errors(bad.as_bytes());
    assert!(all.len() >= 2, "{all:?}");
    assert!(
        all.iter().all(|e| !e.to_string().contains("987654321")),
        "{all:?}"
    );
}

#[test]
fn field_paths_split_into_steps() {
    use Step::{Index, Key};
    assert_eq!(
        steps("routes[2].require.any[0].claim"),
        vec![
            Key("routes"),
            Index(2),
            Key("require"),
            Key("any"),
            Index(0),
            Key("claim")
        ]
    );
    assert_eq!(steps("a[1][2]"), vec![Key("a"), Index(1), Index(2)]);
    assert_eq!(
        steps("cache.max_entries"),
        vec![Key("cache"), Key("max_entries")]
    );
    assert!(steps("").is_empty());
    assert_eq!(steps("x[zz]"), vec![Key("x")]);
}

/// Breakages of different sections, each with the path its error names.
const BREAKAGES: [(&str, &str, &str); 9] = [
    (
        r#""tenants": ["x"], "audiences""#,
        r#""audiences""#,
        "providers[0].tenants[0]",
    ),
    (
        r#""jwks_timeout_ms": 0, "audiences""#,
        r#""audiences""#,
        "providers[0].jwks_timeout_ms",
    ),
    (
        r#""match": {"path": "no-slash"}"#,
        r#""match": {"path_prefix": "/"}"#,
        "routes[0].match.path",
    ),
    (
        r#""token_sources": [{"query": ""}], "routes""#,
        r#""routes""#,
        "token_sources[0].query",
    ),
    (
        r#""claims_to_headers": [{"claim": "oid", "header": "Host"}], "routes""#,
        r#""routes""#,
        "claims_to_headers[0].header",
    ),
    (
        r#""callers": [{"name": "a", "app_ids": []}], "routes""#,
        r#""routes""#,
        "callers[0].app_ids",
    ),
    (
        r#""upstream_credentials": [{"name": "a"}], "routes""#,
        r#""routes""#,
        "upstream_credentials[0]",
    ),
    (r#""realm": "", "routes""#, r#""routes""#, "realm"),
    (
        r#""cache": {"max_token_bytes": 5}, "routes""#,
        r#""routes""#,
        "cache.max_token_bytes",
    ),
];

#[test]
fn any_two_independent_breakages_are_both_found() {
    for (i, a) in BREAKAGES.iter().enumerate() {
        for b in BREAKAGES.iter().skip(i + 1) {
            let once = BASE.replacen(a.1, a.0, 1);
            let both = once.replacen(b.1, b.0, 1);
            assert!(both != once && once != BASE, "{} / {}", a.2, b.2);
            first_is_the_filters(&both);
            let got = paths(&both);
            for want in [a.2, b.2] {
                assert!(
                    got.iter().any(|p| p.starts_with(want)),
                    "{want} not in {got:?}: {both}"
                );
            }
            assert_eq!(got.len(), 2, "{got:?}: {both}");
        }
    }
}
