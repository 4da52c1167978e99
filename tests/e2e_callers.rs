//! End-to-end on both real hosts (two workers each): the caller registry ("who owns this
//! token?"), route caller allow-lists, `unknown_callers: deny`, and rate limits keyed by
//! caller with the `RateLimit-Policy` / `RateLimit` headers. Every test runs twice:
//! `<name>_envoy` and `<name>_kong`.

use std::time::Duration;

use aml_harness::{both_hosts, http, teams_filter_config, Gateway, Host, Resp, ENDPOINT_KEY};
use serde_json::{json, Value};

const BODY: &str = r#"{"input_data": {"data": [[1, 2, 3]]}}"#;
const FRAUD: &str = "/teams/fraud/endpoints/fraud-v2/score";

/// The teams config plus a registry of two callers, a route only `fraud-scoring` may use
/// and a route limited per caller.
fn config(idp_port: u16, unknown: &str) -> Value {
    let mut c = teams_filter_config(idp_port);
    c["callers"] = json!([
        {"name": "fraud-scoring", "app_ids": ["fraud-svc"], "owner": "fraud-team",
         "contact": "fraud-oncall@contoso.com"},
        {"name": "churn-scoring", "app_ids": ["churn-svc"], "owner": "churn-team"}
    ]);
    c["unknown_callers"] = json!(unknown);
    let routes = c["routes"].as_array_mut().expect("routes");
    routes.insert(
        0,
        json!({
            "name": "fraud-only",
            "match": {"path_prefix": "/fraud-only/"},
            "callers": ["fraud-scoring"],
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    routes.insert(
        0,
        json!({
            "name": "per-caller",
            "match": {"path_prefix": "/per-caller/"},
            "rate_limit": {"requests": 3, "window_seconds": 60, "key": "caller"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    c
}

fn start(host: Host, unknown: &'static str) -> Gateway {
    Gateway::start_on(host, move |port| config(port, unknown)).unwrap_or_else(|e| panic!("{e}"))
}

fn post(gw: &Gateway, path: &str, token: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {token}");
    let mut h: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("authorization", &auth),
    ];
    h.extend_from_slice(extra);
    http("POST", &gw.url(path), &h, Some(BODY)).unwrap_or_else(|e| panic!("{e}"))
}

fn token(gw: &Gateway, app: &str, team: &str) -> String {
    gw.idp
        .client_credentials(app, "Endpoint.Score", Some(team))
        .unwrap_or_else(|e| panic!("{e}"))
}

both_hosts! {
    fn registered_callers_are_named_upstream_in_audit_lines_and_metrics(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let churn = token(&gw, "churn-svc", "churn");
        let stranger = token(&gw, "stranger-svc", "fraud");

        // Named upstream; a client's own x-caller-name is overwritten in place.
        let r = post(&gw, FRAUD, &fraud, &[("x-caller-name", "churn-scoring")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend_values("x-caller-name"), ["fraud-scoring"]);
        // An unregistered app is allowed (unknown_callers: allow), named by nobody.
        let r = post(&gw, FRAUD, &stranger, &[("x-caller-name", "fraud-scoring")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.backend_values("x-caller-name").iter().all(|v| v.is_empty()),
            "a spoofed caller name reached the backend: {}",
            r.body
        );
        // The restricted route admits only fraud-scoring.
        assert_eq!(post(&gw, "/fraud-only/score", &fraud, &[]).status, 200);
        let r = post(&gw, "/fraud-only/score", &churn, &[]);
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"], "caller_not_allowed");
        let r = post(&gw, "/fraud-only/score", &stranger, &[]);
        assert_eq!(r.json()["error"], "caller_not_allowed");

        let lines = gw.wait_audit_lines(5, Duration::from_secs(10));
        assert_eq!(lines.len(), 5, "{}", gw.log());
        assert_eq!(lines[0]["caller"], "fraud-scoring");
        assert_eq!(lines[0]["owner"], "fraud-team");
        assert_eq!(lines[1]["caller"], "unregistered");
        assert!(lines[1].get("owner").is_none(), "{}", lines[1]);
        assert_eq!(lines[3]["caller"], "churn-scoring");
        assert_eq!(lines[3]["reason"], "caller_not_allowed");

        let stats = gw.metrics_text();
        let count = |name: &str| -> u64 { gw.metric(name).unwrap_or(0.0) as u64 };
        let named = "decisions_total_route=team-score_caller=fraud-scoring_decision=allow_reason=authenticated";
        let refused = "decisions_total_route=fraud-only_caller=churn-scoring_decision=deny_reason=caller_not_allowed";
        let unregistered = "decisions_total_route=fraud-only_caller=unregistered_decision=deny_reason=caller_not_allowed";
        assert_eq!(count(named), 1, "{stats}");
        assert_eq!(count(refused), 1, "{stats}");
        assert_eq!(count(unregistered), 1, "{stats}");
    }
}

both_hosts! {
    fn unknown_callers_deny_refuses_unregistered_apps(host: Host) {
        let gw = start(host, "deny");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let stranger = token(&gw, "stranger-svc", "fraud");
        assert_eq!(post(&gw, FRAUD, &fraud, &[]).status, 200);
        let r = post(&gw, FRAUD, &stranger, &[]);
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"], "caller_unknown");
        assert!(r.header("www-authenticate").is_some_and(|v| v.contains("insufficient_scope")));
        // Routes without auth stay open: there is no caller to refuse.
        let r = http("GET", &gw.url("/health"), &[], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

both_hosts! {
    fn a_caller_over_its_limit_gets_429_with_limit_headers_and_others_do_not(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        // A second token of the same app (another team claim) counts in the same bucket.
        let fraud_again = token(&gw, "fraud-svc", "churn");
        let churn = token(&gw, "churn-svc", "churn");
        let mut statuses = Vec::new();
        for t in [&fraud, &fraud_again, &fraud, &fraud_again] {
            let r = post(&gw, "/per-caller/score", t, &[]);
            if r.status == 429 {
                assert_eq!(r.json()["error"], "rate_limited");
                let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
                assert!(retry >= 1, "{:?}", r.headers);
                assert_eq!(r.header("ratelimit-policy"), Some(r#""per-caller";q=3;w=60"#));
                assert_eq!(
                    r.header("ratelimit"),
                    Some(format!(r#""per-caller";r=0;t={retry}"#).as_str())
                );
            }
            statuses.push(r.status);
        }
        // Per node (shared data): both workers count together.
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_eq!(post(&gw, "/per-caller/score", &churn, &[]).status, 200);
    }
}
