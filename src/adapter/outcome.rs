//! Carrying out a final decision, the same whether the request is in its own callback or
//! being finished from the root context: header operations, the local answer, the audit
//! line and metric, and the identity for Kong's log plugins (declared nginx variables, and
//! `kong.ctx.shared` when asked for).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::{Action, Status};

use super::host::Host;
use super::state::{State, KONG_PROPS};
use crate::annotate::HeaderOp;
use crate::audit::AuditRecord;
use crate::config::LogLevel;
use crate::engine::Decision;
use crate::reason::Reason;
use crate::respond;

/// Kong's properties for the Lua plugins, as (name under `kong.ctx.shared`, and of the
/// nginx variable, value).
pub type KongProps = Vec<(&'static str, String)>;

/// When Kong's `kong.ctx.shared` gets the decision.
pub enum Publish<'a> {
    Now,
    /// Kept here for `on_http_response_headers`: Kong's Lua property setters need a
    /// request phase, which a call's callback is not.
    Later(&'a mut Option<KongProps>),
}

impl Publish<'_> {
    fn run(self, host: &impl Host, audit: &AuditRecord) {
        match self {
            Publish::Now => publish(host, &kong_props(audit)),
            Publish::Later(slot) => *slot = Some(kong_props(audit).into()),
        }
    }
}

/// Carry out a final decision for the current HTTP context. `resumed`: the request was
/// paused and is being finished from the root context (Envoy).
pub fn finish(
    host: &impl Host,
    state: &Rc<RefCell<State>>,
    context_id: u32,
    decision: Decision,
    resumed: bool,
    kong: Publish<'_>,
) -> Action {
    let is_kong = state.try_borrow().ok().and_then(|st| st.is_kong) == Some(true);
    // `kong.ctx.shared` only when the configuration asks for it (`State::kong_lua_properties`).
    let publish = is_kong && state.try_borrow().is_ok_and(|st| st.kong_lua_properties());
    match decision {
        Decision::Allow { ops, mut audit } => {
            // Published after the header operations: if one fails, Lua sees the denial.
            let applied = apply_header_ops(host, &ops, is_kong).is_ok();
            if !applied {
                audit.deny(Reason::Internal, Reason::Internal.status());
            }
            if is_kong {
                publish_ngx(host, state, &audit);
            }
            if publish {
                kong.run(host, &audit);
            }
            record(host, state, &audit);
            if !applied {
                return deny_internal(host, state, context_id, &audit.request_id);
            }
            let for_response: Vec<(String, String)> = ops
                .into_iter()
                .filter_map(|op| match op {
                    HeaderOp::SetResponse { name, value } => Some((name, value)),
                    _ => None,
                })
                .collect();
            if !for_response.is_empty() {
                if let Ok(mut st) = state.try_borrow_mut() {
                    st.response_headers.insert(context_id, for_response);
                }
            }
            if resumed {
                let _ = host.resume_request();
            }
            Action::Continue
        }
        Decision::Deny { response, audit } => {
            if is_kong {
                publish_ngx(host, state, &audit);
            }
            if publish {
                kong.run(host, &audit);
            }
            record(host, state, &audit);
            if let Ok(mut st) = state.try_borrow_mut() {
                st.denied.push(context_id);
            }
            if let Err(e) = host.send_response(&response) {
                log::error!("azure_ml_kong: cannot send local response: {e:?}");
            }
            Action::Pause
        }
        // The caller handles waiting; reaching here means a logic error: fail closed.
        Decision::WaitForKeys { .. } | Decision::WaitForCredential { .. } => {
            deny_internal(host, state, context_id, "")
        }
    }
}

/// Fail closed when the filter cannot carry out its decision (503 `internal_error`).
pub fn deny_internal(
    host: &impl Host,
    state: &Rc<RefCell<State>>,
    context_id: u32,
    request_id: &str,
) -> Action {
    let response = match state.try_borrow_mut() {
        Ok(mut st) => {
            // Answered locally like any denial: its body must not move either.
            st.denied.push(context_id);
            respond::deny(Reason::Internal, st.realm(), request_id, None)
        }
        Err(_) => respond::deny(
            Reason::Internal,
            &crate::config::default_realm(),
            request_id,
            None,
        ),
    };
    if let Err(e) = host.send_response(&response) {
        log::error!("azure_ml_kong: cannot send local response: {e:?}");
    }
    Action::Pause
}

/// Kong: publish the properties kept for the response phase.
pub fn publish(host: &impl Host, props: &[(&'static str, String)]) {
    for (key, value) in props {
        let _ = host.set_property(&["kong", "ctx", "shared", key], Some(value.as_bytes()));
    }
}

/// Kong: set the declared `$azure_ml_kong_*` nginx variables. `ngx.*` properties are set
/// in C (ngx_wasm_module `ngx_proxy_wasm_properties_set_ngx`: an undeclared variable is
/// NotFound, a non-changeable one an error), so unlike `kong.*` they run no Lua. Allowed in
/// the request phase and in the request's own call callback alike.
fn publish_ngx(host: &impl Host, state: &Rc<RefCell<State>>, audit: &AuditRecord) {
    let Ok(mut st) = state.try_borrow_mut() else {
        return;
    };
    // None declared (learned once per worker): nothing to build.
    if st.ngx_vars.0.iter().all(|k| *k == Some(false)) {
        return;
    }
    for ((name, value), known) in kong_props(audit).iter().zip(st.ngx_vars.0.iter_mut()) {
        // Declared as `''` (kong/azure_ml_kong.vars.conf) and set once per request: an
        // empty value is already there, and each set is a trip through the host.
        if *known == Some(false) || value.is_empty() {
            continue;
        }
        match host.set_property(&["ngx", name], Some(value.as_bytes())) {
            Ok(()) => *known = Some(true),
            // Declared variables stay declared: a later failure is this request's alone.
            Err(_) if *known == Some(true) => {}
            Err(e) => {
                log::debug!(
                    "azure_ml_kong: nginx variable ${name} not set ({e:?}): not declared in Kong's location / (docs/kong.md); not tried again by this worker"
                );
                *known = Some(false);
            }
        }
    }
}

/// Identity for Kong's Lua plugins (`kong.ctx.shared.azure_ml_kong_*`, strings), e.g.
/// `file-log`'s `custom_fields_by_lua`. Only verified values: never the token.
fn kong_props(audit: &AuditRecord) -> [(&'static str, String); KONG_PROPS] {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    [
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
        ("azure_ml_kong_caller", s(&audit.caller)),
    ]
}

/// The audit line, at the configured level, and the decision metric.
fn record(host: &impl Host, state: &Rc<RefCell<State>>, audit: &AuditRecord) {
    let Ok(mut st) = state.try_borrow_mut() else {
        return;
    };
    let level = match &st.filter {
        Ok(f) => f.audit_level(),
        Err(_) => LogLevel::Error,
    };
    host.audit_line(level, &audit.to_json_line());
    st.metrics.decision(host, audit);
}

/// Carry out header operations following the recipe that is correct on Kong and Envoy:
/// values are set in place; a header is cleared by setting it empty first (Kong still
/// forwards removed headers, but forwards the emptied value) and then, in Envoy, removing
/// it (Envoy drops it; in Kong the removal changes nothing upstream).
///
/// Stops at the first failure: the request must then not be forwarded (the caller's
/// token or a spoofed identity header might still be in it).
fn apply_header_ops(host: &impl Host, ops: &[HeaderOp], is_kong: bool) -> Result<(), Status> {
    for op in ops {
        let r = match op {
            HeaderOp::Set { name, value } => host.set_request_header(name, Some(value)),
            // Kong forwards the emptied value whether or not it is removed after.
            HeaderOp::Clear { name } if is_kong => host.set_request_header(name, Some("")),
            HeaderOp::Clear { name } => host
                .set_request_header(name, Some(""))
                .and_then(|_| host.set_request_header(name, None)),
            // Kong proxies `$upstream_uri` (Kong's router set it, query included), not
            // `:path`: the token must leave that.
            HeaderOp::SetPath { strip, .. } if is_kong => strip_upstream_uri(host, strip),
            HeaderOp::SetPath { path, .. } => host.set_request_header(":path", Some(path)),
            // Kept by `finish` for the response phase.
            HeaderOp::SetResponse { .. } => Ok(()),
        };
        if let Err(e) = r {
            log::error!(
                "azure_ml_kong: header operation on {:?} failed: {e:?}; the request is refused",
                op_target(op)
            );
            return Err(e);
        }
    }
    Ok(())
}

/// What a header operation changes, for logs (never its value: it may be a secret).
fn op_target(op: &HeaderOp) -> &str {
    match op {
        HeaderOp::Set { name, .. }
        | HeaderOp::Clear { name }
        | HeaderOp::SetResponse { name, .. } => name,
        HeaderOp::SetPath { .. } => ":path (query token)",
    }
}

fn strip_upstream_uri(host: &impl Host, params: &[String]) -> Result<(), Status> {
    const UPSTREAM_URI: [&str; 2] = ["ngx", "upstream_uri"];
    // Kong sets `$upstream_uri`; a bare nginx without it forwards the original target.
    let uri = host.property_str(&UPSTREAM_URI).ok_or(Status::NotFound)?;
    let stripped = params
        .iter()
        .fold(uri.clone(), |u, p| crate::token::strip_query_param(&u, p));
    if stripped == uri {
        return Ok(());
    }
    host.set_property(&UPSTREAM_URI, Some(stripped.as_bytes()))
}
