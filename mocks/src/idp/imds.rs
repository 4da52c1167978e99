//! The gateway's own token sources: an Azure IMDS look-alike
//! (`GET /metadata/identity/oauth2/token`, managed identity) and the failure modes of it
//! and of the client-credentials token endpoint, which tests switch between with
//! `POST /_control/imds` and `POST /_control/token_endpoint`.

use std::sync::atomic::Ordering;

use serde_json::{json, Map};

use super::tokens::{Mint, SignWith};
use super::{lock, Idp, HANG, MANAGED_IDENTITY_CLIENT_ID, TOKEN_LIFETIME};
use crate::common::{self, param, Reply};
use crate::http::{Method, Outcome, Request};

/// How a token source answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantMode {
    Ok,
    /// `status` with an OAuth-style error body.
    Fail,
    /// Holds the request (like the JWKS `hang` mode), then drops the connection.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
}

impl GrantMode {
    fn parse(s: &str) -> Option<GrantMode> {
        Some(match s {
            "ok" => GrantMode::Ok,
            "fail" => GrantMode::Fail,
            "hang" => GrantMode::Hang,
            "garbage" => GrantMode::Garbage,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            GrantMode::Ok => "ok",
            GrantMode::Fail => "fail",
            GrantMode::Hang => "hang",
            GrantMode::Garbage => "garbage",
        }
    }
}

/// The behaviour of one token source (set as a whole by its control endpoint).
#[derive(Debug, Clone, Copy)]
pub(super) struct GrantBehaviour {
    mode: GrantMode,
    /// Lifetime of the tokens issued, seconds.
    lifetime: i64,
    /// The status of `fail` answers.
    status: u16,
}

impl Default for GrantBehaviour {
    fn default() -> Self {
        GrantBehaviour {
            mode: GrantMode::Ok,
            lifetime: TOKEN_LIFETIME,
            status: 500,
        }
    }
}

impl GrantBehaviour {
    /// `?mode=ok|fail|hang|garbage&lifetime=SECONDS&status=CODE` (unset: the defaults).
    fn from_query(query: &[(String, String)]) -> Result<GrantBehaviour, String> {
        let mut b = GrantBehaviour::default();
        if let Some(m) = param(query, "mode") {
            b.mode = GrantMode::parse(m).ok_or("mode must be ok, fail, hang or garbage")?;
        }
        if let Some(l) = param(query, "lifetime") {
            b.lifetime = l
                .parse()
                .ok()
                .filter(|l| *l > 0)
                .ok_or("lifetime must be a positive number of seconds")?;
        }
        if let Some(s) = param(query, "status") {
            b.status = s
                .parse()
                .ok()
                .filter(|s| (400..=599).contains(s))
                .ok_or("status must be 400..599")?;
        }
        Ok(b)
    }

    fn describe(&self) -> serde_json::Value {
        json!({"mode": self.mode.name(), "lifetime": self.lifetime, "status": self.status})
    }

    /// The answer of a mode other than `ok` (`None` for `ok`).
    fn failure(&self, what: &str) -> Option<Outcome> {
        match self.mode {
            GrantMode::Ok => None,
            GrantMode::Fail => {
                let error = match self.status {
                    400 | 401 => "invalid_client",
                    429 | 503 => "temporarily_unavailable",
                    _ => "server_error",
                };
                Some(oauth_error(self.status, error, &format!("mock {what} failure")).into())
            }
            GrantMode::Hang => Some(Outcome {
                reply: None,
                delay: HANG,
            }),
            GrantMode::Garbage => Some(
                Reply {
                    status: 200,
                    content_type: "application/json",
                    headers: Vec::new(),
                    body: b"<html><body>Bad Gateway {\"access_token\": ".to_vec(),
                }
                .into(),
            ),
        }
    }
}

impl Idp {
    /// `GET /metadata/identity/oauth2/token?api-version=..&resource=R[&client_id=C]`, with
    /// the checks real IMDS makes (the `Metadata: true` header, no `X-Forwarded-For`) and its
    /// answer's shape: every number a string. Every request counts, refused ones too.
    pub(super) fn imds(&self, req: &Request, query: &[(String, String)]) -> Outcome {
        self.imds_requests.fetch_add(1, Ordering::Relaxed);
        if *req.method() != Method::GET {
            return oauth_error(
                405,
                "invalid_request",
                "Only GET is supported on this endpoint",
            )
            .into();
        }
        // IMDS is for the VM itself: anything that went through a proxy is refused.
        if req.header("x-forwarded-for").is_some() {
            return oauth_error(
                400,
                "invalid_request",
                "Request contains X-Forwarded-For header",
            )
            .into();
        }
        if !req
            .header("metadata")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return oauth_error(
                400,
                "invalid_request",
                "Required metadata header not specified",
            )
            .into();
        }
        if param(query, "api-version").is_none_or(str::is_empty) {
            return oauth_error(
                400,
                "invalid_request",
                "Required query variable 'api-version' is missing",
            )
            .into();
        }
        let Some(resource) = param(query, "resource").filter(|r| !r.is_empty()) else {
            return oauth_error(
                400,
                "invalid_request",
                "Required audience variable missing.",
            )
            .into();
        };
        let behaviour = lock(&self.inner).imds;
        if let Some(out) = behaviour.failure("IMDS") {
            return out;
        }
        let client_id = param(query, "client_id")
            .filter(|c| !c.is_empty())
            .unwrap_or(MANAGED_IDENTITY_CLIENT_ID);
        let lifetime = behaviour.lifetime;
        let mut claims = Map::new();
        claims.insert("aud".into(), json!(resource));
        let mint = Mint {
            tenant: self.config.default_tenant.clone(),
            ver: 1,
            alg: "RS256".into(),
            client_id: client_id.to_string(),
            claims,
            header: Map::new(),
            sign_with: SignWith::Current,
            expires_in: lifetime,
            omit_kid: false,
            raw_payload: None,
        };
        let now = common::now();
        match self.mint(&mint) {
            Ok(t) => Reply::json(
                200,
                &json!({
                    "access_token": t.token,
                    "client_id": client_id,
                    "expires_in": lifetime.to_string(),
                    "expires_on": (now + lifetime).to_string(),
                    "ext_expires_in": lifetime.to_string(),
                    "not_before": now.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                }),
            )
            .into(),
            Err(e) => oauth_error(500, "server_error", &e).into(),
        }
    }

    /// `POST /<tenant>/oauth2[/v2.0]/token` in its current behaviour (`/_control/token_endpoint`).
    pub(super) fn token_endpoint(&self, req: &mut Request, tenant: &str, ver: u8) -> Outcome {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        self.token_endpoint_requests.fetch_add(1, Ordering::Relaxed);
        let behaviour = lock(&self.inner).token_endpoint;
        if let Some(out) = behaviour.failure("token endpoint") {
            return out;
        }
        self.oauth_token(req, tenant, ver, behaviour.lifetime)
            .into()
    }

    /// `POST /_control/imds?mode=..&lifetime=..&status=..`.
    pub(super) fn control_imds(&self, query: &[(String, String)]) -> Reply {
        match GrantBehaviour::from_query(query) {
            Ok(b) => {
                lock(&self.inner).imds = b;
                Reply::json(200, &b.describe())
            }
            Err(e) => Reply::error(400, "bad_request", e),
        }
    }

    /// `POST /_control/token_endpoint?mode=..&lifetime=..&status=..` (the client-credentials
    /// endpoints, v1 and v2; `/_control/token` is not affected).
    pub(super) fn control_token_endpoint(&self, query: &[(String, String)]) -> Reply {
        match GrantBehaviour::from_query(query) {
            Ok(b) => {
                lock(&self.inner).token_endpoint = b;
                Reply::json(200, &b.describe())
            }
            Err(e) => Reply::error(400, "bad_request", e),
        }
    }
}

/// An error the way IMDS and Entra's token endpoint answer one.
fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}
