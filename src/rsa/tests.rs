use super::*;
use jwt_simple::prelude::*;
use serde_json::Value;

use crate::jwks::testkeys::{RSA_A_PEM, RSA_B_PEM, RSA_WEAK_N};

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors(name: &str) -> Value {
    let path = format!(
        "{}/tests/vectors/wycheproof/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn hash_of(name: &str) -> Hash {
    match name {
        "SHA-256" => Hash::Sha256,
        "SHA-384" => Hash::Sha384,
        "SHA-512" => Hash::Sha512,
        h => panic!("unexpected hash {h}"),
    }
}

/// Run one Wycheproof file; returns (valid accepted, invalid/acceptable rejected, keys refused).
fn run(name: &str, pss: bool) -> (usize, usize, usize) {
    let doc = vectors(name);
    let (mut ok, mut rejected, mut refused) = (0, 0, 0);
    for g in doc["testGroups"].as_array().unwrap() {
        let h = hash_of(g["sha"].as_str().unwrap());
        let scheme = if pss {
            assert_eq!(g["mgfSha"], g["sha"], "{name}");
            assert_eq!(g["sLen"].as_u64().unwrap() as usize, hash(h, b"").len());
            Scheme::Pss(h)
        } else {
            Scheme::Pkcs1v15(h)
        };
        let n = hex(g["publicKey"]["modulus"].as_str().unwrap());
        let e = hex(g["publicKey"]["publicExponent"].as_str().unwrap());
        let key = PublicKey::from_components(&n, &e);
        if e != [1, 0, 1] {
            // Our policy: e = 65537 only, whatever the vector's result.
            assert!(matches!(key, Err(KeyError::Exponent(_))), "{name}");
            refused += 1;
            continue;
        }
        let key = key.unwrap();
        assert_eq!(key.bits(), g["keySize"].as_u64().unwrap() as usize);
        for t in g["tests"].as_array().unwrap() {
            let msg = hex(t["msg"].as_str().unwrap());
            let sig = hex(t["sig"].as_str().unwrap());
            let got = key.verify(scheme, &msg, &sig);
            let id = &t["tcId"];
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert!(got, "{name} tcId {id} should verify: {}", t["comment"]);
                    ok += 1;
                }
                _ => {
                    assert!(!got, "{name} tcId {id} should fail: {}", t["comment"]);
                    rejected += 1;
                }
            }
        }
    }
    (ok, rejected, refused)
}

#[test]
fn wycheproof_pkcs1v15() {
    for (name, want) in [
        ("rsa_signature_2048_sha256_test", (7, 250, 2)),
        ("rsa_signature_2048_sha384_test", (7, 251, 0)),
        ("rsa_signature_2048_sha512_test", (7, 251, 1)),
        ("rsa_signature_3072_sha256_test", (7, 251, 1)),
        ("rsa_signature_4096_sha512_test", (7, 252, 0)),
    ] {
        assert_eq!(run(name, false), want, "{name}");
    }
}

#[test]
fn wycheproof_pss() {
    for (name, want) in [
        ("rsa_pss_2048_sha256_mgf1_32_test", (63, 45, 0)),
        ("rsa_pss_2048_sha384_mgf1_48_test", (95, 46, 0)),
        ("rsa_pss_3072_sha256_mgf1_32_test", (63, 45, 0)),
        ("rsa_pss_4096_sha512_mgf1_64_test", (132, 47, 0)),
    ] {
        assert_eq!(run(name, true), want, "{name}");
    }
}

fn components(pem: &str) -> (Vec<u8>, Vec<u8>) {
    let c = RS256KeyPair::from_pem(pem)
        .unwrap()
        .public_key()
        .to_components();
    (c.n, c.e)
}

/// Signing input and raw signature of a compact JWS.
fn split(token: &str) -> (String, Vec<u8>) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    (input.to_string(), crate::jose::b64url(sig).unwrap())
}

/// Tokens signed by jwt-simple (an independent RSA implementation) for every RS*/PS*
/// algorithm verify under exactly their own scheme: another hash means another
/// DigestInfo or MGF1, the other padding family fails, and so does another key.
#[test]
fn cross_checks_with_an_independent_signer() {
    let (n, e) = components(RSA_A_PEM);
    let key = PublicKey::from_components(&n, &e).unwrap();
    let (nb, eb) = components(RSA_B_PEM);
    let other = PublicKey::from_components(&nb, &eb).unwrap();
    let claims = || Claims::create(Duration::from_secs(60));
    let tokens = [
        (
            Scheme::Pkcs1v15(Hash::Sha256),
            RS256KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
        (
            Scheme::Pkcs1v15(Hash::Sha384),
            RS384KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
        (
            Scheme::Pkcs1v15(Hash::Sha512),
            RS512KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
        (
            Scheme::Pss(Hash::Sha256),
            PS256KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
        (
            Scheme::Pss(Hash::Sha384),
            PS384KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
        (
            Scheme::Pss(Hash::Sha512),
            PS512KeyPair::from_pem(RSA_A_PEM)
                .unwrap()
                .sign(claims())
                .unwrap(),
        ),
    ];
    let all: Vec<Scheme> = tokens.iter().map(|(s, _)| *s).collect();
    for (scheme, token) in &tokens {
        let (input, sig) = split(token);
        assert!(key.verify(*scheme, input.as_bytes(), &sig), "{scheme:?}");
        for s in all.iter().filter(|s| *s != scheme) {
            assert!(
                !key.verify(*s, input.as_bytes(), &sig),
                "{scheme:?} as {s:?}"
            );
        }
        assert!(!other.verify(*scheme, input.as_bytes(), &sig), "{scheme:?}");
        // One changed byte of the message, or of the signature.
        let mut tampered = input.clone().into_bytes();
        tampered[3] ^= 1;
        assert!(!key.verify(*scheme, &tampered, &sig), "{scheme:?}");
        for i in [0, 100, sig.len() - 1] {
            let mut bad = sig.clone();
            bad[i] ^= 0x80;
            assert!(
                !key.verify(*scheme, input.as_bytes(), &bad),
                "{scheme:?} {i}"
            );
        }
        // A signature that is not exactly the modulus length (RFC 8017 §8.2.2 step 1).
        let mut long = vec![0u8];
        long.extend_from_slice(&sig);
        assert!(!key.verify(*scheme, input.as_bytes(), &long), "{scheme:?}");
        assert!(
            !key.verify(*scheme, input.as_bytes(), &sig[1..]),
            "{scheme:?}"
        );
        assert!(!key.verify(*scheme, input.as_bytes(), &[]), "{scheme:?}");
    }
}

#[test]
fn signature_values_at_and_above_the_modulus_fail() {
    let (n, e) = components(RSA_A_PEM);
    let key = PublicKey::from_components(&n, &e).unwrap();
    let msg = b"x";
    let s = Scheme::Pkcs1v15(Hash::Sha256);
    assert!(!key.verify(s, msg, &n));
    assert!(!key.verify(s, msg, &vec![0xff; n.len()]));
    assert!(!key.verify(s, msg, &vec![0; n.len()]));
    let mut one = vec![0; n.len()];
    *one.last_mut().unwrap() = 1;
    assert!(!key.verify(s, msg, &one));
    assert!(!key.verify(Scheme::Pss(Hash::Sha256), msg, &one));
}

/// A modulus of `bits` bits: top bit set, odd.
fn modulus(bits: usize) -> Vec<u8> {
    let mut n = vec![0x5au8; bits.div_ceil(8)];
    let top = (bits - 1) % 8;
    n[0] = (1u8 << top) | 1;
    *n.last_mut().unwrap() |= 1;
    n
}

#[test]
fn key_size_and_exponent_policy() {
    let f4 = [1u8, 0, 1];
    for bits in [2048, 2049, 3071, 3072, 3073, 4095, 4096] {
        let k = PublicKey::from_components(&modulus(bits), &f4).unwrap();
        assert_eq!(k.bits(), bits);
    }
    let weak = crate::jose::b64url(RSA_WEAK_N).unwrap();
    assert_eq!(
        PublicKey::from_components(&weak, &f4).err(),
        Some(KeyError::TooShort(1024))
    );
    for (bits, want) in [
        (0, KeyError::TooShort(0)),
        (512, KeyError::TooShort(512)),
        (2047, KeyError::TooShort(2047)),
        (4097, KeyError::TooLong(4097)),
        (8192, KeyError::TooLong(8192)),
    ] {
        let n = if bits == 0 { vec![] } else { modulus(bits) };
        assert_eq!(PublicKey::from_components(&n, &f4).err(), Some(want));
    }
    let mut even = modulus(2048);
    *even.last_mut().unwrap() &= 0xfe;
    assert_eq!(
        PublicKey::from_components(&even, &f4).err(),
        Some(KeyError::Even(2048))
    );
    let n = modulus(2048);
    for e in [
        &[3u8][..],
        &[1, 0, 0, 1],
        &[1, 0, 3],
        &[1],
        &[],
        &[1, 0, 1, 0],
    ] {
        assert_eq!(
            PublicKey::from_components(&n, e).err(),
            Some(KeyError::Exponent(2048)),
            "{e:?}"
        );
    }
    // Leading zero bytes are only encoding.
    let mut padded = vec![0, 0];
    padded.extend_from_slice(&n);
    assert!(PublicKey::from_components(&padded, &[0, 1, 0, 1]).is_ok());
    let msg = KeyError::TooShort(1024).to_string();
    assert!(msg.contains("below 2048"), "{msg}");
    assert!(KeyError::Exponent(2048).to_string().contains("e=65537"));
}

#[test]
fn a_cloned_key_verifies_the_same() {
    let (n, e) = components(RSA_A_PEM);
    let key = PublicKey::from_components(&n, &e).unwrap().clone();
    let t = RS256KeyPair::from_pem(RSA_A_PEM)
        .unwrap()
        .sign(Claims::create(Duration::from_secs(60)))
        .unwrap();
    let (input, sig) = split(&t);
    assert!(key.verify(Scheme::Pkcs1v15(Hash::Sha256), input.as_bytes(), &sig));
    for bits in [3072, 4096] {
        let k = PublicKey::from_components(&modulus(bits), &e).unwrap();
        assert_eq!(k.clone().bits(), bits);
    }
}

/// Issue 11: a key the RSA policy refuses is skipped with its reason; the rest of the set
/// stays usable.
#[test]
fn refused_rsa_keys_are_skipped_not_the_whole_set() {
    use crate::jose::testutil::b64;
    use crate::jwks::testkeys::{jwks, rsa_jwk};
    use crate::jwks::KeySet;
    let (n, _) = components(RSA_A_PEM);
    let doc = jwks(&[
        format!(r#"{{"kty":"RSA","kid":"weak","n":"{RSA_WEAK_N}","e":"AQAB"}}"#),
        format!(
            r#"{{"kty":"RSA","kid":"huge","n":"{}","e":"AQAB"}}"#,
            b64(&modulus(8192))
        ),
        format!(r#"{{"kty":"RSA","kid":"e3","n":"{}","e":"Aw"}}"#, b64(&n)),
        rsa_jwk(RSA_A_PEM, "good", ""),
    ]);
    let ks = KeySet::parse(doc.as_bytes()).unwrap();
    assert_eq!(ks.len(), 1);
    assert!(ks.has_kid("good") && !ks.has_kid("weak"));
    let skipped = ks.skipped().join("\n");
    assert_eq!(ks.skipped().len(), 3, "{skipped}");
    for want in [
        "kid weak",
        "below 2048",
        "kid huge",
        "8192-bit",
        "kid e3",
        "e=65537",
    ] {
        assert!(skipped.contains(want), "missing {want}: {skipped}");
    }
}
