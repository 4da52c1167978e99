//! Signing keys of the mock IdP and raw JWS signing.
//!
//! Keys are generated with jwt-simple. Because tests need tokens with arbitrary JOSE
//! headers, signatures are computed here over `header.payload` with the same
//! primitives jwt-simple uses (superboring for RSA, p256/p384 for ECDSA,
//! ed25519-compact for EdDSA, jwt-simple's HMAC keys), so jwt-simple verifies them.

use std::sync::Arc;

use jwt_simple::prelude::*;
use serde_json::{json, Value};

use crate::common::b64url;

/// A published key family: one current key each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Rsa, Family::P256, Family::P384, Family::Ed25519];

    pub fn name(self) -> &'static str {
        match self {
            Family::Rsa => "rsa",
            Family::P256 => "p256",
            Family::P384 => "p384",
            Family::Ed25519 => "ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a JWS `alg` needs to be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgKey {
    Asymmetric(Family),
    Hmac,
    None,
}

/// The algorithms the mock can sign with.
pub const ALGORITHMS: [&str; 13] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512", "none",
];

pub fn alg_key(alg: &str) -> Option<AlgKey> {
    Some(match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            AlgKey::Asymmetric(Family::Rsa)
        }
        "ES256" => AlgKey::Asymmetric(Family::P256),
        "ES384" => AlgKey::Asymmetric(Family::P384),
        "EdDSA" => AlgKey::Asymmetric(Family::Ed25519),
        "HS256" | "HS384" | "HS512" => AlgKey::Hmac,
        "none" => AlgKey::None,
        _ => return None,
    })
}

/// An asymmetric key pair of one family.
pub enum KeyPair {
    Rsa(Box<RS256KeyPair>),
    P256(Box<ES256KeyPair>),
    P384(Box<ES384KeyPair>),
    Ed25519(Box<Ed25519KeyPair>),
}

impl KeyPair {
    /// A fresh key: RSA-2048, P-256, P-384 or Ed25519.
    pub fn generate(family: Family) -> Result<KeyPair, String> {
        Ok(match family {
            Family::Rsa => KeyPair::Rsa(Box::new(
                RS256KeyPair::generate(2048).map_err(|e| format!("RSA keygen: {e}"))?,
            )),
            Family::P256 => KeyPair::P256(Box::new(ES256KeyPair::generate())),
            Family::P384 => KeyPair::P384(Box::new(ES384KeyPair::generate())),
            Family::Ed25519 => KeyPair::Ed25519(Box::new(Ed25519KeyPair::generate())),
        })
    }

    pub fn family(&self) -> Family {
        match self {
            KeyPair::Rsa(_) => Family::Rsa,
            KeyPair::P256(_) => Family::P256,
            KeyPair::P384(_) => Family::P384,
            KeyPair::Ed25519(_) => Family::Ed25519,
        }
    }

    /// The public JWK, Entra-style: `kty`, `use`, `kid` and key parameters, no `alg`.
    pub fn public_jwk(&self, kid: &str) -> Value {
        match self {
            KeyPair::Rsa(k) => {
                let pk = k.public_key();
                let c = pk.to_components();
                json!({
                    "kty": "RSA", "use": "sig", "kid": kid,
                    // Entra's x5t is the SHA-1 thumbprint of the key's certificate; we
                    // have no certificate, so we hash the public key's DER instead.
                    "x5t": pk.sha1_thumbprint(),
                    "n": b64url(&c.n), "e": b64url(&c.e),
                })
            }
            KeyPair::P256(k) => {
                let point = k.public_key().public_key().to_bytes_uncompressed();
                ec_jwk("P-256", &point, 32, kid)
            }
            KeyPair::P384(k) => {
                let point = k.public_key().public_key().to_bytes_uncompressed();
                ec_jwk("P-384", &point, 48, kid)
            }
            KeyPair::Ed25519(k) => json!({
                "kty": "OKP", "use": "sig", "kid": kid, "crv": "Ed25519",
                "x": b64url(&k.public_key().to_bytes()),
            }),
        }
    }

    /// The JWS signature of `msg` with `alg` (which must belong to this key's family).
    pub fn sign(&self, alg: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
        match (self, alg) {
            (KeyPair::Rsa(k), _) => rsa_sign(k, alg, msg),
            (KeyPair::P256(k), "ES256") => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = k.key_pair().as_ref().sign(msg);
                Ok(sig.to_bytes().to_vec())
            }
            (KeyPair::P384(k), "ES384") => {
                use p384::ecdsa::signature::Signer as _;
                let sig: p384::ecdsa::Signature = k.key_pair().as_ref().sign(msg);
                Ok(sig.to_bytes().to_vec())
            }
            (KeyPair::Ed25519(k), "EdDSA") => {
                let kp: &ed25519_compact::KeyPair = k.key_pair().as_ref();
                Ok(kp.sk.sign(msg, None).to_vec())
            }
            _ => Err(format!(
                "alg {alg} cannot be used with a {} key",
                self.family().name()
            )),
        }
    }
}

fn ec_jwk(crv: &str, uncompressed: &[u8], len: usize, kid: &str) -> Value {
    // SEC1 uncompressed point: 0x04 || x || y.
    let (x, y) = if uncompressed.len() == 1 + 2 * len {
        (&uncompressed[1..1 + len], &uncompressed[1 + len..])
    } else {
        (&[][..], &[][..])
    };
    json!({"kty": "EC", "use": "sig", "kid": kid, "crv": crv, "x": b64url(x), "y": b64url(y)})
}

fn rsa_sign(k: &RS256KeyPair, alg: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
    use superboring::hash::MessageDigest;
    use superboring::pkey::{PKey, Private};
    use superboring::rsa::{Padding, Rsa};
    use superboring::sign::Signer;

    let (digest, padding) = match alg {
        "RS256" => (MessageDigest::sha256(), Padding::PKCS1),
        "RS384" => (MessageDigest::sha384(), Padding::PKCS1),
        "RS512" => (MessageDigest::sha512(), Padding::PKCS1),
        "PS256" => (MessageDigest::sha256(), Padding::PKCS1_PSS),
        "PS384" => (MessageDigest::sha384(), Padding::PKCS1_PSS),
        "PS512" => (MessageDigest::sha512(), Padding::PKCS1_PSS),
        _ => return Err(format!("alg {alg} cannot be used with an rsa key")),
    };
    let rsa: &Rsa<Private> = k.key_pair().as_ref();
    let pkey = PKey::from_rsa(rsa.clone()).map_err(|e| format!("{e:?}"))?;
    let mut signer = Signer::new(digest, &pkey).map_err(|e| format!("{e:?}"))?;
    signer
        .set_rsa_padding(padding)
        .map_err(|e| format!("{e:?}"))?;
    signer.update(msg).map_err(|e| format!("{e:?}"))?;
    signer.sign_to_vec().map_err(|e| format!("{e:?}"))
}

/// HMAC tag for HS256/384/512 (through jwt-simple's key types).
pub fn hmac_sign(alg: &str, secret: &[u8], msg: &[u8]) -> Result<Vec<u8>, String> {
    Ok(match alg {
        "HS256" => HS256Key::from_bytes(secret).authentication_tag(msg),
        "HS384" => HS384Key::from_bytes(secret).authentication_tag(msg),
        "HS512" => HS512Key::from_bytes(secret).authentication_tag(msg),
        _ => return Err(format!("alg {alg} is not an HMAC algorithm")),
    })
}

/// What a token gets signed with.
pub enum Signer {
    Key(Arc<KeyPair>),
    Hmac(Vec<u8>),
    /// `alg: none`: empty signature.
    Unsigned,
}

impl Signer {
    pub fn sign(&self, alg: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Signer::Key(pair) => pair.sign(alg, msg),
            Signer::Hmac(secret) => hmac_sign(alg, secret, msg),
            Signer::Unsigned => Ok(Vec::new()),
        }
    }
}

/// Assembles a compact JWS from a header and claims object, signing with `sign`.
pub fn build_jws(
    header: &Value,
    claims: &Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    build_jws_raw(
        header,
        &serde_json::to_vec(claims).map_err(|e| e.to_string())?,
        sign,
    )
}

/// Like [`build_jws`] with the payload bytes as given (they need not be JSON or UTF-8).
pub fn build_jws_raw(
    header: &Value,
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let h = b64url(&serde_json::to_vec(header).map_err(|e| e.to_string())?);
    let p = b64url(payload);
    let signing_input = format!("{h}.{p}");
    let sig = sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}
