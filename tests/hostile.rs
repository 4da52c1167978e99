//! Native hostile-input tables for the whole engine (issue 11): each hostile token, header
//! set and request target gets the right status and reason code, a denial never echoes the
//! token, and nothing spoofed survives the header plan (checked for every decision by
//! `targets::check_decision`). The fixture is the fuzz targets' (`fuzz/targets.rs`).

#[path = "../fuzz/targets.rs"]
mod targets;

use azure_ml_kong::annotate::HeaderOp;
use azure_ml_kong::engine::Decision;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use targets::*;

fn h(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bearer(t: &str) -> Vec<(String, String)> {
    h(&[("authorization", &format!("Bearer {t}"))])
}

/// `(status, reason)`: `(0, "allow")` for an allowed request.
fn outcome(d: &Decision) -> (u32, String) {
    match d {
        Decision::Allow { .. } => (0, "allow".into()),
        Decision::Deny { response, audit } => (
            response.status,
            audit.reason.map_or("?", |r| r.code()).to_string(),
        ),
        other => (1, format!("{other:?}")),
    }
}

fn ops(d: &Decision) -> &[HeaderOp] {
    match d {
        Decision::Allow { ops, .. } => ops,
        other => panic!("expected allow: {other:?}"),
    }
}

fn set<'a>(ops: &'a [HeaderOp], name: &str) -> Option<&'a str> {
    ops.iter().find_map(|o| match o {
        HeaderOp::Set { name: n, value } if n == name => Some(value.as_str()),
        _ => None,
    })
}

fn with(k: &str, v: Value) -> Value {
    let mut c = good_claims();
    c[k] = v;
    c
}

fn hs_claims() -> Value {
    let mut c = good_claims();
    c["iss"] = json!(HS_ISS);
    c
}

fn hs(header: &str, payload: &str) -> String {
    hs256_raw(SECRET.as_bytes(), header.as_bytes(), payload.as_bytes())
}

const HS_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[test]
fn hostile_tokens() {
    let good = rs256(&good_claims());
    let (gh, rest) = good.split_once('.').unwrap();
    let (gp, gs) = rest.split_once('.').unwrap();
    let other = rs256(&with("oid", json!("someone-else")));
    let other_sig = other.rsplit('.').next().unwrap();
    let hs_good = hs(HS_HEADER, &hs_claims().to_string());
    let rsa_pub_pem = fixture().rsa.public_key().to_pem().unwrap();
    let payload = hs_claims().to_string();
    // 5,000 levels fit the 16 KiB token cap; 10,000 are checked at the decoder below.
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let deeper = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        azure_ml_kong::jose::decode(&hs(HS_HEADER, &with_hs_raw("deep", &deeper)), 65_536)
            .map(|_| ()),
        Err(azure_ml_kong::reason::Reason::TokenMalformed)
    );
    let meta = KeyMetadata::default()
        .with_key_set_url("https://evil.example/jwks")
        .with_certificate_url("https://evil.example/cert.pem")
        .with_public_key("eyJrdHkiOiJSU0EifQ");
    let with_jku = {
        let mut k = fixture().rsa.clone();
        k.attach_metadata(meta).unwrap();
        let mut c = jwt_simple::claims::Claims::with_custom_claims(
            good_claims().as_object().cloned().unwrap(),
            Duration::from_secs(1),
        );
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        k.sign(c).unwrap()
    };
    let attacker = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let forged = {
        let mut c = jwt_simple::claims::Claims::with_custom_claims(
            good_claims().as_object().cloned().unwrap(),
            Duration::from_secs(1),
        );
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        attacker.sign(c).unwrap()
    };
    let cases: Vec<(&str, String, u32, &str)> = vec![
        ("baseline RS256", good.clone(), 0, "allow"),
        ("baseline HS256", hs_good.clone(), 0, "allow"),
        (
            "alg none",
            format!("{}.{gp}.", b64(br#"{"alg":"none"}"#)),
            401,
            "alg_not_allowed",
        ),
        (
            "alg None",
            format!("{}.{gp}.{gs}", b64(br#"{"alg":"None"}"#)),
            401,
            "alg_not_allowed",
        ),
        (
            "alg NONE",
            format!("{}.{gp}.{gs}", b64(br#"{"alg":"NONE"}"#)),
            401,
            "alg_not_allowed",
        ),
        (
            "alg nOnE",
            format!("{}.{gp}.{gs}", b64(br#"{"alg":"nOnE","kid":"k1"}"#)),
            401,
            "alg_not_allowed",
        ),
        (
            "alg rs256 (case)",
            format!("{}.{gp}.{gs}", b64(br#"{"alg":"rs256","kid":"k1"}"#)),
            401,
            "alg_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key",
            hs256_raw(
                rsa_pub_pem.as_bytes(),
                HS_HEADER.as_bytes(),
                good_claims().to_string().as_bytes(),
            ),
            401,
            "alg_not_allowed",
        ),
        (
            "HS256 with the RSA key for the HS issuer",
            hs256_raw(
                rsa_pub_pem.as_bytes(),
                HS_HEADER.as_bytes(),
                payload.as_bytes(),
            ),
            401,
            "signature_invalid",
        ),
        (
            "kid with ../",
            format!(
                "{}.{gp}.{gs}",
                b64(br#"{"alg":"RS256","kid":"../../../etc/passwd"}"#)
            ),
            401,
            "kid_unknown",
        ),
        (
            "10 KB kid",
            format!(
                "{}.{gp}.{gs}",
                b64(format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(10_240)).as_bytes())
            ),
            401,
            "kid_unknown",
        ),
        ("jku/x5u/x5c never fetched nor used", with_jku, 0, "allow"),
        (
            "embedded jwk",
            format!(
                "{}.{gp}.{gs}",
                b64(br#"{"alg":"RS256","kid":"k1","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#)
            ),
            401,
            "token_malformed",
        ),
        (
            "attacker key under kid k1",
            forged,
            401,
            "signature_invalid",
        ),
        (
            "crit",
            hs(r#"{"alg":"HS256","crit":["exp"]}"#, &payload),
            401,
            "crit_unsupported",
        ),
        (
            "JWE (5 parts)",
            format!("{}.a.b.c.d", b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            401,
            "token_encrypted",
        ),
        (
            "JWE header in 3 parts",
            hs(r#"{"alg":"HS256","enc":"A256GCM"}"#, &payload),
            401,
            "token_encrypted",
        ),
        (
            "nested JWT as the payload",
            hs(r#"{"alg":"HS256","cty":"JWT"}"#, &good),
            401,
            "token_malformed",
        ),
        (
            "duplicate claim",
            hs(HS_HEADER, &payload.replacen('{', r#"{"oid":"admin","#, 1)),
            401,
            "token_malformed",
        ),
        (
            "duplicate header member",
            hs(r#"{"alg":"HS256","alg":"none"}"#, &payload),
            401,
            "token_malformed",
        ),
        (
            "exp string",
            hs(HS_HEADER, &with_hs("exp", json!("9999999999"))),
            401,
            "token_malformed",
        ),
        (
            "exp float",
            hs(HS_HEADER, &with_hs("exp", json!((NOW + 100) as f64 + 0.5))),
            401,
            "token_malformed",
        ),
        (
            "exp 1e30",
            hs(HS_HEADER, &with_hs("exp", json!(1e30))),
            401,
            "token_malformed",
        ),
        (
            "exp beyond 2^53",
            hs(HS_HEADER, &with_hs("exp", json!(u64::MAX))),
            401,
            "token_malformed",
        ),
        (
            "exp huge within 2^53",
            hs(HS_HEADER, &with_hs("exp", json!(1u64 << 53))),
            401,
            "lifetime_too_long",
        ),
        (
            "exp negative",
            hs(HS_HEADER, &with_hs("exp", json!(-1))),
            401,
            "token_malformed",
        ),
        (
            "nbf string",
            hs(HS_HEADER, &with_hs("nbf", json!("0"))),
            401,
            "token_malformed",
        ),
        (
            "nbf float",
            hs(HS_HEADER, &with_hs("nbf", json!(1.5))),
            401,
            "token_malformed",
        ),
        (
            "aud as object",
            hs(HS_HEADER, &with_hs("aud", json!({"api://gw": true}))),
            401,
            "token_malformed",
        ),
        (
            "non-UTF-8 payload",
            hs256_raw(
                SECRET.as_bytes(),
                HS_HEADER.as_bytes(),
                b"{\"iss\":\"\xff\xfe\"}",
            ),
            401,
            "token_malformed",
        ),
        (
            "1 MB token",
            format!("{gh}.{}.{gs}", "A".repeat(1 << 20)),
            401,
            "token_too_large",
        ),
        ("10,000 segments", ".".repeat(9_999), 401, "token_malformed"),
        (
            "8,000 segments",
            vec!["a"; 8_000].join("."),
            401,
            "token_malformed",
        ),
        (
            "padded base64",
            format!("{gh}=.{gp}.{gs}"),
            401,
            "token_malformed",
        ),
        (
            "whitespace in base64",
            format!("{gh}.{gp} .{gs}"),
            401,
            "token_malformed",
        ),
        (
            "newline in base64",
            format!("{gh}.{gp}\n.{gs}"),
            401,
            "token_malformed",
        ),
        (
            "empty signature",
            format!("{gh}.{gp}."),
            401,
            "token_malformed",
        ),
        (
            "another token's signature",
            format!("{gh}.{gp}.{other_sig}"),
            401,
            "signature_invalid",
        ),
        (
            "5,000-deep JSON",
            hs(HS_HEADER, &with_hs_raw("deep", &deep)),
            401,
            "token_malformed",
        ),
        (
            "wrong tenant",
            rs256(&{
                let mut c = good_claims();
                let t2 = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
                c["tid"] = json!(t2);
                c["iss"] = json!(format!("https://login.microsoftonline.com/{t2}/v2.0"));
                c
            }),
            401,
            "tenant_not_allowed",
        ),
        (
            "Graph token with nonce",
            format!(
                "{}.{gp}.{gs}",
                b64(br#"{"alg":"RS256","kid":"k1","nonce":"abc"}"#)
            ),
            401,
            "graph_token_unverifiable",
        ),
    ];
    for (what, tok, status, reason) in cases {
        let d = decide_request("POST", "/teams/fraud/score", &bearer(&tok));
        assert_eq!(outcome(&d), (status, reason.to_string()), "{what}");
        if let Decision::Deny { response, .. } = &d {
            let sig = tok.rsplit('.').next().unwrap_or("");
            assert!(
                sig.len() < 16 || !response.body.contains(sig),
                "{what}: echoed"
            );
            assert!(!response.body.contains(&tok), "{what}: echoed");
        }
    }
}

fn with_hs(k: &str, v: Value) -> String {
    let mut c = hs_claims();
    c[k] = v;
    c.to_string()
}

fn with_hs_raw(k: &str, raw: &str) -> String {
    let s = hs_claims().to_string();
    s.replacen('{', &format!(r#"{{"{k}":{raw},"#), 1)
}

#[test]
fn hostile_claims_aimed_at_identity_headers() {
    for (what, name) in [
        ("CR/LF", "a\r\nx-caller-oid: admin"),
        ("NUL", "a\u{0}b"),
        ("LF", "a\nb"),
        ("DEL", "a\u{7f}b"),
    ] {
        let d = decide_request(
            "POST",
            "/teams/fraud/score",
            &bearer(&rs256(&with("name", json!(name)))),
        );
        assert_eq!(set(ops(&d), "x-caller-name"), Some(""), "{what}");
    }
    let d = decide_request(
        "POST",
        "/teams/fraud/score",
        &bearer(&rs256(&with("roles", json!(["Endpoint.Score", "x,Admin"])))),
    );
    assert_eq!(set(ops(&d), "x-caller-roles"), Some(""), "ambiguous array");
}

#[test]
fn hostile_identity_and_authorization_headers() {
    let t = rs256(&good_claims());
    let auth = format!("Bearer {t}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u32, &'a str);
    let cases: Vec<Case> = vec![
        ("other casing", vec![("X-CALLER-OID", "evil")], 0, "allow"),
        (
            "surrounding whitespace",
            vec![("x-caller-oid", "  evil  ")],
            0,
            "allow",
        ),
        (
            "foreign x-caller header",
            vec![("X-Caller-Admin", "true")],
            0,
            "allow",
        ),
        (
            "two copies",
            vec![("x-caller-oid", "a"), ("X-Caller-Oid", "b")],
            400,
            "duplicate_identity_header",
        ),
        (
            "many copies",
            vec![("x-caller-oid", "a"); 50],
            400,
            "duplicate_identity_header",
        ),
        (
            "underscore",
            vec![("x_caller_oid", "evil")],
            400,
            "duplicate_identity_header",
        ),
        (
            "underscore, foreign name",
            vec![("X_Caller_Admin", "1")],
            400,
            "duplicate_identity_header",
        ),
        (
            "obs-fold value",
            vec![("x-caller-oid", "a\r\n b")],
            0,
            "allow",
        ),
    ];
    for (what, extra, status, reason) in cases {
        let mut hs = h(&extra);
        hs.push(("authorization".into(), auth.clone()));
        let d = decide_request("POST", "/teams/fraud/score", &hs);
        assert_eq!(outcome(&d), (status, reason.to_string()), "{what}");
        if status == 0 {
            assert_eq!(set(ops(&d), "x-caller-oid"), Some(OID), "{what}");
        }
    }
    type AuthCase<'a> = (&'a str, Vec<(&'a str, String)>, u32, &'a str);
    let auth_cases: Vec<AuthCase> = vec![
        (
            "two schemes",
            vec![("authorization", format!("Basic dXNlcjpwdw==, Bearer {t}"))],
            401,
            "token_missing",
        ),
        (
            "two tokens in one header",
            vec![("authorization", format!("Bearer {t}, Bearer {t}"))],
            401,
            "token_ambiguous",
        ),
        (
            "two tokens separated by a space",
            vec![("authorization", format!("Bearer {t} {t}"))],
            401,
            "token_malformed",
        ),
        (
            "two Authorization headers",
            vec![
                ("authorization", auth.clone()),
                ("Authorization", auth.clone()),
            ],
            400,
            "duplicate_identity_header",
        ),
        (
            "header and query token",
            vec![("authorization", auth.clone())],
            401,
            "token_ambiguous",
        ),
        (
            "lower-case scheme",
            vec![("authorization", format!("bearer {t}"))],
            0,
            "allow",
        ),
        (
            "scheme only",
            vec![("authorization", "Bearer".into())],
            401,
            "token_malformed",
        ),
    ];
    for (what, extra, status, reason) in auth_cases {
        let hs: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let path = if what == "header and query token" {
            format!("/teams/fraud/score?access_token={t}")
        } else {
            "/teams/fraud/score".to_string()
        };
        let d = decide_request("POST", &path, &hs);
        assert_eq!(outcome(&d), (status, reason.to_string()), "{what}");
    }
}

#[test]
fn hostile_request_targets_and_methods() {
    let t = rs256(&good_claims());
    let cases: Vec<(&str, &str, u32, &str)> = vec![
        ("POST", "/teams/fraud/score", 0, "allow"),
        ("POST", "/teams/fraud/score;jsessionid=1", 403, "no_route"),
        ("POST", "/teams/fraud;x=1/score", 403, "insufficient_scope"),
        ("POST", "/teams/fraud%2Fscore", 400, "path_not_normalized"),
        (
            "POST",
            "/teams/fraud%252F..%252Fother/score",
            400,
            "path_not_normalized",
        ),
        ("POST", "/teams/%2e%2e/score", 400, "path_not_normalized"),
        (
            "POST",
            "/teams/fraud/../other/score",
            400,
            "path_not_normalized",
        ),
        ("POST", "//teams/fraud/score", 400, "path_not_normalized"),
        (
            "POST",
            "http://evil.example/teams/fraud/score",
            400,
            "path_not_normalized",
        ),
        ("POST", "*", 400, "path_not_normalized"),
        (
            "POST",
            "/teams/fraud/score\u{0}",
            400,
            "path_not_normalized",
        ),
        ("POST", "/teams/fraud\\score", 400, "path_not_normalized"),
        ("post", "/teams/fraud/score", 0, "allow"),
        ("GET", "/teams/fraud/score", 403, "no_route"),
        ("HEAD", "/teams/fraud/score", 403, "no_route"),
        ("OPTIONS", "/teams/fraud/score", 403, "no_route"),
        ("HEAD", "/any/x", 0, "allow"),
        ("OPTIONS", "/any/x", 0, "allow"),
    ];
    for (method, path, status, reason) in cases {
        let d = decide_request(method, path, &bearer(&t));
        assert_eq!(outcome(&d), (status, reason.to_string()), "{method} {path}");
    }
}
