//! Audit records: one JSON line per decision.
//!
//! A record carries who (issuer, tenant, subject, client app, key id, provider), what
//! (method, path without query, route) and the outcome (decision, status, reason code).
//! It never carries the token, the query string, header values or the whole claim set.
//!
//! Who is written in one of two forms. `iss`, `tid`, `subject`, `app`, `kid` are values
//! of a verified token. Values read from a token that did not verify (or before it
//! did) go to `claimed_iss`, `claimed_tid`, `claimed_subject`, `claimed_app`,
//! `claimed_kid`: anyone can write them. Claim values are copied only when they are
//! strings; control characters become `?`, and a value longer than its cap
//! ([`MAX_CLAIMED_BYTES`], [`MAX_CLAIMED_ISS_BYTES`], [`MAX_VERIFIED_BYTES`]) is cut and
//! marked `…#<8 hex digits of its SHA-256>` (see [`capped`]). The path is cut to
//! [`MAX_PATH_CHARS`]; without it a line stays under about 1 KB.

use serde::Serialize;
use serde_json::Value;

use crate::claims::{lookup, Claims};
use crate::reason::Reason;
use crate::request::RequestView;

/// Cap of a claimed value (kid, tid, subject, app): Entra's are 27–43 bytes.
pub const MAX_CLAIMED_BYTES: usize = 64;
/// Cap of a claimed issuer (Entra's are about 75 bytes).
pub const MAX_CLAIMED_ISS_BYTES: usize = 128;
/// Cap of a verified value.
pub const MAX_VERIFIED_BYTES: usize = 128;
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
    /// Read from a token that did not verify: written, not vouched for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_tid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_kid: Option<String>,
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

/// Whether `s` holds a control character (`char::is_control`: C0, DEL, C1), by bytes: C1
/// is 0xC2 0x80..=0x9F in UTF-8, so a value without 0xC2 needs no decoding (nearly every
/// value).
pub fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && s.chars().any(char::is_control)
}

/// `s` with control characters as `?`, at most `max` bytes (at least 16): a longer
/// value keeps its head and ends in `…#` and 8 hex digits of the SHA-256 of the whole
/// value, so two long values stay distinguishable and neither inflates the line.
pub fn capped(s: &str, max: usize) -> String {
    use sha2::Digest as _;
    const MARK: usize = "…#".len() + 8;
    let clean = |t: &str| -> String {
        if !has_control(t) {
            return t.to_owned();
        }
        t.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let max = max.max(MARK + 4);
    if s.len() <= max {
        return clean(s);
    }
    let mut end = max - MARK;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let digest = sha2::Sha256::digest(s.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}…#{hex}", clean(s.get(..end).unwrap_or("")))
}

fn claim_str(claims: &Claims, names: &[&str], max: usize) -> Option<String> {
    names.iter().find_map(|n| match lookup(claims, n) {
        Some(Value::String(s)) if !s.is_empty() => Some(capped(s, max)),
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
            claimed_iss: None,
            claimed_tid: None,
            claimed_subject: None,
            claimed_app: None,
            claimed_kid: None,
        }
    }

    /// Copy the identifying claims (iss, tid, oid|sub, azp|appid) and the `kid` of a token
    /// not verified (yet) into the `claimed_*` fields — nothing else.
    pub fn note_claimed(&mut self, kid: Option<&str>, claims: &Claims) {
        let c = MAX_CLAIMED_BYTES;
        self.claimed_iss = claim_str(claims, &["iss"], MAX_CLAIMED_ISS_BYTES);
        self.claimed_tid = claim_str(claims, &["tid"], c);
        self.claimed_subject = claim_str(claims, &["oid", "sub"], c);
        self.claimed_app = claim_str(claims, &["azp", "appid"], c);
        self.claimed_kid = kid.map(|k| capped(k, c));
    }

    /// The same for a verified token: the plain fields, and no `claimed_*` ones.
    pub fn note_verified(&mut self, kid: Option<&str>, claims: &Claims) {
        let v = MAX_VERIFIED_BYTES;
        self.iss = claim_str(claims, &["iss"], v);
        self.tid = claim_str(claims, &["tid"], v);
        self.subject = claim_str(claims, &["oid", "sub"], v);
        self.app = claim_str(claims, &["azp", "appid"], v);
        self.kid = kid.map(|k| capped(k, v));
        self.claimed_iss = None;
        self.claimed_tid = None;
        self.claimed_subject = None;
        self.claimed_app = None;
        self.claimed_kid = None;
    }

    /// Builder form of [`AuditRecord::note_verified`].
    pub fn with_claims(mut self, claims: &Claims) -> AuditRecord {
        self.note_verified(None, claims);
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

    /// The record as one JSON line (no trailing newline): the fields in declaration order,
    /// `None` left out, exactly as `serde_json::to_string` writes it. Written by hand: it
    /// runs on every decision, and serde's general path was about a fifth of the request
    /// header callback's time on a cache hit in Kong (perf, Wasmtime perfmap).
    pub fn to_json_line(&self) -> String {
        let mut line = String::with_capacity(192 + self.path.len());
        line.push_str("{\"time\":");
        push_u64(&mut line, self.time);
        push_field(&mut line, "request_id", Some(&self.request_id));
        push_field(&mut line, "route", self.route.as_deref());
        push_field(&mut line, "method", Some(&self.method));
        push_field(&mut line, "path", Some(&self.path));
        push_field(&mut line, "decision", Some(self.decision.as_str()));
        line.push_str(",\"status\":");
        push_u64(&mut line, u64::from(self.status));
        push_field(&mut line, "reason", self.reason.map(Reason::code));
        for (name, value) in [
            ("provider", &self.provider),
            ("iss", &self.iss),
            ("tid", &self.tid),
            ("subject", &self.subject),
            ("app", &self.app),
            ("kid", &self.kid),
            ("caller", &self.caller),
            ("owner", &self.owner),
            ("claimed_iss", &self.claimed_iss),
            ("claimed_tid", &self.claimed_tid),
            ("claimed_subject", &self.claimed_subject),
            ("claimed_app", &self.claimed_app),
            ("claimed_kid", &self.claimed_kid),
            ("credential", &self.credential),
        ] {
            push_field(&mut line, name, value.as_deref());
        }
        line.push('}');
        line
    }
}

/// `,"name":"value"`, or nothing for `None`. Names are plain ASCII.
fn push_field(line: &mut String, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        line.push_str(",\"");
        line.push_str(name);
        line.push_str("\":");
        push_json_str(line, v);
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it: `"` and `\\`, the short forms
/// of \b \f \n \r \t, other C0 controls as `\u00XX`; everything else as it is.
fn push_json_str(line: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    line.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is an ASCII byte, so both cuts fall on character boundaries.
        line.push_str(s.get(from..i).unwrap_or(""));
        if short.is_empty() {
            line.push_str("\\u00");
            for nibble in [b >> 4, b & 0xf] {
                line.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        } else {
            line.push_str(short);
        }
        from = i + 1;
    }
    line.push_str(s.get(from..).unwrap_or(""));
    line.push('"');
}

fn push_u64(line: &mut String, n: u64) {
    use core::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(line, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_what_serde_json_writes() {
        let req = RequestView {
            method: "POST",
            path: "/teams/a/score?x=1",
            authority: "h",
            headers: &[],
        };
        let mut bare = AuditRecord::new(0, "", &req);
        let mut full = AuditRecord::new(u64::MAX, "rid-\"1\"\\", &req);
        full.route = Some("team\u{1}\u{1f}\n\r\t\u{8}\u{c}\u{7f}é中\u{85}".into());
        full.path = "/a\"b\\c/\u{0}".into();
        full.deny(Reason::AudienceMismatch, 403);
        for (i, field) in [
            &mut full.provider,
            &mut full.iss,
            &mut full.tid,
            &mut full.subject,
            &mut full.app,
            &mut full.kid,
            &mut full.caller,
            &mut full.owner,
            &mut full.claimed_iss,
            &mut full.claimed_tid,
            &mut full.claimed_subject,
            &mut full.claimed_app,
            &mut full.claimed_kid,
            &mut full.credential,
        ]
        .into_iter()
        .enumerate()
        {
            *field = Some(format!("v{i}\"\\\u{2}"));
        }
        for r in [&bare, &full] {
            assert_eq!(r.to_json_line(), serde_json::to_string(r).unwrap());
        }
        bare.allow();
        bare.time = 1_700_000_000_123;
        assert_eq!(bare.to_json_line(), serde_json::to_string(&bare).unwrap());
    }

    #[test]
    fn capped_values() {
        assert_eq!(capped("kid-1", 64), "kid-1");
        assert_eq!(capped("a\r\nb\0", 64), "a??b?");
        // C1 controls and DEL are replaced; other characters starting with 0xC2 are kept.
        assert_eq!(capped("a\u{85}b\u{9f}c\u{7f}", 64), "a?b?c?");
        assert_eq!(capped("\u{a0}£é中", 64), "\u{a0}£é中");
        let long = "k".repeat(4096);
        let c = capped(&long, 64);
        assert!(
            c.len() <= 64 && c.starts_with("kkkk") && c.contains("…#"),
            "{c}"
        );
        let other = format!("{}x", "k".repeat(4095));
        assert_ne!(capped(&other, 64), c, "long values stay distinguishable");
        // Never splits a character.
        let wide = "é".repeat(100);
        let c = capped(&wide, 64);
        assert!(c.len() <= 64 && c.starts_with('é'), "{c}");
        assert_eq!(capped(&"x".repeat(64), 64), "x".repeat(64));
    }

    #[test]
    fn forged_token_fields_are_claimed_and_capped() {
        let path = "/score";
        let req = RequestView {
            method: "POST",
            path,
            authority: "h",
            headers: &[],
        };
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "iss": format!("https://evil.example/{}", "i".repeat(5000)),
            "oid": "o".repeat(5000), "tid": "t\r\n".repeat(2000), "azp": "a".repeat(5000),
        }))
        .unwrap();
        let mut r = AuditRecord::new(1_700_000_000_000, &"r".repeat(128), &req);
        r.route = Some("team-score".into());
        r.provider = Some("entra".into());
        r.note_claimed(Some(&"K".repeat(4096)), &claims);
        r.deny(Reason::SignatureInvalid, 401);
        let line = r.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        for plain in ["iss", "tid", "subject", "app", "kid"] {
            assert!(
                v.get(plain).is_none(),
                "{plain} must not look verified: {line}"
            );
        }
        for claimed in [
            "claimed_iss",
            "claimed_tid",
            "claimed_subject",
            "claimed_app",
            "claimed_kid",
        ] {
            assert!(
                v[claimed].as_str().is_some_and(|s| s.contains("…#")),
                "{claimed}: {line}"
            );
        }
        assert!(line.len() < 900, "{} bytes: {line}", line.len());
        // Once verified, the claimed fields go.
        r.note_verified(Some("k1"), &claims);
        let v: Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert!(v.get("claimed_subject").is_none() && v["kid"] == "k1");
    }

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
        // Cut to the cap and marked with the whole value's hash.
        let iss = r.iss.clone().unwrap();
        assert!(iss.len() <= MAX_VERIFIED_BYTES, "{iss}");
        assert!(iss.starts_with("xxxx") && iss.contains("…#"), "{iss}");
        let line = r.to_json_line();
        assert!(
            !line.contains("\"route\""),
            "unset fields are omitted: {line}"
        );
    }
}
