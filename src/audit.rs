//! Audit records: one JSON line per decision.
//!
//! A record carries who (issuer, tenant, subject, client app, key id, provider), what
//! (method, path without query, route) and the outcome (decision, status, reason code).
//! It never carries the token, the query string, header values or the whole claim set.
//! Claim values are copied only when they are strings, and cut to
//! [`MAX_FIELD_CHARS`]; the path is cut to [`MAX_PATH_CHARS`].

use serde::Serialize;
use serde_json::Value;

use crate::claims::{lookup, Claims};
use crate::reason::Reason;
use crate::request::RequestView;

pub const MAX_FIELD_CHARS: usize = 256;
pub const MAX_PATH_CHARS: usize = 1024;

/// What was decided, as the audit line's `decision` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// One decision. Fields set to `None` are left out of the JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Unix time, milliseconds.
    pub time: u64,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub decision: Outcome,
    /// 0 until decided; for an allow, 0 (the upstream decides the status).
    pub status: u32,
    /// Why it was denied; serialized as the reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// `oid`, or `sub` when the token has no `oid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The client application: `azp` (v2) or `appid` (v1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The registered caller of a verified token (`callers`), or `unregistered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The registered caller's owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The gateway's own credential the request went upstream with (`upstream_credential`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s.get(..i).unwrap_or("").to_string(),
        None => s.to_string(),
    }
}

fn claim_str(claims: &Claims, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match lookup(claims, n) {
        Some(Value::String(s)) if !s.is_empty() => Some(cut(s, MAX_FIELD_CHARS)),
        _ => None,
    })
}

impl AuditRecord {
    /// A record for `req`, decided as a deny with status 0 until [`AuditRecord::allow`]
    /// or [`AuditRecord::deny`] is called.
    pub fn new(time_ms: u64, request_id: &str, req: &RequestView<'_>) -> AuditRecord {
        AuditRecord {
            time: time_ms,
            request_id: cut(request_id, 128),
            route: None,
            method: cut(req.method, 32),
            path: cut(req.path_only(), MAX_PATH_CHARS),
            decision: Outcome::Deny,
            status: 0,
            reason: None,
            provider: None,
            iss: None,
            tid: None,
            subject: None,
            app: None,
            credential: None,
            kid: None,
            caller: None,
            owner: None,
        }
    }

    /// Copy the identifying claims (iss, tid, oid|sub, azp|appid) — nothing else.
    pub fn note_claims(&mut self, claims: &Claims) {
        self.iss = claim_str(claims, &["iss"]);
        self.tid = claim_str(claims, &["tid"]);
        self.subject = claim_str(claims, &["oid", "sub"]);
        self.app = claim_str(claims, &["azp", "appid"]);
    }

    /// Builder form of [`AuditRecord::note_claims`].
    pub fn with_claims(mut self, claims: &Claims) -> AuditRecord {
        self.note_claims(claims);
        self
    }

    pub fn allow(&mut self) {
        self.decision = Outcome::Allow;
        self.status = 0;
        self.reason = None;
    }

    pub fn deny(&mut self, reason: Reason, status: u32) {
        self.decision = Outcome::Deny;
        self.status = status;
        self.reason = Some(reason);
    }

    /// The record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn rec() -> AuditRecord {
        let h = vec![
            ("authorization".to_string(), format!("Bearer {TOKEN}")),
            ("x-secret".to_string(), "hunter2".to_string()),
        ];
        let path = format!("/teams/a/score?access_token={TOKEN}");
        let req = RequestView {
            method: "POST",
            path: &path,
            authority: "ml.example.com",
            headers: &h,
        };
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "iss": "https://login.microsoftonline.com/t-1/v2.0",
            "tid": "t-1", "oid": "o-1", "sub": "s-1", "azp": "app-1",
            "roles": ["Secret.Role"], "email": "someone@example.com",
            "nonce": TOKEN
        }))
        .unwrap();
        let mut r = AuditRecord::new(1_700_000_000_123, "rid-1", &req).with_claims(&claims);
        r.route = Some("team-score".into());
        r.provider = Some("entra".into());
        r.kid = Some("kid-1".into());
        r
    }

    #[test]
    fn allow_line_fields() {
        let mut r = rec();
        r.allow();
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": 1_700_000_000_123u64, "request_id": "rid-1", "route": "team-score",
                "method": "POST", "path": "/teams/a/score", "decision": "allow", "status": 0,
                "provider": "entra", "iss": "https://login.microsoftonline.com/t-1/v2.0",
                "tid": "t-1", "subject": "o-1", "app": "app-1", "kid": "kid-1"
            })
        );
    }

    #[test]
    fn deny_line_and_no_secrets() {
        let mut r = rec();
        r.deny(Reason::InsufficientScope, 403);
        let line = r.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["status"], 403);
        assert_eq!(v["reason"], "insufficient_scope");
        for secret in [
            TOKEN,
            "hunter2",
            "Secret.Role",
            "someone@example.com",
            "access_token",
        ] {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
    }

    #[test]
    fn fallbacks_and_limits() {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "sub": "s-1", "appid": "app-v1", "tid": 5, "iss": "x".repeat(1000)
        }))
        .unwrap();
        let req = RequestView {
            method: "GET",
            path: "/a",
            authority: "h",
            headers: &[],
        };
        let r = AuditRecord::new(1, "r", &req).with_claims(&claims);
        assert_eq!(r.subject.as_deref(), Some("s-1"));
        assert_eq!(r.app.as_deref(), Some("app-v1"));
        assert_eq!(r.tid, None, "non-string claims are not copied");
        assert_eq!(
            r.iss.as_ref().map(|s| s.chars().count()),
            Some(MAX_FIELD_CHARS)
        );
        let line = r.to_json_line();
        assert!(
            !line.contains("\"route\""),
            "unset fields are omitted: {line}"
        );
    }
}
