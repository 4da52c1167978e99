//! Native cost of one token verification per algorithm (decode + select + verify),
//! plus the verified-cache hit path and JWKS parsing.
//!
//! cargo run --release --example bench_verify

use std::time::Instant;

use azure_ml_kong::jose::{self, Alg};
use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::providers::Providers;
use azure_ml_kong::verify::{verify, VerifiedCache};
use base64::Engine as _;
use jwt_simple::prelude::*;

const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rsa = RS256KeyPair::generate(2048).unwrap();
    let der = rsa.to_der().unwrap();
    let es256 = ES256KeyPair::generate();
    let es384 = ES384KeyPair::generate();
    let ed = Ed25519KeyPair::generate();
    let c = rsa.public_key().to_components();
    let p256 = es256.public_key().public_key().to_bytes_uncompressed();
    let p384 = es384.public_key().public_key().to_bytes_uncompressed();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"rsa","n":"{}","e":"{}"}},
            {{"kty":"EC","crv":"P-256","kid":"p256","x":"{}","y":"{}"}},
            {{"kty":"EC","crv":"P-384","kid":"p384","x":"{}","y":"{}"}},
            {{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}}]}}"#,
        b64(&c.n),
        b64(&c.e),
        b64(&p256[1..33]),
        b64(&p256[33..65]),
        b64(&p384[1..49]),
        b64(&p384[49..97]),
        b64(&ed.public_key().to_bytes()),
    );
    let algs: Vec<String> = Alg::ALL.iter().map(|a| format!("\"{a}\"")).collect();
    let config = azure_ml_kong::config::parse(format!(
        r#"{{"routes":[],"providers":[{{"name":"entra","issuers":["https://login.microsoftonline.com/{{tenantid}}/v2.0"],
            "jwks_uri":"https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "audiences":["api://gw"],"algorithms":[{}],"hmac_secret":"{SECRET}"}}]}}"#,
        algs.join(",")
    ).as_bytes())
    .unwrap();
    let cfg = config.providers[0].clone();
    let providers = Providers::new(&[cfg]).unwrap();

    let n = 200;
    let t = Instant::now();
    let mut keys = None;
    for _ in 0..n {
        keys = Some(KeySet::parse(jwks.as_bytes()).unwrap());
    }
    let keys = keys.unwrap();
    println!(
        "JWKS parse (1 RSA key -> 6 variants, P-256, P-384, Ed25519): {:>8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );

    let custom: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
        r#"{{"iss":"https://login.microsoftonline.com/{TID}/v2.0","tid":"{TID}","aud":"api://gw",
            "oid":"00000000-0000-0000-0000-000000000001","roles":["Endpoint.Score"],"scp":"user_impersonation",
            "iat":{},"nbf":{},"exp":{}}}"#,
        now - 10,
        now - 10,
        now + 3600
    ))
    .unwrap();
    let claims = || {
        let mut c =
            jwt_simple::claims::Claims::with_custom_claims(custom.clone(), Duration::from_secs(1));
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        c
    };
    println!(
        "{:<7} {:>12} {:>12}   (decode+select+verify, release, native)",
        "alg", "us/verify", "verifies/s"
    );
    for alg in Alg::ALL {
        let token = match alg {
            Alg::RS256 => RS256KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::RS384 => RS384KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::RS512 => RS512KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::PS256 => PS256KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::PS384 => PS384KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::PS512 => PS512KeyPair::from_der(&der)
                .unwrap()
                .with_key_id("rsa")
                .sign(claims()),
            Alg::ES256 => ES256KeyPair::from_bytes(&es256.to_bytes())
                .unwrap()
                .with_key_id("p256")
                .sign(claims()),
            Alg::ES384 => ES384KeyPair::from_bytes(&es384.to_bytes())
                .unwrap()
                .with_key_id("p384")
                .sign(claims()),
            Alg::EdDSA => Ed25519KeyPair::from_bytes(&ed.to_bytes())
                .unwrap()
                .with_key_id("ed")
                .sign(claims()),
            Alg::HS256 => HS256Key::from_bytes(SECRET.as_bytes()).authenticate(claims()),
            Alg::HS384 => HS384Key::from_bytes(SECRET.as_bytes()).authenticate(claims()),
            Alg::HS512 => HS512Key::from_bytes(SECRET.as_bytes()).authenticate(claims()),
        }
        .unwrap();
        let run = || {
            let d = jose::decode(&token, 16384).unwrap();
            let i = providers.select(&d.claims, None).unwrap();
            verify(&d, i, providers.get(i).unwrap(), Some(&keys), now).unwrap()
        };
        run();
        let iters = if alg.is_hmac() { 20_000 } else { 500 };
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(run());
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        println!("{:<7} {:>12.1} {:>12.0}", alg.as_str(), us, 1e6 / us);
    }

    // Decode alone and a cache hit (hash + lookup), for a typical RS256 token.
    let token = RS256KeyPair::from_der(&der)
        .unwrap()
        .with_key_id("rsa")
        .sign(claims())
        .unwrap();
    let iters = 50_000;
    let t = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(jose::decode(&token, 16384).unwrap());
    }
    println!(
        "decode only ({} bytes): {:>8.2} us",
        token.len(),
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    );
    let d = jose::decode(&token, 16384).unwrap();
    let v = verify(&d, 0, providers.get(0).unwrap(), Some(&keys), now).unwrap();
    let mut cache = VerifiedCache::new(4096);
    cache.insert(&token, v, 1);
    let t = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(cache.get(&token, now, 1).is_some());
    }
    println!(
        "cache hit (sha256 + lookup):  {:>8.2} us",
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    );
}
