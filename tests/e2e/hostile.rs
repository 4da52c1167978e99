//! End-to-end on both real hosts: the hostile-input table of issue 11 (the native one is
//! tests/hostile.rs). One gateway per host serves the whole table: hostile tokens, identity
//! and `Authorization` headers, request targets and methods. For each row: the status and
//! reason code, whether the backend saw the request (the mock Azure ML logs every request it
//! gets) and, when it should, with the verified identity headers only. Tokens that point at
//! an attacker's key URL must not make anyone fetch it. At the end the gateway still serves a
//! valid request and the host log shows no panic, trap or worker crash.
//!
//! Where the host itself refuses a request before the filter runs (header size limits, a
//! request line nginx or Envoy will not parse), the row says so per host.
//!
//! Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aml_harness::{both_hosts, entra_provider, http, Gateway, Host, ENDPOINT_KEY, OTHER_TENANT};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::RS256PublicKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a row expects on one host.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// 200 from the backend, with the verified `x-caller-oid` only.
    Allow,
    /// The filter's denial: status and reason code; the backend never sees it.
    Deny(u16, &'static str),
    /// The host refuses the request before the filter (any of these statuses); the backend
    /// never sees it.
    HostRefuses(&'static [u16]),
}

use Want::*;

/// nginx: `400 Bad Request` (request line or header it will not parse, or a header line
/// beyond `large_client_header_buffers`, which it reports as 494 and answers 400).
const NGINX_REFUSES: &[u16] = &[400, 494];
/// Envoy: 431 above `max_request_headers_kb` (60 KiB), 400 for what its codec refuses.
const ENVOY_REFUSES: &[u16] = &[400, 431];

struct Row {
    what: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    envoy: Want,
    kong: Want,
}

fn row(what: &str, method: &str, target: &str, headers: Vec<(String, String)>, w: Want) -> Row {
    row2(what, method, target, headers, w, w)
}

fn row2(
    what: &str,
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
    envoy: Want,
    kong: Want,
) -> Row {
    Row {
        what: what.to_string(),
        method: method.to_string(),
        target: target.to_string(),
        headers,
        envoy,
        kong,
    }
}

fn bearer(t: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {t}"))]
}

fn token_row(what: &str, t: &str, w: Want) -> Row {
    row(what, "POST", "/teams/fraud/score", bearer(t), w)
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// A raw HTTP/1.1 exchange: what came back, with the body de-chunked.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn backend_values(&self, name: &str) -> Vec<String> {
        self.json()["received"]["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p[0] == name)
                    .filter_map(|p| p[1].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One request sent byte for byte (methods, targets and header lines a client library
/// would refuse to send).
fn send(gw: &Gateway, method: &str, target: &str, headers: &[(String, String)]) -> Raw {
    let authority = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&authority).unwrap_or_else(|e| panic!("{authority}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nconnection: close\r\nhost: {authority}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = r#"{"input_data":{"data":[[1,2]]}}"#;
    if method.eq_ignore_ascii_case("POST") {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    // The host may answer (and close) before it has read a huge head.
    let _ = s.write_all(req.as_bytes());
    let out = String::from_utf8_lossy(&read_response(&mut s, method)).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Raw {
        status,
        head: head.to_string(),
        body,
    }
}

/// Reads one response: up to its end by `content-length` or the last chunk (a host may
/// hold the connection open a while after answering), else until the peer closes.
fn read_response(s: &mut TcpStream, method: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let body = &out[end + 4..];
            if method.eq_ignore_ascii_case("HEAD") || head.starts_with("http/1.1 304") {
                return out;
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) || body.ends_with(b"0\r\n\r\n") {
                return out;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Requests the mock backend has logged so far.
fn backend_seen(gw: &Gateway) -> usize {
    gw.aml
        .proc
        .stderr()
        .lines()
        .filter(|l| l.starts_with("mock-aml: "))
        .count()
}

/// A listener on 127.0.0.1 that only counts connections: a key URL nobody may fetch.
fn attacker() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            h.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (url, hits)
}

fn mint(gw: &Gateway, spec: Value) -> String {
    gw.idp
        .token(spec.clone())
        .unwrap_or_else(|e| panic!("mint {spec}: {e}"))
}

/// The PEM of the IdP's current RSA public key (what an HS256 key-confusion attack signs with).
fn idp_rsa_pem(gw: &Gateway, kid: &str) -> String {
    let r = http("GET", &gw.idp.jwks_uri(aml_harness::TENANT), &[], None).expect("jwks");
    let keys = r.json()["keys"].as_array().cloned().unwrap_or_default();
    let k = keys
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not in {}", r.body));
    let part = |f: &str| {
        URL_SAFE_NO_PAD
            .decode(k[f].as_str().unwrap_or_default())
            .expect("b64")
    };
    RS256PublicKey::from_components(&part("n"), &part("e"))
        .and_then(|k| k.to_pem())
        .expect("pem")
}

fn kid_of(token: &str) -> String {
    let h = token.split('.').next().unwrap_or_default();
    let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap_or_default())
        .unwrap_or(Value::Null);
    h["kid"].as_str().unwrap_or_default().to_string()
}

fn config(idp: u16) -> Value {
    let auth = json!({"authorization": format!("Bearer {ENDPOINT_KEY}")});
    json!({
        "providers": [entra_provider(idp)],
        "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                          {"query": "access_token"}],
        "routes": [
            {"name": "team", "match": {"path": "/teams/{team}/score", "methods": ["POST"]},
             "require": {"all": [{"claim": "team", "equals": "{path.team}"},
                                 {"claim": "roles", "contains_any": ["Endpoint.Score"]}]},
             "set_request_headers": auth},
            {"name": "any", "match": {"path_prefix": "/any/"}, "set_request_headers": auth}
        ],
        "claims_to_headers": [{"claim": "oid", "header": "x-caller-oid"},
                              {"claim": "roles", "header": "x-caller-roles"},
                              {"claim": "name", "header": "x-caller-name"}]
    })
}

/// The claims every row's token has unless it says otherwise.
fn claims(extra: Value) -> Value {
    let mut c = json!({"team": "fraud", "roles": ["Endpoint.Score"]});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

fn token_rows(gw: &Gateway, attacker_url: &str) -> Vec<Row> {
    let good = mint(gw, json!({"claims": claims(json!({}))}));
    let kid = kid_of(&good);
    let mut parts = good.splitn(3, '.');
    let (gh, gp, gs) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let other = mint(
        gw,
        json!({"claims": claims(json!({"name": "someone else"}))}),
    );
    let other_sig = other.rsplit('.').next().unwrap_or_default().to_string();
    let with_header = |h: &str| format!("{}.{gp}.{gs}", b64(h.as_bytes()));
    let signed_payload = |header: Value, payload: &[u8]| {
        mint(gw, json!({"header": header, "payload_b64": b64(payload)}))
    };
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&gp).unwrap_or_default())
        .unwrap_or(Value::Null);
    let payload_text = payload.to_string();
    let hs_input = format!("{}.{gp}", b64(br#"{"alg":"HS256","typ":"JWT"}"#));
    let hs_rsa = format!(
        "{hs_input}.{}",
        b64(&hmac_sha256(
            idp_rsa_pem(gw, &kid).as_bytes(),
            hs_input.as_bytes()
        ))
    );
    let deep = |n: usize| {
        payload_text.replacen(
            '{',
            &format!(r#"{{"deep":{}1{},"#, "[".repeat(n), "]".repeat(n)),
            1,
        )
    };
    let claimed = |c: Value| mint(gw, json!({"claims": claims(c)}));
    let k10 = "k".repeat(10_240);
    // nginx (Kong) refuses a header line beyond its 8 KiB buffers; Envoy takes up to 60 KiB.
    let too_long_for_nginx = |reason| row2_tok(Deny(401, reason), HostRefuses(NGINX_REFUSES));
    vec![
        token_row("baseline", &good, Allow),
        token_row(
            "alg none, no signature",
            &format!("{}.{gp}.", b64(br#"{"alg":"none"}"#)),
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "alg None",
            &with_header(r#"{"alg":"None"}"#),
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "alg NONE",
            &with_header(r#"{"alg":"NONE"}"#),
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "alg nOnE with kid",
            &with_header(&format!(r#"{{"alg":"nOnE","kid":"{kid}"}}"#)),
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "alg rs256 (case)",
            &with_header(&format!(r#"{{"alg":"rs256","kid":"{kid}"}}"#)),
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "HS256 signed with the RSA public key",
            &hs_rsa,
            Deny(401, "alg_not_allowed"),
        ),
        token_row(
            "kid with ../",
            &with_header(r#"{"alg":"RS256","kid":"../../../etc/passwd"}"#),
            Deny(401, "kid_unknown"),
        ),
        too_long_for_nginx("kid_unknown")(
            "10 KB kid",
            &with_header(&format!(r#"{{"alg":"RS256","kid":"{k10}"}}"#)),
        ),
        token_row(
            "jku/x5u/x5c at an attacker: ignored, never fetched",
            &mint(
                gw,
                json!({"claims": claims(json!({})),
                             "header": {"jku": format!("{attacker_url}/jwks"),
                                        "x5u": format!("{attacker_url}/cert.pem"),
                                        "x5c": ["MIIBattacker"]}}),
            ),
            Allow,
        ),
        token_row(
            "jku at an attacker, unknown kid: no fetch there",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "sign_with": "unpublished",
                             "header": {"jku": format!("{attacker_url}/jwks")}}),
            ),
            Deny(401, "kid_unknown"),
        ),
        token_row(
            "embedded jwk",
            &mint(
                gw,
                json!({"claims": claims(json!({})),
                             "header": {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}}),
            ),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "attacker key under the published kid",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "sign_with": "forged"}),
            ),
            Deny(401, "signature_invalid"),
        ),
        token_row(
            "crit",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "header": {"crit": ["exp"]}}),
            ),
            Deny(401, "crit_unsupported"),
        ),
        token_row(
            "JWE (5 parts)",
            &format!("{}.a.b.c.d", b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            Deny(401, "token_encrypted"),
        ),
        token_row(
            "JWE header in 3 parts",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "header": {"enc": "A256GCM"}}),
            ),
            Deny(401, "token_encrypted"),
        ),
        token_row(
            "nested JWT as the payload",
            &signed_payload(json!({"cty": "JWT"}), good.as_bytes()),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "duplicate claim",
            &signed_payload(
                json!({}),
                payload_text
                    .replacen('{', r#"{"oid":"admin","#, 1)
                    .as_bytes(),
            ),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "duplicate header member",
            &with_header(&format!(r#"{{"alg":"RS256","kid":"{kid}","alg":"none"}}"#)),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "exp string",
            &claimed(json!({"exp": "9999999999"})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "exp negative",
            &claimed(json!({"exp": -1})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "exp float",
            &claimed(json!({"exp": 4_102_444_800.5})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "exp huge",
            &claimed(json!({"exp": 1e30})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "nbf string",
            &claimed(json!({"nbf": "0"})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "nbf negative",
            &claimed(json!({"nbf": -5})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "aud as object",
            &claimed(json!({"aud": {"api://azureml-gateway": true}})),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "non-UTF-8 payload",
            &signed_payload(json!({}), b"{\"iss\":\"\xff\xfe\"}"),
            Deny(401, "token_malformed"),
        ),
        row2_tok(Deny(401, "token_malformed"), Deny(401, "token_malformed"))(
            "2,000-deep JSON",
            &signed_payload(json!({}), deep(2_000).as_bytes()),
        ),
        row2_tok(Deny(401, "token_too_large"), HostRefuses(NGINX_REFUSES))(
            "10,000-deep JSON",
            &signed_payload(json!({}), deep(10_000).as_bytes()),
        ),
        row2_tok(HostRefuses(ENVOY_REFUSES), HostRefuses(NGINX_REFUSES))(
            "1 MB token",
            &format!("{gh}.{}.{gs}", "A".repeat(1 << 20)),
        ),
        too_long_for_nginx("token_malformed")("10,000 segments", &".".repeat(9_999)),
        token_row(
            "2,000 segments",
            &vec!["a"; 2_000].join("."),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "padded base64",
            &format!("{gh}=.{gp}.{gs}"),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "whitespace in base64",
            &format!("{gh}.{gp} .{gs}"),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "empty signature",
            &format!("{gh}.{gp}."),
            Deny(401, "token_malformed"),
        ),
        token_row(
            "another token's signature",
            &format!("{gh}.{gp}.{other_sig}"),
            Deny(401, "signature_invalid"),
        ),
        token_row(
            "wrong tenant",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "tenant": OTHER_TENANT}),
            ),
            Deny(401, "tenant_not_allowed"),
        ),
        token_row(
            "Graph token with nonce",
            &mint(
                gw,
                json!({"claims": claims(json!({})), "header": {"nonce": "abc"}}),
            ),
            Deny(401, "graph_token_unverifiable"),
        ),
    ]
}

/// A token row with an expectation per host.
fn row2_tok(envoy: Want, kong: Want) -> impl Fn(&str, &str) -> Row {
    move |what, t| row2(what, "POST", "/teams/fraud/score", bearer(t), envoy, kong)
}

fn header_rows(t: &str) -> Vec<Row> {
    let auth = ("authorization".to_string(), format!("Bearer {t}"));
    let with = |extra: &[(&str, &str)]| {
        let mut h: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.push(auth.clone());
        h
    };
    let p = "/teams/fraud/score";
    vec![
        row(
            "identity header, other casing",
            "POST",
            p,
            with(&[("X-CALLER-OID", "spoofed-value")]),
            Allow,
        ),
        row(
            "identity header, surrounding whitespace",
            "POST",
            p,
            with(&[("x-caller-oid", "   spoofed-value   ")]),
            Allow,
        ),
        row(
            "foreign x-caller header",
            "POST",
            p,
            with(&[("X-Caller-Admin", "spoofed-value")]),
            Allow,
        ),
        row(
            "identity header, two copies in two casings",
            "POST",
            p,
            with(&[
                ("x-caller-oid", "spoofed-value"),
                ("X-Caller-Oid", "spoofed-value"),
            ]),
            Deny(400, "duplicate_identity_header"),
        ),
        row(
            "identity header, 50 copies",
            "POST",
            p,
            with(&[("x-caller-oid", "spoofed-value"); 50]),
            Deny(400, "duplicate_identity_header"),
        ),
        row(
            "identity header, underscore",
            "POST",
            p,
            with(&[("x_caller_oid", "spoofed-value")]),
            Deny(400, "duplicate_identity_header"),
        ),
        // nginx refuses an obs-folded header line; Envoy unfolds it (the filter replaces it).
        row2(
            "identity header, obs-fold",
            "POST",
            p,
            with(&[("x-caller-oid", "spoofed-value\r\n spoofed-value")]),
            Allow,
            HostRefuses(NGINX_REFUSES),
        ),
        row(
            "Authorization with two schemes",
            "POST",
            p,
            vec![(
                "authorization".into(),
                format!("Basic dXNlcjpwdw==, Bearer {t}"),
            )],
            Deny(401, "token_missing"),
        ),
        row(
            "two tokens in one Authorization",
            "POST",
            p,
            vec![("authorization".into(), format!("Bearer {t}, Bearer {t}"))],
            Deny(401, "token_ambiguous"),
        ),
        row(
            "two tokens separated by a space",
            "POST",
            p,
            vec![("authorization".into(), format!("Bearer {t} {t}"))],
            Deny(401, "token_malformed"),
        ),
        // Envoy folds a repeated `authorization` into one comma-joined value before the
        // filter; nginx refuses a second `Authorization` line itself.
        row2(
            "two Authorization headers",
            "POST",
            p,
            vec![
                auth.clone(),
                ("Authorization".into(), format!("Bearer {t}")),
            ],
            Deny(401, "token_ambiguous"),
            HostRefuses(NGINX_REFUSES),
        ),
        row(
            "header and query token",
            "POST",
            &format!("{p}?access_token={t}"),
            vec![auth.clone()],
            Deny(401, "token_ambiguous"),
        ),
        row(
            "lower-case scheme",
            "POST",
            p,
            vec![("authorization".into(), format!("bearer {t}"))],
            Allow,
        ),
    ]
}

fn target_rows(t: &str) -> Vec<Row> {
    let h = bearer(t);
    let r = |m: &str, p: &str, w: Want| row(&format!("{m} {p}"), m, p, h.clone(), w);
    let r2 = |m: &str, p: &str, e: Want, k: Want| row2(&format!("{m} {p}"), m, p, h.clone(), e, k);
    vec![
        r("POST", "/teams/fraud/score", Allow),
        r(
            "POST",
            "/teams/fraud/score;jsessionid=1",
            Deny(403, "no_route"),
        ),
        r(
            "POST",
            "/teams/fraud;x=1/score",
            Deny(403, "insufficient_scope"),
        ),
        r(
            "POST",
            "/teams/fraud%2Fscore",
            Deny(400, "path_not_normalized"),
        ),
        r(
            "POST",
            "/teams/fraud%252F..%252Fother/score",
            Deny(400, "path_not_normalized"),
        ),
        r(
            "POST",
            "/teams/%2e%2e/score",
            Deny(400, "path_not_normalized"),
        ),
        r(
            "POST",
            "/teams/fraud/../other/score",
            Deny(400, "path_not_normalized"),
        ),
        r(
            "POST",
            "//teams/fraud/score",
            Deny(400, "path_not_normalized"),
        ),
        r(
            "POST",
            "/teams/fraud\\score",
            Deny(400, "path_not_normalized"),
        ),
        r("POST", "http://evil.example/teams/fraud/score", Allow),
        r2(
            "POST",
            "*",
            HostRefuses(ENVOY_REFUSES),
            HostRefuses(NGINX_REFUSES),
        ),
        r2(
            "post",
            "/teams/fraud/score",
            HostRefuses(ENVOY_REFUSES),
            HostRefuses(NGINX_REFUSES),
        ),
        r("GET", "/teams/fraud/score", Deny(403, "no_route")),
        r("HEAD", "/teams/fraud/score", Deny(403, "no_route")),
        r("OPTIONS", "/teams/fraud/score", Deny(403, "no_route")),
        r("HEAD", "/any/x", Allow),
        r("OPTIONS", "/any/x", Allow),
    ]
}

fn claim_rows(gw: &Gateway) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    for (what, name) in [
        ("CR/LF", "a\r\nx-caller-oid: admin"),
        ("NUL", "a\u{0}b"),
        ("LF", "a\nx-caller-oid: admin"),
        ("DEL", "a\u{7f}b"),
    ] {
        let t = mint(gw, json!({"claims": claims(json!({"name": name}))}));
        out.push((format!("claim with {what}"), t, "x-caller-name"));
    }
    let t = mint(
        gw,
        json!({"claims": claims(json!({"roles": ["Endpoint.Score", "x,Admin"]}))}),
    );
    out.push(("ambiguous roles array".into(), t, "x-caller-roles"));
    out
}

/// Checks one row; returns what went wrong.
fn check(gw: &Gateway, row: &Row, oid: &str) -> Option<String> {
    let want = if gw.is_kong() { row.kong } else { row.envoy };
    let before = backend_seen(gw);
    let r = send(gw, &row.method, &row.target, &row.headers);
    let reached = backend_seen(gw) - before;
    let got = format!(
        "got {} {} (backend saw {reached})",
        r.status,
        r.json()["error"].as_str().unwrap_or("-")
    );
    let fail = |why: &str| Some(format!("{}: {why}; {got}", row.what));
    let is_head = row.method.eq_ignore_ascii_case("HEAD");
    match want {
        Allow => {
            if r.status != 200 || reached != 1 {
                return fail("expected 200 from the backend");
            }
            if is_head {
                return None;
            }
            let oids = r.backend_values("x-caller-oid");
            if oids != [oid] {
                return fail(&format!("backend x-caller-oid {oids:?}"));
            }
            if r.body.contains("spoofed-value") {
                return fail(&format!("a spoofed value reached the backend: {}", r.body));
            }
        }
        Deny(status, reason) => {
            if r.status != status || reached != 0 {
                return fail(&format!(
                    "expected {status} {reason}, nothing to the backend"
                ));
            }
            if !is_head && r.json()["error"] != reason {
                return fail(&format!("expected reason {reason}: {}", r.body));
            }
        }
        HostRefuses(statuses) => {
            if !statuses.contains(&r.status) || reached != 0 {
                return fail(&format!(
                    "expected the host to refuse with one of {statuses:?}"
                ));
            }
        }
    }
    // A denial never echoes the token.
    for (k, v) in &row.headers {
        if k.eq_ignore_ascii_case("authorization") && want_is_denial(want) {
            let sig = v.rsplit('.').next().unwrap_or_default();
            if sig.len() >= 16 && (r.body.contains(sig) || r.head.contains(sig)) {
                return fail("the token was echoed");
            }
        }
    }
    None
}

fn want_is_denial(w: Want) -> bool {
    !matches!(w, Allow)
}

/// The host is running, and its log shows no Wasm panic or trap, nor (Kong) a worker crash.
fn assert_healthy(gw: &mut Gateway) {
    let host = gw.host();
    assert!(gw.is_running(), "{host} exited\n{}", gw.log_tail(40));
    let bad = gw.vm_fault_lines();
    assert!(bad.is_empty(), "{host} log:\n{}", bad.join("\n"));
}

both_hosts! {
    /// The whole hostile-input table through one gateway.
    fn hostile_input_table(host: Host) {
        let (attacker_url, attacker_hits) = attacker();
        let mut gw = Gateway::builder(host)
            // Kong's own default (underscores on): the filter must refuse `x_caller_*` itself.
            .kong_conf("nginx_proxy_underscores_in_headers", "")
            .start(config)
            .unwrap_or_else(|e| panic!("{e}"));
        let good = mint(&gw, json!({"claims": claims(json!({}))}));
        let first = send(&gw, "POST", "/teams/fraud/score", &bearer(&good));
        assert_eq!(first.status, 200, "{}\n{}", first.body, gw.log_tail(40));
        let oid = first.backend_values("x-caller-oid").first().cloned().expect("x-caller-oid");
        let jwks_before = gw.idp.jwks_requests().unwrap_or(0);

        let mut rows = token_rows(&gw, &attacker_url);
        rows.extend(header_rows(&good));
        rows.extend(target_rows(&good));
        let mut failures = Vec::new();
        for row in &rows {
            if let Some(f) = check(&gw, row, &oid) {
                failures.push(f);
            }
        }
        for (what, t, header) in claim_rows(&gw) {
            let r = send(&gw, "POST", "/teams/fraud/score", &bearer(&t));
            let values = r.backend_values(header);
            if r.status != 200 || r.backend_values("x-caller-oid") != [oid.as_str()] || values != [""] {
                failures.push(format!("{what}: {} {header}={values:?} {}", r.status, r.body));
            }
        }
        println!("{host}: {} rows + 5 claim rows, {} failed", rows.len(), failures.len());
        assert!(failures.is_empty(), "{host}:\n{}\n{}", failures.join("\n"), gw.log_tail(20));

        assert_eq!(attacker_hits.load(Ordering::SeqCst), 0, "the attacker's key URL was fetched");
        // Unknown kids may make the filter refetch from the configured IdP (rate-limited).
        let jwks = gw.idp.jwks_requests().unwrap_or(0) - jwks_before;
        println!("{host}: {jwks} JWKS fetches from the configured IdP during the table");
        let again = mint(&gw, json!({"claims": claims(json!({}))}));
        let last = send(&gw, "POST", "/teams/fraud/score", &bearer(&again));
        assert_eq!(last.status, 200, "the gateway keeps serving: {}", last.body);
        assert_healthy(&mut gw);
    }
}
