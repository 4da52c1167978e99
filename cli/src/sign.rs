//! Raw JWS signing: `mint` (for local testing only), and `explain`'s throwaway re-signing
//! when no key set is given (the signature is then reported as not checked).

use std::path::PathBuf;

use aml_mocks::keys::{alg_key, hmac_sign, AlgKey, Family, KeyPair};
use azure_ml_kong::jwks::KeySet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

use crate::Outcome;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload.signature` with `key` (or `secret` for HS*).
pub fn sign_jws(header: &Value, claims: &Value, key: &Signer) -> Result<String, String> {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let sig = key.sign(alg, input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

pub enum Signer {
    Pair(KeyPair),
    Secret(Vec<u8>),
}

impl Signer {
    pub fn sign(&self, alg: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Signer::Pair(k) => k.sign(alg, msg),
            Signer::Secret(s) => hmac_sign(alg, s, msg),
        }
    }
}

const THROWAWAY_RSA_PEM: &str = include_str!("throwaway_rsa.pem");

/// A throwaway key for `alg` and the key set holding its public half under `kid`.
pub fn throwaway(alg: &str, kid: &str) -> Result<(KeyPair, KeySet), String> {
    let Some(AlgKey::Asymmetric(family)) = alg_key(alg) else {
        return Err(format!("no throwaway key for alg {alg}"));
    };
    let kp = match family {
        // Generating RSA-2048 takes seconds; this key is public and trusted nowhere but in
        // this process's own throwaway key set.
        Family::Rsa => KeyPair::Rsa(Box::new(
            RS256KeyPair::from_pem(THROWAWAY_RSA_PEM).map_err(|e| e.to_string())?,
        )),
        other => KeyPair::generate(other)?,
    };
    let jwks = json!({"keys": [kp.public_jwk(kid)]});
    let set = KeySet::parse(jwks.to_string().as_bytes()).map_err(|e| e.to_string())?;
    Ok((kp, set))
}

/// The same header and payload, signed again by `kp`.
pub fn resign(token: &str, alg: &str, kp: &KeyPair) -> Result<String, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return Err("not a JWS".into());
    };
    let input = format!("{h}.{p}");
    Ok(format!("{input}.{}", b64(&kp.sign(alg, input.as_bytes())?)))
}

#[derive(clap::Args)]
pub struct MintArgs {
    /// Private key: a PEM file (RSA, EC P-256/P-384 or Ed25519), or for HS* a file holding
    /// the shared secret.
    #[arg(long)]
    key: PathBuf,
    /// The claims: a JSON object, or @FILE.
    #[arg(long)]
    claims: String,
    /// Signing algorithm (default: RS256, ES256, ES384 or EdDSA after the key).
    #[arg(long)]
    alg: Option<String>,
    /// `kid` in the JOSE header.
    #[arg(long)]
    kid: Option<String>,
    /// Add `iat`/`nbf` (now) and `exp` (now + this) unless the claims carry them.
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
    /// Also write the public key as a JWKS file (for `explain --jwks-file`).
    #[arg(long)]
    jwks_out: Option<PathBuf>,
}

pub fn read_json_arg(s: &str) -> Result<Value, String> {
    let text = match s.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("claims are not JSON: {e}"))
}

fn load_pair(pem: &str) -> Option<KeyPair> {
    if let Ok(k) = RS256KeyPair::from_pem(pem) {
        return Some(KeyPair::Rsa(Box::new(k)));
    }
    if let Ok(k) = ES256KeyPair::from_pem(pem) {
        return Some(KeyPair::P256(Box::new(k)));
    }
    if let Ok(k) = ES384KeyPair::from_pem(pem) {
        return Some(KeyPair::P384(Box::new(k)));
    }
    Ed25519KeyPair::from_pem(pem)
        .ok()
        .map(|k| KeyPair::Ed25519(Box::new(k)))
}

pub fn mint(a: &MintArgs) -> Outcome {
    let text = std::fs::read_to_string(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let hmac = a.alg.as_deref().is_some_and(|x| x.starts_with("HS"));
    let (signer, default_alg) = if hmac {
        (
            Signer::Secret(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec()),
            "HS256",
        )
    } else {
        let kp = load_pair(&text).ok_or_else(|| {
            format!(
                "{}: not an RSA, EC (P-256/P-384) or Ed25519 private key PEM",
                a.key.display()
            )
        })?;
        let alg = match kp.family() {
            Family::Rsa => "RS256",
            Family::P256 => "ES256",
            Family::P384 => "ES384",
            Family::Ed25519 => "EdDSA",
        };
        (Signer::Pair(kp), alg)
    };
    let alg = a.alg.clone().unwrap_or_else(|| default_alg.to_string());
    let mut claims = read_json_arg(&a.claims)?;
    let obj = claims
        .as_object_mut()
        .ok_or("claims must be a JSON object")?;
    let now = crate::now_secs();
    for (k, v) in [
        ("iat", now),
        ("nbf", now),
        ("exp", now.saturating_add(a.lifetime)),
    ] {
        obj.entry(k).or_insert(json!(v));
    }
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = &a.kid {
        header["kid"] = json!(k);
    }
    let token = sign_jws(&header, &claims, &signer)?;
    if let (Some(path), Signer::Pair(kp)) = (&a.jwks_out, &signer) {
        let jwks = json!({"keys": [kp.public_jwk(a.kid.as_deref().unwrap_or("mint"))]});
        std::fs::write(path, jwks.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("azure-ml-kong mint: FOR LOCAL TESTING ONLY; a token signed with a local key, trusted by no real gateway");
    println!("{token}");
    Ok(0)
}
