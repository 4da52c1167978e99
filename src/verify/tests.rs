//! End-to-end tests of decode → select → verify, table-driven over every algorithm,
//! every reason code this path produces, and the JOSE hygiene cases.

use std::sync::OnceLock;

use jwt_simple::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::config::ProviderConfig;
use crate::jose::testutil::{b64, hs_token, signing_input};
use crate::jose::{decode, Alg};
use crate::jwks::testkeys::*;
use crate::jwks::KeySet;
use crate::providers::Providers;

const NOW: u64 = 1_700_000_000;
const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const T2: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";
const MAX: usize = 16384;

fn v2(t: &str) -> String {
    format!("https://login.microsoftonline.com/{t}/v2.0")
}
fn v1(t: &str) -> String {
    format!("https://sts.windows.net/{t}/")
}

struct Fx {
    es256: ES256KeyPair,
    es256_other: ES256KeyPair,
    es384: ES384KeyPair,
    es384_other: ES384KeyPair,
    ed: Ed25519KeyPair,
    ed_other: Ed25519KeyPair,
    keys: KeySet,
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let es256 = ES256KeyPair::generate();
        let es384 = ES384KeyPair::generate();
        let ed = Ed25519KeyPair::generate();
        let keys = KeySet::parse(
            jwks(&[
                rsa_jwk(RSA_A_PEM, "rsa", ""),
                p256_jwk(&es256, "p256", ""),
                p384_jwk(&es384, "p384", ""),
                ed_jwk(&ed, "ed", ""),
            ])
            .as_bytes(),
        )
        .unwrap();
        Fx {
            es256,
            es256_other: ES256KeyPair::generate(),
            es384,
            es384_other: ES384KeyPair::generate(),
            ed,
            ed_other: Ed25519KeyPair::generate(),
            keys,
        }
    })
}

fn kid_for(alg: Alg) -> &'static str {
    match alg {
        Alg::ES256 => "p256",
        Alg::ES384 => "p384",
        Alg::EdDSA => "ed",
        a if a.is_hmac() => "hs",
        _ => "rsa",
    }
}

/// A kid in the test JWKS whose key type does not fit `alg`.
fn wrong_kid_for(alg: Alg) -> &'static str {
    match alg {
        Alg::ES256 => "p384",
        Alg::ES384 => "p256",
        Alg::EdDSA => "rsa",
        _ => "p256",
    }
}

fn good_claims() -> Value {
    json!({
        "iss": v2(T1), "tid": T1, "aud": "api://gw", "oid": "o-1", "sub": "s",
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600, "ver": "2.0"
    })
}

/// Sign `payload` (exactly these claims) with `alg`; `other` = a different key.
fn sign_with(
    alg: Alg,
    kid: Option<&str>,
    payload: &Value,
    other: bool,
    meta: Option<KeyMetadata>,
) -> String {
    let f = fx();
    let custom = payload.as_object().unwrap().clone();
    let mut claims = jwt_simple::claims::Claims::with_custom_claims(custom, Duration::from_secs(1));
    claims.issued_at = None;
    claims.expires_at = None;
    claims.invalid_before = None;
    let pem = if other { RSA_B_PEM } else { RSA_A_PEM };
    macro_rules! go {
        ($k:expr) => {{
            let mut k = $k;
            if let Some(kid) = kid {
                k = k.with_key_id(kid);
            }
            if let Some(m) = meta.clone() {
                k.attach_metadata(m).unwrap();
            }
            k.sign(claims).unwrap()
        }};
    }
    macro_rules! mac {
        ($t:ty) => {{
            let s: &[u8] = if other {
                b"another-secret-another-secret-xx"
            } else {
                SECRET.as_bytes()
            };
            let mut k = <$t>::from_bytes(s);
            if let Some(kid) = kid {
                k = k.with_key_id(kid);
            }
            k.authenticate(claims).unwrap()
        }};
    }
    match alg {
        Alg::RS256 => go!(RS256KeyPair::from_pem(pem).unwrap()),
        Alg::RS384 => go!(RS384KeyPair::from_pem(pem).unwrap()),
        Alg::RS512 => go!(RS512KeyPair::from_pem(pem).unwrap()),
        Alg::PS256 => go!(PS256KeyPair::from_pem(pem).unwrap()),
        Alg::PS384 => go!(PS384KeyPair::from_pem(pem).unwrap()),
        Alg::PS512 => go!(PS512KeyPair::from_pem(pem).unwrap()),
        Alg::ES256 => go!(ES256KeyPair::from_bytes(
            &if other { &f.es256_other } else { &f.es256 }.to_bytes()
        )
        .unwrap()),
        Alg::ES384 => go!(ES384KeyPair::from_bytes(
            &if other { &f.es384_other } else { &f.es384 }.to_bytes()
        )
        .unwrap()),
        Alg::EdDSA => go!(Ed25519KeyPair::from_bytes(
            &if other { &f.ed_other } else { &f.ed }.to_bytes()
        )
        .unwrap()),
        Alg::HS256 => mac!(HS256Key),
        Alg::HS384 => mac!(HS384Key),
        Alg::HS512 => mac!(HS512Key),
    }
}

fn sign(alg: Alg, payload: &Value) -> String {
    sign_with(alg, Some(kid_for(alg)), payload, false, None)
}

fn provider_cfg(extra: &str) -> ProviderConfig {
    let algs: Vec<String> = Alg::ALL.iter().map(|a| format!("\"{a}\"")).collect();
    let s = format!(
        r#"{{"name":"entra","issuers":["https://login.microsoftonline.com/{{tenantid}}/v2.0","https://sts.windows.net/{{tenantid}}/"],
            "jwks_uri":"https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "audiences":["api://gw","https://ml.azure.com"],"algorithms":[{}],
            "hmac_secret":"{SECRET}","max_lifetime_seconds":86400{extra}}}"#,
        algs.join(",")
    );
    crate::config::from_json::provider(&s).unwrap()
}

fn all_algs() -> Providers {
    Providers::new(&[provider_cfg("")]).unwrap()
}

/// decode → select → verify, as the engine does it.
fn run(ps: &Providers, keys: Option<&KeySet>, token: &str, now: u64) -> Result<Verified, Reason> {
    let d = decode(token, MAX)?;
    let i = ps.select(&d.claims, None)?;
    verify(&d, i, ps.get(i).unwrap(), keys, now)
}

fn check(token: &str) -> Result<Verified, Reason> {
    run(&all_algs(), Some(&fx().keys), token, NOW)
}

/// Change one character in the middle of the signature (keeps it valid base64url).
fn tamper_sig(t: &str) -> String {
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut s: Vec<char> = sig.chars().collect();
    let i = s.len() / 2;
    s[i] = if s[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", s.into_iter().collect::<String>())
}

/// Swap the payload for another one, keeping header and signature.
fn swap_payload(t: &str, payload: &Value) -> String {
    let mut p = t.split('.');
    let (h, _, s) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
    format!("{h}.{}.{s}", b64(payload.to_string().as_bytes()))
}

#[test]
fn every_algorithm_good_bad_and_wrong_key_type() {
    let only_rs256 = Providers::new(&[provider_cfg("").clone()].map(|mut c| {
        c.algorithms = vec!["RS256".into()];
        c.hmac_secret = None;
        c
    }))
    .unwrap();
    for alg in Alg::ALL {
        let good = sign(alg, &good_claims());
        let v = check(&good).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            (v.alg, v.kid.as_deref(), v.provider),
            (alg, Some(kid_for(alg)), 0)
        );
        assert_eq!(v.claims["oid"], "o-1");
        assert_eq!((v.exp, v.valid_until), (NOW + 3600, NOW + 3660));

        let other_key = sign_with(alg, Some(kid_for(alg)), &good_claims(), true, None);
        assert_eq!(
            check(&other_key).unwrap_err(),
            Reason::SignatureInvalid,
            "{alg} other key"
        );
        assert_eq!(
            check(&tamper_sig(&good)).unwrap_err(),
            Reason::SignatureInvalid,
            "{alg} tampered sig"
        );
        let mut changed = good_claims();
        changed["oid"] = json!("o-2");
        assert_eq!(
            check(&swap_payload(&good, &changed)).unwrap_err(),
            Reason::SignatureInvalid,
            "{alg} swapped payload"
        );
        let (head, _) = good.rsplit_once('.').unwrap();
        assert_eq!(
            check(&format!("{head}.AAAA")).unwrap_err(),
            Reason::SignatureInvalid,
            "{alg} short sig"
        );

        if !alg.is_hmac() {
            let wrong = sign_with(alg, Some(wrong_kid_for(alg)), &good_claims(), false, None);
            assert_eq!(
                check(&wrong).unwrap_err(),
                Reason::KeyTypeMismatch,
                "{alg} wrong key type"
            );
            let unknown = sign_with(alg, Some("nope"), &good_claims(), false, None);
            assert_eq!(
                check(&unknown).unwrap_err(),
                Reason::KidUnknown,
                "{alg} unknown kid"
            );
            assert_eq!(
                run(&all_algs(), None, &good, NOW).unwrap_err(),
                Reason::JwksUnavailable,
                "{alg} no keys yet"
            );
        } else {
            // HS* never consults the JWKS: no key set is needed, and a kid naming an
            // RSA key changes nothing.
            assert!(
                run(&all_algs(), None, &good, NOW).is_ok(),
                "{alg} without JWKS"
            );
            let with_rsa_kid = sign_with(alg, Some("rsa"), &good_claims(), false, None);
            assert!(check(&with_rsa_kid).is_ok());
            assert_eq!(
                fx().keys.find(Some("rsa"), alg).unwrap_err(),
                Reason::KeyTypeMismatch
            );
        }

        let res = run(&only_rs256, Some(&fx().keys), &good, NOW);
        if alg == Alg::RS256 {
            assert!(res.is_ok());
        } else {
            assert_eq!(res.unwrap_err(), Reason::AlgNotAllowed, "{alg} not allowed");
        }
    }
}

#[test]
fn claim_checks_table() {
    let base = good_claims();
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let cases: Vec<(&str, Value, Result<(), Reason>)> = vec![
        ("good", base.clone(), Ok(())),
        ("exp missing", without("exp"), Err(Reason::TokenMalformed)),
        (
            "exp string",
            with("exp", json!("soon")),
            Err(Reason::TokenMalformed),
        ),
        (
            "exp negative",
            with("exp", json!(-5)),
            Err(Reason::TokenMalformed),
        ),
        (
            // Integers only (no float tricks): a fraction is refused, not truncated.
            "exp fraction",
            with("exp", json!((NOW + 10) as f64 + 0.5)),
            Err(Reason::TokenMalformed),
        ),
        (
            "expired",
            with("exp", json!(NOW - 61)),
            Err(Reason::TokenExpired),
        ),
        (
            "expired at exp+skew",
            with("exp", json!(NOW - 60)),
            Err(Reason::TokenExpired),
        ),
        ("within skew", with("exp", json!(NOW - 59)), Ok(())),
        (
            "nbf future",
            with("nbf", json!(NOW + 61)),
            Err(Reason::TokenNotYetValid),
        ),
        ("nbf within skew", with("nbf", json!(NOW + 60)), Ok(())),
        (
            "nbf string",
            with("nbf", json!("x")),
            Err(Reason::TokenMalformed),
        ),
        (
            "iat future",
            with("iat", json!(NOW + 61)),
            Err(Reason::IssuedInFuture),
        ),
        ("iat within skew", with("iat", json!(NOW + 60)), Ok(())),
        (
            "lifetime exp-iat",
            with("exp", json!(NOW - 60 + 86401)),
            Err(Reason::LifetimeTooLong),
        ),
        (
            "lifetime exact",
            with("exp", json!(NOW - 60 + 86400)),
            Ok(()),
        ),
        (
            "huge exp",
            with("exp", json!(crate::jose::MAX_NUMERIC_DATE)),
            Err(Reason::LifetimeTooLong),
        ),
        (
            // Beyond 2^53 is not a NumericDate this filter reads.
            "exp beyond 2^53",
            with("exp", json!(u64::MAX)),
            Err(Reason::TokenMalformed),
        ),
        (
            "exp 1e30",
            with("exp", json!(1e30)),
            Err(Reason::TokenMalformed),
        ),
        (
            "iat float",
            with("iat", json!(NOW as f64)),
            Err(Reason::TokenMalformed),
        ),
        ("aud missing", without("aud"), Err(Reason::AudienceMismatch)),
        (
            "aud other",
            with("aud", json!("api://other")),
            Err(Reason::AudienceMismatch),
        ),
        (
            "aud array hit",
            with("aud", json!(["x", "https://ml.azure.com"])),
            Ok(()),
        ),
        (
            "aud array miss",
            with("aud", json!(["x", "y"])),
            Err(Reason::AudienceMismatch),
        ),
        (
            "aud empty array",
            with("aud", json!([])),
            Err(Reason::AudienceMismatch),
        ),
        (
            "aud case differs",
            with("aud", json!("API://GW")),
            Err(Reason::AudienceMismatch),
        ),
        (
            "aud number",
            with("aud", json!(5)),
            Err(Reason::TokenMalformed),
        ),
        (
            "iss unknown",
            with("iss", json!("https://evil.example/")),
            Err(Reason::IssuerUnknown),
        ),
        ("iss missing", without("iss"), Err(Reason::IssuerUnknown)),
        (
            "tid not guid",
            with("tid", json!("common")),
            Err(Reason::TenantInvalid),
        ),
        ("v1 issuer", with("iss", json!(v1(T1))), Ok(())),
    ];
    for (name, claims, want) in cases {
        for alg in [Alg::HS256, Alg::RS256] {
            let got = check(&sign(alg, &claims)).map(|_| ());
            assert_eq!(got, want, "{name} ({alg})");
        }
    }
    // Lifetime without iat: exp - now, with the skew as tolerance.
    let no_iat = without("iat");
    let mut c = no_iat.clone();
    c["exp"] = json!(NOW + 86400 + 60);
    assert!(check(&sign(Alg::HS256, &c)).is_ok());
    c["exp"] = json!(NOW + 86400 + 61);
    assert_eq!(
        check(&sign(Alg::HS256, &c)).unwrap_err(),
        Reason::LifetimeTooLong
    );
    // No max_lifetime: a far exp is fine, and jwt-simple's own clock never interferes.
    let lax = Providers::new(&[provider_cfg("").clone()].map(|mut c| {
        c.max_lifetime_seconds = 0;
        c
    }))
    .unwrap();
    let far = sign(
        Alg::RS256,
        &with("exp", json!(crate::jose::MAX_NUMERIC_DATE)),
    );
    assert!(run(&lax, Some(&fx().keys), &far, NOW).is_ok());
    // Beyond 2^53 (or a float such as 1e30) is malformed even without a lifetime cap.
    for exp in [json!(u64::MAX), json!(1e30), json!(NOW as f64 + 100.5)] {
        let t = sign(Alg::RS256, &with("exp", exp.clone()));
        assert_eq!(
            run(&lax, Some(&fx().keys), &t, NOW).unwrap_err(),
            Reason::TokenMalformed,
            "{exp}"
        );
    }
    // The default cap (36 h) refuses exp = 10^30 style tokens even when they are integers.
    let dflt = Providers::new(&[provider_cfg("").clone()].map(|mut c| {
        c.max_lifetime_seconds = 129_600;
        c
    }))
    .unwrap();
    let huge = sign(
        Alg::RS256,
        &with("exp", json!(crate::jose::MAX_NUMERIC_DATE)),
    );
    assert_eq!(
        run(&dflt, Some(&fx().keys), &huge, NOW).unwrap_err(),
        Reason::LifetimeTooLong
    );
    let mut early = base.clone();
    early["iat"] = json!(0);
    early["nbf"] = json!(0);
    early["exp"] = json!(100);
    assert!(run(&lax, Some(&fx().keys), &sign(Alg::ES256, &early), 0).is_ok());
    assert!(run(&lax, Some(&fx().keys), &sign(Alg::ES256, &early), 99).is_ok());
    assert!(run(&lax, Some(&fx().keys), &sign(Alg::ES256, &early), 100 + 59).is_ok());
    assert_eq!(
        run(&lax, Some(&fx().keys), &sign(Alg::ES256, &early), 100 + 60).unwrap_err(),
        Reason::TokenExpired
    );
}

#[test]
fn alg_none_and_algorithm_confusion() {
    let input = signing_input(r#"{"alg":"none","typ":"JWT"}"#, &good_claims().to_string());
    assert_eq!(
        check(&format!("{input}.")).unwrap_err(),
        Reason::AlgNotAllowed
    );
    assert_eq!(
        check(&format!("{input}.{}", b64(b"x"))).unwrap_err(),
        Reason::AlgNotAllowed
    );

    // HS256 "signed" with the RSA public key (as PEM and as DER) the attacker found.
    let pk = RS256KeyPair::from_pem(RSA_A_PEM).unwrap().public_key();
    let rsa_only = Providers::new(&[provider_cfg("").clone()].map(|mut c| {
        c.algorithms = vec!["RS256".into(), "PS256".into()];
        c.hmac_secret = None;
        c
    }))
    .unwrap();
    for secret in [pk.to_pem().unwrap().into_bytes(), pk.to_der().unwrap()] {
        let forged = hs_token(
            Alg::HS256,
            &secret,
            r#"{"alg":"HS256","kid":"rsa","typ":"JWT"}"#,
            &good_claims().to_string(),
        );
        assert_eq!(
            run(&rsa_only, Some(&fx().keys), &forged, NOW).unwrap_err(),
            Reason::AlgNotAllowed
        );
        // Even where HS256 is allowed, only the configured secret is used.
        assert_eq!(check(&forged).unwrap_err(), Reason::SignatureInvalid);
    }
    assert_eq!(
        fx().keys.find(Some("rsa"), Alg::HS256).unwrap_err(),
        Reason::KeyTypeMismatch
    );
    assert_eq!(
        fx().keys.find(None, Alg::HS256).unwrap_err(),
        Reason::KeyTypeMismatch
    );
}

#[test]
fn header_hygiene() {
    let p = good_claims().to_string();
    let hs = |h: &str| hs_token(Alg::HS256, SECRET.as_bytes(), h, &p);
    // Validly MACed tokens that must still be refused.
    assert_eq!(
        check(&hs(r#"{"alg":"HS256","crit":["exp"]}"#)).unwrap_err(),
        Reason::CritUnsupported
    );
    assert_eq!(
        check(&hs(r#"{"alg":"HS256","crit":[]}"#)).unwrap_err(),
        Reason::CritUnsupported
    );
    assert_eq!(
        check(&hs(r#"{"alg":"HS256","alg":"HS256"}"#)).unwrap_err(),
        Reason::TokenMalformed
    );
    assert_eq!(
        check(&hs_token(
            Alg::HS256,
            SECRET.as_bytes(),
            r#"{"alg":"HS256"}"#,
            r#"{"aud":"x","aud":"api://gw"}"#
        ))
        .unwrap_err(),
        Reason::TokenMalformed
    );
    assert!(check(&hs(r#"{"alg":"HS256","typ":"JWT"}"#)).is_ok());
    // Graph tokens: nonce in the header → unverifiable, before any signature work.
    assert_eq!(
        check(&hs(r#"{"alg":"HS256","nonce":"abc"}"#)).unwrap_err(),
        Reason::GraphTokenUnverifiable
    );
    let graph = format!(
        "{}.{}",
        signing_input(
            r#"{"typ":"JWT","nonce":"n0","alg":"RS256","x5t":"k","kid":"rsa"}"#,
            &p
        ),
        b64(&[7u8; 256])
    );
    assert_eq!(check(&graph).unwrap_err(), Reason::GraphTokenUnverifiable);

    // jku / x5u / jwk in the header never select a key: our JWKS key decides.
    let evil = KeyMetadata::default()
        .with_key_set_url("https://evil.example/jwks.json")
        .with_certificate_url("https://evil.example/cert.pem")
        .with_public_key("eyJrdHkiOiJSU0EifQ");
    let t = sign_with(
        Alg::RS256,
        Some("rsa"),
        &good_claims(),
        false,
        Some(evil.clone()),
    );
    let d = decode(&t, MAX).unwrap();
    assert!(d.header.kid.as_deref() == Some("rsa"));
    assert!(check(&t).is_ok(), "jku/x5u/jwk are ignored");
    // ... and an attacker's own key advertised there gets nowhere.
    let t = sign_with(Alg::RS256, Some("rsa"), &good_claims(), true, Some(evil));
    assert_eq!(check(&t).unwrap_err(), Reason::SignatureInvalid);

    // JWE, padding, junk, oversize.
    assert_eq!(
        check("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d").unwrap_err(),
        Reason::TokenEncrypted
    );
    let good = sign(Alg::RS256, &good_claims());
    assert_eq!(
        check(&format!("{good}=")).unwrap_err(),
        Reason::TokenMalformed
    );
    assert_eq!(
        check(&format!("{good}!")).unwrap_err(),
        Reason::TokenMalformed
    );
    assert_eq!(
        check(&good.replacen('.', "=.", 1)).unwrap_err(),
        Reason::TokenMalformed
    );
    let mut big = good_claims();
    big["pad"] = json!("x".repeat(MAX));
    assert_eq!(
        check(&sign(Alg::HS256, &big)).unwrap_err(),
        Reason::TokenTooLarge
    );
    // A registered claim of a type the signature library cannot model.
    let mut odd = good_claims();
    odd["jti"] = json!(5);
    assert_eq!(
        check(&sign(Alg::HS256, &odd)).unwrap_err(),
        Reason::TokenMalformed
    );
}

#[test]
fn missing_kid_with_one_or_two_keys() {
    let one = KeySet::parse(jwks(&[rsa_jwk(RSA_A_PEM, "a", "")]).as_bytes()).unwrap();
    let two =
        KeySet::parse(jwks(&[rsa_jwk(RSA_A_PEM, "a", ""), rsa_jwk(RSA_B_PEM, "b", "")]).as_bytes())
            .unwrap();
    let t = sign_with(Alg::RS256, None, &good_claims(), false, None);
    let ps = all_algs();
    let v = run(&ps, Some(&one), &t, NOW).unwrap();
    assert_eq!(v.kid, None);
    assert_eq!(
        run(&ps, Some(&two), &t, NOW).unwrap_err(),
        Reason::KidUnknown
    );
    // One RSA key and one EC key: only one fits RS256.
    let mixed = KeySet::parse(
        jwks(&[rsa_jwk(RSA_A_PEM, "a", ""), p256_jwk(&fx().es256, "e", "")]).as_bytes(),
    )
    .unwrap();
    assert!(run(&ps, Some(&mixed), &t, NOW).is_ok());
    let e = sign_with(Alg::ES256, None, &good_claims(), false, None);
    assert!(run(&ps, Some(&mixed), &e, NOW).is_ok());
    assert_eq!(
        run(&ps, Some(&one), &e, NOW).unwrap_err(),
        Reason::KeyTypeMismatch
    );
}

#[test]
fn entra_v1_v2_multi_tenant_and_allow_list() {
    let ps = all_algs();
    for (iss, tid) in [(v2(T1), T1), (v1(T1), T1), (v2(T2), T2), (v1(T2), T2)] {
        let mut c = good_claims();
        c["iss"] = json!(iss);
        c["tid"] = json!(tid);
        assert!(
            run(&ps, Some(&fx().keys), &sign(Alg::RS256, &c), NOW).is_ok(),
            "{iss}"
        );
    }
    let allow = Providers::new(&[provider_cfg(&format!(r#","tenants":["{T1}"]"#))]).unwrap();
    let mut c = good_claims();
    c["iss"] = json!(v1(T2));
    c["tid"] = json!(T2);
    assert_eq!(
        run(&allow, Some(&fx().keys), &sign(Alg::RS256, &c), NOW).unwrap_err(),
        Reason::TenantNotAllowed
    );
    // tid that does not match iss
    c["iss"] = json!(v2(T1));
    assert_eq!(
        run(&ps, Some(&fx().keys), &sign(Alg::RS256, &c), NOW).unwrap_err(),
        Reason::IssuerUnknown
    );
}

#[test]
fn jwk_issuer_field() {
    let tmpl = r#","issuer":"https://login.microsoftonline.com/{tenantid}/v2.0""#;
    let fixed = format!(r#","issuer":"{}""#, v2(T1));
    let ks_t = KeySet::parse(jwks(&[rsa_jwk(RSA_A_PEM, "rsa", tmpl)]).as_bytes()).unwrap();
    let ks_f = KeySet::parse(jwks(&[rsa_jwk(RSA_A_PEM, "rsa", &fixed)]).as_bytes()).unwrap();
    let ps = all_algs();
    let tok = |iss: String, tid: &str| {
        let mut c = good_claims();
        c["iss"] = json!(iss);
        c["tid"] = json!(tid);
        sign(Alg::RS256, &c)
    };
    // Template key: any tenant, v2 and (mapped) v1 issuers.
    assert!(run(&ps, Some(&ks_t), &tok(v2(T2), T2), NOW).is_ok());
    assert!(run(&ps, Some(&ks_t), &tok(v1(T2), T2), NOW).is_ok());
    // Key pinned to T1: T1 ok (v2 and v1), T2 refused.
    assert!(run(&ps, Some(&ks_f), &tok(v2(T1), T1), NOW).is_ok());
    assert!(run(&ps, Some(&ks_f), &tok(v1(T1), T1), NOW).is_ok());
    assert_eq!(
        run(&ps, Some(&ks_f), &tok(v2(T2), T2), NOW).unwrap_err(),
        Reason::TenantNotAllowed
    );
    assert_eq!(
        run(&ps, Some(&ks_f), &tok(v1(T2), T2), NOW).unwrap_err(),
        Reason::TenantNotAllowed
    );
    // Exact-issuer provider whose key names another issuer.
    let okta = crate::config::from_json::provider(
        r#"{"name":"okta","issuers":["https://okta.example/oauth2/default"],"jwks_uri":"https://okta.example/keys","audiences":["api://gw"]}"#,
    )
    .unwrap();
    let ps2 = Providers::new(&[okta]).unwrap();
    let mut c = good_claims();
    c["iss"] = json!("https://okta.example/oauth2/default");
    c.as_object_mut().unwrap().remove("tid");
    let t = sign(Alg::RS256, &c);
    assert!(run(&ps2, Some(&fx().keys), &t, NOW).is_ok());
    assert_eq!(
        run(&ps2, Some(&ks_f), &t, NOW).unwrap_err(),
        Reason::TenantNotAllowed
    );
}

#[test]
fn every_reason_on_this_path() {
    use std::collections::HashSet;
    let ps = all_algs();
    let mut seen = HashSet::new();
    let mut note = |r: Result<Verified, Reason>| {
        seen.insert(r.unwrap_err());
    };
    let c = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        c
    };
    let hs = |h: &str| hs_token(Alg::HS256, SECRET.as_bytes(), h, &good_claims().to_string());
    note(check(&"a".repeat(MAX + 1)));
    note(check("a.b"));
    note(check("a.b.c.d.e"));
    note(check(&hs(r#"{"alg":"none"}"#)));
    note(check(&hs(r#"{"alg":"HS256","crit":["x"]}"#)));
    note(check(&sign_with(
        Alg::RS256,
        Some("zz"),
        &good_claims(),
        false,
        None,
    )));
    note(check(&sign_with(
        Alg::RS256,
        Some("p256"),
        &good_claims(),
        false,
        None,
    )));
    note(check(&tamper_sig(&sign(Alg::RS256, &good_claims()))));
    note(check(&sign(Alg::RS256, &c("exp", json!(1)))));
    note(check(&sign(Alg::RS256, &c("nbf", json!(NOW + 999)))));
    note(check(&sign(Alg::RS256, &c("iat", json!(NOW + 999)))));
    note(check(&sign(Alg::RS256, &c("exp", json!(NOW + 999_999)))));
    note(check(&sign(Alg::RS256, &c("iss", json!("https://x/")))));
    note(check(&sign(Alg::RS256, &c("tid", json!("x")))));
    let allow = Providers::new(&[provider_cfg(&format!(r#","tenants":["{T2}"]"#))]).unwrap();
    note(run(
        &allow,
        Some(&fx().keys),
        &sign(Alg::RS256, &good_claims()),
        NOW,
    ));
    note(check(&sign(Alg::RS256, &c("aud", json!("x")))));
    note(check(&hs(r#"{"alg":"HS256","nonce":"x"}"#)));
    note(run(&ps, None, &sign(Alg::RS256, &good_claims()), NOW));
    use Reason::*;
    let want: HashSet<Reason> = [
        TokenTooLarge,
        TokenMalformed,
        TokenEncrypted,
        AlgNotAllowed,
        CritUnsupported,
        KidUnknown,
        KeyTypeMismatch,
        SignatureInvalid,
        TokenExpired,
        TokenNotYetValid,
        IssuedInFuture,
        LifetimeTooLong,
        IssuerUnknown,
        TenantInvalid,
        TenantNotAllowed,
        AudienceMismatch,
        GraphTokenUnverifiable,
        JwksUnavailable,
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want);
    for r in &seen {
        assert_eq!(r.status(), if *r == JwksUnavailable { 503 } else { 401 });
    }
}

fn verified(exp: u64) -> Verified {
    Verified {
        provider: 0,
        claims: serde_json::Map::new(),
        kid: None,
        alg: Alg::RS256,
        exp,
        valid_until: exp + 60,
    }
}

#[test]
fn cache_hits_expiry_generation_and_bound() {
    let mut c = VerifiedCache::new(3);
    assert!(c.get("t1", NOW, 1).is_none());
    c.insert("t1", verified(NOW + 10), 1);
    assert_eq!(c.get("t1", NOW, 1).map(|v| v.exp), Some(NOW + 10));
    assert!(c.get("t1", NOW + 69, 1).is_some());
    assert!(c.get("t1", NOW + 70, 1).is_none(), "expired (exp + skew)");
    assert!(c.get("t1", NOW, 2).is_none(), "other key generation");
    assert!(c.get("t2", NOW, 1).is_none());
    // Re-insert replaces in place.
    c.insert("t1", verified(NOW + 20), 2);
    assert_eq!(c.len(), 1);
    assert_eq!(c.get("t1", NOW, 2).map(|v| v.exp), Some(NOW + 20));
    for t in ["t2", "t3", "t4", "t5"] {
        c.insert(t, verified(NOW + 10), 1);
    }
    assert_eq!(c.len(), 3);
    assert!(
        c.get("t1", NOW, 2).is_none() && c.get("t2", NOW, 1).is_none(),
        "oldest evicted"
    );
    assert!(c.get("t5", NOW, 1).is_some());
    let (hits, misses) = c.stats();
    assert!(hits >= 4 && misses >= 6, "{hits} {misses}");
    c.clear();
    assert!(c.is_empty());

    let mut off = VerifiedCache::new(0);
    off.insert("t", verified(NOW + 10), 1);
    assert!(off.get("t", NOW, 1).is_none() && off.is_empty());
}

#[test]
fn cache_with_real_tokens() {
    let mut cache = VerifiedCache::new(16);
    let t = sign(Alg::ES256, &good_claims());
    let v = check(&t).unwrap();
    cache.insert(&t, v.clone(), 7);
    assert_eq!(cache.get(&t, NOW + 1, 7).as_deref(), Some(&v));
    // A tampered copy is a different key.
    assert!(cache.get(&tamper_sig(&t), NOW + 1, 7).is_none());
}

#[test]
fn a_hit_needs_the_same_token_bytes_not_only_the_same_hash() {
    use std::rc::Rc;
    let mut cache = VerifiedCache::new(16);
    let t = sign(Alg::ES256, &good_claims());
    let forged = tamper_sig(&t);
    // Plant the verified entry of `t` where `forged` hashes to: a colliding hash.
    let at = cache.local_key(&forged).unwrap();
    cache.insert_key(&t, at, Rc::new(check(&t).unwrap()), 7);
    assert!(
        cache.peek(&forged, at, NOW + 1).is_none(),
        "same bucket, other bytes"
    );
    assert!(cache.peek(&t, at, NOW + 1).is_some());
    // The node-wide name of a token is still its SHA-256.
    assert_ne!(
        cache.key(&t).unwrap().as_bytes(),
        cache.key(&forged).unwrap().as_bytes()
    );
}

#[test]
fn local_keys_spread_over_the_tail_and_length() {
    let cache = VerifiedCache::new(16);
    let base = "x".repeat(1000);
    let k = |s: &str| cache.local_key(s).unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 936..1000 {
        let mut b = base.clone().into_bytes();
        b[i] = b'y';
        assert!(seen.insert(k(std::str::from_utf8(&b).unwrap())), "byte {i}");
    }
    assert!(seen.insert(k(&base)) && seen.insert(k(&base[..999])) && seen.insert(k("")));
    // Same tail and length, other head: one bucket, told apart by the bytes.
    let (mut a, mut b) = (base.clone().into_bytes(), base.clone().into_bytes());
    a[0] = b'a';
    b[0] = b'b';
    let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    assert!(k(&a) == k(&b) && !super::same_bytes(a.as_bytes(), b.as_bytes()));
    assert!(super::same_bytes(a.as_bytes(), a.clone().as_bytes()));
    assert!(!super::same_bytes(b"abcdefghi", b"abcdefghj") && !super::same_bytes(b"ab", b"abc"));
}
