//! End-to-end through a real Envoy 1.40 (V8) loading the built filter, with the mock IdP
//! and mock Azure ML backend: the foundation slice (verify, annotate, reject, cold start,
//! IdP down at start and recovery).

use std::time::{Duration, Instant};

use aml_harness::{
    default_filter_config, http, post_score, Artifacts, Envoy, EnvoyOptions, Gateway, MockAml,
    MockIdp, Resp, AUDIENCE, ENDPOINT_KEY,
};
use serde_json::{json, Value};

fn start() -> Gateway {
    Gateway::start(default_filter_config).unwrap_or_else(|e| panic!("{e}"))
}

fn score(gw: &Gateway, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    post_score(&gw.url("/score"), token, extra).unwrap_or_else(|e| panic!("{e}"))
}

fn token(gw: &Gateway, spec: Value) -> String {
    gw.idp.token(spec).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn valid_token_reaches_backend_with_identity_and_without_caller_token() {
    let gw = start();
    let t = token(
        &gw,
        json!({"claims": {"oid": "11111111-2222-3333-4444-555555555555"}}),
    );
    let r = score(&gw, Some(&t), &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.envoy.log());
    assert_eq!(
        r.backend_values("x-caller-oid"),
        ["11111111-2222-3333-4444-555555555555"]
    );
    assert_eq!(r.backend_values("x-caller-tid"), [aml_harness::TENANT]);
    assert_eq!(
        r.backend_values("authorization"),
        [format!("Bearer {ENDPOINT_KEY}").as_str()]
    );
    assert!(
        !r.body.contains(&t),
        "the caller's token must never reach the backend"
    );
    assert!(r.json()["predictions"].is_array());
}

#[test]
fn missing_token_is_401_without_error_code() {
    let gw = start();
    let r = score(&gw, None, &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.starts_with("Bearer realm=\"azure-ml\""), "{www}");
    assert!(!www.contains("error="), "{www}");
    assert_eq!(r.json()["error"], "token_missing");
    assert!(r.json()["request_id"].is_string());
}

#[test]
fn bad_tokens_are_401_invalid_token_with_reason() {
    let gw = start();
    let cases = [
        (
            "forged signature",
            json!({"sign_with": "forged"}),
            "signature_invalid",
        ),
        ("expired", json!({"expires_in": -600}), "token_expired"),
        (
            "wrong audience",
            json!({"claims": {"aud": "api://someone-else"}}),
            "audience_mismatch",
        ),
        (
            "wrong issuer",
            json!({"claims": {"iss": "https://evil.example.com/"}}),
            "issuer_unknown",
        ),
    ];
    for (what, spec, reason) in cases {
        let t = token(&gw, spec);
        let r = score(&gw, Some(&t), &[]);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
        assert_eq!(r.json()["error"], reason, "{what}: {}", r.body);
        assert!(!r.body.contains(&t), "{what}: token echoed");
    }
    // Sanity: the same gateway accepts a good token.
    let good = token(&gw, json!({}));
    assert_eq!(score(&gw, Some(&good), &[]).status, 200);
    let _ = AUDIENCE;
}

/// Start IdP (with a hook to set it up) and backend, then Envoy.
fn start_custom(setup_idp: impl FnOnce(&MockIdp)) -> (MockIdp, MockAml, Envoy, tempfile::TempDir) {
    let a = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let idp = MockIdp::start(&a, dir.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    setup_idp(&idp);
    let aml = MockAml::start(&a, dir.path(), Some(ENDPOINT_KEY)).unwrap_or_else(|e| panic!("{e}"));
    let opts = EnvoyOptions::new(default_filter_config(idp.port), aml.port, idp.port);
    let envoy = Envoy::start(&a, dir.path(), &opts).unwrap_or_else(|e| panic!("{e}"));
    (idp, aml, envoy, dir)
}

fn post(envoy: &Envoy, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    http(
        "POST",
        &envoy.url("/score"),
        &[("authorization", &auth)],
        Some("{}"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn requests_before_keys_arrive_wait_and_then_succeed() {
    // The JWKS answers slowly: Envoy is ready before the filter has keys.
    let (idp, _aml, envoy, _dir) = start_custom(|idp| {
        idp.control("POST", "jwks?mode=ok&delay_ms=1200").unwrap();
    });
    let t = idp.token(json!({})).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = envoy.url("/score");
            let auth = format!("Bearer {t}");
            std::thread::spawn(move || {
                http("POST", &url, &[("authorization", &auth)], Some("{}")).map(|r| r.status)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Ok(200), "{}", envoy.log());
    }
}

#[test]
fn jwks_down_from_start_is_503_then_recovers() {
    let (idp, _aml, envoy, _dir) = start_custom(|idp| {
        idp.control("POST", "jwks?mode=status500").unwrap();
    });
    let t = idp.token(json!({})).unwrap();
    let r = post(&envoy, &t);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(r.json()["error"], "jwks_unavailable");
    assert!(!r.body.contains(&t));

    idp.control("POST", "jwks?mode=ok").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = post(&envoy, &t);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {} {}\n{}",
            r.status,
            r.body,
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_request_body_never_releases_a_paused_request() {
    // A large body arriving while the filter waits for keys must not carry the request past
    // the filter: it is verified and annotated first, or refused.
    let (idp, aml, envoy, _dir) = start_custom(|idp| {
        idp.control("POST", "jwks?mode=ok&delay_ms=1000").unwrap();
    });
    let good = idp.token(json!({})).unwrap();
    let forged = idp.token(json!({"sign_with": "forged"})).unwrap();
    let body = format!(
        "{{\"input_data\": {{\"data\": [[{}]]}}}}",
        "1,".repeat(60_000) + "1"
    );
    let send = |token: &str| {
        let auth = format!("Bearer {token}");
        http(
            "POST",
            &envoy.url("/score"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| send(&good));
        let b = s.spawn(|| send(&forged));
        (a.join().unwrap(), b.join().unwrap())
    });
    // Verified and annotated: the backend saw the endpoint key, so it answered 200.
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["predictions"].as_array().map(Vec::len), Some(1));
    // Refused by the filter, not by the backend.
    assert_eq!(b.status, 401, "{}", b.body);
    assert_eq!(b.json()["error"], "signature_invalid");
    let backend_log = aml.proc.stderr();
    assert_eq!(
        backend_log.lines().filter(|l| l.contains("/score")).count(),
        1,
        "only the verified request may reach the backend:\n{backend_log}"
    );
}
