//! Local responses for denied requests (RFC 6750 for 401/403).
//!
//! The body is always `{"error": <reason code>, "error_description": <fixed text>,
//! "request_id": <id>}`: stable codes and fixed strings, never the token, claims,
//! secrets or other request data (the request id is either generated or a client value
//! that passed `annotate`'s strict character check; it is re-checked here).

use serde::Serialize;

use crate::reason::{OAuthError, Reason};

/// `Retry-After` used for a 429/503 when the caller gives none.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

/// A response the adapter sends with `send_http_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
    request_id: &'a str,
}

/// Keep a header-safe id: the characters `annotate` accepts, at most 128.
fn safe_id(id: &str) -> String {
    id.chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '+' | '/' | '=' | '-')
        })
        .take(128)
        .collect()
}

/// Strip what cannot appear inside an RFC 7230 quoted-string (defence in depth: the
/// realm is validated at config load and descriptions are fixed strings).
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// The `WWW-Authenticate` value for a reason, if its status carries one (401, 403).
pub fn www_authenticate(reason: Reason, realm: &str) -> Option<String> {
    let realm = quoted(realm);
    match (reason.status(), reason.oauth_error()) {
        (401, None) => Some(format!("Bearer realm=\"{realm}\"")),
        (401 | 403, Some(e @ (OAuthError::InvalidToken | OAuthError::InsufficientScope))) => {
            Some(format!(
                "Bearer realm=\"{realm}\", error=\"{}\", error_description=\"{}\"",
                e.as_str(),
                quoted(reason.description())
            ))
        }
        _ => None,
    }
}

/// The local response denying a request for `reason`.
pub fn deny(
    reason: Reason,
    realm: &str,
    request_id: &str,
    retry_after_secs: Option<u64>,
) -> LocalResponse {
    let status = reason.status();
    let id = safe_id(request_id);
    let mut headers: Vec<(String, String)> = Vec::with_capacity(6);
    headers.push(("content-type".into(), "application/json".into()));
    headers.push(("cache-control".into(), "no-store".into()));
    headers.push(("x-request-id".into(), id.clone()));
    if let Some(v) = www_authenticate(reason, realm) {
        headers.push(("www-authenticate".into(), v));
    }
    if status == 429 || status == 503 {
        let secs = retry_after_secs.unwrap_or(DEFAULT_RETRY_AFTER_SECS).max(1);
        headers.push(("retry-after".into(), secs.to_string()));
    }
    let body = serde_json::to_string(&Body {
        error: reason.code(),
        error_description: reason.description(),
        request_id: &id,
    })
    .unwrap_or_else(|_| String::from("{}"));
    LocalResponse {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a LocalResponse, n: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }

    fn body(r: &LocalResponse) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn missing_token_401_without_error() {
        let r = deny(Reason::TokenMissing, "azure-ml", "rid-1", None);
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some(r#"Bearer realm="azure-ml""#)
        );
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "x-request-id"), Some("rid-1"));
        assert_eq!(header(&r, "retry-after"), None);
        assert_eq!(
            body(&r),
            serde_json::json!({"error": "token_missing", "error_description": "a bearer token is required", "request_id": "rid-1"})
        );
    }

    #[test]
    fn invalid_token_401() {
        let r = deny(Reason::TokenExpired, "azure-ml", "rid", None);
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some(
                r#"Bearer realm="azure-ml", error="invalid_token", error_description="the token has expired""#
            )
        );
        assert_eq!(body(&r)["error"], "token_expired");
    }

    #[test]
    fn forbidden_403() {
        for reason in [
            Reason::InsufficientScope,
            Reason::RouteAudienceMismatch,
            Reason::GroupsOverage,
            Reason::NoRoute,
        ] {
            let r = deny(reason, "azure-ml", "rid", None);
            assert_eq!(r.status, 403);
            let w = header(&r, "www-authenticate").unwrap();
            assert!(
                w.starts_with(
                    r#"Bearer realm="azure-ml", error="insufficient_scope", error_description=""#
                ),
                "{w}"
            );
            assert_eq!(body(&r)["error"], reason.code());
        }
    }

    #[test]
    fn bad_request_400() {
        let r = deny(Reason::DuplicateIdentityHeader, "azure-ml", "rid", None);
        assert_eq!(r.status, 400);
        assert_eq!(header(&r, "www-authenticate"), None);
        assert_eq!(body(&r)["error"], "duplicate_identity_header");
    }

    #[test]
    fn retry_after_for_429_and_503() {
        let r = deny(Reason::RateLimited, "azure-ml", "rid", Some(17));
        assert_eq!(r.status, 429);
        assert_eq!(header(&r, "retry-after"), Some("17"));
        assert_eq!(header(&r, "www-authenticate"), None);
        let r = deny(Reason::JwksUnavailable, "azure-ml", "rid", None);
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
        let r = deny(Reason::ConfigInvalid, "azure-ml", "rid", Some(0));
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_eq!(body(&r)["error"], "config_invalid");
    }

    #[test]
    fn every_reason_is_well_formed() {
        for &reason in Reason::ALL {
            let r = deny(reason, "realm", "rid", None);
            assert_eq!(r.status, reason.status());
            let b = body(&r);
            assert_eq!(b["error"], reason.code());
            assert_eq!(b["error_description"], reason.description());
            assert_eq!(b["request_id"], "rid");
            assert_eq!(b.as_object().unwrap().len(), 3);
            assert!(!reason.description().contains(['"', '\\']));
            for (k, v) in &r.headers {
                assert_eq!(k.to_ascii_lowercase(), *k);
                assert!(!v.chars().any(char::is_control), "{k}: {v}");
            }
        }
    }

    #[test]
    fn hostile_request_id_and_realm_are_neutralized() {
        let r = deny(Reason::TokenMissing, "a\"b", "x\r\nset-cookie: y\"", None);
        assert_eq!(header(&r, "x-request-id"), Some("xset-cookie:y"));
        assert_eq!(header(&r, "www-authenticate"), Some(r#"Bearer realm="ab""#));
    }
}
