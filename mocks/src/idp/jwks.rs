//! Discovery documents and the JWKS endpoint, with the behaviours tests switch between
//! (failure modes, delays, `Cache-Control`, an `issuer` field).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::{lock, Idp, Inner, HANG};
use crate::common::{self, Reply};
use crate::http::{Outcome, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksMode {
    Ok,
    Status500,
    Garbage,
    Empty,
    Huge,
    Hang,
}

impl JwksMode {
    pub(super) fn parse(s: &str) -> Option<JwksMode> {
        Some(match s {
            "ok" => JwksMode::Ok,
            "status500" => JwksMode::Status500,
            "garbage" => JwksMode::Garbage,
            "empty" => JwksMode::Empty,
            "huge" => JwksMode::Huge,
            "hang" => JwksMode::Hang,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            JwksMode::Ok => "ok",
            JwksMode::Status500 => "status500",
            JwksMode::Garbage => "garbage",
            JwksMode::Empty => "empty",
            JwksMode::Huge => "huge",
            JwksMode::Hang => "hang",
        }
    }
}

/// How the JWKS endpoint behaves (set as a whole by `POST /_control/jwks`).
#[derive(Debug, Clone, Copy)]
pub(super) struct JwksBehaviour {
    pub(super) mode: JwksMode,
    pub(super) max_age: Option<u64>,
    pub(super) delay_ms: u64,
    pub(super) issuer_field: bool,
}

impl Default for JwksBehaviour {
    fn default() -> Self {
        JwksBehaviour {
            mode: JwksMode::Ok,
            max_age: None,
            delay_ms: 0,
            issuer_field: false,
        }
    }
}

impl Idp {
    pub(super) fn discovery(&self, req: &Request, tenant: &str, ver: u8) -> Reply {
        self.discovery_requests.fetch_add(1, Ordering::Relaxed);
        let host = req
            .header("host")
            .map(str::to_string)
            .unwrap_or_else(|| self.addr.to_string());
        let base = format!("http://{host}/{tenant}");
        let (jwks_uri, token_endpoint, authorize) = if ver == 1 {
            (
                format!("{base}/discovery/keys"),
                format!("{base}/oauth2/token"),
                format!("{base}/oauth2/authorize"),
            )
        } else {
            (
                format!("{base}/discovery/v2.0/keys"),
                format!("{base}/oauth2/v2.0/token"),
                format!("{base}/oauth2/v2.0/authorize"),
            )
        };
        Reply::json(
            200,
            &json!({
                "issuer": self.issuer(tenant, ver),
                "jwks_uri": jwks_uri,
                "token_endpoint": token_endpoint,
                "authorization_endpoint": authorize,
                "token_endpoint_auth_methods_supported":
                    ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "WW",
                "cloud_instance_name": "microsoftonline.com",
            }),
        )
    }

    /// The published JWKs (current key first in each family).
    fn published_jwks(&self, inner: &Inner) -> Vec<Value> {
        let issuer = self.issuer(&self.config.default_tenant, 2);
        let mut keys = Vec::new();
        for fam in &inner.families {
            for key in std::iter::once(&fam.current).chain(&fam.previous) {
                let mut jwk = key.pair.public_jwk(&key.kid);
                if inner.jwks.issuer_field {
                    jwk["issuer"] = json!(issuer);
                }
                keys.push(jwk);
            }
        }
        keys
    }

    /// The key set is taken when the request arrives; a delay holds only the answer.
    pub(super) fn jwks(&self) -> Outcome {
        self.jwks_requests.fetch_add(1, Ordering::Relaxed);
        let (behaviour, keys) = {
            let inner = lock(&self.inner);
            (inner.jwks, self.published_jwks(&inner))
        };
        let delay = Duration::from_millis(behaviour.delay_ms);
        let reply = match behaviour.mode {
            JwksMode::Ok => Reply::json(200, &json!({ "keys": keys })),
            JwksMode::Empty => Reply::json(200, &json!({"keys": []})),
            JwksMode::Status500 => Reply::error(500, "server_error", "mock JWKS failure"),
            JwksMode::Garbage => Reply {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: b"<html><body>Service Unavailable {\"keys\": [".to_vec(),
            },
            JwksMode::Huge => Reply::json(200, &json!({ "keys": huge_keys(keys) })),
            JwksMode::Hang => {
                return Outcome {
                    reply: None,
                    delay: delay + HANG,
                }
            }
        };
        let reply = match behaviour.max_age {
            Some(n) => reply.with_header("Cache-Control", format!("max-age={n}")),
            None => reply,
        };
        Outcome {
            reply: Some(reply),
            delay,
        }
    }
}

/// The published keys followed by enough syntactically valid RSA decoys for ~1 MiB.
fn huge_keys(mut keys: Vec<Value>) -> Vec<Value> {
    let e = common::b64url(&[1, 0, 1]);
    let mut size = 0usize;
    let mut i = 0u32;
    while size < 1024 * 1024 {
        let mut n = common::random_bytes(256);
        n[0] |= 0x80;
        let jwk = json!({"kty": "RSA", "use": "sig", "kid": format!("decoy-{i}"),
                         "x5t": common::b64url(&common::random_bytes(20)),
                         "n": common::b64url(&n), "e": e});
        size += jwk.to_string().len() + 1;
        keys.push(jwk);
        i += 1;
    }
    keys
}
