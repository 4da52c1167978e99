//! The endpoint's `aad_token` auth mode: every scoring request carries an Entra access
//! token, RS256-signed by a key of a JWKS, for the endpoint's audience (Azure ML:
//! `https://ml.azure.com`) and, when configured, from one client app (`appid`/`azp`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{RS256PublicKey, RSAPublicKeyLike, VerificationOptions};
use serde_json::{Map, Value};

use crate::common;

/// The JWKS is refetched when the copy is older than this (a test's key rotation shows
/// within a second).
const JWKS_CACHE: Duration = Duration::from_secs(1);
const JWKS_TIMEOUT: Duration = Duration::from_secs(3);
/// `iat`/`nbf` slack (the IdP's clock is this machine's, read at another moment); `exp`
/// is checked exactly.
const CLOCK_SLACK_SECS: u64 = 5;

#[derive(Debug, Clone)]
pub struct AadConfig {
    /// Where the signing keys are (`{"keys": [...]}`).
    pub jwks_url: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// When set, the only client app (`appid` v1, `azp` v2) admitted.
    pub app_id: Option<String>,
}

/// Checks bearer tokens against [`AadConfig`], with the JWKS cached for [`JWKS_CACHE`].
pub struct AadVerifier {
    config: AadConfig,
    agent: ureq::Agent,
    jwks: Mutex<Option<(Instant, Value)>>,
}

impl AadVerifier {
    pub fn new(config: AadConfig) -> AadVerifier {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(JWKS_TIMEOUT))
            .build()
            .into();
        AadVerifier {
            config,
            agent,
            jwks: Mutex::new(None),
        }
    }

    /// The caller app of a valid `Authorization` value, or why it is not valid (never
    /// containing the token).
    pub fn verify(&self, authorization: Option<&str>) -> Result<String, String> {
        let auth = authorization.ok_or("missing Authorization header")?;
        let token = match auth.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err("Authorization is not `Bearer <Entra access token>`".into()),
        };
        let header = segment(token, 0).ok_or("bearer token is not a JWT")?;
        if header["alg"] != "RS256" {
            return Err("token is not signed with RS256".into());
        }
        let kid = header["kid"].as_str().ok_or("token header has no kid")?;
        let jwk = self.key(kid)?;
        let (n, e) = match (b64_field(&jwk, "n"), b64_field(&jwk, "e")) {
            (Some(n), Some(e)) => (n, e),
            _ => return Err(format!("JWK {kid} is not an RSA key")),
        };
        let key = RS256PublicKey::from_components(&n, &e)
            .map_err(|e| format!("JWK {kid} is not usable: {e}"))?;
        let options = VerificationOptions {
            allowed_audiences: Some(HashSet::from([self.config.audience.clone()])),
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(CLOCK_SLACK_SECS)),
            ..Default::default()
        };
        key.verify_token::<Map<String, Value>>(token, Some(options))
            .map_err(|e| format!("token rejected: {e}"))?;
        let claims = segment(token, 1).ok_or("token payload is not JSON")?;
        match claims["exp"].as_i64() {
            Some(exp) if exp > common::now() => {}
            Some(_) => return Err("token expired".into()),
            None => return Err("token has no exp".into()),
        }
        let app = claims["appid"]
            .as_str()
            .or_else(|| claims["azp"].as_str())
            .unwrap_or_default()
            .to_string();
        match &self.config.app_id {
            Some(want) if *want != app => Err(format!(
                "token's client app {app:?} is not the one allowed to score"
            )),
            _ => Ok(app),
        }
    }

    /// The published JWK `kid`: from the cached set when it is fresh, else fetched.
    fn key(&self, kid: &str) -> Result<Value, String> {
        let cached = {
            let guard = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .filter(|(at, _)| at.elapsed() < JWKS_CACHE)
                .map(|(_, set)| set.clone())
        };
        let set = match cached {
            Some(set) => set,
            None => {
                let set = self.fetch()?;
                *self.jwks.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), set.clone()));
                set
            }
        };
        set["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["kid"] == kid && k["kty"] == "RSA")
            .cloned()
            .ok_or_else(|| format!("no RSA key {kid} in the JWKS"))
    }

    fn fetch(&self) -> Result<Value, String> {
        let url = &self.config.jwks_url;
        let text = self
            .agent
            .get(url)
            .call()
            .map_err(|e| format!("cannot fetch the JWKS {url}: {e}"))?
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("cannot read the JWKS {url}: {e}"))?;
        serde_json::from_str(&text).map_err(|_| format!("the JWKS {url} is not JSON"))
    }
}

/// JWT segment `i` (0: header, 1: payload) as JSON.
fn segment(token: &str, i: usize) -> Option<Value> {
    let part = token.split('.').nth(i)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn b64_field(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(jwk[name].as_str()?).ok()
}
