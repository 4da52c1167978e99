//! End-to-end on both real hosts — Envoy 1.40 (V8) and Kong Gateway 3.9 (Wasmtime), each
//! loading the built filter with two workers — with the mock IdP and mock Azure ML backend:
//! the foundation slice (verify, annotate, reject, cold start, IdP down at start and
//! recovery). Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::time::{Duration, Instant};

use aml_harness::{
    both_hosts, default_filter_config, http, post_score, Gateway, Host, MockIdp, Resp, AUDIENCE,
    ENDPOINT_KEY,
};
use serde_json::{json, Value};

fn start(host: Host) -> Gateway {
    Gateway::start_on(host, default_filter_config).unwrap_or_else(|e| panic!("{e}"))
}

fn score(gw: &Gateway, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    post_score(&gw.url("/score"), token, extra).unwrap_or_else(|e| panic!("{e}"))
}

fn token(gw: &Gateway, spec: Value) -> String {
    gw.idp.token(spec).unwrap_or_else(|e| panic!("{e}"))
}

both_hosts! {
    fn valid_token_reaches_backend_with_identity_and_without_caller_token(host: Host) {
        let gw = start(host);
        let t = token(
            &gw,
            json!({"claims": {"oid": "11111111-2222-3333-4444-555555555555"}}),
        );
        let r = score(&gw, Some(&t), &[]);
        assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(40));
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

    fn missing_token_is_401_without_error_code(host: Host) {
        let gw = start(host);
        let r = score(&gw, None, &[]);
        assert_eq!(r.status, 401, "{}\n{}", r.body, gw.log_tail(40));
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.starts_with("Bearer realm=\"azure-ml\""), "{www}");
        assert!(!www.contains("error="), "{www}");
        assert_eq!(r.json()["error"], "token_missing");
        assert!(r.json()["request_id"].is_string());
    }

    fn bad_tokens_are_401_invalid_token_with_reason(host: Host) {
        let gw = start(host);
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
            assert_eq!(r.status, 401, "{what}: {}\n{}", r.body, gw.log_tail(40));
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
}

/// Start IdP (with a hook to set it up before the host starts, hence before the first JWKS
/// fetch) and backend, then the host with the default config.
fn start_custom(host: Host, setup_idp: impl FnOnce(&MockIdp)) -> Gateway {
    Gateway::builder(host)
        .setup_idp(setup_idp)
        .start(default_filter_config)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn post(gw: &Gateway, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    http(
        "POST",
        &gw.url("/score"),
        &[("authorization", &auth)],
        Some("{}"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

both_hosts! {
    fn requests_before_keys_arrive_wait_and_then_succeed(host: Host) {
        // The JWKS answers slowly: the host is ready before the filter has keys. (Envoy parks
        // the requests until the root context's fetch lands; Kong's requests fetch for
        // themselves, at most 8 at once per worker: 8 requests over 2 workers all fit.)
        let gw = start_custom(host, |idp| {
            idp.control("POST", "jwks?mode=ok&delay_ms=1200").unwrap();
        });
        let t = gw.idp.token(json!({})).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let url = gw.url("/score");
                let auth = format!("Bearer {t}");
                std::thread::spawn(move || {
                    http("POST", &url, &[("authorization", &auth)], Some("{}"))
                        .map(|r| (r.status, r.body))
                })
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert_eq!(
                r.as_ref().map(|r| r.0),
                Ok(200),
                "{r:?}\n{}",
                gw.log_tail(60)
            );
        }
    }

    fn jwks_down_from_start_is_503_then_recovers(host: Host) {
        let gw = start_custom(host, |idp| {
            idp.control("POST", "jwks?mode=status500").unwrap();
        });
        let t = gw.idp.token(json!({})).unwrap();
        let r = post(&gw, &t);
        assert_eq!(r.status, 503, "{}\n{}", r.body, gw.log_tail(40));
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        assert_eq!(r.json()["error"], "jwks_unavailable");
        assert!(!r.body.contains(&t));

        gw.idp.control("POST", "jwks?mode=ok").unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = post(&gw, &t);
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery: {} {}\n{}",
                r.status,
                r.body,
                gw.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn a_request_body_never_releases_a_paused_request(host: Host) {
        // A large body arriving while the filter waits for keys must not carry the request past
        // the filter: it is verified and annotated first, or refused.
        let gw = start_custom(host, |idp| {
            idp.control("POST", "jwks?mode=ok&delay_ms=1000").unwrap();
        });
        let good = gw.idp.token(json!({})).unwrap();
        let forged = gw.idp.token(json!({"sign_with": "forged"})).unwrap();
        let body = format!(
            "{{\"input_data\": {{\"data\": [[{}]]}}}}",
            "1,".repeat(60_000) + "1"
        );
        let send = |token: &str| {
            let auth = format!("Bearer {token}");
            http(
                "POST",
                &gw.url("/score"),
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
        assert_eq!(a.status, 200, "{}\n{}", a.body, gw.log_tail(40));
        assert_eq!(a.json()["predictions"].as_array().map(Vec::len), Some(1));
        // Refused by the filter, not by the backend.
        assert_eq!(b.status, 401, "{}", b.body);
        assert_eq!(b.json()["error"], "signature_invalid");
        let backend_log = gw.aml.proc.stderr();
        assert_eq!(
            backend_log.lines().filter(|l| l.contains("/score")).count(),
            1,
            "only the verified request may reach the backend:\n{backend_log}"
        );
    }
}
