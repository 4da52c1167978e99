//! End-to-end on both real hosts (two workers each): the gateway's own Entra token towards
//! an Azure ML endpoint in `aad_token` mode (`upstream_credentials`, `upstream_credential`
//! on the score route), from the mock IdP's IMDS (managed identity) or its client-credentials
//! endpoint. The backend (mock-aml `--aad-jwks`) verifies the token against the mock IdP's
//! keys, audience `https://ml.azure.com`, and the gateway's client app.

use std::path::Path;
use std::time::{Duration, Instant};

use aml_harness::{
    both_hosts, default_filter_config, post_score, Gateway, Host, MockIdp, Resp,
    MANAGED_IDENTITY_CLIENT_ID, TENANT,
};
use serde_json::{json, Value};

/// The client app of the client-credentials variant.
const CC_CLIENT_ID: &str = "4b7e2a90-1c3d-4e5f-8a6b-7c8d9e0f1a2b";
const CC_SECRET: &str = "s3cret-value";

/// The default config with the score route using `credential` instead of the endpoint key.
fn with_credential(idp_port: u16, credential: Value) -> Value {
    let mut c = default_filter_config(idp_port);
    c["upstream_credentials"] = json!([credential]);
    let score = &mut c["routes"][1];
    assert_eq!(score["name"], "score");
    score["upstream_credential"] = json!("aml");
    if let Some(o) = score.as_object_mut() {
        o.remove("set_request_headers");
    }
    c
}

/// Managed identity through the mock IdP's IMDS (`mock_idp`: the Envoy cluster; Kong's
/// harness rewrites it to `127.0.0.1:<port>`).
fn mi_config(idp_port: u16) -> Value {
    with_credential(
        idp_port,
        json!({"name": "aml", "managed_identity": {
            "endpoint": format!("http://127.0.0.1:{idp_port}/metadata/identity/oauth2/token"),
            "upstream": "mock_idp"}}),
    )
}

/// Client credentials at the mock IdP's v2 token endpoint (loopback http is allowed).
fn cc_config(idp_port: u16) -> Value {
    with_credential(
        idp_port,
        json!({"name": "aml", "client_credentials": {
            "token_endpoint": format!("http://127.0.0.1:{idp_port}/{TENANT}/oauth2/v2.0/token"),
            "client_id": CC_CLIENT_ID,
            "client_secret": CC_SECRET,
            "scope": "https://ml.azure.com/.default",
            "upstream": "mock_idp"}}),
    )
}

/// A gateway whose backend wants the managed identity's token; `setup` runs on the IdP
/// before the host starts (before the first token request).
fn start_mi(host: Host, setup: impl FnOnce(&MockIdp)) -> Gateway {
    Gateway::builder(host)
        .aad_backend(MANAGED_IDENTITY_CLIENT_ID)
        .setup_idp(|idp| setup(idp))
        .start(mi_config)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn caller_token(gw: &Gateway) -> String {
    gw.idp.token(json!({})).unwrap_or_else(|e| panic!("{e}"))
}

fn score(gw: &Gateway, token: Option<&str>) -> Resp {
    post_score(&gw.url("/score"), token, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn imds_requests(gw: &Gateway) -> u64 {
    gw.idp.imds_requests().unwrap_or_else(|e| panic!("{e}"))
}

/// Polls until a request passes (the first token is in: on Kong a request that comes
/// before it may get 503 while a worker fetches); returns how long that took.
fn wait_first_token(gw: &Gateway, caller: &str) -> Duration {
    let t = Instant::now();
    loop {
        let r = score(gw, Some(caller));
        if r.status == 200 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no request passed in 15 s; last: {} {}\n{}",
            r.status,
            r.body,
            gw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The token the backend received (the gateway's, `Bearer` stripped).
fn upstream_token(r: &Resp) -> String {
    let auth = r.backend_values("authorization");
    assert_eq!(auth.len(), 1, "one authorization upstream: {auth:?}");
    auth[0]
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {}", auth[0]))
        .to_string()
}

/// Every `*.log` file under `dir` that contains `needle`.
fn logs_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log")
                && aml_harness::read_lossy(&p).contains(needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

fn assert_not_logged(gw: &Gateway, what: &str, needle: &str) {
    let found = logs_containing(gw.dir(), needle);
    assert!(found.is_empty(), "{what} is in {found:?}");
    assert!(!gw.log().contains(needle), "{what} is in the host log");
}

fn assert_unavailable(gw: &Gateway, r: &Resp) {
    assert_eq!(r.status, 503, "{}\n{}", r.body, gw.log_tail(30));
    assert_eq!(
        r.json()["error"],
        "upstream_credential_unavailable",
        "{}",
        r.body
    );
    let retry = r.header("retry-after").unwrap_or_default();
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry:?}"
    );
}

both_hosts! {
    fn gateway_token_reaches_backend_and_imds_is_asked_once_per_node(host: Host) {
        let gw = start_mi(host, |_| {});
        let caller = caller_token(&gw);
        let first = wait_first_token(&gw, &caller);
        let r = score(&gw, Some(&caller));
        assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(40));
        assert_eq!(r.json()["caller_appid"], MANAGED_IDENTITY_CLIENT_ID);
        let gateway_token = upstream_token(&r);
        assert_ne!(gateway_token, caller);
        assert!(!r.body.contains(&caller), "the caller's token reached the backend");

        // Denied requests never get the gateway's identity, nor ask IMDS.
        let forged = gw.idp.token(json!({"sign_with": "forged"})).unwrap();
        assert_eq!(score(&gw, Some(&forged)).status, 401);
        assert_eq!(score(&gw, None).status, 401);

        // 40 requests, 8 at a time, over new connections (both workers).
        let results: Vec<Resp> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..5).map(|_| score(&gw, Some(&caller))).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(30));
            assert_eq!(r.json()["caller_appid"], MANAGED_IDENTITY_CLIENT_ID);
            assert!(!r.body.contains(&caller));
        }
        // A late first tick of a worker would show here.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            imds_requests(&gw),
            1,
            "IMDS requests for 42 passed requests on 2 workers (first token after {first:?})\n{}",
            gw.log_tail(40)
        );
        // The poll's first 200, the check above and the 40: denied requests went nowhere.
        assert_eq!(gw.aml.scored_requests(), 42);
        assert_not_logged(&gw, "the gateway's token", &gateway_token);
        // The gauge is recorded every 5 s.
        let deadline = Instant::now() + Duration::from_secs(8);
        while !gw
            .metric("credential_valid_seconds_credential=aml")
            .is_some_and(|s| s > 3000.0)
        {
            assert!(Instant::now() < deadline, "{}", gw.metrics_text());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn short_lived_token_is_refreshed_at_half_life(host: Host) {
        // 20 s tokens: refresh due 10 s after acquisition, usable until 18 s.
        let gw = start_mi(host, |idp| {
            idp.imds("ok", Some(20)).unwrap();
        });
        let caller = caller_token(&gw);
        wait_first_token(&gw, &caller);
        let t1 = Instant::now();
        let first = upstream_token(&score(&gw, Some(&caller)));
        assert_eq!(imds_requests(&gw), 1);
        let refreshed_after = loop {
            let r = score(&gw, Some(&caller));
            assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(30));
            if imds_requests(&gw) >= 2 {
                break t1.elapsed();
            }
            assert!(
                t1.elapsed() < Duration::from_secs(16),
                "no refresh within 16 s of the first token\n{}",
                gw.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        eprintln!("{host}: 2nd IMDS request {refreshed_after:?} after the first token was in");
        assert!(
            refreshed_after >= Duration::from_secs(4),
            "refreshed too early: {refreshed_after:?}"
        );
        // The new token is put on requests (each worker takes it from shared data).
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen_new = false;
        while Instant::now() < deadline {
            let r = score(&gw, Some(&caller));
            assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(30));
            seen_new |= upstream_token(&r) != first;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(seen_new, "the refreshed token never reached the backend");
        assert_eq!(imds_requests(&gw), 2, "one refresh, not a storm\n{}", gw.log_tail(40));
    }

    fn imds_down_from_the_start_is_503_then_recovers(host: Host) {
        let gw = start_mi(host, |idp| {
            idp.imds("fail", None).unwrap();
        });
        let caller = caller_token(&gw);
        for _ in 0..5 {
            let r = score(&gw, Some(&caller));
            assert_unavailable(&gw, &r);
            assert!(!r.body.contains(&caller));
        }
        // Authentication comes first: denied requests are 401, not 503.
        let forged = gw.idp.token(json!({"sign_with": "forged"})).unwrap();
        assert_eq!(score(&gw, Some(&forged)).status, 401);
        assert_eq!(score(&gw, None).status, 401);
        // Requests keep coming for 3 s: IMDS is retried with backoff, not once per request.
        let t = Instant::now();
        let mut sent = 0;
        while t.elapsed() < Duration::from_secs(3) {
            assert_unavailable(&gw, &score(&gw, Some(&caller)));
            sent += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        let failed = imds_requests(&gw);
        eprintln!("{host}: {failed} IMDS requests while failing, for {} requests", sent + 5);
        assert!((1..=8).contains(&failed), "{failed} IMDS requests for {} requests", sent + 5);
        assert_eq!(gw.aml.scored_requests(), 0, "nothing may be forwarded without a token");

        gw.idp.imds("ok", None).unwrap();
        let t = Instant::now();
        let recovered = loop {
            let r = score(&gw, Some(&caller));
            if r.status == 200 {
                break t.elapsed();
            }
            assert_unavailable(&gw, &r);
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no recovery within 20 s\n{}",
                gw.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "{host}: recovered {recovered:?} after IMDS came back ({} IMDS requests)",
            imds_requests(&gw)
        );
        assert!(recovered < Duration::from_secs(10), "recovery took {recovered:?}");
        let r = score(&gw, Some(&caller));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["caller_appid"], MANAGED_IDENTITY_CLIENT_ID);
    }

    fn imds_failing_after_a_token_keeps_requests_passing(host: Host) {
        let gw = start_mi(host, |idp| {
            idp.imds("ok", Some(20)).unwrap();
        });
        let caller = caller_token(&gw);
        wait_first_token(&gw, &caller);
        gw.idp.imds("fail", None).unwrap();
        let t = Instant::now();
        // Until the refresh (due at 10 s) has failed, and a while after: all pass.
        let mut after_failure = None;
        while after_failure.is_none_or(|a: Instant| a.elapsed() < Duration::from_secs(1)) {
            let r = score(&gw, Some(&caller));
            assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(30));
            if after_failure.is_none() && imds_requests(&gw) >= 2 {
                after_failure = Some(Instant::now());
            }
            assert!(
                t.elapsed() < Duration::from_secs(16),
                "no refresh attempt within 16 s\n{}",
                gw.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            !gw.log_lines(&["credential \"aml\"", "failed"]).is_empty(),
            "the failed refresh is logged\n{}",
            gw.log_tail(40)
        );
    }

    fn client_credentials_token_reaches_backend_and_no_secret_is_logged(host: Host) {
        let gw = Gateway::builder(host)
            .aad_backend(CC_CLIENT_ID)
            .start(cc_config)
            .unwrap_or_else(|e| panic!("{e}"));
        let caller = caller_token(&gw);
        wait_first_token(&gw, &caller);
        let mut gateway_token = String::new();
        for _ in 0..10 {
            let r = score(&gw, Some(&caller));
            assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(30));
            assert_eq!(r.json()["caller_appid"], CC_CLIENT_ID);
            gateway_token = upstream_token(&r);
            assert_ne!(gateway_token, caller);
        }
        assert_eq!(
            gw.idp.token_endpoint_requests().unwrap(),
            1,
            "{}",
            gw.log_tail(40)
        );
        assert_eq!(imds_requests(&gw), 0);
        assert_not_logged(&gw, "the client secret", CC_SECRET);
        assert_not_logged(&gw, "the gateway's token", &gateway_token);
    }
}
