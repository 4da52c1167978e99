//! HTTP context: one per request. Collects the request, asks the engine, carries out the
//! decision, or parks the request with the root context until keys are usable.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host;
use super::root::{State, Waiter};
use crate::audit::AuditRecord;
use crate::config::LogLevel;
use crate::engine::Decision;

pub struct Http {
    context_id: u32,
    state: Rc<RefCell<State>>,
    waiting: bool,
}

impl Http {
    pub fn new(context_id: u32, state: Rc<RefCell<State>>) -> Http {
        Http {
            context_id,
            state,
            waiting: false,
        }
    }
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        if self.waiting {
            if let Ok(mut st) = self.state.try_borrow_mut() {
                st.waiters.retain(|w| w.context_id != self.context_id);
                st.keys.cancel_waiter(self.context_id);
            }
        }
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.denied.retain(|id| *id != self.context_id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let now = host::now_ms();
        let is_kong = self.is_kong();
        // Kong 3.9 names its route (for audit lines when no filter route matched).
        let host_route = if is_kong {
            host::property(&["kong", "route_name"])
        } else {
            None
        };
        let decision = match self.state.try_borrow_mut() {
            Ok(mut st) => {
                let d = st.decide(self.context_id, &headers, now, host_route.as_deref());
                if let Decision::WaitForKeys { .. } = d {
                    st.waiters.push(Waiter {
                        context_id: self.context_id,
                        headers,
                        host_route,
                    });
                    self.waiting = true;
                    return Action::Pause;
                }
                d
            }
            // Cannot happen in a single-threaded VM; never forward unverified if it does.
            Err(_) => return deny_internal(),
        };
        finish(&self.state, self.context_id, decision, false)
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
        if self.waiting {
            let props = self.state.try_borrow_mut().ok().and_then(|mut st| {
                let pos = st
                    .deferred_props
                    .iter()
                    .position(|(id, _)| *id == self.context_id)?;
                Some(st.deferred_props.swap_remove(pos).1)
            });
            if let Some(props) = props {
                publish(&props);
            }
        }
        Action::Continue
    }
}

impl Http {
    /// Pause while this request waits for keys or was answered locally.
    fn hold_or_continue(&self) -> Action {
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

    fn is_kong(&self) -> bool {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return false;
        };
        *st.is_kong
            .get_or_insert_with(|| host::property(&["kong", "route_id"]).is_some())
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
            audit.reason.unwrap_or("").to_string(),
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
        let _ = hostcalls::set_property(vec!["kong", "ctx", "shared", key], Some(value.as_bytes()));
    }
}

/// Carry out a final decision for the effective HTTP context. `resumed`: the request was
/// paused and is being finished from the root context.
pub fn finish(
    state: &Rc<RefCell<State>>,
    context_id: u32,
    decision: Decision,
    resumed: bool,
) -> Action {
    let audit = match &decision {
        Decision::Allow { audit, .. } | Decision::Deny { audit, .. } => Some(audit),
        Decision::WaitForKeys { .. } => None,
    };
    if let Some(audit) = audit {
        let is_kong = state.try_borrow().ok().and_then(|st| st.is_kong) == Some(true);
        if is_kong {
            let props = kong_props(audit);
            publish(&props);
            if resumed {
                if let Ok(mut st) = state.try_borrow_mut() {
                    st.deferred_props.push((context_id, props));
                }
            }
        }
    }
    match decision {
        Decision::Allow { ops, audit } => {
            host::apply_header_ops(&ops);
            record(state, &audit);
            if resumed {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny { response, audit } => {
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
        Decision::WaitForKeys { .. } => deny_internal(),
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

fn deny_internal() -> Action {
    let _ = hostcalls::send_http_response(
        503,
        vec![("content-type", "application/json"), ("cache-control", "no-store")],
        Some(br#"{"error":"internal_error","error_description":"the authentication filter could not process the request"}"#),
    );
    Action::Pause
}
