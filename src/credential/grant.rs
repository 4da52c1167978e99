//! The token answers of Azure IMDS and of an OAuth 2.0 token endpoint (client
//! credentials), parsed into a [`Grant`]. IMDS sends `expires_in`/`expires_on` as
//! strings of seconds, the token endpoint sends numbers: both are accepted.
//!
//! Errors never carry the token or any other part of the body except the OAuth
//! `error` code, which is a short ASCII word by RFC 6749 §5.2 (checked here).

use serde::Deserialize;
use serde_json::Value;

/// Cap on a token answer's body (an Entra access token is 1–3 KB).
pub const MAX_GRANT_BODY_BYTES: usize = 64 * 1024;
/// Cap on the access token itself: it goes into a request header.
pub const MAX_ACCESS_TOKEN_BYTES: usize = 16 * 1024;
/// Shortest lifetime accepted: below it the token would be refreshed without pause.
pub const MIN_LIFETIME_SECS: u64 = 10;
/// Longest lifetime believed (Entra issues 60–90 min, IMDS up to 24 h).
pub const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// A usable access token and how long it lives, as the issuer said.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub access_token: String,
    /// Seconds from the moment the answer arrived.
    pub lifetime_secs: u64,
}

// Never print the token, not even in debug output.
impl core::fmt::Debug for Grant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &"<redacted>")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

/// Why a token answer was not usable. [`GrantError::code`] is the stable log/metric code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// Not a JSON object.
    NotJson,
    /// Above [`MAX_GRANT_BODY_BYTES`].
    TooLarge,
    /// The OAuth error answer (`{"error": "invalid_client", …}`), with its code when
    /// the code is a plain word.
    Refused(Option<String>),
    /// No `access_token`, or one that cannot be sent in a header.
    BadAccessToken,
    /// `token_type` present and not `Bearer`.
    NotBearer,
    /// No `expires_in`, or one that is not a whole number of seconds in range.
    BadLifetime,
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::NotJson => "credential_garbage",
            GrantError::TooLarge => "credential_too_large",
            GrantError::Refused(_) => "credential_refused",
            GrantError::BadAccessToken => "credential_bad_token",
            GrantError::NotBearer => "credential_not_bearer",
            GrantError::BadLifetime => "credential_bad_lifetime",
        }
    }
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantError::NotJson => f.write_str("token answer is not a JSON object"),
            GrantError::TooLarge => write!(f, "token answer above {MAX_GRANT_BODY_BYTES} bytes"),
            GrantError::Refused(Some(code)) => write!(f, "token request refused: {code}"),
            GrantError::Refused(None) => f.write_str("token request refused"),
            GrantError::BadAccessToken => f.write_str("access_token missing or not header-safe"),
            GrantError::NotBearer => f.write_str("token_type is not Bearer"),
            GrantError::BadLifetime => f.write_str("expires_in missing or out of range"),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<Value>,
    expires_in: Option<Value>,
    token_type: Option<Value>,
    error: Option<Value>,
}

/// Parse a token answer (the body of a 200, or of an error status: then only the
/// OAuth `error` code is read).
pub fn parse_grant(body: &[u8]) -> Result<Grant, GrantError> {
    if body.len() > MAX_GRANT_BODY_BYTES {
        return Err(GrantError::TooLarge);
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| GrantError::NotJson)?;
    if let Some(err) = answer.error {
        return Err(GrantError::Refused(oauth_error_code(&err)));
    }
    if let Some(tt) = &answer.token_type {
        if !tt
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            return Err(GrantError::NotBearer);
        }
    }
    let access_token = match answer.access_token {
        Some(Value::String(t)) if is_header_safe_token(&t) => t,
        _ => return Err(GrantError::BadAccessToken),
    };
    let lifetime_secs = answer
        .expires_in
        .as_ref()
        .and_then(seconds)
        .filter(|s| (MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(s))
        .ok_or(GrantError::BadLifetime)?;
    Ok(Grant {
        access_token,
        lifetime_secs,
    })
}

/// The OAuth `error` code of a refusal body, if it is one (for a non-200 answer).
pub fn refusal_code(body: &[u8]) -> Option<String> {
    if body.len() > MAX_GRANT_BODY_BYTES {
        return None;
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    oauth_error_code(&answer.error?)
}

/// A number, or a string of ASCII digits (IMDS), as whole seconds.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// RFC 6749 error codes are `%x20-21 / %x23-5B / %x5D-7E`; we keep only short
/// word-like ones so that nothing else of the body reaches a log line.
fn oauth_error_code(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    ok.then(|| s.to_string())
}

/// RFC 6750 `b64token` characters, within the cap: what can follow `Bearer ` in a header.
fn is_header_safe_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_ACCESS_TOKEN_BYTES
        && t.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMDS: &str = r#"{"access_token":"eyJ0eXAi.eyJhdWQi.c2ln","client_id":"c1",
        "expires_in":"86399","expires_on":"1764630000","ext_expires_in":"86399",
        "not_before":"1764543300","resource":"https://ml.azure.com","token_type":"Bearer"}"#;
    const AAD: &str = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,
        "access_token":"eyJ0eXAi.eyJhdWQi.c2ln"}"#;

    #[test]
    fn imds_strings_and_token_endpoint_numbers_both_parse() {
        let g = parse_grant(IMDS.as_bytes()).unwrap();
        assert_eq!(g.lifetime_secs, 86399);
        assert_eq!(g.access_token, "eyJ0eXAi.eyJhdWQi.c2ln");
        let g = parse_grant(AAD.as_bytes()).unwrap();
        assert_eq!(g.lifetime_secs, 3599);
    }

    #[test]
    fn refusals_keep_only_the_error_code() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. secret=abc"}"#;
        let e = parse_grant(body).unwrap_err();
        assert_eq!(e, GrantError::Refused(Some("invalid_client".into())));
        assert!(!e.to_string().contains("abc"));
        assert_eq!(refusal_code(body).as_deref(), Some("invalid_client"));
        // An "error" that is not a plain word is not repeated.
        let e = parse_grant(br#"{"error":"bad thing: secret=abc"}"#).unwrap_err();
        assert_eq!(e, GrantError::Refused(None));
    }

    #[test]
    fn unusable_answers_are_typed() {
        let cases: &[(&str, GrantError)] = &[
            ("not json", GrantError::NotJson),
            ("[]", GrantError::NotJson),
            (r#"{"expires_in":3600}"#, GrantError::BadAccessToken),
            (
                r#"{"access_token":"","expires_in":3600}"#,
                GrantError::BadAccessToken,
            ),
            (
                r#"{"access_token":"a b","expires_in":3600}"#,
                GrantError::BadAccessToken,
            ),
            (
                r#"{"access_token":"a\r\nx: y","expires_in":3600}"#,
                GrantError::BadAccessToken,
            ),
            (
                r#"{"access_token":7,"expires_in":3600}"#,
                GrantError::BadAccessToken,
            ),
            (
                r#"{"access_token":"t","expires_in":3600,"token_type":"mac"}"#,
                GrantError::NotBearer,
            ),
            (r#"{"access_token":"t"}"#, GrantError::BadLifetime),
            (
                r#"{"access_token":"t","expires_in":"-5"}"#,
                GrantError::BadLifetime,
            ),
            (
                r#"{"access_token":"t","expires_in":"1e9"}"#,
                GrantError::BadLifetime,
            ),
            (
                r#"{"access_token":"t","expires_in":3600.5}"#,
                GrantError::BadLifetime,
            ),
            (
                r#"{"access_token":"t","expires_in":5}"#,
                GrantError::BadLifetime,
            ),
            (
                r#"{"access_token":"t","expires_in":1e30}"#,
                GrantError::BadLifetime,
            ),
            (
                r#"{"access_token":"t","expires_in":"99999999999999999999"}"#,
                GrantError::BadLifetime,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&parse_grant(body.as_bytes()).unwrap_err(), want, "{body}");
        }
        let big = format!(
            r#"{{"access_token":"{}","expires_in":3600}}"#,
            "a".repeat(MAX_ACCESS_TOKEN_BYTES + 1)
        );
        assert_eq!(
            parse_grant(big.as_bytes()).unwrap_err(),
            GrantError::BadAccessToken
        );
        let huge = vec![b' '; MAX_GRANT_BODY_BYTES + 1];
        assert_eq!(parse_grant(&huge).unwrap_err(), GrantError::TooLarge);
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let g = parse_grant(AAD.as_bytes()).unwrap();
        let s = format!("{g:?}");
        assert!(!s.contains("eyJ0eXAi"), "{s}");
        assert!(s.contains("3599"));
    }
}
