//! End-to-end through real Envoy: per-route policy (three teams), annotation and spoofing,
//! endpoint-key injection, model deployment pinning, rate limits, audit lines and metrics.

use std::time::{Duration, Instant};

use aml_harness::{http, teams_filter_config, Gateway, Resp, ENDPOINT_KEY};
use serde_json::{json, Value};

const BODY: &str = r#"{"input_data": {"data": [[1, 2, 3]]}}"#;

/// Two teams, a platform admin role, a health route, a rate-limited route and a route that
/// takes a query-string token.
fn config(idp_port: u16) -> Value {
    let mut c = teams_filter_config(idp_port);
    let routes = c["routes"].as_array_mut().expect("routes");
    routes.push(json!({
        "name": "limited",
        "match": {"path_prefix": "/limited/"},
        "rate_limit": {"requests": 3, "window_seconds": 60, "key": "oid"},
        "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
    }));
    routes.push(json!({
        "name": "batch",
        "match": {"path_prefix": "/batch/"},
        "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}"),
                                "azureml-model-deployment": "green"}
    }));
    c["token_sources"] = json!([
        {"header": "authorization", "prefix": "Bearer "},
        {"query": "access_token"}
    ]);
    c
}

fn start() -> Gateway {
    Gateway::start(config).unwrap_or_else(|e| panic!("{e}"))
}

fn post(gw: &Gateway, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    h.extend_from_slice(extra);
    http("POST", &gw.url(path), &h, Some(BODY)).unwrap_or_else(|e| panic!("{e}"))
}

struct Callers {
    fraud: String,
    churn: String,
    admin: String,
    no_role: String,
}

fn callers(gw: &Gateway) -> Callers {
    let idp = &gw.idp;
    let t = |id: &str, roles: &str, team: Option<&str>| {
        idp.client_credentials(id, roles, team)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    Callers {
        fraud: t("fraud-svc", "Endpoint.Score", Some("fraud")),
        churn: t("churn-svc", "Endpoint.Score", Some("churn")),
        admin: t("platform-admin", "Admin.All", None),
        no_role: t("intern-app", "", Some("fraud")),
    }
}

const FRAUD: &str = "/teams/fraud/endpoints/fraud-v2/score";
const CHURN: &str = "/teams/churn/endpoints/churn-v1/score";

#[test]
fn each_team_reaches_only_its_endpoint_and_admin_reaches_all() {
    let gw = start();
    let c = callers(&gw);
    let cases = [
        (&c.fraud, FRAUD, 200),
        (&c.fraud, CHURN, 403),
        (&c.churn, CHURN, 200),
        (&c.churn, FRAUD, 403),
        (&c.admin, FRAUD, 200),
        (&c.admin, CHURN, 200),
        (&c.no_role, FRAUD, 403),
    ];
    for (token, path, want) in cases {
        let r = post(&gw, path, Some(token), &[]);
        assert_eq!(r.status, want, "{path}: {}", r.body);
        if want == 403 {
            assert_eq!(r.json()["error"], "insufficient_scope");
            let www = r.header("www-authenticate").unwrap_or_default();
            assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        }
    }
    // Path tricks cannot dodge the team guard: this is the churn endpoint after `..`.
    let sneaky = "/teams/fraud/endpoints/fraud-v2/../../../churn/endpoints/churn-v1/score";
    let r = post(&gw, sneaky, Some(&c.fraud), &[]);
    assert_ne!(r.status, 200, "{}", r.body);
    // A GET is not the POST route: no route → 403.
    let r = http(
        "GET",
        &gw.url(FRAUD),
        &[("authorization", &format!("Bearer {}", c.fraud))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "no_route");
}

#[test]
fn backend_gets_endpoint_key_identity_and_deployment_never_the_caller_token() {
    let gw = start();
    let c = callers(&gw);
    let r = post(&gw, FRAUD, Some(&c.fraud), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.backend_values("authorization"),
        [format!("Bearer {ENDPOINT_KEY}").as_str()]
    );
    assert_eq!(r.backend_values("azureml-model-deployment"), ["blue"]);
    assert_eq!(r.backend_values("x-caller-team"), ["fraud"]);
    assert_eq!(r.backend_values("x-caller-roles"), ["Endpoint.Score"]);
    assert_eq!(r.backend_values("x-caller-app"), ["fraud-svc"]);
    assert_eq!(r.backend_values("x-caller-oid").len(), 1);
    assert!(
        !r.body.contains(&c.fraud),
        "caller token reached the backend"
    );
    assert!(r.backend_values("x-request-id").len() == 1);

    let r = post(&gw, "/batch/run", Some(&c.fraud), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend_values("azureml-model-deployment"), ["green"]);

    // A query-string token is accepted and removed before forwarding.
    let r = http(
        "POST",
        &gw.url(&format!("/batch/run?x=1&access_token={}&y=2", c.fraud)),
        &[],
        Some(BODY),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let path = r.json()["received"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!path.contains("access_token"), "{path}");
    assert!(path.contains("x=1") && path.contains("y=2"), "{path}");
    assert!(!r.body.contains(&c.fraud));
}

#[test]
fn spoofed_identity_headers_never_reach_the_backend() {
    let gw = start();
    let c = callers(&gw);
    // One spoofed copy: replaced by the verified value.
    let r = post(
        &gw,
        FRAUD,
        Some(&c.fraud),
        &[("x-caller-oid", "spoofed-oid"), ("x-caller-team", "churn")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("spoofed-oid"), "{:?}", r.backend_headers());
    assert_eq!(r.backend_values("x-caller-team"), ["fraud"]);
    // A spoofed identity header on a route without a token (auth none) is blanked.
    let r = http(
        "GET",
        &gw.url("/health"),
        &[("x-caller-oid", "spoofed-oid")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("spoofed-oid"), "{}", r.body);
    // Two copies: rejected outright (Kong would still forward the second one).
    let r = post(
        &gw,
        FRAUD,
        Some(&c.fraud),
        &[("x-caller-oid", "spoof-1"), ("x-caller-oid", "spoof-2")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "duplicate_identity_header");
    assert!(!r.body.contains("spoof-1"));
}

#[test]
fn rate_limit_answers_429_with_retry_after_across_workers() {
    let gw = start();
    let c = callers(&gw);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = post(&gw, "/limited/score", Some(&c.fraud), &[]);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            assert_eq!(r.json()["error"], "rate_limited");
        }
        statuses.push(r.status);
    }
    // The limit is per node (shared data), so both Envoy workers count together.
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another caller has its own bucket.
    assert_eq!(post(&gw, "/limited/score", Some(&c.churn), &[]).status, 200);
}

#[test]
fn audit_lines_and_metrics() {
    let gw = start();
    let c = callers(&gw);
    assert_eq!(post(&gw, FRAUD, Some(&c.fraud), &[]).status, 200);
    assert_eq!(post(&gw, CHURN, Some(&c.fraud), &[]).status, 403);
    assert_eq!(post(&gw, FRAUD, None, &[]).status, 401);

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<Value> = gw
            .envoy
            .log()
            .lines()
            .filter_map(|l| l.find("{\"time\"").map(|i| l[i..].to_string()))
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), 3, "{}", gw.envoy.log());
    let allow = &lines[0];
    for field in [
        "time",
        "request_id",
        "route",
        "method",
        "path",
        "decision",
        "status",
        "provider",
        "iss",
        "tid",
        "kid",
    ] {
        assert!(
            allow.get(field).is_some(),
            "audit line lacks {field}: {allow}"
        );
    }
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["route"], "team-score");
    assert_eq!(lines[1]["reason"], "insufficient_scope");
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[2]["reason"], "token_missing");
    let log = gw.envoy.log();
    assert!(!log.contains(&c.fraud), "a token appeared in the log");

    // Metric names follow Kong's label_patterns (see kong/azure_ml_kong.meta.json); Envoy
    // shows them as `wasmcustom.<name>`.
    let stats = gw.envoy.stats("wasmcustom").unwrap();
    let count = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("wasmcustom.{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let allowed = "decisions_total_route=team-score_decision=allow_reason=authenticated";
    let denied = "decisions_total_route=team-score_decision=deny_reason=insufficient_scope";
    let missing = "decisions_total_route=team-score_decision=deny_reason=token_missing";
    assert_eq!(count(allowed), 1, "{stats}");
    assert_eq!(count(denied), 1, "{stats}");
    assert_eq!(count(missing), 1, "{stats}");
    assert!(
        count("jwks_fetches_total_provider=entra_result=ok") >= 1,
        "{stats}"
    );
}

#[test]
fn invalid_config_denies_everything_and_names_the_field() {
    // Envoy accepts the plugin (the filter never fails `on_configure`, as Kong requires);
    // the filter then fails closed.
    let gw = Gateway::start(|port| {
        let mut c = config(port);
        c["routes"][1]["require"]["any"][0]["claim"] = json!(5);
        c
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let c = callers(&gw);
    for token in [Some(c.admin.as_str()), None] {
        let r = post(&gw, FRAUD, token, &[]);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "config_invalid");
        assert!(r.header("retry-after").is_some());
    }
    let r = http("GET", &gw.url("/health"), &[], None).unwrap();
    assert_eq!(
        r.status, 503,
        "nothing is forwarded, not even unauthenticated routes"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.envoy.log();
        if log.contains("invalid configuration: routes[1].require.any[0].claim") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no config error in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
