//! Token minting: the OAuth 2.0 client-credentials endpoints (v1 and v2) and
//! `POST /_control/token`, which mints whatever a test asks for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{lock, Idp, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, TOKEN_LIFETIME};
use crate::common::{self, param, Reply};
use crate::http::Request;
use crate::keys::{self, AlgKey, Family, KeyPair, Signer};

const MAX_FORM_BODY: usize = 64 * 1024;

impl Idp {
    /// A client-credentials answer valid `lifetime` seconds (the endpoint's behaviour, a
    /// failure mode included, is applied by the caller: `imds::Idp::token_endpoint`).
    pub(super) fn oauth_token(
        &self,
        req: &mut Request,
        tenant: &str,
        ver: u8,
        lifetime: i64,
    ) -> Reply {
        let body = match req.read_body(MAX_FORM_BODY) {
            Ok(b) => b,
            Err(_) => return oauth_error("invalid_request", "AADSTS900144: unreadable body"),
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        match param(&form, "grant_type") {
            Some("client_credentials") => {}
            Some(g) => {
                return oauth_error(
                    "unsupported_grant_type",
                    &format!("AADSTS70003: grant_type {g} is not supported by the mock"),
                )
            }
            None => {
                return oauth_error(
                    "invalid_request",
                    "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                )
            }
        }
        let Some(client_id) = param(&form, "client_id").filter(|c| !c.is_empty()) else {
            return oauth_error(
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            );
        };
        // v2 asks for `scope=<resource>/.default`; v1 names the `resource`.
        let aud = if ver == 1 {
            param(&form, "resource")
                .unwrap_or(DEFAULT_AUDIENCE)
                .to_string()
        } else {
            let scope = param(&form, "scope").unwrap_or("");
            let first = scope.split_whitespace().next().unwrap_or(DEFAULT_AUDIENCE);
            first.strip_suffix("/.default").unwrap_or(first).to_string()
        };
        let mut claims = Map::new();
        claims.insert("aud".into(), json!(aud));
        if let Some(roles) = param(&form, "roles") {
            let roles: Vec<&str> = roles
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .collect();
            if !roles.is_empty() {
                claims.insert("roles".into(), json!(roles));
            }
        }
        for name in ["team", "project", "scp"] {
            if let Some(v) = param(&form, name) {
                claims.insert(name.into(), json!(v));
            }
        }
        let mint = Mint {
            tenant: self.token_tenant(tenant),
            ver,
            alg: "RS256".into(),
            client_id: client_id.to_string(),
            claims,
            header: Map::new(),
            sign_with: SignWith::Current,
            expires_in: lifetime,
            omit_kid: false,
            raw_payload: None,
        };
        match self.mint(&mint) {
            Ok(t) => Reply::json(
                200,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": t.token,
                }),
            ),
            Err(e) => Reply::error(500, "server_error", e),
        }
    }

    pub(super) fn control_token(&self, req: &mut Request) -> Reply {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let body = match req.read_body(MAX_FORM_BODY) {
            Ok(b) => b,
            Err(_) => return Reply::error(400, "bad_request", "unreadable or too large body"),
        };
        let spec: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return Reply::error(400, "bad_request", format!("body is not JSON: {e}"))
                }
            }
        };
        let mint = match Mint::from_control(&spec, self) {
            Ok(m) => m,
            Err(e) => return Reply::error(400, "bad_request", e),
        };
        match self.mint(&mint) {
            Ok(t) => Reply::json(
                200,
                &json!({
                    "access_token": t.token,
                    "kid": t.header.get("kid").cloned().unwrap_or(Value::Null),
                    "alg": mint.alg,
                    "expires_in": mint.expires_in,
                    "header": t.header,
                    "claims": t.claims,
                }),
            ),
            Err(e) => Reply::error(400, "bad_request", e),
        }
    }

    /// The key (and kid for the header) a token is signed with.
    fn signing_key(
        &self,
        family: Family,
        sign_with: SignWith,
    ) -> Result<(String, Arc<KeyPair>), String> {
        let prefix = &self.config.kid_prefix;
        if sign_with == SignWith::Current {
            let inner = lock(&self.inner);
            let cur = &inner.families[family.index()].current;
            return Ok((cur.kid.clone(), cur.pair.clone()));
        }
        let (current_kid, shadow) = {
            let inner = lock(&self.inner);
            let fam = &inner.families[family.index()];
            (fam.current.kid.clone(), fam.shadow.clone())
        };
        let shadow = match shadow {
            Some(s) => s,
            None => {
                // Generate outside the lock: RSA keygen takes a while.
                let fresh = Arc::new(KeyPair::generate(family)?);
                let mut inner = lock(&self.inner);
                inner.families[family.index()]
                    .shadow
                    .get_or_insert(fresh)
                    .clone()
            }
        };
        let kid = match sign_with {
            SignWith::Forged => current_kid,
            _ => format!(
                "{prefix}-{}-unpublished-{}",
                family.name(),
                common::random_hex(4)
            ),
        };
        Ok((kid, shadow))
    }

    pub(super) fn mint(&self, m: &Mint) -> Result<Minted, String> {
        let now = common::now();
        let exp = now + m.expires_in;
        // An already-expired token looks like one issued an hour before it expired.
        let iat = if m.expires_in > 0 {
            now
        } else {
            exp - TOKEN_LIFETIME
        };
        let oid = stable_uuid(&m.client_id);
        let mut claims = Map::new();
        let mut set = |k: &str, v: Value| {
            claims.insert(k.to_string(), v);
        };
        set("aud", json!(DEFAULT_AUDIENCE));
        set("iss", json!(self.issuer(&m.tenant, m.ver)));
        set("iat", json!(iat));
        set("nbf", json!(iat));
        set("exp", json!(exp));
        if m.ver == 1 {
            set("appid", json!(m.client_id));
            set("appidacr", json!("1"));
            set("idp", json!(self.issuer(&m.tenant, 1)));
        } else {
            set("azp", json!(m.client_id));
            set("azpacr", json!("1"));
        }
        set("idtyp", json!("app"));
        set("oid", json!(oid));
        set("sub", json!(oid));
        set("tid", json!(m.tenant));
        set("uti", json!(common::b64url(&common::random_bytes(16))));
        set("ver", json!(if m.ver == 1 { "1.0" } else { "2.0" }));
        merge(&mut claims, &m.claims);

        let key_kind = keys::alg_key(&m.alg).ok_or(format!("unsupported alg {}", m.alg))?;
        let mut header = Map::new();
        header.insert("alg".into(), json!(m.alg));
        header.insert("typ".into(), json!("JWT"));
        let signer = match key_kind {
            AlgKey::Asymmetric(family) => {
                let (kid, pair) = self.signing_key(family, m.sign_with)?;
                header.insert("kid".into(), json!(kid));
                Signer::Key(pair)
            }
            AlgKey::Hmac => {
                header.insert(
                    "kid".into(),
                    json!(format!("{}-hmac", self.config.kid_prefix)),
                );
                Signer::Hmac(if m.sign_with == SignWith::Current {
                    self.config.hmac_secret.as_bytes().to_vec()
                } else {
                    common::random_bytes(32)
                })
            }
            AlgKey::None => Signer::Unsigned,
        };
        if m.omit_kid {
            header.remove("kid");
        }
        merge(&mut header, &m.header);
        let header = Value::Object(header);
        let claims = Value::Object(claims);
        let token = match &m.raw_payload {
            None => keys::build_jws(&header, &claims, |msg| signer.sign(&m.alg, msg))?,
            Some(raw) => keys::build_jws_raw(&header, raw, |msg| signer.sign(&m.alg, msg))?,
        };
        Ok(Minted {
            token,
            header,
            claims,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignWith {
    Current,
    Forged,
    Unpublished,
}

/// What to mint.
pub(super) struct Mint {
    pub(super) tenant: String,
    pub(super) ver: u8,
    pub(super) alg: String,
    pub(super) client_id: String,
    /// Merged over the default claims; `null` removes a claim.
    pub(super) claims: Map<String, Value>,
    /// Merged over the default header; `null` removes a field.
    pub(super) header: Map<String, Value>,
    pub(super) sign_with: SignWith,
    pub(super) expires_in: i64,
    pub(super) omit_kid: bool,
    /// Signed verbatim instead of the claims (tests of hostile payloads: duplicate
    /// members, non-UTF-8, deep nesting, a nested token).
    pub(super) raw_payload: Option<Vec<u8>>,
}

pub(super) struct Minted {
    pub(super) token: String,
    header: Value,
    claims: Value,
}

impl Mint {
    fn from_control(spec: &Value, idp: &Idp) -> Result<Mint, String> {
        let spec = spec.as_object().ok_or("body must be a JSON object")?;
        let string = |name: &str| -> Result<Option<String>, String> {
            match spec.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{name}: expected a string")),
            }
        };
        let object = |name: &str| -> Result<Map<String, Value>, String> {
            match spec.get(name) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(o)) => Ok(o.clone()),
                Some(_) => Err(format!("{name}: expected an object")),
            }
        };
        let ver = match spec.get("ver") {
            None | Some(Value::Null) => 2,
            Some(v) if v == 1 || v == "1" || v == "1.0" => 1,
            Some(v) if v == 2 || v == "2" || v == "2.0" => 2,
            Some(_) => return Err("ver: expected 1 or 2".into()),
        };
        let alg = string("alg")?.unwrap_or_else(|| "RS256".into());
        if keys::alg_key(&alg).is_none() {
            return Err(format!("alg: expected one of {:?}", keys::ALGORITHMS));
        }
        let sign_with = match string("sign_with")?.as_deref() {
            None | Some("current") => SignWith::Current,
            Some("forged") => SignWith::Forged,
            Some("unpublished") => SignWith::Unpublished,
            Some(_) => return Err("sign_with: expected current, forged or unpublished".into()),
        };
        let expires_in = match spec.get("expires_in") {
            None | Some(Value::Null) => TOKEN_LIFETIME,
            Some(v) => v.as_i64().ok_or("expires_in: expected an integer")?,
        };
        let omit_kid = match spec.get("omit_kid") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or("omit_kid: expected a boolean")?,
        };
        let raw_payload = match string("payload_b64")? {
            None => None,
            Some(b) => Some(common::b64url_decode(&b).ok_or("payload_b64: expected base64url")?),
        };
        let tenant = string("tenant")?.unwrap_or_default();
        Ok(Mint {
            tenant: idp.token_tenant(&tenant),
            ver,
            alg,
            client_id: string("client_id")?.unwrap_or_else(|| DEFAULT_CLIENT_ID.into()),
            claims: object("claims")?,
            header: object("header")?,
            sign_with,
            expires_in,
            omit_kid,
            raw_payload,
        })
    }
}

/// Sets every `(k, v)` of `overrides` in `target`; a `null` value removes `k`.
fn merge(target: &mut Map<String, Value>, overrides: &Map<String, Value>) {
    for (k, v) in overrides {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// A UUID-shaped identifier derived from `seed` (stable across runs).
pub fn stable_uuid(seed: &str) -> String {
    let h = Sha256::digest(format!("mock-idp oid:{seed}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50; // version 5-like (name based)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::json(
        400,
        &json!({"error": error, "error_description": description,
                "error_codes": [900144], "timestamp": common::now()}),
    )
}
