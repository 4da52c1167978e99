//! The story and `Filter::decide` end in the same place, with the fixed test keys.

use super::*;
use crate::jose::testutil::hs_token;
use crate::jose::Alg;
use serde_json::json;

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef-explain-test";
const ISS: &str = "https://hs.example/";

fn filter() -> Filter {
    let cfg = json!({
        "providers": [{"name": "hs", "issuers": [ISS], "audiences": ["api://gw"],
                       "algorithms": ["HS256"], "hmac_secret": SECRET}],
        "routes": [
            {"name": "health", "match": {"path": "/health"}, "auth": "none"},
            {"name": "team", "match": {"path": "/teams/{team}/score", "methods": ["POST"]},
             "require": {"all": [{"claim": "roles", "contains_any": ["Endpoint.Score"]},
                                 {"claim": "team", "equals": "{path.team}"}]},
             "set_request_headers": {"authorization": "Bearer ml-key"},
             "rate_limit": {"requests": 5, "window_seconds": 60}},
            {"name": "admin", "match": {"path_prefix": "/admin/"},
             "require": {"claim": "roles", "contains_any": ["Admin.All"]}}
        ]
    });
    Filter::from_json(cfg.to_string().as_bytes()).unwrap()
}

fn token(claims: serde_json::Value) -> String {
    hs_token(
        Alg::HS256,
        SECRET.as_bytes(),
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims.to_string(),
    )
}

fn claims(team: &str) -> serde_json::Value {
    json!({"iss": ISS, "aud": "api://gw", "oid": "o-1", "sub": "s", "roles": ["Endpoint.Score"],
           "team": team, "iat": NOW - 10, "exp": NOW + 3600})
}

fn run(f: &Filter, method: &str, path: &str, tok: Option<&str>) -> Explanation {
    let mut h = Vec::new();
    if let Some(t) = tok {
        h.push(("authorization".to_string(), format!("Bearer {t}")));
    }
    let req = RequestView {
        method,
        path,
        authority: "gw.example",
        headers: &h,
    };
    explain(f, &req, NOW * 1000, Keys::None)
}

#[test]
fn story_and_filter_agree_case_by_case() {
    let f = filter();
    let good = token(claims("fraud"));
    let expired = token(json!({"iss": ISS, "aud": "api://gw", "exp": NOW - 3600}));
    let foreign = token(json!({"iss": "https://other/", "aud": "api://gw", "exp": NOW + 60}));
    let cases: Vec<(&str, &str, Option<&str>, Verdict)> = vec![
        ("GET", "/health", None, Verdict::Allow),
        ("POST", "/teams/fraud/score", Some(&good), Verdict::Allow),
        (
            "POST",
            "/teams/churn/score",
            Some(&good),
            Verdict::Deny(Reason::InsufficientScope),
        ),
        (
            "GET",
            "/teams/fraud/score",
            Some(&good),
            Verdict::Deny(Reason::NoRoute),
        ),
        (
            "POST",
            "/teams/fraud/score",
            None,
            Verdict::Deny(Reason::TokenMissing),
        ),
        (
            "POST",
            "/teams/fraud/score",
            Some(&expired),
            Verdict::Deny(Reason::TokenExpired),
        ),
        (
            "POST",
            "/teams/fraud/score",
            Some(&foreign),
            Verdict::Deny(Reason::IssuerUnknown),
        ),
        (
            "POST",
            "/teams/fraud/score",
            Some("a.b"),
            Verdict::Deny(Reason::TokenMalformed),
        ),
        (
            "POST",
            "/teams/../score",
            Some(&good),
            Verdict::Deny(Reason::PathNotNormalized),
        ),
        (
            "GET",
            "/admin/x",
            Some(&good),
            Verdict::Deny(Reason::InsufficientScope),
        ),
    ];
    for (m, p, t, want) in cases {
        let e = run(&f, m, p, t);
        assert_eq!(e.story, want, "{m} {p}: {:#?}", e.steps);
        assert!(
            e.agrees(),
            "{m} {p}: story {:?}, filter {:?}",
            e.story,
            e.verdict()
        );
    }
}

#[test]
fn story_says_why_earlier_routes_did_not_match_and_what_require_read() {
    let f = filter();
    let e = run(
        &f,
        "POST",
        "/teams/churn/score",
        Some(&token(claims("fraud"))),
    );
    let health = &e.steps[1];
    assert_eq!((health.what.as_str(), health.mark), ("health", Mark::Info));
    assert!(health.detail.contains("/health"), "{health:?}");
    let team = e
        .steps
        .iter()
        .find(|s| s.what.starts_with("claim team"))
        .unwrap();
    assert_eq!(team.mark, Mark::Fail);
    assert!(
        team.what.contains("churn") && team.detail.contains("\"fraud\""),
        "{team:?}"
    );
    assert!(!e.signature_skipped);
}

#[test]
fn allowed_request_lists_rate_limit_and_header_plan() {
    let f = filter();
    let e = run(
        &f,
        "POST",
        "/teams/fraud/score",
        Some(&token(claims("fraud"))),
    );
    assert_eq!(e.rate_limits.len(), 1);
    assert!(e
        .steps
        .iter()
        .any(|s| s.stage == "rate_limit" && s.mark == Mark::Skip));
    match &e.decision {
        Decision::Allow { ops, .. } => assert!(!ops.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn route_mismatch_names_method_host_and_path() {
    let cfg = json!({
        "providers": [{"name": "hs", "issuers": [ISS], "audiences": ["api://gw"],
                       "algorithms": ["HS256"], "hmac_secret": SECRET}],
        "routes": [
            {"name": "posts", "match": {"path_prefix": "/a/", "methods": ["POST"]}, "auth": "none"},
            {"name": "hosted", "match": {"hosts": ["ml.example.com"]}, "auth": "none"},
            {"name": "b", "match": {"path": "/b/{x}"}, "auth": "none"}
        ]
    });
    let f = Filter::from_json(cfg.to_string().as_bytes()).unwrap();
    let h = Vec::new();
    let req = RequestView {
        method: "GET",
        path: "/b/1",
        authority: "gw.example:8443",
        headers: &h,
    };
    let r: Vec<_> = f.routes.iter().map(|r| r.mismatch(&req)).collect();
    assert_eq!(r, vec![Some(Mismatch::Method), Some(Mismatch::Host), None]);
    let e = explain(&f, &req, NOW * 1000, Keys::None);
    assert!(e.agrees());
    assert!(
        e.steps[1]
            .detail
            .contains("method GET not in match.methods [POST]"),
        "{:?}",
        e.steps
    );
    assert!(e.steps[2]
        .detail
        .contains("host gw.example:8443 not in match.hosts [ml.example.com]"));
    let bad = RequestView {
        path: "/b/../a/",
        ..req
    };
    assert_eq!(
        f.routes.get(2).unwrap().mismatch(&bad),
        Some(Mismatch::Path)
    );
}

#[test]
fn the_caller_registry_is_a_step_of_the_story() {
    let cfg = json!({
        "providers": [{"name": "hs", "issuers": [ISS], "audiences": ["api://gw"],
                       "algorithms": ["HS256"], "hmac_secret": SECRET}],
        "routes": [
            {"name": "fraud-only", "match": {"path_prefix": "/fraud/"}, "callers": ["fraud-scoring"],
             "concurrency_limit": {"max_in_flight": 2, "key": "caller"}},
            {"name": "any", "match": {"path_prefix": "/"}}
        ],
        "callers": [{"name": "fraud-scoring", "app_ids": ["app-f"], "owner": "fraud-team"},
                    {"name": "churn-scoring", "app_ids": ["app-c"]}],
        "unknown_callers": "deny"
    });
    let f = Filter::from_json(cfg.to_string().as_bytes()).unwrap();
    let as_app = |app: &str| {
        let mut c = claims("fraud");
        c["azp"] = json!(app);
        token(c)
    };
    let cases = [
        ("/fraud/score", "app-f", Verdict::Allow),
        (
            "/fraud/score",
            "app-c",
            Verdict::Deny(Reason::CallerNotAllowed),
        ),
        ("/other", "app-c", Verdict::Allow),
        ("/other", "app-x", Verdict::Deny(Reason::CallerUnknown)),
    ];
    for (path, app, want) in cases {
        let e = run(&f, "GET", path, Some(&as_app(app)));
        assert_eq!(e.story, want, "{path} {app}: {:?}", e.steps);
        assert!(
            e.agrees(),
            "{path} {app}: {:?} vs {:?}",
            e.story,
            e.decision
        );
        let step = e
            .steps
            .iter()
            .find(|s| s.stage == "caller")
            .expect("a caller step");
        assert!(step.detail.contains(app), "{step:?}");
    }
    let e = run(&f, "GET", "/fraud/score", Some(&as_app("app-f")));
    assert!(e
        .steps
        .iter()
        .any(|s| s.stage == "concurrency_limit" && s.mark == Mark::Skip));
}
