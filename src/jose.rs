//! Strict JWS compact decoding (RFC 7515/7519, RFC 8725 hygiene), before any key work.
//!
//! `decode` caps the size first, then splits, base64url-decodes (strict: no padding,
//! URL-safe alphabet only, canonical trailing bits) and parses the header and payload as
//! JSON objects with duplicate member names rejected at every depth. It never verifies
//! a signature: that is `verify`'s job, once a provider and a key have been chosen.
//!
//! Header rules: `alg` must be one of [`Alg`] (`none` and anything unknown →
//! `AlgNotAllowed`); any `crit` → `CritUnsupported`; `jku`, `x5u`, `jwk`, `x5c`, `x5t`
//! are never used to find or trust a key (the verification library models them as
//! strings / string arrays, so a value of another type, e.g. an embedded `jwk` object, is
//! rejected as `TokenMalformed`); `typ`, when present, must be `JWT` or end in `+jwt`
//! (case-insensitive); an Entra/Graph `nonce` header parameter is recorded in
//! [`JoseHeader::has_nonce`] so `verify` can answer `GraphTokenUnverifiable`.
//!
//! Errors are bare [`Reason`]s: nothing from the token ever ends up in an error.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::claims::Claims;
use crate::reason::Reason;

/// A JWS algorithm this filter can verify.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// The JOSE name, exactly (case-sensitive, as RFC 7518 registers it).
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    /// Symmetric (HMAC) algorithm: only ever verified with a configured secret,
    /// never with a JWKS key.
    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

impl core::fmt::Display for Alg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of the JOSE header the filter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The header carries a `nonce` (Microsoft Graph access tokens): not verifiable here.
    pub has_nonce: bool,
}

/// A decoded (not yet verified) JWS.
#[derive(Clone)]
pub struct DecodedJwt {
    pub header: JoseHeader,
    /// The payload. Untrusted until `verify` succeeds; only `iss`/`tid` may be read
    /// before that, to pick the provider.
    pub claims: Claims,
    raw: String,
}

impl DecodedJwt {
    /// The compact serialization, as received (for the signature check).
    pub fn raw(&self) -> &str {
        &self.raw
    }
}

impl core::fmt::Debug for DecodedJwt {
    // Never print the token; claims are untrusted input too, so print only their names.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DecodedJwt")
            .field("header", &self.header)
            .field("claim_names", &self.claims.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Default cap on a token's size (the `cache.max_token_bytes` default).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Decode a compact JWS without verifying it. See the module docs for the rules.
pub fn decode(token: &str, max_bytes: usize) -> Result<DecodedJwt, Reason> {
    if token.len() > max_bytes {
        return Err(Reason::TokenTooLarge);
    }
    // Only base64url and dots: anything else (a space between two tokens) is not a
    // JWS nor a JWE, whatever its dot count.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Reason::TokenMalformed);
    }
    let dots = token.bytes().filter(|b| *b == b'.').count();
    if dots == 4 {
        return Err(Reason::TokenEncrypted);
    }
    if dots != 2 {
        return Err(Reason::TokenMalformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Reason::TokenMalformed);
    };
    if h64.is_empty() || p64.is_empty() {
        return Err(Reason::TokenMalformed);
    }
    let header_bytes = b64url(h64)?;
    let header = strict_object(&header_bytes)?;
    let header = parse_header(&header)?;
    // An empty signature is an unsecured JWS in disguise; every supported alg signs.
    if s64.is_empty() {
        return Err(Reason::TokenMalformed);
    }
    b64url(s64)?;
    let payload = b64url(p64)?;
    let claims = strict_object(&payload)?;
    Ok(DecodedJwt {
        header,
        claims,
        raw: token.to_string(),
    })
}

/// Strict base64url: URL-safe alphabet, no padding, canonical trailing bits.
pub fn b64url(s: &str) -> Result<Vec<u8>, Reason> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Reason::TokenMalformed)
}

fn parse_header(h: &Map<String, Value>) -> Result<JoseHeader, Reason> {
    let alg = match h.get("alg") {
        Some(Value::String(s)) => Alg::parse(s).ok_or(Reason::AlgNotAllowed)?,
        Some(_) | None => return Err(Reason::TokenMalformed),
    };
    if h.contains_key("crit") {
        return Err(Reason::CritUnsupported);
    }
    let kid = opt_string(h, "kid")?;
    let typ = opt_string(h, "typ")?;
    if let Some(t) = &typ {
        let t = t.to_ascii_lowercase();
        if t != "jwt" && !t.ends_with("+jwt") {
            return Err(Reason::TokenMalformed);
        }
    }
    // Never used, but the signature library parses them with these types.
    for name in ["cty", "jku", "jwk", "x5u", "x5t", "x5t#S256", "salt"] {
        opt_string(h, name)?;
    }
    match h.get("x5c") {
        None => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return Err(Reason::TokenMalformed),
    }
    // A JWE header (`enc`) inside a 3-part token: not a JWS.
    if h.contains_key("enc") {
        return Err(Reason::TokenEncrypted);
    }
    Ok(JoseHeader {
        alg,
        kid,
        typ,
        has_nonce: h.contains_key("nonce"),
    })
}

fn opt_string(h: &Map<String, Value>, name: &str) -> Result<Option<String>, Reason> {
    match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reason::TokenMalformed),
    }
}

/// Parse a JSON object, rejecting duplicate member names at any depth.
pub fn strict_object(bytes: &[u8]) -> Result<Map<String, Value>, Reason> {
    match crate::strict_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Reason::TokenMalformed),
    }
}

/// The largest NumericDate accepted: 2^53 (JavaScript's exact-integer limit).
pub const MAX_NUMERIC_DATE: u64 = 1 << 53;

/// A NumericDate claim (RFC 7519 §2) as a non-negative integer of at most 2^53 seconds.
/// `Ok(None)` when absent; `TokenMalformed` for any other type, a fraction, a negative
/// or a larger value.
pub fn numeric_date(claims: &Claims, name: &str) -> Result<Option<u64>, Reason> {
    match claims.get(name) {
        None => Ok(None),
        // Integers only: a float (`1e30`, `5.9`) or a value beyond 2^53 (past what every
        // JSON reader holds exactly) is a malformed token, never a clamped or rounded one.
        Some(Value::Number(n)) => match n.as_u64() {
            Some(u) if u <= MAX_NUMERIC_DATE => Ok(Some(u)),
            _ => Err(Reason::TokenMalformed),
        },
        Some(_) => Err(Reason::TokenMalformed),
    }
}

/// Test helpers shared by this crate's token tests: build compact tokens by hand.
#[cfg(test)]
pub(crate) mod testutil {
    use base64::Engine as _;

    pub fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `b64(header).b64(payload)` from raw JSON text (so tests can write odd JSON).
    pub fn signing_input(header: &str, payload: &str) -> String {
        format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
    }

    /// HMAC-SHA-256/384/512 over `input`, for hand-made HS* tokens.
    pub fn hmac(alg: super::Alg, key: &[u8], input: &str) -> Vec<u8> {
        match alg {
            super::Alg::HS256 => hmac_sha2::<sha2::Sha256>(key, input.as_bytes(), 64),
            super::Alg::HS384 => hmac_sha2::<sha2::Sha384>(key, input.as_bytes(), 128),
            _ => hmac_sha2::<sha2::Sha512>(key, input.as_bytes(), 128),
        }
    }

    fn hmac_sha2<D: sha2::Digest>(key: &[u8], msg: &[u8], block: usize) -> Vec<u8> {
        let mut k = if key.len() > block {
            D::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        k.resize(block, 0);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let mut inner = D::new();
        inner.update(&ipad);
        inner.update(msg);
        let ih = inner.finalize();
        let mut outer = D::new();
        outer.update(&opad);
        outer.update(ih);
        outer.finalize().to_vec()
    }

    /// A complete HS* token from raw header/payload JSON.
    pub fn hs_token(alg: super::Alg, key: &[u8], header: &str, payload: &str) -> String {
        let input = signing_input(header, payload);
        let sig = hmac(alg, key, &input);
        format!("{input}.{}", b64(&sig))
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    const P: &str = r#"{"iss":"https://issuer.example","exp":2000000000}"#;

    fn tok(header: &str, payload: &str) -> String {
        format!("{}.{}", signing_input(header, payload), b64(b"sig-bytes"))
    }

    #[test]
    fn alg_round_trip() {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.as_str()), Some(a));
        }
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("rs256"), None);
        assert!(Alg::HS384.is_hmac() && !Alg::RS256.is_hmac());
    }

    #[test]
    fn decodes_a_good_token() {
        let t = tok(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#, P);
        let d = decode(&t, 16384).unwrap();
        assert_eq!(d.header.alg, Alg::RS256);
        assert_eq!(d.header.kid.as_deref(), Some("k1"));
        assert!(!d.header.has_nonce);
        assert_eq!(d.claims["iss"], "https://issuer.example");
        assert_eq!(d.raw(), t);
        // Debug never shows the token or claim values.
        let dbg = format!("{d:?}");
        assert!(
            !dbg.contains(&t) && !dbg.contains("issuer.example"),
            "{dbg}"
        );
    }

    #[test]
    fn table_of_rejections() {
        let good_h = r#"{"alg":"RS256"}"#;
        let cases: Vec<(&str, String, Reason)> = vec![
            ("5 segments", "a.b.c.d.e".into(), Reason::TokenEncrypted),
            (
                "2 segments",
                signing_input(good_h, P),
                Reason::TokenMalformed,
            ),
            (
                "4 segments",
                format!("{}.x.y", signing_input(good_h, P)),
                Reason::TokenMalformed,
            ),
            ("empty", String::new(), Reason::TokenMalformed),
            (
                "alg none",
                tok(r#"{"alg":"none"}"#, P),
                Reason::AlgNotAllowed,
            ),
            (
                "alg None",
                tok(r#"{"alg":"None"}"#, P),
                Reason::AlgNotAllowed,
            ),
            (
                "alg unknown",
                tok(r#"{"alg":"XS256"}"#, P),
                Reason::AlgNotAllowed,
            ),
            (
                "alg missing",
                tok(r#"{"kid":"a"}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "alg number",
                tok(r#"{"alg":256}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "crit empty",
                tok(r#"{"alg":"RS256","crit":[]}"#, P),
                Reason::CritUnsupported,
            ),
            (
                "crit exp",
                tok(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#, P),
                Reason::CritUnsupported,
            ),
            (
                "crit b64",
                tok(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, P),
                Reason::CritUnsupported,
            ),
            (
                "dup header key",
                tok(r#"{"alg":"HS256","alg":"RS256"}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "dup claim",
                tok(good_h, r#"{"sub":"a","sub":"b"}"#),
                Reason::TokenMalformed,
            ),
            (
                "dup nested claim",
                tok(good_h, r#"{"a":{"x":1,"x":2}}"#),
                Reason::TokenMalformed,
            ),
            (
                "dup in array obj",
                tok(good_h, r#"{"a":[{"x":1,"x":1}]}"#),
                Reason::TokenMalformed,
            ),
            (
                "payload array",
                tok(good_h, "[1,2]"),
                Reason::TokenMalformed,
            ),
            (
                "payload string",
                tok(good_h, "\"x\""),
                Reason::TokenMalformed,
            ),
            (
                "payload trailing junk",
                tok(good_h, r#"{"a":1} x"#),
                Reason::TokenMalformed,
            ),
            (
                "payload not json",
                tok(good_h, "hello"),
                Reason::TokenMalformed,
            ),
            ("header array", tok("[]", P), Reason::TokenMalformed),
            (
                "kid number",
                tok(r#"{"alg":"RS256","kid":7}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "typ wrong",
                tok(r#"{"alg":"RS256","typ":"JWE"}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "jwk object",
                tok(r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "x5c not array",
                tok(r#"{"alg":"RS256","x5c":"abc"}"#, P),
                Reason::TokenMalformed,
            ),
            (
                "enc in 3 parts",
                tok(r#"{"alg":"RS256","enc":"A128GCM"}"#, P),
                Reason::TokenEncrypted,
            ),
            (
                "empty sig",
                format!("{}.", signing_input(good_h, P)),
                Reason::TokenMalformed,
            ),
            (
                "empty header",
                format!(".{}.{}", b64(P.as_bytes()), b64(b"s")),
                Reason::TokenMalformed,
            ),
            (
                "padding",
                format!(
                    "{}=.{}.{}",
                    b64(br#"{"alg":"RS256"}"#),
                    b64(P.as_bytes()),
                    b64(b"s")
                ),
                Reason::TokenMalformed,
            ),
            (
                "std alphabet +",
                format!("{}.{}.ab+c", b64(good_h.as_bytes()), b64(P.as_bytes())),
                Reason::TokenMalformed,
            ),
            (
                "std alphabet /",
                format!("{}.{}.ab/c", b64(good_h.as_bytes()), b64(P.as_bytes())),
                Reason::TokenMalformed,
            ),
            (
                "space",
                format!(
                    "{}.{} .{}",
                    b64(good_h.as_bytes()),
                    b64(P.as_bytes()),
                    b64(b"s")
                ),
                Reason::TokenMalformed,
            ),
            (
                "non-canonical bits",
                format!("{}.{}.AB", b64(good_h.as_bytes()), b64(P.as_bytes())),
                Reason::TokenMalformed,
            ),
            (
                "impossible length",
                format!("{}.{}.A", b64(good_h.as_bytes()), b64(P.as_bytes())),
                Reason::TokenMalformed,
            ),
            (
                "invalid utf8",
                format!(
                    "{}.{}.{}",
                    b64(good_h.as_bytes()),
                    b64(b"{\"a\":\"\xff\"}"),
                    b64(b"s")
                ),
                Reason::TokenMalformed,
            ),
        ];
        for (name, t, want) in cases {
            assert_eq!(decode(&t, 16384).map(|_| ()), Err(want), "{name}");
        }
    }

    #[test]
    fn size_cap_comes_first() {
        let t = "x".repeat(20_000);
        assert_eq!(decode(&t, 16384).unwrap_err(), Reason::TokenTooLarge);
        let t = tok(r#"{"alg":"RS256"}"#, P);
        assert_eq!(decode(&t, t.len() - 1).unwrap_err(), Reason::TokenTooLarge);
        assert!(decode(&t, t.len()).is_ok());
    }

    #[test]
    fn key_location_headers_are_accepted_but_unused() {
        let t = tok(
            r#"{"alg":"RS256","kid":"k","jku":"https://evil.example/jwks","x5u":"https://evil.example/c","jwk":"e30","x5c":["MIIB"],"x5t":"abc"}"#,
            P,
        );
        let d = decode(&t, 16384).unwrap();
        assert_eq!(d.header.kid.as_deref(), Some("k"));
    }

    #[test]
    fn graph_nonce_is_recorded() {
        let t = tok(r#"{"alg":"RS256","nonce":"abc","typ":"JWT"}"#, P);
        assert!(decode(&t, 16384).unwrap().header.has_nonce);
    }

    #[test]
    fn typ_variants() {
        for typ in ["JWT", "jwt", "at+jwt", "application/okta-internal-at+jwt"] {
            let t = tok(&format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#), P);
            assert_eq!(decode(&t, 16384).unwrap().header.typ.as_deref(), Some(typ));
        }
    }

    #[test]
    fn numeric_dates() {
        let c: Claims = serde_json::from_str(
            r#"{"a":5,"b":5.9,"c":-1,"d":"5","e":1e30,"f":5.0,"g":9007199254740992,
                "h":9007199254740993,"i":1000000000000000000000000000000}"#,
        )
        .unwrap();
        assert_eq!(numeric_date(&c, "a"), Ok(Some(5)));
        // Fractions, floats and values beyond 2^53 are refused, not truncated or clamped.
        assert_eq!(numeric_date(&c, "b"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "c"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "d"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "e"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "f"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "g"), Ok(Some(1 << 53)));
        assert_eq!(numeric_date(&c, "h"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "i"), Err(Reason::TokenMalformed));
        assert_eq!(numeric_date(&c, "z"), Ok(None));
    }
}
