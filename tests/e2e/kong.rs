//! End to end in Kong only: what exists only there — `kong.ctx.shared` for Lua plugins,
//! Kong's route name in audit lines, and the shipped `kong/kong.yml` and
//! `kong/kong.plugins.yml` answering as the docs say. (`make test` runs these when Kong is
//! installed; the test names end in `_kong`.)

use std::time::{Duration, Instant};

use aml_harness::{
    http, repo_root, teams_filter_config, Gateway, Host, Resp, ENDPOINT_KEY, TENANT,
};
use serde_json::{json, Value};

/// `teams_filter_config` with Kong's Lua-backed properties switched on
/// (`audit.kong_lua_properties`: `kong.route_name`, `kong.ctx.shared`).
fn with_kong_lua_properties(idp_port: u16) -> Value {
    let mut c = teams_filter_config(idp_port);
    c["audit"]["kong_lua_properties"] = json!(true);
    c
}

fn token(gw: &Gateway, client: &str, team: &str) -> String {
    gw.idp
        .client_credentials(client, "Endpoint.Score", Some(team))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn post(gw: &Gateway, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    http("POST", &gw.url(path), &h, Some(r#"{"data": [[1, 2, 3]]}"#)).expect("request")
}

/// The file-log lines written so far (one JSON object per request).
fn file_log(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // Each worker appends its own lines: the file's order need not be the requests'.
        lines.sort_by_key(|l| l["started_at"].as_u64());
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kong_ctx_shared_reaches_a_lua_log_plugin_kong() {
    let out = tempfile::tempdir().expect("tempdir");
    let log_path = out.path().join("file-log.json");
    let lua = |key: &str| format!("return kong.ctx.shared.azure_ml_kong_{key}");
    let plugin = json!({
        "name": "file-log",
        "config": {
            "path": log_path.display().to_string(),
            "custom_fields_by_lua": {
                "amlk_decision": lua("decision"),
                "amlk_reason": lua("reason"),
                "amlk_route": lua("route"),
                "amlk_subject": lua("subject"),
                "amlk_request_id": lua("request_id")
            }
        }
    });
    // A slow key set: the first request may arrive before it and fetch the keys itself
    // (decided in that call's callback); later ones are decided in their request phase.
    let gw = Gateway::builder(Host::Kong)
        .setup_idp(|idp| {
            idp.control("POST", "jwks?mode=ok&delay_ms=500")
                .expect("delay");
        })
        .kong(|k| k.route_plugins.push(plugin))
        .start(with_kong_lua_properties)
        .unwrap_or_else(|e| panic!("{e}"));
    let a = token(&gw, "app-a", "a");
    let first = post(&gw, "/teams/a/endpoints/e/score", Some(&a));
    let second = post(&gw, "/teams/a/endpoints/e/score", Some(&a));
    let denied = post(&gw, "/teams/b/endpoints/e/score", Some(&a));
    assert_eq!(
        (first.status, second.status, denied.status),
        (200, 200, 403),
        "{} / {} / {}",
        first.body,
        second.body,
        denied.body
    );
    let lines = file_log(&log_path, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let oid = first.backend_values("x-caller-oid");
    for l in &lines[..2] {
        assert_eq!(l["amlk_decision"], "allow", "{l}");
        assert_eq!(l["amlk_route"], "team-score", "{l}");
        assert_eq!(
            l["amlk_subject"].as_str(),
            oid.first().map(String::as_str),
            "{l}"
        );
        assert!(l["amlk_request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert_eq!(lines[2]["amlk_decision"], "deny", "{}", lines[2]);
    assert_eq!(
        lines[2]["amlk_reason"], "insufficient_scope",
        "{}",
        lines[2]
    );
    // Never the token.
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!text.contains(&a));
}

/// `post` with the client's `x-request-id` (the filter keeps a sane one as the request id).
fn post_as(gw: &Gateway, path: &str, token: &str, request_id: &str) -> Resp {
    let auth = format!("Bearer {token}");
    let h = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("x-request-id", request_id),
    ];
    http("POST", &gw.url(path), &h, Some(r#"{"data": [[1, 2, 3]]}"#)).expect("request")
}

/// The safe route to Kong's log plugins: the nginx variables `$azure_ml_kong_*`, declared
/// with the shipped `kong/azure_ml_kong.vars.conf` (`nginx_location_include`), set by the
/// filter in C and read by `file-log` as `ngx.var.*` — with `audit.kong_lua_properties` off.
/// For a request decided in its header phase (allowed, denied) and for one decided in the
/// callback of the key refetch it rode (a rotated kid).
#[test]
fn declared_nginx_variables_reach_a_lua_log_plugin_kong() {
    let out = tempfile::tempdir().expect("tempdir");
    let log_path = out.path().join("file-log.json");
    let vars = repo_root().join("kong/azure_ml_kong.vars.conf");
    let mut fields = serde_json::Map::new();
    for key in [
        "decision",
        "reason",
        "route",
        "request_id",
        "subject",
        "tid",
        "app",
        "caller",
    ] {
        fields.insert(
            format!("amlk_{key}"),
            json!(format!("return ngx.var.azure_ml_kong_{key}")),
        );
    }
    fields.insert(
        "amlk_shared".into(),
        json!("return kong.ctx.shared.azure_ml_kong_decision"),
    );
    let plugin = json!({
        "name": "file-log",
        "config": {"path": log_path.display().to_string(), "custom_fields_by_lua": fields}
    });
    let gw = Gateway::builder(Host::Kong)
        .kong_conf("nginx_location_include", &vars.display().to_string())
        .kong(|k| k.route_plugins.push(plugin))
        .start(|port| {
            let mut c = teams_filter_config(port);
            c["providers"][0]["jwks_min_refetch_seconds"] = json!(1);
            c["callers"] = json!([{"name": "team-a-scoring", "app_ids": ["app-a"]}]);
            c
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let a = token(&gw, "app-a", "a");
    let path = "/teams/a/endpoints/e/score";
    let deadline = Instant::now() + Duration::from_secs(15);
    while post_as(&gw, path, &a, "warm").status != 200 {
        assert!(Instant::now() < deadline, "no keys\n{}", gw.log_tail(40));
        std::thread::sleep(Duration::from_millis(200));
    }
    let allowed = post_as(&gw, path, &a, "vars-allowed");
    let denied = post_as(&gw, "/teams/b/endpoints/e/score", &a, "vars-denied");
    assert_eq!(
        (allowed.status, denied.status),
        (200, 403),
        "{}",
        denied.body
    );

    // A new signing key: its kid is unknown to the cached key set, so the request rides a
    // refetch and is decided in that call's callback.
    let fetches = || gw.idp.jwks_requests().expect("jwks requests");
    let before = fetches();
    gw.idp.control("POST", "rotate?family=rsa").expect("rotate");
    let rotated = token(&gw, "app-a", "a");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    let ride_id = loop {
        n += 1;
        let id = format!("vars-ride-{n}");
        let r = post_as(&gw, path, &rotated, &id);
        match r.status {
            200 => break id,
            // Within a second of the last fetch, an unknown kid is refused without one.
            401 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            s => panic!("{s} {}\n{}", r.body, gw.log_tail(40)),
        }
    };
    // Requests are sequential: the one refetch was the passing request's own ride.
    assert_eq!(fetches() - before, 1, "{}", gw.log_tail(40));

    let wanted = ["vars-allowed", "vars-denied", ride_id.as_str()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let by_id = |id: &str| -> Option<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["amlk_request_id"] == id)
    };
    while wanted.iter().any(|id| by_id(id).is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let oid = allowed.backend_values("x-caller-oid");
    let oid = oid.first().map(String::as_str).expect("x-caller-oid");
    for id in ["vars-allowed", ride_id.as_str()] {
        let l = by_id(id).unwrap_or_else(|| panic!("no file-log line for {id}"));
        assert_eq!(l["amlk_decision"], "allow", "{l}");
        assert_eq!(l["amlk_reason"], "", "{l}");
        assert_eq!(l["amlk_route"], "team-score", "{l}");
        assert_eq!(l["amlk_subject"], oid, "{l}");
        assert_eq!(l["amlk_tid"], TENANT, "{l}");
        assert!(l["amlk_app"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert_eq!(l["amlk_caller"], "team-a-scoring", "{l}");
        assert!(l.get("amlk_shared").is_none_or(Value::is_null), "{l}");
    }
    let l = by_id("vars-denied").expect("no file-log line for the denial");
    assert_eq!(l["amlk_decision"], "deny", "{l}");
    assert_eq!(l["amlk_reason"], "insufficient_scope", "{l}");
    assert_eq!(l["amlk_route"], "team-score", "{l}");
    // Never the token.
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!text.contains(&a) && !text.contains(&rotated));
}

/// Regression (issue 9, worker SIGSEGV under an unknown-kid flood): by default the filter
/// touches none of Kong's Lua-backed `kong.*` properties. Each such call runs Kong's Lua
/// handler on whatever Lua thread last made an FFI call and re-points that thread at the
/// request; a timer-ng thread so re-pointed resumed later on the freed request
/// (`ngx_http_lua_sema_timeout_handler` -> `ngx_http_core_run_phases` on it). Observable here:
/// no `kong.ctx.shared.azure_ml_kong_*` for a Lua log plugin and no Kong route name in the
/// audit line, while the decisions themselves are unchanged.
#[test]
fn kong_lua_properties_are_off_by_default_kong() {
    let out = tempfile::tempdir().expect("tempdir");
    let log_path = out.path().join("file-log.json");
    let plugin = json!({
        "name": "file-log",
        "config": {
            "path": log_path.display().to_string(),
            "custom_fields_by_lua": {
                "amlk_decision": "return kong.ctx.shared.azure_ml_kong_decision",
                "amlk_subject": "return kong.ctx.shared.azure_ml_kong_subject"
            }
        }
    });
    let gw = Gateway::builder(Host::Kong)
        .kong(|k| k.route_plugins.push(plugin))
        .start(teams_filter_config)
        .unwrap_or_else(|e| panic!("{e}"));
    let a = token(&gw, "app-a", "a");
    let allowed = post(&gw, "/teams/a/endpoints/e/score", Some(&a));
    let denied = post(&gw, "/teams/b/endpoints/e/score", Some(&a));
    let no_route = post(&gw, "/elsewhere", Some(&a));
    assert_eq!(
        (allowed.status, denied.status, no_route.status),
        (200, 403, 403),
        "{} / {} / {}",
        allowed.body,
        denied.body,
        no_route.body
    );
    let lines = file_log(&log_path, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        for k in ["amlk_decision", "amlk_subject"] {
            assert!(l.get(k).is_none_or(Value::is_null), "{k} published: {l}");
        }
    }
    let id = no_route.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = gw.audit_line(&id) {
            break l;
        }
        assert!(Instant::now() < deadline, "no audit line for {id}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(line["reason"], "no_route", "{line}");
    // Kong's route is named `score`: not read without `audit.kong_lua_properties`.
    assert_ne!(line["route"], "score", "{line}");
}

#[test]
fn audit_lines_name_kongs_route_when_no_filter_route_matched_kong() {
    let gw =
        Gateway::start_on(Host::Kong, with_kong_lua_properties).unwrap_or_else(|e| panic!("{e}"));
    let a = token(&gw, "app-a", "a");
    let r = post(&gw, "/elsewhere", Some(&a));
    assert_eq!(r.status, 403, "{}", r.body);
    let id = r.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = gw.audit_line(&id) {
            break l;
        }
        assert!(Instant::now() < deadline, "no audit line for {id}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(line["reason"], "no_route", "{line}");
    // The harness's Kong route is named `score`.
    assert_eq!(line["route"], "score", "{line}");
}

/// A shipped declarative file with its hosts pointed at this test's mocks.
fn shipped(file: &str, replacements: &[(&str, String)]) -> Value {
    let mut text = std::fs::read_to_string(repo_root().join("kong").join(file)).expect(file);
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn shipped_kong_yml_answers_as_documented_kong() {
    let gw = Gateway::builder(Host::Kong)
        .kong(|k| {
            let idp = k.clusters.first().map(|c| c.port).unwrap_or_default();
            k.declarative = Some(shipped(
                "kong.yml",
                &[
                    (
                        "http://mock-aml:8080/",
                        format!("http://127.0.0.1:{}/", k.backend_port),
                    ),
                    ("mock-idp:8081", format!("127.0.0.1:{idp}")),
                ],
            ));
        })
        .start(teams_filter_config)
        .unwrap_or_else(|e| panic!("{e}"));
    // The curl calls of docs/kong.md.
    let fraud = token(&gw, "demo-fraud-client", "fraud");
    let ok = post(&gw, "/teams/fraud/score", Some(&fraud));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.backend_values("authorization"),
        vec![format!("Bearer {ENDPOINT_KEY}")]
    );
    assert_eq!(ok.backend_values("azureml-model-deployment"), vec!["blue"]);
    let other = post(&gw, "/teams/churn/score", Some(&fraud));
    assert_eq!(other.status, 403, "{}", other.body);
    assert!(other
        .header("www-authenticate")
        .is_some_and(|h| h.contains("insufficient_scope")));
    let none = post(&gw, "/teams/fraud/score", None);
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(
        none.header("www-authenticate"),
        Some(r#"Bearer realm="azure-ml""#)
    );
    let health = http("GET", &gw.url("/health"), &[], None).expect("health");
    assert_eq!(health.status, 200, "{}", health.body);
    // The two team chains are told apart in metrics.
    assert!(
        gw.metric("decisions_total_route=fraud-score_caller=unregistered_decision=allow_reason=authenticated")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        gw.metrics_text()
    );
    assert!(
        gw.metric("decisions_total_route=churn-score_caller=unregistered_decision=deny_reason=insufficient_scope")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn shipped_kong_plugins_yml_loads_and_verifies_kong() {
    let gw = Gateway::builder(Host::Kong)
        .kong(|k| {
            let idp = k.clusters.first().map(|c| c.port).unwrap_or_default();
            k.declarative = Some(shipped(
                "kong.plugins.yml",
                &[
                    (
                        "https://fraud-scoring.westeurope.inference.ml.azure.com:443",
                        format!("http://127.0.0.1:{}", k.backend_port),
                    ),
                    (
                        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/",
                        format!("http://127.0.0.1:{idp}/{TENANT}/"),
                    ),
                    ("login.microsoftonline.com:443", format!("127.0.0.1:{idp}")),
                    ("11111111-2222-3333-4444-555555555555", TENANT.to_string()),
                    ("REPLACE_WITH_ENDPOINT_KEY", ENDPOINT_KEY.to_string()),
                ],
            ));
        })
        .start(teams_filter_config)
        .unwrap_or_else(|e| panic!("{e}"));
    let fraud = token(&gw, "demo-fraud-client", "fraud");
    // Discovery, then the key set: the first requests may fetch for themselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        let r = post(&gw, "/teams/fraud/score", Some(&fraud));
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.backend_values("authorization"),
        vec![format!("Bearer {ENDPOINT_KEY}")]
    );
    let none = post(&gw, "/teams/fraud/score", None);
    assert_eq!(none.status, 401, "{}", none.body);
}
