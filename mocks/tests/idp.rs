//! mock-idp: discovery, JWKS shape, tokens verifiable with jwt-simple, rotation,
//! JWKS fail modes and counters. Each test runs its own in-process server.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aml_mocks::idp::{self, Config};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{get, post, post_json, request, request_timeout};
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

const TENANT: &str = idp::DEFAULT_TENANT;

/// A fresh server, for tests that change its state (modes, keys, counters).
fn start() -> SocketAddr {
    idp::spawn(Config::default(), "127.0.0.1:0")
        .expect("mock-idp")
        .0
}

/// One server shared by the tests that don't change its state (RSA keygen is slow in
/// debug builds).
fn shared() -> SocketAddr {
    static ADDR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(start)
}

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// (header, claims) of a compact JWS, without verifying it.
fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "three segments");
    (
        serde_json::from_slice(&b64(parts[0])).unwrap(),
        serde_json::from_slice(&b64(parts[1])).unwrap(),
    )
}

fn jwks(addr: SocketAddr) -> Value {
    let r = get(addr, &format!("/{TENANT}/discovery/v2.0/keys"));
    assert_eq!(r.status, 200);
    r.json()
}

fn jwk_str(jwk: &Value, field: &str) -> Vec<u8> {
    b64(jwk[field]
        .as_str()
        .unwrap_or_else(|| panic!("jwk has no {field}")))
}

/// Verifies `token` with jwt-simple against the JWK of the same `kid` in `jwks`,
/// built only from the published parameters. `hmac` is the secret for HS*.
fn verify(jwks: &Value, token: &str, hmac: &[u8]) -> Result<Map<String, Value>, String> {
    let (header, _) = decode(token);
    let alg = header["alg"].as_str().unwrap_or_default();
    let opts = Some(VerificationOptions::default());
    let jwk = || -> Result<&Value, String> {
        let kid = header["kid"].as_str().ok_or("token has no kid")?;
        jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["kid"] == kid)
            .ok_or(format!("kid {kid} is not published"))
    };
    let ec_point = |jwk: &Value| [vec![4u8], jwk_str(jwk, "x"), jwk_str(jwk, "y")].concat();
    type C = Map<String, Value>;
    let res: Result<JWTClaims<C>, jwt_simple::Error> = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let k = jwk()?;
            assert_eq!(k["kty"], "RSA");
            let (n, e) = (jwk_str(k, "n"), jwk_str(k, "e"));
            match alg {
                "RS256" => RS256PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
                "RS384" => RS384PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
                "RS512" => RS512PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
                "PS256" => PS256PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
                "PS384" => PS384PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
                _ => PS512PublicKey::from_components(&n, &e)
                    .and_then(|p| p.verify_token::<C>(token, opts)),
            }
        }
        "ES256" => {
            let k = jwk()?;
            assert_eq!((&k["kty"], &k["crv"]), (&json!("EC"), &json!("P-256")));
            ES256PublicKey::from_bytes(&ec_point(k)).and_then(|p| p.verify_token::<C>(token, opts))
        }
        "ES384" => {
            let k = jwk()?;
            assert_eq!((&k["kty"], &k["crv"]), (&json!("EC"), &json!("P-384")));
            ES384PublicKey::from_bytes(&ec_point(k)).and_then(|p| p.verify_token::<C>(token, opts))
        }
        "EdDSA" => {
            let k = jwk()?;
            assert_eq!((&k["kty"], &k["crv"]), (&json!("OKP"), &json!("Ed25519")));
            Ed25519PublicKey::from_bytes(&jwk_str(k, "x"))
                .and_then(|p| p.verify_token::<C>(token, opts))
        }
        "HS256" => HS256Key::from_bytes(hmac).verify_token::<C>(token, opts),
        "HS384" => HS384Key::from_bytes(hmac).verify_token::<C>(token, opts),
        "HS512" => HS512Key::from_bytes(hmac).verify_token::<C>(token, opts),
        other => return Err(format!("unexpected alg {other}")),
    };
    // jwt-simple moves the registered claims out of `custom`: return the payload.
    res.map(|_| decode(token).1.as_object().cloned().unwrap_or_default())
        .map_err(|e| e.to_string())
}

fn control_token(addr: SocketAddr, spec: Value) -> Value {
    let r = post_json(addr, "/_control/token", &spec);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn stats(addr: SocketAddr) -> Value {
    get(addr, "/_control/stats").json()
}

#[test]
fn discovery_documents_look_like_entra() {
    let addr = shared();
    let r = request(
        addr,
        "GET",
        &format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
        &[("Host", "idp.test:8443")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(
        d["issuer"],
        format!("https://login.microsoftonline.com/{TENANT}/v2.0")
    );
    // Built from the Host header the request came with.
    assert_eq!(
        d["jwks_uri"],
        format!("http://idp.test:8443/{TENANT}/discovery/v2.0/keys")
    );
    assert!(d["token_endpoint"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{TENANT}/oauth2/v2.0/token")));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));

    // Without a custom Host, the advertised jwks_uri is usable as is.
    let d = get(
        addr,
        &format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
    )
    .json();
    let jwks_uri = d["jwks_uri"].as_str().unwrap();
    let path = jwks_uri
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("{jwks_uri}"));
    assert_eq!(get(addr, path).status, 200);

    let v1 = get(addr, &format!("/{TENANT}/.well-known/openid-configuration")).json();
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{TENANT}/"));
    assert!(v1["jwks_uri"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{TENANT}/discovery/keys")));

    for t in ["common", "organizations"] {
        let d = get(addr, &format!("/{t}/v2.0/.well-known/openid-configuration")).json();
        assert_eq!(
            d["issuer"],
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        let d = get(addr, &format!("/{t}/.well-known/openid-configuration")).json();
        assert_eq!(d["issuer"], "https://sts.windows.net/{tenantid}/");
    }
}

#[test]
fn jwks_is_entra_shaped() {
    let addr = shared();
    let set = jwks(addr);
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4, "one current key per family");
    let current = get(addr, "/_control/keys").json();
    for k in keys {
        assert!(k.get("alg").is_none(), "Entra JWKs carry no alg: {k}");
        assert!(k.get("issuer").is_none(), "no issuer unless asked: {k}");
        assert_eq!(k["use"], "sig");
        assert!(k["kid"].as_str().unwrap().starts_with("mock-"));
    }
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
    assert_eq!(rsa["kid"], current["rsa"]);
    assert_eq!(jwk_str(rsa, "n").len(), 256, "RSA-2048");
    assert_eq!(rsa["e"], "AQAB");
    assert_eq!(jwk_str(rsa, "x5t").len(), 20, "x5t is a SHA-1 thumbprint");
    let p256 = keys.iter().find(|k| k["crv"] == "P-256").unwrap();
    assert_eq!(
        (jwk_str(p256, "x").len(), jwk_str(p256, "y").len()),
        (32, 32)
    );
    let p384 = keys.iter().find(|k| k["crv"] == "P-384").unwrap();
    assert_eq!(
        (jwk_str(p384, "x").len(), jwk_str(p384, "y").len()),
        (48, 48)
    );
    let ed = keys.iter().find(|k| k["kty"] == "OKP").unwrap();
    assert_eq!(
        (&ed["crv"], jwk_str(ed, "x").len()),
        (&json!("Ed25519"), 32)
    );
    // v1 path serves the same set; no Cache-Control unless configured.
    let r = get(addr, &format!("/{TENANT}/discovery/keys"));
    assert_eq!(r.json(), set);
    assert!(r.header("cache-control").is_none());
}

#[test]
fn client_credentials_token_verifies_against_the_jwk() {
    let addr = shared();
    let form = "grant_type=client_credentials&client_id=app-123&client_secret=x\
                &scope=api%3A%2F%2Fazureml-gateway%2F.default\
                &roles=Endpoint.Score,%20Admin&team=fraud&project=p1&scp=a%20b";
    let r = post(addr, &format!("/{TENANT}/oauth2/v2.0/token"), form);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3599);
    let token = t["access_token"].as_str().unwrap();
    let (header, _) = decode(token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], get(addr, "/_control/keys").json()["rsa"]);

    let c = verify(&jwks(addr), token, b"").expect("RS256 token verifies");
    assert_eq!(c["aud"], "api://azureml-gateway");
    assert_eq!(
        c["iss"],
        format!("https://login.microsoftonline.com/{TENANT}/v2.0")
    );
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["azp"], "app-123");
    assert_eq!(c["azpacr"], "1");
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["ver"], "2.0");
    assert_eq!(c["roles"], json!(["Endpoint.Score", "Admin"]));
    assert_eq!(
        (&c["team"], &c["project"], &c["scp"]),
        (&json!("fraud"), &json!("p1"), &json!("a b"))
    );
    assert_eq!(c["oid"], c["sub"]);
    assert_eq!(c["oid"].as_str().unwrap().len(), 36);
    assert_eq!(
        c["oid"],
        idp::stable_uuid("app-123"),
        "oid is stable per client"
    );
    let (exp, iat) = (c["exp"].as_i64().unwrap(), c["iat"].as_i64().unwrap());
    assert_eq!(exp - iat, 3599);
    assert!(c["uti"].is_string());

    // No roles form field: no roles claim. Missing client_id / wrong grant: 400.
    let r = post(
        addr,
        &format!("/{TENANT}/oauth2/v2.0/token"),
        "grant_type=client_credentials&client_id=b&scope=api://x/.default",
    );
    let (_, c) = decode(r.json()["access_token"].as_str().unwrap());
    assert!(c.get("roles").is_none());
    assert_eq!(c["aud"], "api://x");
    let r = post(
        addr,
        "/t/oauth2/v2.0/token",
        "grant_type=password&client_id=b",
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("unsupported_grant_type"))
    );
    let r = post(
        addr,
        "/t/oauth2/v2.0/token",
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn every_algorithm_verifies_with_jwt_simple() {
    let addr = shared();
    let set = jwks(addr);
    let secret = idp::DEFAULT_HMAC_SECRET.as_bytes();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
        "HS384", "HS512",
    ] {
        let t = control_token(addr, json!({"alg": alg, "claims": {"roles": ["R"]}}));
        let token = t["access_token"].as_str().unwrap();
        let (header, _) = decode(token);
        assert_eq!(header["alg"], alg);
        assert_eq!(t["kid"], header["kid"]);
        let claims = verify(&set, token, secret).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims["roles"], json!(["R"]));
    }
    // HS keys are never published.
    assert!(set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["kty"] != "oct"));
}

#[test]
fn control_token_overrides_claims_and_header() {
    let addr = shared();
    let t = control_token(
        addr,
        json!({
            "tenant": "11111111-2222-3333-4444-555555555555",
            "claims": {"aud": "https://ml.azure.com", "idtyp": null, "groups": ["g1"]},
            "header": {"crit": ["exp"], "nonce": "abc", "typ": "at+jwt"},
            "expires_in": -120,
        }),
    );
    let (h, c) = decode(t["access_token"].as_str().unwrap());
    assert_eq!(h["crit"], json!(["exp"]));
    assert_eq!(h["nonce"], "abc");
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(c["aud"], "https://ml.azure.com");
    assert!(c.get("idtyp").is_none(), "null removes a claim");
    assert_eq!(c["groups"], json!(["g1"]));
    assert_eq!(c["tid"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(
        c["iss"],
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
    );
    let (exp, now) = (c["exp"].as_i64().unwrap(), aml_mocks::common::now());
    assert!(
        exp <= now - 119 && exp >= now - 125,
        "expired two minutes ago"
    );
    assert!(c["iat"].as_i64().unwrap() < exp);
    let err = verify(&jwks(addr), t["access_token"].as_str().unwrap(), b"").unwrap_err();
    assert!(err.contains("critical"), "{err}");
    let t = control_token(addr, json!({"expires_in": -3600}));
    let err = verify(&jwks(addr), t["access_token"].as_str().unwrap(), b"").unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");

    // v1 token shape.
    let t = control_token(addr, json!({"ver": 1, "client_id": "c1"}));
    let (_, c) = decode(t["access_token"].as_str().unwrap());
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!((&c["ver"], &c["appid"]), (&json!("1.0"), &json!("c1")));
    assert!(c.get("azp").is_none());
    verify(&jwks(addr), t["access_token"].as_str().unwrap(), b"").unwrap();

    // omit_kid; header null removes typ; alg override in the header.
    let t = control_token(
        addr,
        json!({"omit_kid": true, "header": {"typ": null, "alg": "none"}}),
    );
    let (h, _) = decode(t["access_token"].as_str().unwrap());
    assert_eq!(h, json!({"alg": "none"}));
    assert!(t["kid"].is_null());
}

#[test]
fn forged_and_unpublished_signatures_fail() {
    let addr = shared();
    let keys = get(addr, "/_control/keys").json();
    for (alg, family) in [("RS256", "rsa"), ("ES256", "p256"), ("EdDSA", "ed25519")] {
        let t = control_token(addr, json!({"alg": alg, "sign_with": "forged"}));
        assert_eq!(t["kid"], keys[family], "forged uses the published kid");
        let err = verify(&jwks(addr), t["access_token"].as_str().unwrap(), b"").unwrap_err();
        assert!(err.to_lowercase().contains("signature"), "{alg}: {err}");

        let t = control_token(addr, json!({"alg": alg, "sign_with": "unpublished"}));
        let err = verify(&jwks(addr), t["access_token"].as_str().unwrap(), b"").unwrap_err();
        assert!(err.contains("not published"), "{alg}: {err}");
    }
    let t = control_token(addr, json!({"alg": "HS256", "sign_with": "forged"}));
    assert!(verify(
        &jwks(addr),
        t["access_token"].as_str().unwrap(),
        idp::DEFAULT_HMAC_SECRET.as_bytes()
    )
    .is_err());
}

#[test]
fn rotate_then_retire() {
    let addr = start();
    let before = get(addr, "/_control/keys").json();
    let old_token = control_token(addr, json!({}))["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let r = post(addr, "/_control/rotate?family=rsa", "");
    assert_eq!(r.status, 200);
    let rot = r.json();
    assert_eq!(rot["previous_kid"], before["rsa"]);
    let new_kid = rot["kid"].clone();
    assert_ne!(new_kid, before["rsa"]);

    // Planned rotation: both RSA keys published, old tokens still verify.
    let set = jwks(addr);
    let rsa_kids: Vec<&Value> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kty"] == "RSA")
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(rsa_kids, vec![&new_kid, &before["rsa"]]);
    verify(&set, &old_token, b"").expect("old token still verifies");
    let new_token = control_token(addr, json!({}));
    assert_eq!(new_token["kid"], new_kid);
    verify(&set, new_token["access_token"].as_str().unwrap(), b"").unwrap();

    // Rotating another family leaves RSA alone.
    let rot = post(addr, "/_control/rotate?family=ed25519", "").json();
    assert_eq!(rot["family"], "ed25519");
    assert_eq!(jwks(addr)["keys"].as_array().unwrap().len(), 6);

    // Emergency: retire the old keys.
    let r = post(addr, "/_control/retire", "").json();
    assert_eq!(r["retired"].as_array().unwrap().len(), 2);
    let set = jwks(addr);
    assert_eq!(set["keys"].as_array().unwrap().len(), 4);
    let err = verify(&set, &old_token, b"").unwrap_err();
    assert!(err.contains("not published"), "{err}");
    verify(&set, new_token["access_token"].as_str().unwrap(), b"").unwrap();

    assert_eq!(post(addr, "/_control/rotate?family=dsa", "").status, 400);
}

#[test]
fn jwks_fail_modes() {
    let addr = start();
    let path = format!("/{TENANT}/discovery/v2.0/keys");
    let set_mode = |q: &str| {
        let r = post(addr, &format!("/_control/jwks?{q}"), "");
        assert_eq!(r.status, 200, "{q}");
        r.json()
    };

    set_mode("mode=status500");
    assert_eq!(get(addr, &path).status, 500);

    set_mode("mode=garbage");
    let r = get(addr, &path);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    set_mode("mode=empty");
    assert_eq!(get(addr, &path).json(), json!({"keys": []}));

    set_mode("mode=huge");
    let r = get(addr, &path);
    assert_eq!(r.status, 200);
    assert!(r.body.len() >= 1024 * 1024, "{} bytes", r.body.len());
    assert!(r.json()["keys"].as_array().unwrap().len() > 1000);

    // max_age, issuer_field.
    let cfg = set_mode("mode=ok&max_age=300&issuer_field=1");
    assert_eq!(cfg["max_age"], 300);
    let r = get(addr, &path);
    assert_eq!(r.header("cache-control"), Some("max-age=300"));
    for k in r.json()["keys"].as_array().unwrap() {
        assert_eq!(
            k["issuer"],
            format!("https://login.microsoftonline.com/{TENANT}/v2.0")
        );
    }

    // delay_ms.
    set_mode("mode=ok&delay_ms=300");
    let t = Instant::now();
    assert_eq!(get(addr, &path).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // hang: the JWKS request gets no answer, other requests are served meanwhile.
    set_mode("mode=hang");
    let before = stats(addr)["jwks_requests"].as_u64().unwrap();
    let hung = std::thread::spawn(move || {
        request_timeout(addr, "GET", &path, &[], b"", Duration::from_secs(4))
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while stats(addr)["jwks_requests"].as_u64().unwrap() == before {
        assert!(Instant::now() < deadline, "hang request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!hung.is_finished(), "JWKS answered despite hang");
    assert!(hung.join().unwrap().is_err(), "hung request times out");

    // Back to normal; bad parameters are 400.
    set_mode("mode=ok");
    assert_eq!(get(addr, &format!("/{TENANT}/discovery/keys")).status, 200);
    assert_eq!(post(addr, "/_control/jwks?mode=weird", "").status, 400);
    assert_eq!(post(addr, "/_control/jwks?max_age=-1", "").status, 400);
}

/// 200 keep-alive clients at once against a JWKS that answers after 300 ms: a delay
/// holds up only its own answer, so every request is answered in about one delay, and
/// the connections stay usable for the next request.
#[test]
fn delayed_jwks_burst_on_keep_alive_connections() {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, Barrier};
    const CLIENTS: usize = 200;
    const REQUESTS: usize = 2;
    const DELAY: Duration = Duration::from_millis(300);
    let addr = start();
    let r = post(
        addr,
        &format!("/_control/jwks?delay_ms={}", DELAY.as_millis()),
        "",
    );
    assert_eq!(r.status, 200);
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Duration {
                let stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                barrier.wait();
                let mut slowest = Duration::ZERO;
                for i in 0..REQUESTS {
                    let t = Instant::now();
                    writer
                        .write_all(
                            format!("GET /{TENANT}/discovery/v2.0/keys HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                                .as_bytes(),
                        )
                        .expect("write");
                    let (status, body) = common::read_response(&mut reader);
                    slowest = slowest.max(t.elapsed());
                    assert_eq!(status, 200, "client {c} request {i}");
                    let set: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(set["keys"].as_array().unwrap().len(), 4);
                }
                slowest
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let slowest = clients
        .into_iter()
        .map(|h| h.join().expect("client failed"))
        .max()
        .unwrap();
    let total = started.elapsed();
    println!(
        "JWKS burst: {CLIENTS} keep-alive clients x {REQUESTS}, delay {DELAY:?}: all 200 in {total:?}, slowest request {slowest:?}"
    );
    assert!(slowest >= DELAY);
    // One request after another would take CLIENTS * REQUESTS * DELAY = 120 s.
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    assert!(total < Duration::from_secs(6), "total {total:?}");
    assert_eq!(
        stats(addr)["jwks_requests"],
        json!(CLIENTS * REQUESTS),
        "one JWKS request counted per request sent"
    );
}

#[test]
fn counters_count_and_reset() {
    let addr = start();
    for _ in 0..3 {
        get(addr, &format!("/{TENANT}/discovery/v2.0/keys"));
    }
    get(addr, &format!("/{TENANT}/discovery/keys"));
    get(addr, "/common/v2.0/.well-known/openid-configuration");
    get(addr, &format!("/{TENANT}/.well-known/openid-configuration"));
    control_token(addr, json!({}));
    let form = "grant_type=client_credentials&client_id=c&scope=api://x/.default";
    assert_eq!(post(addr, "/common/oauth2/v2.0/token", form).status, 200);
    get(addr, "/_control/keys");
    imds_get(
        addr,
        "api-version=2018-02-01&resource=https://ml.azure.com",
        true,
    );
    assert_eq!(
        stats(addr),
        json!({"jwks_requests": 4, "discovery_requests": 2, "token_requests": 2,
               "token_endpoint_requests": 1, "imds_requests": 1})
    );
    assert_eq!(post(addr, "/_control/reset", "").status, 200);
    assert_eq!(
        stats(addr),
        json!({"jwks_requests": 0, "discovery_requests": 0, "token_requests": 0,
               "token_endpoint_requests": 0, "imds_requests": 0})
    );
}

#[test]
fn bad_requests_get_400_not_a_crash() {
    let addr = shared();
    for body in [
        "not json",
        "[1,2]",
        r#"{"alg": "RS1"}"#,
        r#"{"alg": 5}"#,
        r#"{"ver": 3}"#,
        r#"{"sign_with": "x"}"#,
        r#"{"expires_in": "soon"}"#,
        r#"{"claims": []}"#,
        r#"{"header": "x"}"#,
    ] {
        let r = post(addr, "/_control/token", body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.json()["message"].is_string());
    }
    assert_eq!(post(addr, "/_control/nope", "").status, 404);
    assert_eq!(get(addr, "/x/y/z").status, 404);
    // Still alive.
    assert_eq!(get(addr, "/_control/stats").status, 200);
}

#[test]
fn binary_announces_port_and_exits_on_stdin_eof() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-idp"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--exit-on-stdin-eof",
            "--kid-prefix",
            "t",
        ])
        .args(["--issuer-template", "http://issuer.test/{tenant}/v2.0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    let keys = get(addr, "/_control/keys").json();
    assert!(keys["rsa"].as_str().unwrap().starts_with("t-rsa-"));
    let d = get(addr, "/abc/v2.0/.well-known/openid-configuration").json();
    assert_eq!(d["issuer"], "http://issuer.test/abc/v2.0");

    drop(child.stdin.take()); // close stdin
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "did not exit on stdin EOF");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const IMDS: &str = "/metadata/identity/oauth2/token";
const ML: &str = "https://ml.azure.com";

/// `GET` IMDS with `query`, with or without `Metadata: true`.
fn imds_get(addr: SocketAddr, query: &str, metadata: bool) -> common::Resp {
    let headers: &[(&str, &str)] = if metadata {
        &[("Metadata", "true")]
    } else {
        &[]
    };
    request(addr, "GET", &format!("{IMDS}?{query}"), headers, b"").expect("IMDS GET")
}

fn control(addr: SocketAddr, path_and_query: &str) -> Value {
    let r = post(addr, &format!("/_control/{path_and_query}"), "");
    assert_eq!(
        r.status,
        200,
        "{path_and_query}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

#[test]
fn imds_answers_like_azure_imds_with_a_verifiable_v1_token() {
    let addr = start();
    let before = aml_mocks::common::now();
    let r = imds_get(
        addr,
        "api-version=2018-02-01&resource=https%3A%2F%2Fml.azure.com",
        true,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json();
    // Every number is a string, as IMDS sends them.
    for field in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
        let v = a[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is not a string: {a}"));
        assert!(v.parse::<i64>().is_ok(), "{field}: {v}");
    }
    assert_eq!(a["expires_in"], "3599");
    assert_eq!(a["ext_expires_in"], "3599");
    let num = |f: &str| a[f].as_str().unwrap().parse::<i64>().unwrap();
    assert_eq!(num("expires_on") - num("not_before"), 3599);
    assert!((before..=before + 2).contains(&num("not_before")));
    assert_eq!(a["resource"], ML);
    assert_eq!(a["token_type"], "Bearer");
    assert_eq!(a["client_id"], idp::MANAGED_IDENTITY_CLIENT_ID);

    let token = a["access_token"].as_str().unwrap();
    let (header, _) = decode(token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], get(addr, "/_control/keys").json()["rsa"]);
    let c = verify(&jwks(addr), token, b"").expect("IMDS token verifies");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(c["aud"], ML);
    assert_eq!(c["appid"], idp::MANAGED_IDENTITY_CLIENT_ID);
    assert_eq!(c["oid"], idp::stable_uuid(idp::MANAGED_IDENTITY_CLIENT_ID));
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["exp"].as_i64().unwrap(), num("expires_on"));

    // A user-assigned identity: its client id in the answer and the token.
    let r = imds_get(
        addr,
        "api-version=2018-02-01&resource=api://other&client_id=uami-1",
        true,
    );
    let a = r.json();
    assert_eq!(a["client_id"], "uami-1");
    assert_eq!(a["resource"], "api://other");
    let c = verify(&jwks(addr), a["access_token"].as_str().unwrap(), b"").unwrap();
    assert_eq!(
        (&c["appid"], &c["aud"]),
        (&json!("uami-1"), &json!("api://other"))
    );
    assert_eq!(c["oid"], idp::stable_uuid("uami-1"));
    assert_eq!(stats(addr)["imds_requests"], 2);
}

#[test]
fn imds_refuses_what_azure_imds_refuses_and_counts_it() {
    let addr = start();
    let ok = "api-version=2018-02-01&resource=https://ml.azure.com";
    let refused = |r: common::Resp, status: u16, description: &str| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        assert_eq!(j["error"], "invalid_request");
        assert_eq!(j["error_description"], description);
        assert!(j.get("access_token").is_none());
    };
    refused(
        imds_get(addr, ok, false),
        400,
        "Required metadata header not specified",
    );
    let with = |headers: &[(&str, &str)]| {
        request(addr, "GET", &format!("{IMDS}?{ok}"), headers, b"").unwrap()
    };
    refused(
        with(&[("Metadata", "false")]),
        400,
        "Required metadata header not specified",
    );
    refused(
        with(&[("Metadata", "true"), ("X-Forwarded-For", "10.0.0.1")]),
        400,
        "Request contains X-Forwarded-For header",
    );
    refused(
        imds_get(addr, "resource=https://ml.azure.com", true),
        400,
        "Required query variable 'api-version' is missing",
    );
    refused(
        imds_get(addr, "api-version=2018-02-01", true),
        400,
        "Required audience variable missing.",
    );
    let r = request(
        addr,
        "POST",
        &format!("{IMDS}?{ok}"),
        &[("Metadata", "true")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 405);
    // Header value case does not matter; the request goes through.
    assert_eq!(with(&[("metadata", "True")]).status, 200);
    assert_eq!(stats(addr)["imds_requests"], 7);
}

#[test]
fn imds_modes_fail_hang_garbage_lifetime_and_reset() {
    let addr = start();
    let q = "api-version=2018-02-01&resource=https://ml.azure.com";

    let set = control(addr, "imds?lifetime=30");
    assert_eq!(set, json!({"mode": "ok", "lifetime": 30, "status": 500}));
    let a = imds_get(addr, q, true).json();
    assert_eq!(a["expires_in"], "30");
    let (_, c) = decode(a["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 30);

    control(addr, "imds?mode=fail");
    let r = imds_get(addr, q, true);
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "server_error");
    assert!(r.json()["error_description"].is_string());
    control(addr, "imds?mode=fail&status=429");
    let r = imds_get(addr, q, true);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (429, json!("temporarily_unavailable"))
    );
    // The checks come first: a refused request is refused, whatever the mode.
    assert_eq!(imds_get(addr, q, false).status, 400);

    control(addr, "imds?mode=garbage");
    let r = imds_get(addr, q, true);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    control(addr, "imds?mode=hang");
    let path = format!("{IMDS}?{q}");
    let t = Instant::now();
    let hung = request_timeout(
        addr,
        "GET",
        &path,
        &[("Metadata", "true")],
        b"",
        Duration::from_secs(1),
    );
    assert!(hung.is_err(), "hang mode answered");
    assert!(t.elapsed() >= Duration::from_millis(900));
    // Other requests are served meanwhile.
    assert_eq!(get(addr, "/_control/stats").status, 200);

    for bad in [
        "imds?mode=weird",
        "imds?lifetime=0",
        "imds?lifetime=x",
        "imds?status=200",
        "imds?status=700",
    ] {
        assert_eq!(
            post(addr, &format!("/_control/{bad}"), "").status,
            400,
            "{bad}"
        );
    }
    assert_eq!(stats(addr)["imds_requests"], 6);

    // Reset: counters zero, IMDS back to ok with the default lifetime.
    assert_eq!(control(addr, "reset")["imds_requests"], 0);
    let r = imds_get(addr, q, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["expires_in"], "3599");
    assert_eq!(stats(addr)["imds_requests"], 1);
}

#[test]
fn token_endpoint_modes_and_counter() {
    let addr = start();
    let form = "grant_type=client_credentials&client_id=app-1&client_secret=s\
                &scope=https%3A%2F%2Fml.azure.com%2F.default";
    let path = format!("/{TENANT}/oauth2/v2.0/token");

    control(addr, "token_endpoint?lifetime=120");
    let a = post(addr, &path, form).json();
    assert_eq!(a["expires_in"], 120, "numbers, as Entra sends them");
    let c = verify(&jwks(addr), a["access_token"].as_str().unwrap(), b"").unwrap();
    assert_eq!((&c["azp"], &c["aud"]), (&json!("app-1"), &json!(ML)));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);

    control(addr, "token_endpoint?mode=fail&status=401");
    let r = post(addr, &path, form);
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_client"))
    );
    // v1 too; `/_control/token` is not affected.
    assert_eq!(
        post(addr, &format!("/{TENANT}/oauth2/token"), form).status,
        401
    );
    control_token(addr, json!({}));

    control(addr, "token_endpoint?mode=garbage");
    let r = post(addr, &path, form);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    control(addr, "token_endpoint?mode=hang");
    let hung = request_timeout(
        addr,
        "POST",
        &path,
        &[],
        form.as_bytes(),
        Duration::from_secs(1),
    );
    assert!(hung.is_err(), "hang mode answered");

    // IMDS has its own behaviour.
    let r = imds_get(addr, "api-version=2018-02-01&resource=x", true);
    assert_eq!(r.status, 200);

    let s = stats(addr);
    assert_eq!(s["token_endpoint_requests"], 5);
    assert_eq!(s["token_requests"], 6, "token endpoint + /_control/token");
    assert_eq!(s["imds_requests"], 1);
    control(addr, "token_endpoint?mode=ok");
    assert_eq!(post(addr, &path, form).status, 200);
}
