//! Native cost of the whole per-request decision on a verified-token cache hit (the
//! `make bench` scenario C path minus the host calls), broken into its parts.
//!
//! cargo run --release --example bench_decide

use std::rc::Rc;
use std::time::Instant;

use azure_ml_kong::engine::{CredentialState, Ctx, Decision, Env, Filter, KeyState};
use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::ratelimit::Verdict;
use azure_ml_kong::request::RequestView;
use azure_ml_kong::verify::VerifiedCache;
use base64::Engine as _;
use jwt_simple::prelude::*;

const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

struct FixedKeys(Rc<KeySet>);

impl Env for FixedKeys {
    fn keys(&mut self, _provider: usize) -> KeyState {
        KeyState::Ready {
            keys: self.0.clone(),
            generation: 1,
        }
    }
    fn refetch_for_unknown_kid(&mut self, _provider: usize) -> bool {
        false
    }
    fn rate_limit(&mut self, _bucket: &str, _limit: u64, _window_secs: u64) -> Verdict {
        unreachable!("no rate limits configured")
    }
    fn upstream_token(&mut self, _credential: usize) -> CredentialState {
        unreachable!("no upstream credentials configured")
    }
    fn acquire_slot(&mut self, _bucket: &str, _max_in_flight: u64) -> bool {
        unreachable!("no concurrency limits configured")
    }
    fn client_address(&mut self) -> Option<String> {
        None
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn time(label: &str, iters: u32, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    println!(
        "{label:<44} {:>8.2} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
    );
}

fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rsa = RS256KeyPair::generate(2048).unwrap();
    let c = rsa.public_key().to_components();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"rsa","n":"{}","e":"{}"}}]}}"#,
        b64(&c.n),
        b64(&c.e)
    );
    let keys = Rc::new(KeySet::parse(jwks.as_bytes()).unwrap());
    // The harness's default_filter_config, with an Entra-like token of about the same size.
    let filter = Filter::from_json(
        format!(
            r#"{{"providers":[{{"name":"entra",
              "issuers":["https://login.microsoftonline.com/{{tenantid}}/v2.0","https://sts.windows.net/{{tenantid}}/"],
              "tenants":["{TID}"],"jwks_uri":"http://127.0.0.1:1/keys","upstream":"mock_idp",
              "audiences":["api://azureml-gateway"]}}],
              "routes":[{{"name":"health","match":{{"path":"/health"}},"auth":"none"}},
                {{"name":"score","match":{{"path_prefix":"/"}},
                  "set_request_headers":{{"authorization":"Bearer endpoint-key"}}}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let custom: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
        r#"{{"iss":"https://login.microsoftonline.com/{TID}/v2.0","tid":"{TID}",
            "aud":"api://azureml-gateway","oid":"00000000-0000-0000-0000-000000000001",
            "sub":"subject-1","azp":"11111111-2222-3333-4444-555555555555","ver":"2.0",
            "roles":["Endpoint.Score"],"scp":"user_impersonation","name":"Bench Caller",
            "preferred_username":"bench@example.com","uti":"abcdefghijklmnop",
            "iat":{},"nbf":{},"exp":{}}}"#,
        now - 10,
        now - 10,
        now + 3600
    ))
    .unwrap();
    let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(1));
    claims.issued_at = None;
    claims.expires_at = None;
    claims.invalid_before = None;
    let token = rsa.with_key_id("rsa").sign(claims).unwrap();
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/"),
        (":authority", "127.0.0.1:10000"),
        (":scheme", "http"),
        ("authorization", &format!("Bearer {token}")),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let req = RequestView {
        method: "GET",
        path: "/",
        authority: "127.0.0.1:10000",
        headers: &headers,
    };
    println!("token: {} bytes", token.len());
    let mut env = FixedKeys(keys);
    let mut cache = VerifiedCache::new(4096);
    let ctx = Ctx {
        now_ms: now * 1000,
        random: 42,
        host_route: None,
    };
    let iters = 50_000;
    let mut decide = || filter.decide(&req, ctx, &mut env, &mut cache);
    assert!(matches!(decide(), Decision::Allow { .. }));
    time("decide (cache hit, allow)", iters, || {
        std::hint::black_box(decide());
    });
    let d = decide();
    let Decision::Allow { ops, audit } = &d else {
        unreachable!()
    };
    println!("header ops: {}", ops.len());
    time("audit.to_json_line", iters, || {
        std::hint::black_box(audit.to_json_line());
    });
    time("metrics::decision_counter", iters, || {
        std::hint::black_box(azure_ml_kong::metrics::decision_counter(audit));
    });
    time("sha256(token)", iters, || {
        use sha2::Digest as _;
        std::hint::black_box(sha2::Sha256::digest(token.as_bytes()));
    });
    let dj = azure_ml_kong::jose::decode(&token, 16384).unwrap();
    time("claims clone", iters, || {
        std::hint::black_box(dj.claims.clone());
    });
    time("route find + check_inbound", iters, || {
        let m = filter.routes.find_request(&req);
        let r = m.as_ref().map(|m| m.route);
        std::hint::black_box(filter.annotator.check_inbound(&req, r).is_ok());
    });
    time("token extract", iters, || {
        std::hint::black_box(filter.tokens.extract(&req).is_ok());
    });
    time("annotator.plan", iters, || {
        let m = filter.routes.find_request(&req);
        let r = m.as_ref().map(|m| m.route);
        std::hint::black_box(
            filter
                .annotator
                .plan(r, Some(&dj.claims), None, &req, "rid"),
        );
    });
    time("jose::decode", iters, || {
        std::hint::black_box(azure_ml_kong::jose::decode(&token, 16384).unwrap());
    });
}
