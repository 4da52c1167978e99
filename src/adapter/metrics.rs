//! Proxy-Wasm counters: defined on first use, ids cached per VM.

use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
}

impl Metrics {
    pub fn increment(&mut self, name: &str) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let id = hostcalls::define_metric(MetricType::Counter, name).ok();
                self.ids.insert(name.to_string(), id);
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// Counter name for a JWKS cache event.
pub fn jwks_event(ev: &crate::keycache::Event) -> String {
    format!("azure_ml_kong_{}", ev.name())
}
