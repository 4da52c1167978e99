//! Root context: loads the configuration, owns the per-worker state shared with HTTP
//! contexts, drives JWKS fetching from ticks, and finishes requests that waited for keys.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::abi;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::host::{self, Rng};
use super::http::{self, Http};
use super::keys::{KeyManager, WaitMode, Wake};
use super::metrics::Metrics;
use crate::engine::{self, Ctx, Decision, Filter};
use crate::keycache::FetchRequest;
use crate::request::RequestView;
use crate::verify::VerifiedCache;

/// One tick period for everything periodic: JWKS refresh checks, shared-data polling,
/// waiter timeouts. Fetches start on ticks, so this bounds the extra cold-start wait.
const TICK: Duration = Duration::from_millis(200);

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

/// A ride the request must send from its own context: (provider, request).
pub type RideRequest = (usize, FetchRequest);

/// Per-worker (per root context) state, shared with the HTTP contexts it creates.
pub struct State {
    pub filter: Result<Rc<Filter>, String>,
    pub keys: KeyManager,
    pub cache: VerifiedCache,
    pub waiters: Vec<Waiter>,
    pub metrics: Metrics,
    pub rng: Rng,
    /// Learned from the first request: Kong's engine (nginx) or Envoy.
    pub is_kong: Option<bool>,
    /// Requests answered locally whose stream is still open (their body must not move).
    pub denied: Vec<u32>,
}

impl State {
    fn new(seed: u64) -> State {
        State {
            filter: Err("no configuration received yet".into()),
            keys: KeyManager::empty(),
            cache: VerifiedCache::new(1),
            waiters: Vec::new(),
            metrics: Metrics::default(),
            rng: Rng::new(seed),
            is_kong: None,
            denied: Vec::new(),
        }
    }

    /// Run the engine for one request (new or resumed). A `WaitForKeys` decision may come
    /// with a ride to dispatch (`WaitMode::Ride`).
    pub fn decide(
        &mut self,
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
            Err(_) => return (engine::deny_config_invalid("azure-ml", &view, ctx), None),
        };
        let random = self.rng.next();
        let State {
            keys,
            cache,
            metrics,
            ..
        } = self;
        let mut env = keys.env(now_ms, random, context_id, wait, metrics);
        let d = filter.decide(&view, ctx, &mut env, cache);
        (d, env.ride.take())
    }
}

pub struct Root {
    state: Rc<RefCell<State>>,
    tick_started: bool,
}

impl Root {
    pub fn new(context_id: u32) -> Root {
        let seed = host::now_ms() ^ (u64::from(context_id) << 32);
        Root {
            state: Rc::new(RefCell::new(State::new(seed))),
            tick_started: false,
        }
    }

    /// Finish paused requests the key caches woke (keys arrived, or waiting is over).
    fn wake(&self, wakes: Vec<Wake>) {
        if wakes.is_empty() {
            return;
        }
        let now = host::now_ms();
        // Decide under the borrow, act after it: host calls below may re-enter the SDK.
        let mut actions = Vec::new();
        {
            let Ok(mut st) = self.state.try_borrow_mut() else {
                return;
            };
            for wake in wakes {
                let id = match &wake {
                    Wake::Resume(id) | Wake::Unavailable { waiter: id, .. } => *id,
                };
                let Some(pos) = st.waiters.iter().position(|w| w.context_id == id) else {
                    continue;
                };
                let w = st.waiters.swap_remove(pos);
                let d = match wake {
                    Wake::Resume(_) => st.decide(w.context_id, &w.req, now, WaitMode::Park).0,
                    Wake::Unavailable {
                        retry_after_secs, ..
                    } => deny_unavailable(&mut st, &w, now, u64::from(retry_after_secs)),
                };
                match d {
                    // Still waiting (a refetch for an unknown kid): park it again.
                    Decision::WaitForKeys { .. } => st.waiters.push(w),
                    d => actions.push((w.context_id, d)),
                }
            }
        }
        // Envoy only: Kong's engine cannot switch to a paused request (its requests ride
        // and are never parked here).
        for (context_id, decision) in actions {
            if abi::set_effective_context(context_id).is_err() {
                continue; // the client went away
            }
            http::finish(&self.state, context_id, decision, true, http::Publish::Now);
        }
    }
}

fn deny_unavailable(st: &mut State, w: &Waiter, now: u64, retry_after_secs: u64) -> Decision {
    let req = w.req.view();
    let ctx = Ctx {
        now_ms: now,
        random: st.rng.next(),
        host_route: w.req.host_route.as_deref(),
    };
    match &st.filter {
        Ok(f) => f.deny_unavailable(&req, ctx, retry_after_secs),
        Err(_) => engine::deny_config_invalid("azure-ml", &req, ctx),
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let now = host::now_ms();
        let wakes = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let st = &mut *st;
                let seed = st.rng.next();
                st.keys
                    .on_http_call_response(token_id, body_size, now, seed, &mut st.metrics)
            }
            Err(_) => Vec::new(),
        };
        self.wake(wakes);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut st = match self.state.try_borrow_mut() {
            Ok(s) => s,
            Err(_) => return true,
        };
        match Filter::from_json(&bytes) {
            Ok(f) => {
                log::info!(
                    "azure_ml_kong: configuration loaded: {} provider(s), {} route(s)",
                    f.providers.len(),
                    f.config.routes.len()
                );
                st.cache = VerifiedCache::new(f.config.cache.max_entries);
                let owner = st.rng.next();
                st.keys = KeyManager::new(&f.jwks_sources, owner, f.config.cache.shared_data);
                st.filter = Ok(Rc::new(f));
            }
            Err(e) => {
                // Fail closed without failing the host's reconfigure (Kong aborts a whole
                // DB-less reload on `false`): every request gets 503 config_invalid.
                log::error!(
                    "azure_ml_kong: invalid configuration: {e}; every request will be denied (503 config_invalid)"
                );
                st.filter = Err(e.to_string());
            }
        }
        // Kong traps on a second set_tick_period; dispatching from on_configure traps too,
        // so the first fetch starts on the first tick.
        if !self.tick_started {
            self.tick_started = abi::set_tick_period(TICK).is_ok();
        }
        true
    }

    fn on_tick(&mut self) {
        let now = host::now_ms();
        let wakes = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let st = &mut *st;
                let seed = st.rng.next();
                st.keys.on_tick(now, seed, &mut st.metrics)
            }
            Err(_) => Vec::new(),
        };
        self.wake(wakes);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.state.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
