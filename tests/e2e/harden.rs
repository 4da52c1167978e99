//! End-to-end on both real hosts: the core hardening of issue 11. NumericDate and lifetime
//! bounds, the identity namespace (`x-caller-*` in any spelling) and unambiguous array
//! claims, audit lines that mark (and cap) what a forged token claims, and discovery
//! documents whose `issuer` does not fit (refused, their keys never fetched). Every test
//! runs twice: `<name>_envoy` and `<name>_kong`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aml_harness::{both_hosts, entra_provider, Gateway, Host, Resp, ENDPOINT_KEY, TENANT};
use serde_json::{json, Value};

fn routes() -> Value {
    json!([{"name": "score", "match": {"path_prefix": "/"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}])
}

fn mint(gw: &Gateway, spec: Value) -> String {
    gw.idp
        .token(spec.clone())
        .unwrap_or_else(|e| panic!("mint {spec}: {e}"))
}

fn post(gw: &Gateway, token: &str, extra: &[(&str, &str)]) -> Resp {
    aml_harness::post_score(&gw.url("/score"), Some(token), extra).unwrap_or_else(|e| panic!("{e}"))
}

fn denied(what: &str, r: &Resp, token: &str, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], reason, "{what}: {}", r.body);
    let sig = token.rsplit('.').next().unwrap_or(token);
    assert!(
        !r.body.contains(sig),
        "{what}: the token was echoed: {}",
        r.body
    );
    assert_eq!(r.backend_headers().len(), 0, "{what}: reached the backend");
}

/// One request with headers sent byte for byte (names the client library would refuse).
fn raw(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let url = gw.url("/");
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&authority).unwrap_or_else(|e| panic!("{authority}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("POST {target} HTTP/1.1\r\nconnection: close\r\nhost: {authority}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-length: 2\r\n\r\n{}");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn audit_line(gw: &Gateway, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = gw.audit_line(id) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for {id}:\n{}",
            gw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

both_hosts! {
    /// `exp = 10^30` and friends: NumericDates are integers up to 2^53, and the default
    /// maximum lifetime (36 h) refuses an integer `exp` far in the future.
    fn numeric_dates_and_lifetime_bounds(host: Host) {
        let gw = Gateway::start_on(host, |idp| json!({"providers": [entra_provider(idp)], "routes": routes()}))
            .unwrap_or_else(|e| panic!("{e}"));
        let good = mint(&gw, json!({}));
        assert_eq!(post(&gw, &good, &[]).status, 200);
        let cases = [
            ("exp 1e30", json!({"exp": 1e30}), "token_malformed"),
            ("exp beyond 2^53", json!({"exp": u64::MAX}), "token_malformed"),
            ("exp 2^53", json!({"exp": 1u64 << 53}), "lifetime_too_long"),
            ("exp string", json!({"exp": "9999999999"}), "token_malformed"),
            ("exp fraction", json!({"exp": 4_102_444_800.5}), "token_malformed"),
            ("nbf float", json!({"nbf": 1.0}), "token_malformed"),
            ("iat negative", json!({"iat": -1}), "token_malformed"),
        ];
        for (what, claims, reason) in cases {
            let t = mint(&gw, json!({"claims": claims}));
            denied(what, &post(&gw, &t, &[]), &t, 401, reason);
        }
        assert_eq!(post(&gw, &good, &[]).status, 200, "the gateway keeps serving");
    }

    /// A client's `x-caller-*` headers never reach the backend unless the filter set them;
    /// `_` spellings are refused; array claims stay unambiguous.
    fn identity_namespace_is_the_filters(host: Host) {
        let gw = Gateway::builder(host)
            // Kong's own default (underscores on): the filter must refuse them itself.
            .kong_conf("nginx_proxy_underscores_in_headers", "")
            .start(|idp| {
                json!({"providers": [entra_provider(idp)], "routes": routes(),
                       "claims_to_headers": [{"claim": "oid", "header": "x-caller-oid"},
                                             {"claim": "roles", "header": "x-caller-roles"}]})
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let t = mint(&gw, json!({"claims": {"roles": ["Reader"]}}));
        let auth = format!("Bearer {t}");
        let (status, body) = raw(
            &gw,
            "/score",
            &[
                ("authorization", &auth),
                ("X-Caller-Admin", "true"),
                ("x-caller-team", "evil"),
                ("x-caller-roles", "Gateway.Admin"),
            ],
        );
        assert_eq!(status, 200, "{body}");
        for spoof in ["true", "evil", "Gateway.Admin"] {
            assert!(!body.contains(&format!("\"{spoof}\"")), "{spoof} reached the backend: {body}");
        }
        assert!(body.contains(r#"["x-caller-roles","Reader"]"#), "{body}");
        for (name, value) in [
            ("x_caller_oid", "evil"),
            ("x_caller_team", "evil"),
            ("X_CALLER_ADMIN", "1"),
        ] {
            let (status, body) = raw(&gw, "/score", &[("authorization", &auth), (name, value)]);
            assert_eq!(status, 400, "{name}: {body}");
            assert!(body.contains("duplicate_identity_header"), "{name}: {body}");
        }
        let (status, body) = raw(
            &gw,
            "/score",
            &[("authorization", &auth), ("x-caller-team", "a"), ("x-caller-team", "b")],
        );
        assert_eq!(status, 400, "two copies: {body}");

        let roles = |roles: Value| -> Vec<String> {
            let t = mint(&gw, json!({"claims": {"roles": roles}}));
            let r = post(&gw, &t, &[]);
            assert_eq!(r.status, 200, "{}", r.body);
            r.backend_values("x-caller-roles")
        };
        let one = roles(json!(["Reader,Gateway.Admin"]));
        let two = roles(json!(["Reader", "Gateway.Admin"]));
        assert_eq!(two, ["Reader,Gateway.Admin"]);
        assert_ne!(one, two, "two different role sets gave the same header");
        assert!(one.iter().all(String::is_empty), "{one:?}");
    }

    /// A forged token with a 3 KB `kid` and a claimed `oid`: the audit line says
    /// `claimed_*`, caps every value, and stays short.
    fn forged_token_audit_fields_are_claimed_and_capped(host: Host) {
        let gw = Gateway::start_on(host, |idp| json!({"providers": [entra_provider(idp)], "routes": routes()}))
            .unwrap_or_else(|e| panic!("{e}"));
        let good = mint(&gw, json!({}));
        let r = post(&gw, &good, &[("x-request-id", "harden-good-1")]);
        assert_eq!(r.status, 200, "{}", r.body);
        let ok = audit_line(&gw, "harden-good-1");
        assert!(ok["subject"].is_string() && ok["kid"].is_string(), "{ok}");
        assert!(ok.get("claimed_subject").is_none(), "{ok}");

        // nginx refuses header lines above 8 KB: about 3 KB of kid and 2 KB of oid fit.
        let kid = "K".repeat(3000);
        let forged = mint(
            &gw,
            json!({"sign_with": "forged", "header": {"kid": kid},
                   "claims": {"oid": "o".repeat(1500), "sub": "victim"}}),
        );
        let r = post(&gw, &forged, &[("x-request-id", "harden-forged-1")]);
        assert_eq!(r.status, 401, "{}", r.body);
        let line = audit_line(&gw, "harden-forged-1");
        for verified in ["subject", "kid", "iss", "tid", "app"] {
            assert!(line.get(verified).is_none(), "{verified} looks verified: {line}");
        }
        let ck = line["claimed_kid"].as_str().unwrap_or_default();
        assert!(ck.len() <= 64 && ck.starts_with("KKKK") && ck.contains('…'), "{line}");
        let cs = line["claimed_subject"].as_str().unwrap_or_default();
        assert!(cs.len() <= 64 && cs.starts_with("oooo"), "{line}");
        let text = line.to_string();
        assert!(text.len() < 1024, "{} bytes: {text}", text.len());
    }

    /// OpenID Connect Discovery 1.0 §4.3: a document whose `issuer` is none of the
    /// provider's is refused, and the key set it points to is never fetched.
    fn discovery_with_a_foreign_issuer_is_refused(host: Host) {
        let gw = Gateway::start_on(host, |idp| {
            let mut p = entra_provider(idp);
            let o = p.as_object_mut().expect("provider");
            o.remove("jwks_uri");
            // The v1 document advertises `https://sts.windows.net/{tid}/`; this provider
            // trusts only the v2 issuer.
            o.insert("issuers".into(), json!(["https://login.microsoftonline.com/{tenantid}/v2.0"]));
            o.insert(
                "discovery_uri".into(),
                json!(format!("http://127.0.0.1:{idp}/{TENANT}/.well-known/openid-configuration")),
            );
            json!({"providers": [p], "routes": routes()})
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let t = mint(&gw, json!({}));
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut answers = Vec::new();
        while Instant::now() < deadline && answers.len() < 6 {
            let r = post(&gw, &t, &[]);
            denied("foreign issuer", &r, &t, 503, "jwks_unavailable");
            answers.push(r.status);
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(gw.idp.stat("discovery_requests").unwrap_or(0) >= 1, "discovery never fetched");
        assert_eq!(gw.idp.jwks_requests().unwrap_or(99), 0, "the refused document's keys were fetched");
        let log = gw.log();
        assert!(log.contains("discovery_issuer_mismatch"), "{}", gw.log_tail(40));
    }
}
