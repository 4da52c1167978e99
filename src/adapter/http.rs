//! HTTP context: one per request. Collects the request, asks the engine, carries out the
//! decision — or, when keys are missing, waits for them the way the host allows:
//! parked with the root context (Envoy), or riding its own fetch (Kong; see `keycache`).

use std::cell::RefCell;
use std::rc::Rc;

use super::abi;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host;
use super::keys::WaitMode;
use super::root::{Pending, State, Waiter};
use crate::audit::AuditRecord;
use crate::config::LogLevel;
use crate::engine::Decision;
use crate::keycache::{FetchRequest, Step};
use crate::reason::Reason;
use crate::respond;

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
    provider: usize,
    step: Step,
}

pub struct Http {
    context_id: u32,
    state: Rc<RefCell<State>>,
    /// Envoy: parked with the root context.
    waiting: bool,
    /// Kong: riding its own fetch; the request it will decide again on its answer.
    ride: Option<(RideCall, Pending)>,
    /// Kong: identity for `kong.ctx.shared`, kept for the response phase when the decision
    /// was made in a call's callback (Kong's Lua property setters must run in a phase).
    deferred: Option<Vec<(&'static str, String)>>,
}

impl Http {
    pub fn new(context_id: u32, state: Rc<RefCell<State>>) -> Http {
        Http {
            context_id,
            state,
            waiting: false,
            ride: None,
            deferred: None,
        }
    }
}

impl Context for Http {
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
        let now = host::now_ms();
        let next = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let st = &mut *st;
                let seed = st.rng.next();
                let next = st.keys.on_ride_response(
                    call.provider,
                    call.step,
                    body_size,
                    now,
                    seed,
                    &mut st.metrics,
                );
                if next.is_none() {
                    st.keys.ride_ended(call.provider);
                }
                next
            }
            Err(_) => None,
        };
        if let Some(next) = next {
            // The key set after the discovery document, from this same context.
            match self.dispatch_ride(call.provider, &next) {
                Some(c) => {
                    self.ride = Some((c, req));
                    return;
                }
                None => self.end_ride(call.provider),
            }
        }
        // Decided again from this, its own, callback: answered here, or resumed by Kong's
        // engine itself when the callback returns with no call pending (an explicit
        // `proxy_continue_stream` on top resumes the request twice: the worker crashes).
        let _ = self.run(req, WaitMode::Ride { allowed: false }, Phase::CallResponse);
    }

    fn on_done(&mut self) -> bool {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            if self.waiting {
                st.waiters.retain(|w| w.context_id != self.context_id);
                st.keys.cancel_waiter(self.context_id);
            }
            if let Some((call, _)) = self.ride.take() {
                st.keys.ride_ended(call.provider);
            }
            st.denied.retain(|id| *id != self.context_id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let is_kong = self.is_kong();
        let req = if is_kong {
            // nginx's `:path` and `:authority` are its decoded URI and server name: the raw
            // target is what Kong routes and forwards, `host` is what the client sent.
            let host = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                .map(|(_, v)| v.clone());
            Pending {
                path: Some(host::property(&NGX_REQUEST_URI).unwrap_or_default()),
                host: Some(host.unwrap_or_default()),
                host_route: host::property(&["kong", "route_name"]),
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
            publish(&props);
        }
        Action::Continue
    }
}

impl Http {
    /// Decide and carry out; returns what the current callback answers the host.
    fn run(&mut self, req: Pending, mut wait: WaitMode, phase: Phase) -> Action {
        let now = host::now_ms();
        // Kong: at most one ride, plus one more decision when keys arrived meanwhile.
        for _ in 0..2 {
            let (decision, ride) = match self.state.try_borrow_mut() {
                Ok(mut st) => st.decide(self.context_id, &req, now, wait),
                // Cannot happen in a single-threaded VM; never forward unverified if it does.
                Err(_) => return deny_internal(&self.state, ""),
            };
            let Decision::WaitForKeys { .. } = decision else {
                let publish = if phase == Phase::CallResponse {
                    Publish::Later(&mut self.deferred)
                } else {
                    Publish::Now
                };
                return finish(&self.state, self.context_id, decision, false, publish);
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
                    return deny_internal(&self.state, "");
                }
                (WaitMode::Ride { .. }, Some((provider, fetch))) => {
                    match self.dispatch_ride(provider, &fetch) {
                        Some(call) => {
                            self.ride = Some((call, req));
                            return Action::Pause;
                        }
                        None => {
                            self.end_ride(provider);
                            wait = WaitMode::Ride { allowed: false };
                        }
                    }
                }
                // Newer keys arrived from shared data: decide again, without riding.
                (WaitMode::Ride { .. }, None) => wait = WaitMode::Ride { allowed: false },
            }
        }
        deny_internal(&self.state, "")
    }

    fn dispatch_ride(&self, provider: usize, fetch: &FetchRequest) -> Option<RideCall> {
        match host::dispatch(fetch) {
            Ok(token) => Some(RideCall {
                token,
                provider,
                step: fetch.step,
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

    fn end_ride(&self, provider: usize) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.keys.ride_ended(provider);
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

    /// Kong (or its bare engine, nginx + ngx_wasm_module) rather than Envoy: only nginx
    /// has `ngx.*` properties. Learned from the first request.
    fn is_kong(&self) -> bool {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return false;
        };
        *st.is_kong
            .get_or_insert_with(|| host::property(&NGX_REQUEST_URI).is_some())
    }
}

/// Identity for Kong's Lua plugins (`kong.ctx.shared.azure_ml_kong_*`, strings), e.g.
/// `file-log`'s `custom_fields_by_lua`. Only verified values: never the token.
fn kong_props(audit: &AuditRecord) -> Vec<(&'static str, String)> {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        (
            "azure_ml_kong_decision",
            audit.decision.as_str().to_string(),
        ),
        (
            "azure_ml_kong_reason",
            audit.reason.map_or("", Reason::code).to_string(),
        ),
        ("azure_ml_kong_route", s(&audit.route)),
        ("azure_ml_kong_request_id", audit.request_id.clone()),
        ("azure_ml_kong_subject", s(&audit.subject)),
        ("azure_ml_kong_tid", s(&audit.tid)),
        ("azure_ml_kong_app", s(&audit.app)),
    ]
}

fn publish(props: &[(&'static str, String)]) {
    for (key, value) in props {
        let _ = host::set_property(&["kong", "ctx", "shared", key], Some(value.as_bytes()));
    }
}

/// When Kong's `kong.ctx.shared` gets the decision.
pub enum Publish<'a> {
    Now,
    /// Kept here for `on_http_response_headers`.
    Later(&'a mut Option<Vec<(&'static str, String)>>),
}

impl Publish<'_> {
    fn run(self, audit: &AuditRecord) {
        match self {
            Publish::Now => publish(&kong_props(audit)),
            Publish::Later(slot) => *slot = Some(kong_props(audit)),
        }
    }
}

/// Carry out a final decision for the effective HTTP context. `resumed`: the request was
/// paused and is being finished from the root context (Envoy).
pub fn finish(
    state: &Rc<RefCell<State>>,
    context_id: u32,
    decision: Decision,
    resumed: bool,
    kong: Publish<'_>,
) -> Action {
    let is_kong = state.try_borrow().ok().and_then(|st| st.is_kong) == Some(true);
    match decision {
        Decision::Allow { ops, mut audit } => {
            // Published after the header operations: if one fails, Lua sees the denial.
            let applied = host::apply_header_ops(&ops, is_kong).is_ok();
            if !applied {
                audit.deny(Reason::Internal, Reason::Internal.status());
            }
            if is_kong {
                kong.run(&audit);
            }
            record(state, &audit);
            if !applied {
                return deny_internal(state, &audit.request_id);
            }
            if resumed {
                let _ = abi::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny { response, audit } => {
            if is_kong {
                kong.run(&audit);
            }
            record(state, &audit);
            if let Ok(mut st) = state.try_borrow_mut() {
                st.denied.push(context_id);
            }
            if let Err(e) = host::send_response(&response) {
                log::error!("azure_ml_kong: cannot send local response: {e:?}");
            }
            Action::Pause
        }
        // The caller handles waiting; reaching here means a logic error: fail closed.
        Decision::WaitForKeys { .. } => deny_internal(state, ""),
    }
}

fn record(state: &Rc<RefCell<State>>, audit: &AuditRecord) {
    let Ok(mut st) = state.try_borrow_mut() else {
        return;
    };
    let level = match &st.filter {
        Ok(f) => f.audit_level(),
        Err(_) => LogLevel::Error,
    };
    let line = audit.to_json_line();
    match level {
        LogLevel::Trace => log::trace!("{line}"),
        LogLevel::Debug => log::debug!("{line}"),
        LogLevel::Info => log::info!("{line}"),
        LogLevel::Warn => log::warn!("{line}"),
        LogLevel::Error => log::error!("{line}"),
    }
    st.metrics
        .increment(&crate::metrics::decision_counter(audit));
}

/// Fail closed when the filter cannot carry out its decision (503 `internal_error`).
fn deny_internal(state: &Rc<RefCell<State>>, request_id: &str) -> Action {
    let realm = state
        .try_borrow()
        .ok()
        .and_then(|st| st.filter.as_ref().ok().map(|f| f.config.realm.clone()))
        .unwrap_or_else(|| "azure-ml".into());
    let response = respond::deny(Reason::Internal, &realm, request_id, None);
    if let Err(e) = host::send_response(&response) {
        log::error!("azure_ml_kong: cannot send local response: {e:?}");
    }
    Action::Pause
}
