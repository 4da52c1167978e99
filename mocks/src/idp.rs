//! mock-idp: an HTTP server that looks like Microsoft Entra ID (discovery, JWKS,
//! client-credentials token endpoint) plus `/_control/` endpoints for tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::common::{self, param, split_url, Method, Reply, Request, Server};
use crate::keys::{self, AlgKey, Family, KeyPair, Signer};

pub const DEFAULT_ISSUER_TEMPLATE: &str = "https://login.microsoftonline.com/{tenant}/v2.0";
pub const DEFAULT_V1_ISSUER_TEMPLATE: &str = "https://sts.windows.net/{tenant}/";
pub const DEFAULT_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const DEFAULT_KID_PREFIX: &str = "mock";
pub const DEFAULT_HMAC_SECRET: &str = "mock-hmac-secret-change-me-0123456789";
/// Client id used by `/_control/token` when the request names none.
pub const DEFAULT_CLIENT_ID: &str = "3f6b5a7e-6a55-4d3c-9a3b-6d1c2e7f8a90";
/// Audience used when a token request names no scope.
pub const DEFAULT_AUDIENCE: &str = "api://azureml-gateway";
pub const TOKEN_LIFETIME: i64 = 3599;
/// How long a `hang` JWKS request is held before the connection is dropped.
pub const HANG: Duration = Duration::from_secs(120);

const MAX_FORM_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub issuer_template: String,
    pub v1_issuer_template: String,
    pub default_tenant: String,
    pub kid_prefix: String,
    pub hmac_secret: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            issuer_template: DEFAULT_ISSUER_TEMPLATE.into(),
            v1_issuer_template: DEFAULT_V1_ISSUER_TEMPLATE.into(),
            default_tenant: DEFAULT_TENANT.into(),
            kid_prefix: DEFAULT_KID_PREFIX.into(),
            hmac_secret: DEFAULT_HMAC_SECRET.into(),
        }
    }
}

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
    fn parse(s: &str) -> Option<JwksMode> {
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

    fn name(self) -> &'static str {
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
struct JwksBehaviour {
    mode: JwksMode,
    max_age: Option<u64>,
    delay_ms: u64,
    issuer_field: bool,
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

struct Key {
    kid: String,
    pair: Arc<KeyPair>,
}

struct FamilyKeys {
    current: Key,
    /// Older keys still published (newest first).
    previous: Vec<Key>,
    serial: u32,
    /// A never-published key of this family, for `forged`/`unpublished` tokens.
    shadow: Option<Arc<KeyPair>>,
}

struct Inner {
    families: Vec<FamilyKeys>,
    jwks: JwksBehaviour,
}

/// The mock identity provider's state. Cheap to share: `Arc<Idp>`.
pub struct Idp {
    config: Config,
    addr: SocketAddr,
    inner: Mutex<Inner>,
    jwks_requests: AtomicU64,
    discovery_requests: AtomicU64,
    token_requests: AtomicU64,
}

/// Binds `listen`, generates the keys and serves on a background thread (for tests).
pub fn spawn(config: Config, listen: &str) -> Result<(SocketAddr, Arc<Idp>), String> {
    let (server, addr) = common::bind(listen)?;
    let idp = Arc::new(Idp::new(config, addr)?);
    let served = idp.clone();
    thread::spawn(move || served.serve(server));
    Ok((addr, idp))
}

fn make_kid(prefix: &str, family: Family, serial: u32) -> String {
    format!(
        "{prefix}-{}-{serial}-{}",
        family.name(),
        common::random_hex(3)
    )
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panicked holder can't leave Inner half-updated in a way that matters here.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Idp {
    /// Generates one current key per family.
    pub fn new(config: Config, addr: SocketAddr) -> Result<Idp, String> {
        let mut families = Vec::new();
        for family in Family::ALL {
            families.push(FamilyKeys {
                current: Key {
                    kid: make_kid(&config.kid_prefix, family, 1),
                    pair: Arc::new(KeyPair::generate(family)?),
                },
                previous: Vec::new(),
                serial: 1,
                shadow: None,
            });
        }
        Ok(Idp {
            config,
            addr,
            inner: Mutex::new(Inner {
                families,
                jwks: JwksBehaviour::default(),
            }),
            jwks_requests: AtomicU64::new(0),
            discovery_requests: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever, each connection on its own thread (a hanging JWKS must not block
    /// others).
    pub fn serve(self: Arc<Self>, server: Server) {
        server.serve(move |req| self.handle(req));
    }

    /// Handles one request and logs one line to stderr. `None`: drop the connection
    /// without an answer.
    pub fn handle(&self, req: &mut Request) -> Option<Reply> {
        let method = req.method().clone();
        let url = req.url().to_string();
        let (path, query) = split_url(&url);
        let reply = self.route(req, &method, path, &query);
        match &reply {
            Some(reply) => eprintln!("mock-idp: {method} {path} -> {}", reply.status),
            None => eprintln!("mock-idp: {method} {path} -> (dropped)"),
        }
        reply
    }

    fn route(
        &self,
        req: &mut Request,
        method: &Method,
        path: &str,
        query: &[(String, String)],
    ) -> Option<Reply> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = *method == Method::Get || *method == Method::Head;
        let post = *method == Method::Post;
        let reply = match (segs.as_slice(), get, post) {
            (["_control", "token"], _, true) => self.control_token(req),
            (["_control", "rotate"], _, true) => self.control_rotate(query),
            (["_control", "retire"], _, true) => self.control_retire(),
            (["_control", "jwks"], _, true) => self.control_jwks(query),
            (["_control", "stats"], true, _) => self.stats(),
            (["_control", "reset"], _, true) => {
                for c in [
                    &self.jwks_requests,
                    &self.discovery_requests,
                    &self.token_requests,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
                self.stats()
            }
            (["_control", "keys"], true, _) => self.control_keys(),
            (["_control", ..], _, _) => Reply::error(404, "not_found", "unknown control endpoint"),
            ([tenant, "v2.0", ".well-known", "openid-configuration"], true, _) => {
                self.discovery(req, tenant, 2)
            }
            ([tenant, ".well-known", "openid-configuration"], true, _) => {
                self.discovery(req, tenant, 1)
            }
            ([_, "discovery", "v2.0", "keys"], true, _) | ([_, "discovery", "keys"], true, _) => {
                return self.jwks();
            }
            ([tenant, "oauth2", "v2.0", "token"], _, true) => self.oauth_token(req, tenant, 2),
            ([tenant, "oauth2", "token"], _, true) => self.oauth_token(req, tenant, 1),
            _ => Reply::error(404, "not_found", format!("no route for {method} {path}")),
        };
        Some(reply)
    }

    // ---- issuers ---------------------------------------------------------------

    fn issuer(&self, tenant: &str, ver: u8) -> String {
        let template = if ver == 1 {
            &self.config.v1_issuer_template
        } else {
            &self.config.issuer_template
        };
        // Multi-tenant metadata advertises the literal placeholder, like Entra.
        let value = match tenant {
            "common" | "organizations" => "{tenantid}",
            t => t,
        };
        template.replace("{tenant}", value)
    }

    /// The tenant a token is issued for (a multi-tenant alias means the default tenant).
    fn token_tenant(&self, tenant: &str) -> String {
        match tenant {
            "" | "common" | "organizations" | "consumers" => self.config.default_tenant.clone(),
            t => t.to_string(),
        }
    }

    // ---- discovery and JWKS ----------------------------------------------------

    fn discovery(&self, req: &Request, tenant: &str, ver: u8) -> Reply {
        self.discovery_requests.fetch_add(1, Ordering::Relaxed);
        let host = common::header(req, "host")
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

    fn jwks(&self) -> Option<Reply> {
        self.jwks_requests.fetch_add(1, Ordering::Relaxed);
        let (behaviour, keys) = {
            let inner = lock(&self.inner);
            (inner.jwks, self.published_jwks(&inner))
        };
        if behaviour.delay_ms > 0 {
            thread::sleep(Duration::from_millis(behaviour.delay_ms));
        }
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
                thread::sleep(HANG);
                return None;
            }
        };
        Some(match behaviour.max_age {
            Some(n) => reply.with_header("Cache-Control", format!("max-age={n}")),
            None => reply,
        })
    }

    // ---- tokens ----------------------------------------------------------------

    fn oauth_token(&self, req: &mut Request, tenant: &str, ver: u8) -> Reply {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let body = match common::read_body(req, MAX_FORM_BODY) {
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
            expires_in: TOKEN_LIFETIME,
            omit_kid: false,
        };
        match self.mint(&mint) {
            Ok(t) => Reply::json(
                200,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": TOKEN_LIFETIME,
                    "ext_expires_in": TOKEN_LIFETIME,
                    "access_token": t.token,
                }),
            ),
            Err(e) => Reply::error(500, "server_error", e),
        }
    }

    fn control_token(&self, req: &mut Request) -> Reply {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let body = match common::read_body(req, MAX_FORM_BODY) {
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

    fn mint(&self, m: &Mint) -> Result<Minted, String> {
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
        let token = keys::build_jws(&header, &claims, |msg| signer.sign(&m.alg, msg))?;
        Ok(Minted {
            token,
            header,
            claims,
        })
    }

    // ---- controls --------------------------------------------------------------

    fn control_rotate(&self, query: &[(String, String)]) -> Reply {
        let name = param(query, "family").unwrap_or("rsa");
        let Some(family) = Family::parse(name) else {
            return Reply::error(
                400,
                "bad_request",
                "family must be rsa, p256, p384 or ed25519",
            );
        };
        let pair = match KeyPair::generate(family) {
            Ok(p) => Arc::new(p),
            Err(e) => return Reply::error(500, "server_error", e),
        };
        let mut inner = lock(&self.inner);
        let fam = &mut inner.families[family.index()];
        fam.serial += 1;
        let new = Key {
            kid: make_kid(&self.config.kid_prefix, family, fam.serial),
            pair,
        };
        let old = std::mem::replace(&mut fam.current, new);
        let (kid, previous_kid) = (fam.current.kid.clone(), old.kid.clone());
        fam.previous.insert(0, old);
        let published = published_kids(&inner);
        Reply::json(
            200,
            &json!({"family": family.name(), "kid": kid, "previous_kid": previous_kid,
                    "published": published}),
        )
    }

    fn control_retire(&self) -> Reply {
        let mut inner = lock(&self.inner);
        let mut retired = Vec::new();
        for fam in &mut inner.families {
            retired.extend(fam.previous.drain(..).map(|k| k.kid));
        }
        let published = published_kids(&inner);
        Reply::json(200, &json!({"retired": retired, "published": published}))
    }

    fn control_jwks(&self, query: &[(String, String)]) -> Reply {
        let mode = param(query, "mode").unwrap_or("ok");
        let Some(mode) = JwksMode::parse(mode) else {
            return Reply::error(
                400,
                "bad_request",
                "mode must be ok, status500, garbage, empty, huge or hang",
            );
        };
        let number = |name: &str| -> Result<Option<u64>, Reply> {
            match param(query, name) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| {
                    Reply::error(
                        400,
                        "bad_request",
                        format!("{name} must be a non-negative integer"),
                    )
                }),
            }
        };
        let max_age = match number("max_age") {
            Ok(v) => v,
            Err(r) => return r,
        };
        let delay_ms = match number("delay_ms") {
            Ok(v) => v.unwrap_or(0),
            Err(r) => return r,
        };
        let issuer_field = matches!(param(query, "issuer_field"), Some("1" | "true"));
        let behaviour = JwksBehaviour {
            mode,
            max_age,
            delay_ms,
            issuer_field,
        };
        lock(&self.inner).jwks = behaviour;
        Reply::json(
            200,
            &json!({"mode": mode.name(), "max_age": max_age, "delay_ms": delay_ms,
                    "issuer_field": issuer_field}),
        )
    }

    fn control_keys(&self) -> Reply {
        let inner = lock(&self.inner);
        let mut out = Map::new();
        for (family, fam) in Family::ALL.iter().zip(&inner.families) {
            out.insert(family.name().into(), json!(fam.current.kid));
        }
        out.insert("published".into(), json!(published_kids(&inner)));
        Reply::json(200, &Value::Object(out))
    }

    fn stats(&self) -> Reply {
        Reply::json(
            200,
            &json!({
                "jwks_requests": self.jwks_requests.load(Ordering::Relaxed),
                "discovery_requests": self.discovery_requests.load(Ordering::Relaxed),
                "token_requests": self.token_requests.load(Ordering::Relaxed),
            }),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignWith {
    Current,
    Forged,
    Unpublished,
}

/// What to mint.
struct Mint {
    tenant: String,
    ver: u8,
    alg: String,
    client_id: String,
    /// Merged over the default claims; `null` removes a claim.
    claims: Map<String, Value>,
    /// Merged over the default header; `null` removes a field.
    header: Map<String, Value>,
    sign_with: SignWith,
    expires_in: i64,
    omit_kid: bool,
}

struct Minted {
    token: String,
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

fn published_kids(inner: &Inner) -> Vec<String> {
    inner
        .families
        .iter()
        .flat_map(|f| std::iter::once(&f.current).chain(&f.previous))
        .map(|k| k.kid.clone())
        .collect()
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

fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::json(
        400,
        &json!({"error": error, "error_description": description,
                "error_codes": [900144], "timestamp": common::now()}),
    )
}
