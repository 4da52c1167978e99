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
        // Committed rather than generated: RSA-2048 keygen costs 0.5 to 1.3 s per run here
        // (explain --claims is interactive). The key is public on purpose: no config, mock
        // or key set trusts it, only the key set this process builds for itself and drops.
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
#[command(group(clap::ArgGroup::new("signer").required(true).args(["idp", "key"])))]
pub struct MintArgs {
    /// A running mock IdP (e.g. the `mock IdP` URL `make demo` prints): it signs the token
    /// with its current key, so a gateway whose config points at it accepts the token.
    #[arg(long, value_name = "URL")]
    idp: Option<String>,
    /// Private key: a PEM file (RSA, EC P-256/P-384 or Ed25519), or for HS* a file holding
    /// the shared secret. Trusted only where its public half is configured.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The claims: a JSON object, or @FILE. With --idp they are merged over the IdP's
    /// defaults (iss, aud, tid, oid, azp, ...); a null removes a claim.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Signing algorithm (default: RS256 with --idp, else RS256, ES256, ES384 or EdDSA
    /// after the key).
    #[arg(long)]
    alg: Option<String>,
    /// `kid` in the JOSE header (with --idp: overrides the IdP's).
    #[arg(long)]
    kid: Option<String>,
    /// Lifetime in seconds: `exp` is now + this unless the claims carry one.
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
    /// --idp: the tenant (GUID) of the token (default: the IdP's default tenant).
    #[arg(long, requires = "idp")]
    tenant: Option<String>,
    /// --idp: the client app id (azp, or appid in v1 tokens).
    #[arg(long, requires = "idp")]
    client_id: Option<String>,
    /// --idp: token version, 1 (sts.windows.net issuer, appid) or 2.
    #[arg(long, requires = "idp", value_parser = ["1", "2"])]
    ver: Option<String>,
    /// Also write the public key as a JWKS file (for `explain --jwks-file`); with --idp,
    /// the IdP's key set of the token's tenant.
    #[arg(long)]
    jwks_out: Option<PathBuf>,
}

const BANNER: &str = "azure-ml-kong mint: FOR LOCAL TESTING ONLY";

/// Ask the mock IdP (`POST /_control/token`) to sign; a real IdP has no such endpoint.
fn mint_at_idp(a: &MintArgs, idp: &str) -> Outcome {
    let base = idp.trim_end_matches('/');
    let claims = read_json_arg(&a.claims)?;
    if !claims.is_object() {
        return Err("claims must be a JSON object".into());
    }
    let mut spec = json!({
        "claims": claims,
        "alg": a.alg.as_deref().unwrap_or("RS256"),
        "expires_in": a.lifetime,
    });
    for (k, v) in [
        ("tenant", &a.tenant),
        ("client_id", &a.client_id),
        ("ver", &a.ver),
    ] {
        if let Some(v) = v {
            spec[k] = json!(v);
        }
    }
    if let Some(kid) = &a.kid {
        spec["header"] = json!({"kid": kid});
    }
    let url = format!("{base}/_control/token");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&url)
        .header("content-type", "application/json")
        .send(spec.to_string())
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| format!("POST {url}: {e}"))?;
    let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let token = match (status, reply.get("access_token").and_then(Value::as_str)) {
        (200, Some(t)) => t.to_string(),
        (404, _) => {
            return Err(format!(
                "POST {url}: 404: not a mock IdP (only the project's mock IdP signs on request)"
            ))
        }
        _ => {
            let why = reply
                .pointer("/error_description")
                .or_else(|| reply.pointer("/message"))
                .and_then(Value::as_str)
                .map_or_else(|| body.chars().take(200).collect(), str::to_string);
            return Err(format!("POST {url}: {status}: {why}"));
        }
    };
    if let Some(path) = &a.jwks_out {
        let tid = reply
            .pointer("/claims/tid")
            .and_then(Value::as_str)
            .ok_or("the IdP's token has no tid: cannot tell which key set to write")?;
        let uri = format!("{base}/{tid}/discovery/v2.0/keys");
        let keys = crate::check_config::fetch(&uri, 10_000, 1 << 20)?;
        std::fs::write(path, keys).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!(
        "{BANNER}: signed by the mock IdP at {base}, trusted only by gateways configured with it"
    );
    println!("{token}");
    Ok(0)
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
    let key = match (&a.idp, &a.key) {
        (Some(idp), _) => return mint_at_idp(a, idp),
        (None, Some(k)) => k,
        (None, None) => return Err("mint: give --idp URL or --key FILE".into()),
    };
    let text = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
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
                key.display()
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
    eprintln!("{BANNER}: a token signed with a local key, trusted by no real gateway");
    println!("{token}");
    Ok(0)
}
