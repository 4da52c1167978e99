//! HTTP context callbacks: one context per request. Collects the request, asks the engine,
//! carries out the decision (`outcome`) — or, when keys or the gateway's own token are
//! missing, waits for them the way the host allows: parked with the root context (Envoy),
//! or riding its own fetch (Kong; see `keycache` and `credential::cache`).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::credentials::CredentialRide;
use super::host::{Host, Outbound};
use super::outcome::{self, KongProps, Publish};
use super::state::{Pending, RideRequest, State, Waiter};
use super::waiting::WaitMode;
use crate::engine::Decision;
use crate::keycache::{FetchRequest, Step};

/// nginx's `$request_uri`: the raw request target, as Kong routes and forwards it.
const NGX_REQUEST_URI: [&str; 2] = ["ngx", "request_uri"];

/// Where a decision is carried out: Kong's Lua property setters (`kong.ctx.shared`) need
/// a request phase, which a call's callback is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    CallResponse,
}

/// A ride's call under way from this context.
struct RideCall {
    token: u32,
    what: Riding,
}

/// What a ride fetches.
#[derive(Debug, Clone, Copy)]
enum Riding {
    Keys { provider: usize, step: Step },
    Credential(CredentialRide),
}

pub struct Http<H: Host> {
    host: H,
    context_id: u32,
    state: Rc<RefCell<State>>,
    /// Envoy: parked with the root context.
    waiting: bool,
    /// Kong: riding its own fetch; the request it will decide again on its answer.
    ride: Option<(RideCall, Pending)>,
    /// Kong: identity for `kong.ctx.shared`, kept for the response phase when the decision
    /// was made in a call's callback.
    deferred: Option<KongProps>,
}

impl<H: Host> Http<H> {
    pub fn new(context_id: u32, state: Rc<RefCell<State>>, host: H) -> Http<H> {
        Http {
            host,
            context_id,
            state,
            waiting: false,
            ride: None,
            deferred: None,
        }
    }
}

impl<H: Host> Context for Http<H> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((call, req)) = self.ride.take() else {
            return;
        };
        if call.token != token_id {
            self.ride = Some((call, req));
            return;
        }
        let now = self.host.now_ms();
        if let Riding::Keys { provider, step } = call.what {
            let next = match self.state.try_borrow_mut() {
                Ok(mut st) => {
                    let (mut cx, keys, _) = st.parts(&self.host, now);
                    let next = keys.on_ride_response(&mut cx, provider, step, body_size);
                    if next.is_none() {
                        keys.ride_ended(provider);
                    }
                    next
                }
                Err(_) => None,
            };
            if let Some(next) = next {
                // The key set after the discovery document, from this same context.
                match self.dispatch_keys(provider, &next) {
                    Some(c) => {
                        self.ride = Some((c, req));
                        return;
                    }
                    None => self.end_ride(Riding::Keys { provider, step }),
                }
            }
        }
        if let Riding::Credential(ride) = call.what {
            if let Ok(mut st) = self.state.try_borrow_mut() {
                let (mut cx, _, creds) = st.parts(&self.host, now);
                creds.on_ride_response(&mut cx, ride, body_size);
            }
        }
        // Decided again from this, its own, callback: answered here, or resumed by Kong's
        // engine itself when the callback returns with no call pending (an explicit
        // `proxy_continue_stream` on top resumes the request twice: the worker crashes).
        let _ = self.run(req, WaitMode::Ride { allowed: false }, Phase::CallResponse);
    }

    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl<H: Host> Drop for Http<H> {
    /// Kong never calls `on_done` for a request whose answer is an nginx error page (an
    /// upstream that failed: 502/503/504 go through an internal redirect that drops the
    /// filter's request context); it still deletes the context when the request is freed.
    /// What such a request holds node-wide is given back here; its per-worker leftovers
    /// too. Waiting lists and rides are `on_done`'s: a request cannot wait on an error page.
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.slots.release(&self.host, self.context_id);
            st.denied.retain(|id| *id != self.context_id);
            st.response_headers.remove(&self.context_id);
        }
    }
}

impl<H: Host> Http<H> {
    /// The request ended however it ended: give back what it holds (its slot, its place in
    /// waiting lists, its ride). `Drop` repeats the slot's part, harmlessly.
    fn finish(&mut self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            if self.waiting {
                st.waiters.retain(|w| w.context_id != self.context_id);
                st.keys.cancel_waiter(self.context_id);
                st.creds.cancel_waiter(self.context_id);
            }
            st.denied.retain(|id| *id != self.context_id);
            st.slots.release(&self.host, self.context_id);
            st.response_headers.remove(&self.context_id);
        }
        if let Some((call, _)) = self.ride.take() {
            self.end_ride(call.what);
        }
    }
}

impl<H: Host> HttpContext for Http<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.host.request_headers();
        let is_kong = self.is_kong();
        let req = if is_kong {
            // nginx's `:path` and `:authority` are its decoded URI and server name: the raw
            // target is what Kong routes and forwards, `host` is what the client sent.
            let host = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                .map(|(_, v)| v.clone());
            Pending {
                path: Some(self.host.property_str(&NGX_REQUEST_URI).unwrap_or_default()),
                host: Some(host.unwrap_or_default()),
                // Lua-backed: only when asked for (`State::kong_lua_properties`).
                host_route: if self.kong_lua_properties() {
                    self.host.property_str(&["kong", "route_name"])
                } else {
                    None
                },
                headers,
            }
        } else {
            Pending {
                headers,
                path: None,
                host: None,
                host_route: None,
            }
        };
        let wait = if is_kong {
            WaitMode::Ride { allowed: true }
        } else {
            WaitMode::Park
        };
        self.run(req, wait, Phase::Request)
    }

    // While a request waits for keys (or after it was denied) its body and trailers must
    // not move. Envoy turns a paused header callback into StopAllIteration and Kong reads
    // the body only after the access phase, so neither delivers body callbacks then; but a
    // host with single-iteration semantics would let `Continue` from a body callback release
    // the paused headers unverified. Defence in depth: hold them.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_or_continue()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold_or_continue()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(props) = self.deferred.take() {
            outcome::publish(&self.host, &props);
        }
        let headers = self
            .state
            .try_borrow_mut()
            .ok()
            .and_then(|mut st| st.response_headers.remove(&self.context_id));
        for (name, value) in headers.unwrap_or_default() {
            if let Err(e) = self.host.set_response_header(&name, &value) {
                log::debug!("azure_ml_kong: response header {name} not set: {e:?}");
            }
        }
        Action::Continue
    }
}

impl<H: Host> Http<H> {
    /// Decide and carry out; returns what the current callback answers the host.
    fn run(&mut self, req: Pending, mut wait: WaitMode, phase: Phase) -> Action {
        let now = self.host.now_ms();
        // Kong: at most one ride, plus one more decision when keys arrived meanwhile.
        for _ in 0..2 {
            let (decision, ride) = match self.state.try_borrow_mut() {
                Ok(mut st) => st.decide(&self.host, self.context_id, &req, now, wait),
                // Cannot happen in a single-threaded VM; never forward unverified if it does.
                Err(_) => {
                    return outcome::deny_internal(&self.host, &self.state, self.context_id, "")
                }
            };
            let (Decision::WaitForKeys { .. } | Decision::WaitForCredential { .. }) = decision
            else {
                let publish = if phase == Phase::CallResponse {
                    Publish::Later(&mut self.deferred)
                } else {
                    Publish::Now
                };
                return outcome::finish(
                    &self.host,
                    &self.state,
                    self.context_id,
                    decision,
                    false,
                    publish,
                );
            };
            match (wait, ride) {
                (WaitMode::Park, _) => {
                    if let Ok(mut st) = self.state.try_borrow_mut() {
                        st.waiters.push(Waiter {
                            context_id: self.context_id,
                            req,
                        });
                        self.waiting = true;
                        return Action::Pause;
                    }
                    return outcome::deny_internal(&self.host, &self.state, self.context_id, "");
                }
                (WaitMode::Ride { .. }, Some(ride)) => {
                    let (sent, what) = match ride {
                        RideRequest::Keys(provider, fetch) => (
                            self.dispatch_keys(provider, &fetch),
                            Riding::Keys {
                                provider,
                                step: fetch.step,
                            },
                        ),
                        RideRequest::Credential(c) => {
                            (self.dispatch_credential(c), Riding::Credential(c))
                        }
                    };
                    match sent {
                        Some(call) => {
                            self.ride = Some((call, req));
                            return Action::Pause;
                        }
                        None => {
                            self.end_ride(what);
                            wait = WaitMode::Ride { allowed: false };
                        }
                    }
                }
                // Newer keys arrived from shared data: decide again, without riding.
                (WaitMode::Ride { .. }, None) => wait = WaitMode::Ride { allowed: false },
            }
        }
        outcome::deny_internal(&self.host, &self.state, self.context_id, "")
    }

    fn dispatch_keys(&self, provider: usize, fetch: &FetchRequest) -> Option<RideCall> {
        match self.host.dispatch(&Outbound::fetch(fetch)) {
            Ok(token) => Some(RideCall {
                token,
                what: Riding::Keys {
                    provider,
                    step: fetch.step,
                },
            }),
            Err(e) => {
                log::warn!(
                    "azure_ml_kong: dispatch_http_call to upstream {:?} failed: {e:?} (Kong: host:port; Envoy: a defined cluster)",
                    fetch.upstream
                );
                None
            }
        }
    }

    fn dispatch_credential(&self, ride: CredentialRide) -> Option<RideCall> {
        let st = self.state.try_borrow().ok()?;
        let spec = st.creds.spec(ride.0)?;
        match self.host.dispatch(&Outbound::credential(spec)) {
            Ok(token) => Some(RideCall {
                token,
                what: Riding::Credential(ride),
            }),
            Err(e) => {
                log::warn!(
                    "azure_ml_kong: credential {:?}: dispatch_http_call to upstream {:?} failed: {e:?} (Kong: host:port; Envoy: a defined cluster)",
                    spec.name,
                    spec.upstream
                );
                None
            }
        }
    }

    fn end_ride(&self, what: Riding) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        match what {
            Riding::Keys { provider, .. } => st.keys.ride_ended(provider),
            Riding::Credential(ride) => {
                let (mut cx, _, creds) = st.parts(&self.host, self.host.now_ms());
                creds.ride_ended(&mut cx, ride);
            }
        }
    }

    /// Pause while this request waits for keys or was answered locally.
    fn hold_or_continue(&self) -> Action {
        if self.ride.is_some() {
            return Action::Pause;
        }
        let Ok(st) = self.state.try_borrow() else {
            return Action::Pause;
        };
        let held = st.waiters.iter().any(|w| w.context_id == self.context_id)
            || st.denied.contains(&self.context_id);
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn kong_lua_properties(&self) -> bool {
        self.state
            .try_borrow()
            .is_ok_and(|st| st.kong_lua_properties())
    }

    /// Kong (or its bare engine, nginx + ngx_wasm_module) rather than Envoy: only nginx
    /// has `ngx.*` properties. Learned from the first request.
    fn is_kong(&self) -> bool {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return false;
        };
        *st.is_kong
            .get_or_insert_with(|| self.host.property_str(&NGX_REQUEST_URI).is_some())
    }
}
