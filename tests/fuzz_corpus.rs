//! The fuzz targets in `make test`: every committed seed (`fuzz/corpus/<target>/*`) and
//! every regression input (`fuzz/regressions/<target>/*`, crashes found while fuzzing)
//! goes through the same function `cargo fuzz` runs (`fuzz/targets.rs`), so the targets
//! cannot rot and a fixed crash stays fixed. `cargo test --test fuzz_corpus -- --ignored
//! write_seed_corpus` rewrites the seeds.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use serde_json::json;
use targets::*;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_seed_and_regression_input_replays_through_its_target() {
    for (name, run) in TARGETS {
        let seeds = files(&dir("corpus", name));
        assert!(
            seeds.len() >= 3,
            "{name}: no seed corpus (write_seed_corpus)"
        );
        for f in seeds.iter().chain(files(&dir("regressions", name)).iter()) {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} panics", f.display());
        }
    }
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let good = rs256(&good_claims());
    let hs = hs256_raw(
        SECRET.as_bytes(),
        br#"{"alg":"HS256","typ":"JWT"}"#,
        {
            let mut c = good_claims();
            c["iss"] = json!(HS_ISS);
            c.to_string()
        }
        .as_bytes(),
    );
    let expired = rs256(&{
        let mut c = good_claims();
        c["exp"] = json!(NOW - 3600);
        c
    });
    let jwks = {
        let c = fixture().rsa.public_key().to_components();
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"k1","use":"sig","n":"{}","e":"{}"}},
               {{"kty":"EC","crv":"P-256","kid":"e1","x":"AA","y":"AA"}},
               {{"kty":"OKP","crv":"Ed25519","kid":"d1","x":"{}"}},
               {{"kty":"oct","k":"AAAA"}}]}}"#,
            b64(&c.n),
            b64(&c.e),
            b64(&[7u8; 32])
        )
    };
    let b = |s: &str| s.as_bytes().to_vec();
    let req = |m: &str, p: &str, h: &str| {
        let mut v = m.as_bytes().to_vec();
        v.push(0xFF);
        v.extend_from_slice(p.as_bytes());
        v.push(0xFF);
        v.extend_from_slice(h.as_bytes());
        v
    };
    let auth = format!("authorization: Bearer {good}");
    vec![
        (
            "token",
            vec![b(&good), b(&hs), b(&expired), b("a.b.c"), b("e30.e30.")],
        ),
        (
            "jwks",
            vec![
                b(&jwks),
                b(r#"{"keys":[]}"#),
                b(r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#),
            ],
        ),
        (
            "discovery",
            vec![
                b(
                    r#"{"issuer":"https://login.microsoftonline.com/{tenantid}/v2.0","jwks_uri":"https://login.microsoftonline.com/common/discovery/v2.0/keys"}"#,
                ),
                b(r#"{"issuer":"https://evil.example/","jwks_uri":"https://keys.example.net/k"}"#),
                b(r#"{"jwks_uri":"http://login.microsoftonline.com/k"}"#),
            ],
        ),
        (
            "config",
            vec![
                b(&config_json()),
                b(
                    r#"{"providers":[{"name":"a","issuers":["x"],"audiences":["a"],"jwks_uri":"https://x/k"}],"routes":[{"name":"r"}]}"#,
                ),
                b(r#"{"providers":[],"routes":[]}"#),
            ],
        ),
        (
            "policy",
            vec![
                b(&good_claims().to_string()),
                b(r#"{"team":"fraud","roles":["Endpoint.Score","a,b"],"name":"a\r\nb"}"#),
                b(r#"{"team":{"x":1},"roles":"Endpoint.Score","oid":5}"#),
            ],
        ),
        (
            "path",
            vec![
                req("POST", "/teams/fraud/score", ""),
                req("GET", "/teams/fraud%2Fx/score?x=1", ""),
                req("post", "/teams/a;b/../score", ""),
                req("HEAD", "/any/%252e", ""),
            ],
        ),
        (
            "headers",
            vec![
                b("x-caller-oid: evil\nX-Caller-Admin: 1"),
                b("x_caller_oid: evil"),
                b("x-request-id: abc\nx-ms-client-request-id: x y\ncookie: aml_token=a; b=c"),
            ],
        ),
        (
            "decide",
            vec![
                req("POST", "/teams/fraud/score", &auth),
                req(
                    "POST",
                    "/teams/other/score",
                    &format!("{auth}\nx-caller-team: a"),
                ),
                req("GET", "/health", "x-caller-oid: a\nx-caller-oid: b"),
                req("POST", &format!("/any/x?access_token={good}"), &auth),
            ],
        ),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    for (name, inputs) in seeds() {
        let d = dir("corpus", name);
        std::fs::create_dir_all(&d).unwrap();
        for (i, data) in inputs.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), data).unwrap();
        }
    }
}
