//! Per-worker state, shared by the root context and the HTTP contexts it creates, and the
//! request as the filter decides on it (new, or again after waiting for keys).

use std::collections::HashMap;
use std::rc::Rc;

use super::credentials::{CredentialManager, CredentialRide};
use super::env::RequestEnv;
use super::host::Host;
use super::keys::KeyManager;
use super::metrics::Metrics;
use super::shelf::SharedShelf;
use super::slots::SlotManager;
use super::waiting::{Cx, WaitMode};
use crate::engine::{self, Ctx, Decision, Filter};
use crate::keycache::FetchRequest;
use crate::reason::Reason;
use crate::request::RequestView;
use crate::verify::VerifiedCache;

/// A request as the filter decides on it, kept while it waits for keys.
pub struct Pending {
    pub headers: Vec<(String, String)>,
    /// Kong: the raw request target (`ngx.request_uri`); `:path` is
    /// nginx's decoded, dot-segment-resolved URI there, not what is routed and forwarded.
    pub path: Option<String>,
    /// Kong: the client's `host` header; `:authority` is the server block's name there.
    pub host: Option<String>,
    /// Kong 3.9 names its route (for audit lines when no filter route matched).
    pub host_route: Option<String>,
}

impl Pending {
    /// The request view: pseudo-headers carry method, path and authority unless the host
    /// gave better values.
    pub fn view(&self) -> RequestView<'_> {
        let get = |n: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        RequestView {
            method: get(":method"),
            path: self.path.as_deref().unwrap_or_else(|| get(":path")),
            authority: self.host.as_deref().unwrap_or_else(|| get(":authority")),
            headers: &self.headers,
        }
    }
}

/// A request parked with the root context until its provider's keys are usable (Envoy).
pub struct Waiter {
    pub context_id: u32,
    pub req: Pending,
}

/// A call a Kong request must send from its own context while it waits.
pub enum RideRequest {
    /// A key set (or discovery document) for provider `.0`.
    Keys(usize, FetchRequest),
    /// The gateway's own token.
    Credential(CredentialRide),
}

/// How many identity values the filter publishes to Kong (`outcome::kong_props`).
pub const KONG_PROPS: usize = 8;

/// Which of the nginx variables `$azure_ml_kong_*` this worker's Kong declares (`set
/// $azure_ml_kong_subject '';` injected into Kong's `location /`): learned from the first set
/// of each, `None` until then. An undeclared one is never set again, so without them
/// publishing costs eight failing calls per worker, once.
#[derive(Debug, Default)]
pub struct NgxVars(pub [Option<bool>; KONG_PROPS]);

/// Per-worker (per root context) state.
pub struct State {
    pub filter: Result<Rc<Filter>, String>,
    pub keys: KeyManager,
    pub creds: CredentialManager,
    pub cache: VerifiedCache,
    /// The node's verified tokens in shared data, behind `cache`.
    pub shared: SharedShelf,
    pub waiters: Vec<Waiter>,
    pub metrics: Metrics,
    pub rng: Rng,
    /// Learned from the first request: Kong's engine (nginx) or Envoy.
    pub is_kong: Option<bool>,
    /// Requests answered locally whose stream is still open (their body must not move).
    pub denied: Vec<u32>,
    /// Kong: which `$azure_ml_kong_*` nginx variables exist.
    pub ngx_vars: NgxVars,
    /// Concurrency-limit slots held by this worker's requests.
    pub slots: SlotManager,
    /// Headers for allowed requests' responses (`RateLimit`), by HTTP context id.
    pub response_headers: HashMap<u32, Vec<(String, String)>>,
    /// The realm while no configuration is loaded: the configuration's default.
    default_realm: String,
}

impl State {
    pub fn new(seed: u64) -> State {
        let mut rng = Rng::new(seed);
        // This worker's id in the node's slot lists: drawn from the entropy-mixed generator,
        // not the seed alone (Envoy workers starting in the same millisecond share a seed
        // and would drop each other's slots as their own stale ones).
        let slot_worker = rng.next();
        State {
            filter: Err("no configuration received yet".into()),
            keys: KeyManager::empty(),
            creds: CredentialManager::default(),
            cache: VerifiedCache::new(1),
            shared: SharedShelf::off(),
            waiters: Vec::new(),
            metrics: Metrics::default(),
            rng,
            is_kong: None,
            denied: Vec::new(),
            ngx_vars: NgxVars::default(),
            response_headers: HashMap::new(),
            slots: SlotManager::new(slot_worker),
            default_realm: crate::config::default_realm(),
        }
    }

    /// What a key-cache or credential call needs, borrowed apart from the managers it is
    /// handed to: the host, the time, fresh randomness and the metrics.
    pub fn parts<'a, H: Host>(
        &'a mut self,
        host: &'a H,
        now_ms: u64,
    ) -> (Cx<'a, H>, &'a mut KeyManager, &'a mut CredentialManager) {
        let cx = Cx {
            host,
            now_ms,
            random: self.rng.next(),
            metrics: &mut self.metrics,
        };
        (cx, &mut self.keys, &mut self.creds)
    }

    /// The configured realm (its default when the configuration is missing or invalid).
    pub fn realm(&self) -> &str {
        match &self.filter {
            Ok(f) => &f.config.realm,
            Err(_) => &self.default_realm,
        }
    }

    /// Whether the filter may touch Kong's Lua-backed `kong.*` properties
    /// (`kong.route_name`, `kong.ctx.shared.*`): only with `audit.kong_lua_properties`. Each
    /// such call makes Kong run a Lua handler through a LuaJIT FFI callback
    /// (ngx_wasm_module's `lib/resty/wasmx/proxy_wasm.lua`, `set_r`) on whatever Lua thread
    /// last made an FFI call — a suspended timer thread, another request's paused access
    /// coroutine — and points that thread at this request (`thread.exdata`). When that
    /// thread resumes, nginx runs this request's phases from it; after the request is freed
    /// the worker dies (SIGSEGV in `ngx_http_lua_sema_timeout_handler`, or a double free).
    /// `ngx.*` properties are nginx variables read in C and are safe.
    pub fn kong_lua_properties(&self) -> bool {
        self.filter.as_ref().is_ok_and(|f| f.kong_lua_properties())
    }

    /// Run the engine for one request (new or resumed). A `WaitForKeys` or
    /// `WaitForCredential` decision may come with a ride to dispatch (`WaitMode::Ride`).
    pub fn decide(
        &mut self,
        host: &impl Host,
        context_id: u32,
        req: &Pending,
        now_ms: u64,
        wait: WaitMode,
    ) -> (Decision, Option<RideRequest>) {
        let view = req.view();
        let ctx = Ctx {
            now_ms,
            random: self.rng.next(),
            host_route: req.host_route.as_deref(),
        };
        let filter = match &self.filter {
            Ok(f) => f.clone(),
            Err(_) => return (engine::deny_config_invalid(self.realm(), &view, ctx), None),
        };
        let random = self.rng.next();
        let State {
            keys,
            creds,
            cache,
            shared,
            metrics,
            slots,
            ..
        } = self;
        let cx = Cx {
            host,
            now_ms,
            random,
            metrics,
        };
        let mut env = RequestEnv::new(keys, creds, slots, cx, context_id, wait, shared);
        let d = filter.decide(&view, ctx, &mut env, cache);
        let ride = match (env.ride.take(), env.credential_ride.take()) {
            (Some((p, req)), _) => Some(RideRequest::Keys(p, req)),
            (None, Some(c)) => Some(RideRequest::Credential(c)),
            (None, None) => None,
        };
        (d, ride)
    }

    /// A parked request whose wait is over in vain (`reason`: 503 `jwks_unavailable` or
    /// `upstream_credential_unavailable`).
    pub fn deny_waited(
        &mut self,
        req: &Pending,
        now_ms: u64,
        reason: Reason,
        retry_after_secs: u64,
    ) -> Decision {
        let view = req.view();
        let ctx = Ctx {
            now_ms,
            random: self.rng.next(),
            host_route: req.host_route.as_deref(),
        };
        match &self.filter {
            Ok(f) => f.deny_waited(&view, ctx, reason, retry_after_secs),
            Err(_) => engine::deny_config_invalid(self.realm(), &view, ctx),
        }
    }
}

/// A fast non-cryptographic generator for request ids and jitter (never for secrets).
pub struct Rng(u64);

impl Rng {
    /// `seed` mixed with per-VM entropy: std's `RandomState` draws its keys from WASI
    /// `random_get` (already imported for `HashMap`). The seed alone (time in ms, root
    /// context id) is the same in Envoy workers whose VMs start in the same millisecond,
    /// which gave them the same JWKS lease owner id: each took the other's lease for its
    /// own, so both fetched (and logged each failure streak twice).
    pub fn new(seed: u64) -> Rng {
        use std::hash::BuildHasher;
        let mixed = std::collections::hash_map::RandomState::new().hash_one(seed);
        Rng(mixed | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
