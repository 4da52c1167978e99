//! mock-idp: an HTTP server that looks like Microsoft Entra ID (discovery, JWKS,
//! client-credentials token endpoint), an Azure IMDS look-alike (managed identity tokens)
//! and `/_control/` endpoints for tests.
//!
//! This file holds the state (keys, JWKS and token-source behaviours, counters) and the
//! routes; `jwks` serves discovery and key sets, `tokens` mints tokens, `imds` serves IMDS
//! and the token sources' failure modes, `controls` are the `/_control/` endpoints that
//! change or report the state.

mod controls;
mod imds;
mod jwks;
mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::common::{self, split_url, Reply};
use crate::http::{self, Method, Outcome, Request, Running, Server};
use crate::keys::{Family, KeyPair};

use imds::GrantBehaviour;
pub use imds::GrantMode;
use jwks::JwksBehaviour;
pub use jwks::JwksMode;
pub use tokens::stable_uuid;

pub const DEFAULT_ISSUER_TEMPLATE: &str = "https://login.microsoftonline.com/{tenant}/v2.0";
pub const DEFAULT_V1_ISSUER_TEMPLATE: &str = "https://sts.windows.net/{tenant}/";
pub const DEFAULT_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const DEFAULT_KID_PREFIX: &str = "mock";
pub const DEFAULT_HMAC_SECRET: &str = "mock-hmac-secret-change-me-0123456789";
/// Client id used by `/_control/token` when the request names none.
pub const DEFAULT_CLIENT_ID: &str = "3f6b5a7e-6a55-4d3c-9a3b-6d1c2e7f8a90";
/// Client id of the VM's managed identity: IMDS tokens carry it (`appid`) unless the request
/// names a user-assigned identity (`client_id=`).
pub const MANAGED_IDENTITY_CLIENT_ID: &str = "9c1e4f3a-2b7d-4e8f-a6c5-0d3b2a1f4e6c";
/// Audience used when a token request names no scope.
pub const DEFAULT_AUDIENCE: &str = "api://azureml-gateway";
pub const TOKEN_LIFETIME: i64 = 3599;
/// How long a `hang` JWKS request is held before the connection is dropped.
pub const HANG: Duration = Duration::from_secs(120);

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
    imds: GrantBehaviour,
    /// The client-credentials endpoints' behaviour.
    token_endpoint: GrantBehaviour,
}

/// The mock identity provider's state. Cheap to share: `Arc<Idp>`.
pub struct Idp {
    config: Config,
    addr: SocketAddr,
    inner: Mutex<Inner>,
    jwks_requests: AtomicU64,
    discovery_requests: AtomicU64,
    /// Client-credentials endpoint and `/_control/token` requests.
    token_requests: AtomicU64,
    /// Client-credentials endpoint requests only.
    token_endpoint_requests: AtomicU64,
    imds_requests: AtomicU64,
}

/// Binds `listen`, generates the keys and serves in the background until the process
/// exits (for tests).
pub fn spawn(config: Config, listen: &str) -> Result<(SocketAddr, Arc<Idp>), String> {
    let (running, idp) = start(config, listen)?;
    let addr = running.addr();
    running.detach();
    Ok((addr, idp))
}

/// Binds `listen`, generates the keys and serves in the background until the handle is
/// dropped.
pub fn start(config: Config, listen: &str) -> Result<(Running, Arc<Idp>), String> {
    let (server, addr) = http::bind(listen)?;
    let idp = Arc::new(Idp::new(config, addr)?);
    let running = idp.clone().serve(server)?;
    Ok((running, idp))
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
                imds: GrantBehaviour::default(),
                token_endpoint: GrantBehaviour::default(),
            }),
            jwks_requests: AtomicU64::new(0),
            discovery_requests: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_endpoint_requests: AtomicU64::new(0),
            imds_requests: AtomicU64::new(0),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves in the background until the handle is dropped. A delayed or hanging JWKS
    /// answer holds up no other request.
    pub fn serve(self: Arc<Self>, server: Server) -> Result<Running, String> {
        server.log_as("mock-idp").spawn(move |req| self.handle(req))
    }

    /// Handles one request. An outcome without a reply drops the connection without an
    /// answer.
    pub fn handle(&self, req: &mut Request) -> Outcome {
        let method = req.method().clone();
        let url = req.url().to_string();
        let (path, query) = split_url(&url);
        self.route(req, &method, path, &query)
    }

    fn route(
        &self,
        req: &mut Request,
        method: &Method,
        path: &str,
        query: &[(String, String)],
    ) -> Outcome {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = *method == Method::GET || *method == Method::HEAD;
        let post = *method == Method::POST;
        let reply = match (segs.as_slice(), get, post) {
            (["_control", "token"], _, true) => self.control_token(req),
            (["_control", "rotate"], _, true) => self.control_rotate(query),
            (["_control", "retire"], _, true) => self.control_retire(),
            (["_control", "jwks"], _, true) => self.control_jwks(query),
            (["_control", "imds"], _, true) => self.control_imds(query),
            (["_control", "token_endpoint"], _, true) => self.control_token_endpoint(query),
            (["_control", "stats"], true, _) => self.stats(),
            (["_control", "reset"], _, true) => self.control_reset(),
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
            (["metadata", "identity", "oauth2", "token"], _, _) => return self.imds(req, query),
            ([tenant, "oauth2", "v2.0", "token"], _, true) => {
                return self.token_endpoint(req, tenant, 2)
            }
            ([tenant, "oauth2", "token"], _, true) => return self.token_endpoint(req, tenant, 1),
            _ => Reply::error(404, "not_found", format!("no route for {method} {path}")),
        };
        reply.into()
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
}
