//! End-to-end on both real hosts (Envoy 1.40 and Kong Gateway 3.9, two workers each): per-route
//! policy (three teams), annotation and spoofing, endpoint-key injection, model deployment
//! pinning, rate limits, audit lines and metrics, an invalid configuration. Every test runs
//! twice: `<name>_envoy` and `<name>_kong`.

use std::time::{Duration, Instant};

use aml_harness::{both_hosts, http, teams_filter_config, Gateway, Host, Resp, ENDPOINT_KEY};
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

fn start(host: Host) -> Gateway {
    Gateway::start_on(host, config).unwrap_or_else(|e| panic!("{e}"))
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

both_hosts! {
    fn each_team_reaches_only_its_endpoint_and_admin_reaches_all(host: Host) {
        let gw = start(host);
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
}

both_hosts! {
    fn backend_gets_endpoint_key_identity_and_deployment_never_the_caller_token(host: Host) {
        let gw = start(host);
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
}

both_hosts! {
    fn spoofed_identity_headers_never_reach_the_backend(host: Host) {
        let gw = start(host);
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
}

both_hosts! {
    fn rate_limit_answers_429_with_retry_after_across_workers(host: Host) {
        let gw = start(host);
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
}

both_hosts! {
    fn audit_lines_and_metrics(host: Host) {
        let gw = start(host);
        let c = callers(&gw);
        assert_eq!(post(&gw, FRAUD, Some(&c.fraud), &[]).status, 200);
        assert_eq!(post(&gw, CHURN, Some(&c.fraud), &[]).status, 403);
        assert_eq!(post(&gw, FRAUD, None, &[]).status, 401);

        let lines = gw.wait_audit_lines(3, Duration::from_secs(10));
        assert_eq!(lines.len(), 3, "{}", gw.log());
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
        let log = gw.log();
        assert!(!log.contains(&c.fraud), "a token appeared in the log");

        // Metric names follow Kong's label_patterns (see kong/azure_ml_kong.meta.json); Envoy
        // shows them as `wasmcustom.<name>`, Kong's /metrics as
        // `pw_azure_ml_kong_decisions_total{route="team-score",decision="allow",...}`.
        let stats = gw.metrics_text();
        let count = |name: &str| -> u64 { gw.metric(name).unwrap_or(0.0) as u64 };
        let allowed = "decisions_total_route=team-score_caller=unregistered_decision=allow_reason=authenticated";
        let denied = "decisions_total_route=team-score_caller=unregistered_decision=deny_reason=insufficient_scope";
        let missing = "decisions_total_route=team-score_caller=unregistered_decision=deny_reason=token_missing";
        assert_eq!(count(allowed), 1, "{stats}");
        assert_eq!(count(denied), 1, "{stats}");
        assert_eq!(count(missing), 1, "{stats}");
        assert!(
            count("jwks_fetches_total_provider=entra_result=ok") >= 1,
            "{stats}"
        );
    }
}

/// 503 `config_invalid` for every request (even unauthenticated routes), and the log names
/// the field at fault.
fn assert_fails_closed(gw: &Gateway, field: &str) {
    let c = callers(gw);
    for token in [Some(c.admin.as_str()), None] {
        let r = post(gw, FRAUD, token, &[]);
        assert_eq!(r.status, 503, "{}\n{}", r.body, gw.log_tail(40));
        assert_eq!(r.json()["error"], "config_invalid");
        assert!(r.header("retry-after").is_some());
    }
    let r = http("GET", &gw.url("/health"), &[], None).unwrap();
    assert_eq!(
        r.status, 503,
        "nothing is forwarded, not even unauthenticated routes"
    );
    let want = format!("invalid configuration: {field}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.log();
        if log.contains(&want) {
            break;
        }
        assert!(Instant::now() < deadline, "no `{want}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

both_hosts! {
    fn invalid_config_denies_everything_and_names_the_field(host: Host) {
        // Two providers with one name: valid for meta.json's schema (it cannot express
        // uniqueness), so Kong loads it and hands it to the filter, as Envoy does. Neither
        // host rejects it (the filter never fails `on_configure`, as Kong requires); the
        // filter then fails closed.
        let gw = Gateway::start_on(host, |port| {
            let mut c = config(port);
            let twin = c["providers"][0].clone();
            c["providers"].as_array_mut().unwrap().push(twin);
            c
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_fails_closed(&gw, "providers[1].name");
    }

    fn config_the_schema_rejects_is_refused_at_load_or_fails_closed(host: Host) {
        // A claim name that is a number. Kong validates the filter's config against
        // kong/azure_ml_kong.meta.json when it loads kong.yml, and refuses it, naming the
        // field; Envoy has no schema: the filter fails closed.
        let make = |port| {
            let mut c = config(port);
            c["routes"][1]["require"]["any"][0]["claim"] = json!(5);
            c
        };
        match host {
            Host::Envoy => {
                let gw = Gateway::start_on(host, make).unwrap_or_else(|e| panic!("{e}"));
                assert_fails_closed(&gw, "routes[1].require.any[0].claim");
            }
            Host::Kong => {
                let err = match Gateway::start_on(host, make) {
                    Ok(gw) => panic!(
                        "Kong started with a config its schema rejects:\n{}",
                        gw.log_tail(40)
                    ),
                    Err(e) => e,
                };
                assert!(
                    err.contains("declarative") && err.contains("claim"),
                    "Kong's refusal should name the field:\n{err}"
                );
            }
        }
    }
}
