//! `explain` and the filter in a real host (Envoy 1.40, Kong 3.9) decide the same requests
//! the same way, reason code for reason code: each case is sent through the gateway and
//! explained offline with the same config, token, headers and the IdP's key set. And
//! `mint --idp` gives tokens the real host accepts, `mint --key` ones it refuses.

use aml_harness::{both_hosts, http, teams_filter_config, Gateway, Host, OTHER_TENANT, TENANT};
use assert_cmd::Command;
use serde_json::{json, Value};

const BODY: &str = r#"{"input_data": {"data": [[1, 2, 3]]}}"#;
const FRAUD: &str = "/teams/fraud/endpoints/fraud-v2/score";
const CHURN: &str = "/teams/churn/endpoints/churn-v1/score";

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
}

fn case(name: &'static str, method: &'static str, path: &'static str, token: Option<&str>) -> Case {
    Case {
        name,
        method,
        path,
        token: token.map(str::to_string),
        headers: Vec::new(),
    }
}

/// What the gateway answered: `None` for a request it let through, else its reason code.
fn gateway_verdict(gw: &Gateway, c: &Case) -> (u16, Option<String>) {
    let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    h.extend(c.headers.iter().copied());
    let body = (c.method == "POST").then_some(BODY);
    let r = http(c.method, &gw.url(c.path), &h, body).unwrap_or_else(|e| panic!("{e}"));
    // The filter's denials carry their reason code as the RFC 6750 `error` (JSON body).
    let reason = serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .filter(|_| r.status >= 400);
    (r.status, reason)
}

fn explain_verdict(config: &str, jwks: &str, c: &Case) -> (Option<u16>, Option<String>) {
    let mut cmd = Command::cargo_bin("azure-ml-kong").expect("binary");
    cmd.args(["explain", "--config", config, "--jwks-file", jwks, "--json"])
        .args(["--method", c.method, "--path", c.path]);
    if let Some(t) = &c.token {
        cmd.args(["--token", t]);
    }
    for (k, v) in &c.headers {
        cmd.args(["--header", &format!("{k}: {v}")]);
    }
    let o = cmd.output().expect("run explain");
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", c.name));
    assert_eq!(v["story_agrees"], true, "{}: {v:#}", c.name);
    assert_eq!(v["signature_checked"], true, "{}", c.name);
    let d = &v["decision"];
    let want_code = if d["outcome"] == "allow" { 0 } else { 1 };
    assert_eq!(o.status.code(), Some(want_code), "{}: {v:#}", c.name);
    let status = d["status"].as_u64().map(|s| s as u16);
    (status, d["reason"].as_str().map(str::to_string))
}

both_hosts! {
    fn explain_decides_like_the_filter_in_the_real_host(host: Host) {
        let gw = Gateway::start_on(host, teams_filter_config).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("config.json");
        std::fs::write(&config, teams_filter_config(gw.idp.port).to_string()).expect("write");
        let jwks = dir.path().join("jwks.json");
        let keys = http("GET", &gw.idp.jwks_uri(TENANT), &[], None).expect("jwks");
        std::fs::write(&jwks, keys.body).expect("write");
        let (config, jwks) = (config.display().to_string(), jwks.display().to_string());

        let idp = &gw.idp;
        let cc = |id: &str, roles: &str, team: Option<&str>| {
            idp.client_credentials(id, roles, team).unwrap_or_else(|e| panic!("{e}"))
        };
        let fraud = cc("fraud-svc", "Endpoint.Score", Some("fraud"));
        let admin = cc("platform-admin", "Admin.All", None);
        let roles = json!({"roles": ["Endpoint.Score"], "team": "fraud"});
        let mint = |spec: Value| idp.token(spec).unwrap_or_else(|e| panic!("{e}"));
        let forged = mint(json!({"sign_with": "forged", "claims": roles}));
        let expired = mint(json!({"expires_in": -600, "claims": roles}));
        let foreign = mint(json!({"tenant": OTHER_TENANT, "claims": roles}));
        let wrong_aud = mint(json!({"claims": {"aud": "api://someone-else", "roles": ["Endpoint.Score"], "team": "fraud"}}));
        let unknown_kid = mint(json!({"sign_with": "unpublished", "claims": roles}));

        let mut dup = case("duplicate identity header", "POST", FRAUD, Some(&fraud));
        dup.headers = vec![("x-caller-oid", "spoof-1"), ("x-caller-oid", "spoof-2")];
        let mut spoof = case("spoofed identity header", "POST", FRAUD, Some(&fraud));
        spoof.headers = vec![("x-caller-team", "churn")];
        let cases = vec![
            case("own team", "POST", FRAUD, Some(&fraud)),
            case("other team", "POST", CHURN, Some(&fraud)),
            case("admin", "POST", CHURN, Some(&admin)),
            case("no token", "POST", FRAUD, None),
            case("health", "GET", "/health", None),
            case("method not routed", "GET", FRAUD, Some(&fraud)),
            case("no route", "POST", "/nowhere", Some(&fraud)),
            case("forged", "POST", FRAUD, Some(&forged)),
            case("expired", "POST", FRAUD, Some(&expired)),
            case("other tenant", "POST", FRAUD, Some(&foreign)),
            case("wrong audience", "POST", FRAUD, Some(&wrong_aud)),
            case("unpublished key", "POST", FRAUD, Some(&unknown_kid)),
            case("garbage token", "POST", FRAUD, Some("not.a.jwt")),
            dup,
            spoof,
        ];
        let mut reasons = Vec::new();
        for c in &cases {
            let (status, real) = gateway_verdict(&gw, c);
            let (explained_status, explained) = explain_verdict(&config, &jwks, c);
            assert_eq!(real, explained, "{} on {}: gateway {status} {real:?}", c.name, host.name());
            match &real {
                Some(_) => assert_eq!(Some(status), explained_status, "{}", c.name),
                None => assert!(status < 400, "{}: allowed by explain, gateway {status}", c.name),
            }
            reasons.push(real.unwrap_or_else(|| "allow".into()));
        }
        // The cases really cover allows and many distinct denials.
        reasons.sort();
        reasons.dedup();
        assert!(reasons.len() >= 9, "{reasons:?}");
    }
}

fn mint_cmd(args: &[&str]) -> String {
    let o = Command::cargo_bin("azure-ml-kong")
        .expect("binary")
        .arg("mint")
        .args(args)
        .output()
        .expect("run mint");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "mint {args:?}: {err}");
    assert!(err.contains("FOR LOCAL TESTING ONLY"), "{err}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

both_hosts! {
    fn a_token_minted_by_the_mock_idp_is_accepted_and_a_local_key_refused(host: Host) {
        let gw = Gateway::start_on(host, teams_filter_config).unwrap_or_else(|e| panic!("{e}"));
        let claims = json!({"roles": ["Endpoint.Score"], "team": "fraud"}).to_string();
        let token = mint_cmd(&["--idp", &gw.idp.base(), "--claims", &claims]);
        let c = case("minted by the mock IdP", "POST", FRAUD, Some(&token));
        let (status, reason) = gateway_verdict(&gw, &c);
        assert_eq!((status, reason), (200, None), "on {}", host.name());

        // The same claims (iss, aud, tid, ...) signed with a key no config trusts: the
        // committed throwaway key explain uses.
        let issued: Value = {
            let payload = token.split('.').nth(1).expect("payload");
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64");
            serde_json::from_slice(&bytes).expect("claims")
        };
        let key = aml_harness::repo_root().join("cli/src/throwaway_rsa.pem");
        let local = mint_cmd(&[
            "--key",
            &key.display().to_string(),
            "--claims",
            &issued.to_string(),
        ]);
        let c = case("signed with a local key", "POST", FRAUD, Some(&local));
        let (status, reason) = gateway_verdict(&gw, &c);
        assert_eq!(
            (status, reason.as_deref()),
            (401, Some("signature_invalid")),
            "on {}",
            host.name()
        );
    }
}
