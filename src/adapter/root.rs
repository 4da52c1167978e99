//! Root context callbacks: load the configuration, drive JWKS fetching and the gateway's
//! token requests from ticks, and finish requests that waited for either (Envoy).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::credentials::CredentialManager;
use super::host::Host;
use super::http::Http;
use super::keys::KeyManager;
use super::outcome::{self, Publish};
use super::shelf::SharedShelf;
use super::state::State;
use super::waiting::{WaitMode, Wake};
use crate::engine::{Decision, Filter};
use crate::verify::VerifiedCache;

/// One tick period for everything periodic: JWKS refresh checks, shared-data polling,
/// waiter timeouts. Fetches start on ticks, so this bounds the extra cold-start wait.
pub const TICK: Duration = Duration::from_millis(200);

pub struct Root<H> {
    host: H,
    state: Rc<RefCell<State>>,
    tick_started: bool,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(context_id: u32, host: H) -> Root<H> {
        let seed = host.now_ms() ^ (u64::from(context_id) << 32);
        Root {
            host,
            state: Rc::new(RefCell::new(State::new(seed))),
            tick_started: false,
        }
    }

    /// The HTTP context for one request.
    pub fn http(&self, context_id: u32) -> Http<H> {
        Http::new(context_id, self.state.clone(), self.host.clone())
    }

    /// Finish paused requests the key caches woke (keys arrived, or waiting is over).
    fn wake(&self, wakes: Vec<Wake>) {
        if wakes.is_empty() {
            return;
        }
        let host = &self.host;
        let now = host.now_ms();
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
                    Wake::Resume(_) => st.decide(host, w.context_id, &w.req, now, WaitMode::Park).0,
                    Wake::Unavailable {
                        retry_after_secs,
                        reason,
                        ..
                    } => st.deny_waited(&w.req, now, reason, u64::from(retry_after_secs)),
                };
                match d {
                    // Still waiting (a refetch for an unknown kid, or keys came and now the
                    // gateway's token is missing): park it again.
                    Decision::WaitForKeys { .. } | Decision::WaitForCredential { .. } => {
                        st.waiters.push(w)
                    }
                    d => actions.push((w.context_id, d)),
                }
            }
        }
        // Envoy only: Kong's engine cannot switch to a paused request (its requests ride
        // and are never parked here).
        for (context_id, decision) in actions {
            if host.set_effective_context(context_id).is_err() {
                continue; // the client went away
            }
            outcome::finish(host, &self.state, context_id, decision, true, Publish::Now);
        }
    }
}

impl<H: Host + Clone> Context for Root<H> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let now = self.host.now_ms();
        let wakes = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let (mut cx, keys, creds) = st.parts(&self.host, now);
                match creds.on_http_call_response(&mut cx, token_id, body_size) {
                    Some(wakes) => wakes,
                    None => keys.on_http_call_response(&mut cx, token_id, body_size),
                }
            }
            Err(_) => Vec::new(),
        };
        self.wake(wakes);
    }
}

impl<H: Host + Clone + 'static> RootContext for Root<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.host.plugin_configuration();
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
                st.shared = SharedShelf::new(&bytes, f.config.cache.max_entries);
                let owner = st.rng.next();
                st.keys = KeyManager::new(&f.jwks_sources, owner, f.config.cache.shared_data);
                st.creds = CredentialManager::new(
                    &f.credentials.specs,
                    owner ^ 0x00c0_ffee,
                    f.config.cache.shared_data,
                );
                let limited = f.concurrency.iter().any(Option::is_some);
                st.slots.configure(limited, f.config.cache.shared_data);
                st.metrics.define_all(&self.host, Some(&f));
                st.filter = Ok(Rc::new(f));
            }
            Err(e) => {
                st.shared = SharedShelf::off();
                st.metrics.define_all(&self.host, None);
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
            self.tick_started = self.host.set_tick_period(TICK).is_ok();
        }
        true
    }

    fn on_tick(&mut self) {
        let now = self.host.now_ms();
        let wakes = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let (mut cx, keys, creds) = st.parts(&self.host, now);
                let mut wakes = keys.on_tick(&mut cx);
                wakes.extend(creds.on_tick(&mut cx));
                let st = &mut *st;
                st.slots.on_tick(&self.host, &mut st.metrics, now);
                wakes
            }
            Err(_) => Vec::new(),
        };
        self.wake(wakes);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.http(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
