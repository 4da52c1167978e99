//! The fuzz targets' bodies, one function per target, shared by the `cargo fuzz` crate
//! (`fuzz/fuzz_targets/*.rs`), the seed-corpus replay in `make test`
//! (`tests/fuzz_corpus.rs`) and the native hostile-input and property tests. Each takes
//! arbitrary bytes, drives one part of the filter's sans-IO core, and panics only when
//! an invariant breaks (a panic is what the fuzzer reports): the filter code itself must
//! never panic on any input.
#![allow(dead_code)]

use std::rc::Rc;

use azure_ml_kong::annotate::HeaderOp;
use azure_ml_kong::engine::{CredentialState, Ctx, Decision, Env, Filter, KeyState};
use azure_ml_kong::headers::in_identity_namespace;
use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::keycache::response::parse_discovery;
use azure_ml_kong::keycache::source::HttpUri;
use azure_ml_kong::ratelimit::Verdict;
use azure_ml_kong::request::RequestView;
use azure_ml_kong::verify::VerifiedCache;
use base64::Engine as _;
use jwt_simple::prelude::*;

pub const NOW: u64 = 1_700_000_000;
pub const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-fuzz-secret";
pub const HS_ISS: &str = "https://hs.example/";
pub const OID: &str = "11111111-2222-3333-4444-555555555555";
/// A test-only key (never used anywhere else).
pub const RSA_PEM: &str = include_str!("fixtures/test-rsa-2048.pem");

pub fn config_json() -> String {
    format!(
        r#"{{
        "providers": [
          {{"name": "entra", "issuers": ["https://login.microsoftonline.com/{{tenantid}}/v2.0"],
            "tenants": ["{T1}"],
            "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "audiences": ["api://gw"]}},
          {{"name": "hs", "issuers": ["{HS_ISS}"], "audiences": ["api://gw"],
            "algorithms": ["HS256"], "hmac_secret": "{SECRET}"}}
        ],
        "token_sources": [{{"header": "authorization", "prefix": "Bearer "}},
                          {{"query": "access_token"}}, {{"cookie": "aml_token"}}],
        "routes": [
          {{"name": "health", "match": {{"path": "/health"}}, "auth": "none"}},
          {{"name": "team", "match": {{"path": "/teams/{{team}}/score", "methods": ["POST"]}},
            "require": {{"all": [{{"claim": "team", "equals": "{{path.team}}"}},
                                {{"claim": "roles", "contains_any": ["Endpoint.Score"]}}]}},
            "set_request_headers": {{"authorization": "Bearer ml-key"}}}},
          {{"name": "any", "match": {{"path_prefix": "/any/"}}}}
        ],
        "claims_to_headers": [{{"claim": "oid", "header": "x-caller-oid"}},
                              {{"claim": "roles", "header": "x-caller-roles"}},
                              {{"claim": "name", "header": "x-caller-name"}}]
    }}"#
    )
}

pub struct Fixture {
    pub filter: Filter,
    pub keys: Rc<KeySet>,
    pub rsa: RS256KeyPair,
    /// `rs256(&good_claims())`, signed once (RSA signing would dominate the targets).
    pub good_token: String,
}

thread_local! {
    static FIXTURE: Rc<Fixture> = Rc::new(build_fixture());
}

fn build_fixture() -> Fixture {
    let filter = Filter::from_json(config_json().as_bytes()).expect("fixture config");
    let rsa = RS256KeyPair::from_pem(RSA_PEM)
        .expect("fixture key")
        .with_key_id("k1");
    let c = rsa.public_key().to_components();
    let jwk = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"k1","n":"{}","e":"{}"}}]}}"#,
        b64(&c.n),
        b64(&c.e)
    );
    let keys = Rc::new(KeySet::parse(jwk.as_bytes()).expect("fixture JWKS"));
    let good_token = sign_with(&rsa, &good_claims());
    Fixture {
        filter,
        keys,
        rsa,
        good_token,
    }
}

pub fn fixture() -> Rc<Fixture> {
    FIXTURE.with(Rc::clone)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims every route of the fixture accepts (team `fraud`).
pub fn good_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": format!("https://login.microsoftonline.com/{T1}/v2.0"), "tid": T1,
        "aud": "api://gw", "oid": OID, "sub": "s-1", "azp": "app-1", "team": "fraud",
        "roles": ["Endpoint.Score"], "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600
    })
}

/// An RS256 token with exactly these claims, signed by the fixture's key `k1`.
pub fn rs256(claims: &serde_json::Value) -> String {
    sign_with(&fixture().rsa, claims)
}

fn sign_with(key: &RS256KeyPair, claims: &serde_json::Value) -> String {
    let custom = claims.as_object().cloned().unwrap_or_default();
    let mut c = jwt_simple::claims::Claims::with_custom_claims(custom, Duration::from_secs(1));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    key.sign(c).expect("sign")
}

/// A compact token from raw header and payload bytes, HS256-signed with `key`.
pub fn hs256_raw(key: &[u8], header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let tag = HS256Key::from_bytes(key).authentication_tag(input.as_bytes());
    format!("{input}.{}", b64(&tag))
}

/// The adapter's state as the engine sees it: keys ready, no refetch, no limits.
pub struct FakeEnv {
    pub keys: Rc<KeySet>,
}

impl Env for FakeEnv {
    fn keys(&mut self, _provider: usize) -> KeyState {
        KeyState::Ready {
            keys: Rc::clone(&self.keys),
            generation: 1,
        }
    }
    fn refetch_for_unknown_kid(&mut self, _provider: usize) -> bool {
        false
    }
    fn rate_limit(&mut self, _bucket: &str, _limit: u64, _window: u64) -> Verdict {
        Verdict {
            allowed: true,
            retry_after_secs: 0,
            remaining: 0,
            reset_secs: 1,
        }
    }
    fn upstream_token(&mut self, _credential: usize) -> CredentialState {
        CredentialState::Unavailable {
            retry_after_secs: 1,
        }
    }
    fn acquire_slot(&mut self, _bucket: &str, _max_in_flight: u64) -> bool {
        true
    }
    fn client_address(&mut self) -> Option<String> {
        Some("192.0.2.1".into())
    }
}

pub fn ctx() -> Ctx<'static> {
    Ctx {
        now_ms: NOW * 1000,
        random: 0x1234,
        host_route: None,
    }
}

/// Decide one request with the fixture filter and a fresh verified-token cache.
pub fn decide_request(method: &str, path: &str, headers: &[(String, String)]) -> Decision {
    let fx = fixture();
    decide_with(&fx.filter, method, path, headers)
}

pub fn decide_with(
    filter: &Filter,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Decision {
    let fx = fixture();
    let req = RequestView {
        method,
        path,
        authority: "ml.example.com",
        headers,
    };
    let mut env = FakeEnv {
        keys: Rc::clone(&fx.keys),
    };
    let mut cache = VerifiedCache::new(16);
    let d = filter.decide(&req, ctx(), &mut env, &mut cache);
    check_decision(&req, &d);
    d
}

/// Invariants of every decision: a denial never echoes a token-looking value of the
/// request, and an allowed request never forwards a spoofed identity header.
pub fn check_decision(req: &RequestView<'_>, d: &Decision) {
    match d {
        Decision::Deny { response, .. } => {
            // The client's own `x-request-id` is echoed by design (1-128 safe characters,
            // `annotate::request_id`): too short to hold a real token.
            let rid = |k: &str| k.eq_ignore_ascii_case("x-request-id");
            let echoed_id = |w: &str| req.headers.iter().any(|(k, v)| rid(k) && v.contains(w));
            for (_, v) in req.headers.iter().filter(|(k, _)| !rid(k)) {
                for word in v.split([' ', ',', ';', '=']) {
                    if word.len() >= 24 && word.contains('.') && !echoed_id(word) {
                        assert!(!response.body.contains(word), "a denial echoed {word:?}");
                        for (_, hv) in &response.headers {
                            assert!(!hv.contains(word), "a denial header echoed {word:?}");
                        }
                    }
                }
            }
        }
        Decision::Allow { ops, .. } => check_header_plan(req.headers, ops),
        _ => {}
    }
}

/// What the upstream receives on Kong (the stricter host: a set changes the first copy in
/// place, a clear leaves an empty value): no identity-namespace header (any spelling)
/// carries a value the filter did not set.
pub fn check_header_plan(inbound: &[(String, String)], ops: &[HeaderOp]) {
    let mut up: Vec<(String, String)> = inbound.to_vec();
    for op in ops {
        match op {
            HeaderOp::Set { name, value } => {
                match up.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    Some(h) => h.1 = value.clone(),
                    None => up.push((name.clone(), value.clone())),
                }
            }
            HeaderOp::Clear { name } => {
                if let Some(h) = up.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    h.1 = String::new();
                }
            }
            HeaderOp::SetPath { .. } | HeaderOp::SetResponse { .. } => {}
        }
    }
    for (k, v) in &up {
        if !in_identity_namespace(k) || v.is_empty() {
            continue;
        }
        let set_by_filter = ops.iter().any(|op| {
            matches!(op, HeaderOp::Set { name, value } if name.eq_ignore_ascii_case(k) && value == v)
        });
        assert!(
            set_by_filter && !k.contains('_'),
            "spoofed identity header reaches the upstream: {k}: {v}"
        );
        assert!(!v.chars().any(char::is_control), "control character in {k}");
    }
}

/// Split fuzz bytes into `n` text fields (separated by 0xFF).
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |b| *b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}

/// Header lines `name: value` (one per line; a line without `:` is a name alone).
pub fn header_lines(text: &str) -> Vec<(String, String)> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .take(64)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_string(), v.trim_start().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

// ---- the targets ----------------------------------------------------------------------

/// Token decode + verify against both providers.
pub fn token(data: &[u8]) {
    let fx = fixture();
    let text = String::from_utf8_lossy(data);
    let Ok(jwt) = azure_ml_kong::jose::decode(&text, 16_384) else {
        return;
    };
    for i in 0..2 {
        if let Some(p) = fx.filter.providers.get(i) {
            let _ = azure_ml_kong::verify::verify(&jwt, i, p, Some(&fx.keys), NOW);
        }
    }
}

/// JWKS parsing, then key lookup for every kid and algorithm.
pub fn jwks(data: &[u8]) {
    let Ok(ks) = KeySet::parse(data) else {
        return;
    };
    assert!(ks.len() <= azure_ml_kong::jwks::MAX_KEYS);
    assert!(ks.skipped().len() <= azure_ml_kong::jwks::MAX_SKIPPED_NOTES + 1);
    let doc: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let kids: Vec<Option<String>> = doc["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .take(300)
                .map(|k| k["kid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for kid in kids.iter().chain([&None]) {
        for alg in ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"] {
            if let Some(a) = azure_ml_kong::jose::Alg::parse(alg) {
                let _ = ks.find(kid.as_deref(), a);
            }
        }
    }
}

/// Discovery document parsing and the issuer check.
pub fn discovery(data: &[u8]) {
    let fx = fixture();
    let via =
        HttpUri::parse("https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration")
            .expect("uri");
    if let Ok(d) = parse_discovery(data, &via) {
        assert!(
            d.jwks_uri.scheme == via.scheme,
            "a discovered jwks_uri downgraded https"
        );
        if let (Some(iss), Some(Some(src))) = (d.issuer, fx.filter.jwks_sources.first()) {
            let _ = src.issuer_fits(&iss);
        }
    }
}

/// Config parse + compile; a configuration that loads decides one request.
pub fn config(data: &[u8]) {
    if let Ok(f) = Filter::from_json(data) {
        let h = vec![(
            "authorization".to_string(),
            format!("Bearer {}", fixture().good_token),
        )];
        let _ = decide_with(&f, "POST", "/teams/fraud/score", &h);
    }
}

/// Policy evaluation (and identity headers) on arbitrary claims.
pub fn policy(data: &[u8]) {
    let fx = fixture();
    let Ok(claims) = azure_ml_kong::jose::strict_object(data) else {
        return;
    };
    let h: Vec<(String, String)> = Vec::new();
    for path in ["/teams/fraud/score", "/teams/x%20y/score", "/any/a"] {
        let req = RequestView {
            method: "POST",
            path,
            authority: "ml.example.com",
            headers: &h,
        };
        if let Some(m) = fx.filter.routes.find_request(&req) {
            let _ = m.route.authorize(&claims, &m.params);
            let ops = fx
                .filter
                .annotator
                .plan(Some(m.route), Some(&claims), None, &req, "r");
            check_header_plan(&h, &ops);
        }
    }
}

/// Path normalization (idempotent; an encoded separator never routes) + route matching.
pub fn path(data: &[u8]) {
    let f = fields(data, 2);
    let (method, path) = (f[0].as_str(), f[1].as_str());
    let norm = azure_ml_kong::policy::normalize_path(path);
    if let Ok(n) = norm {
        assert_eq!(
            azure_ml_kong::policy::normalize_path(n),
            Ok(n),
            "not idempotent"
        );
        let lower = n.to_ascii_lowercase();
        assert!(
            !lower.contains("%2f") && !lower.contains("%5c") && !n.contains('\\'),
            "an encoded separator passed normalization: {n:?}"
        );
    }
    let fx = fixture();
    let h: Vec<(String, String)> = Vec::new();
    let req = RequestView {
        method,
        path,
        authority: "ml.example.com",
        headers: &h,
    };
    let m = fx.filter.routes.find_request(&req);
    let d = decide_request(method, path, &h);
    if norm.is_err() {
        assert!(
            matches!(&d, Decision::Deny { response, .. } if response.status == 400),
            "a path not in normal form was not refused: {path:?}"
        );
    }
    drop(m);
}

/// The header plan on arbitrary inbound headers (a valid token added).
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut h = header_lines(&text);
    h.push((
        "authorization".into(),
        format!("Bearer {}", fixture().good_token),
    ));
    let _ = decide_request("POST", "/teams/fraud/score", &h);
    let _ = decide_request("GET", "/health", &h);
}

/// The engine's whole `decide` on an arbitrary request.
pub fn decide(data: &[u8]) {
    let f = fields(data, 3);
    let h = header_lines(&f[2]);
    let _ = decide_request(&f[0], &f[1], &h);
}

/// A target: its name (the `cargo fuzz` binary and corpus folder) and body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("token", token),
    ("jwks", jwks),
    ("discovery", discovery),
    ("config", config),
    ("policy", policy),
    ("path", path),
    ("headers", headers),
    ("decide", decide),
];
