//! Proxy-Wasm metrics, named so Kong 3.9's `label_patterns` (kong/azure_ml_kong.meta.json)
//! turn them into labelled Prometheus series: `decisions_total_route=R_decision=D_reason=X`
//! becomes `pw_azure_ml_kong_decisions_total{route,decision,reason}`. Kong adds the
//! filter prefix itself; Envoy shows them as `wasmcustom.<name>`. Label order in a name
//! must follow the pattern order. Counters are defined on first use; ids cached per VM.

use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::audit::{AuditRecord, Decision};
use crate::keycache::Event;

/// Bound on distinct metric names per VM (Kong traps when its metrics memory is full).
const MAX_METRICS: usize = 2048;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
}

impl Metrics {
    fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        match self.ids.get(name) {
            Some(id) => *id,
            None if self.ids.len() >= MAX_METRICS => None,
            None => {
                let id = hostcalls::define_metric(kind, name).ok();
                self.ids.insert(name.to_string(), id);
                id
            }
        }
    }

    pub fn increment(&mut self, name: &str) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    pub fn gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// JWKS health gauges for one provider: usable keys, and age of the key set in seconds.
pub fn jwks_gauges(provider: &str) -> (String, String) {
    let p = label(provider);
    (
        format!("jwks_keys_provider={p}"),
        format!("jwks_age_seconds_provider={p}"),
    )
}

/// A label value: lower-case `[a-z0-9-]`, at most 64 bytes (what the label pattern accepts).
pub fn label(value: &str) -> String {
    let v: String = value
        .chars()
        .take(64)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if v.is_empty() {
        "unnamed".into()
    } else {
        v
    }
}

/// The decision counter for an audit record.
pub fn decision(audit: &AuditRecord) -> String {
    let route = audit.route.as_deref().map(label);
    let route = route.as_deref().unwrap_or("unmatched");
    let (decision, reason) = match audit.decision {
        Decision::Allow if audit.provider.is_some() => ("allow", "authenticated"),
        Decision::Allow => ("allow", "anonymous"),
        Decision::Deny => ("deny", audit.reason.unwrap_or("unknown")),
    };
    format!("decisions_total_route={route}_decision={decision}_reason={reason}")
}

/// The JWKS counter for a key-cache event, if it counts as a fetch outcome.
pub fn jwks_event(provider: &str, ev: &Event) -> Option<String> {
    let result = match ev {
        Event::FetchOk { .. } => "ok",
        Event::AdoptedFromShared { .. } => "adopted_shared",
        Event::FetchFailed { code, .. } if code.contains("timeout") => "timeout",
        Event::FetchFailed { code, .. } if code.contains("dispatch") => "dispatch_error",
        Event::FetchFailed { code, .. } if code.contains("http_") => "http_error",
        Event::FetchFailed { .. } => "parse_error",
        _ => return None,
    };
    Some(format!(
        "jwks_fetches_total_provider={}_result={result}",
        label(provider)
    ))
}
