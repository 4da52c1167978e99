//! Proxy-Wasm metrics on the host: defined on first use, ids cached per VM. The names
//! come from `crate::metrics`.

use std::collections::HashMap;

use proxy_wasm::types::MetricType;

use super::host::Host;

/// Bound on distinct metric names per VM (Kong traps when its metrics memory is full).
const MAX_METRICS: usize = 2048;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
}

impl Metrics {
    fn id(&mut self, host: &impl Host, kind: MetricType, name: &str) -> Option<u32> {
        match self.ids.get(name) {
            Some(id) => *id,
            None if self.ids.len() >= MAX_METRICS => None,
            None => {
                let id = host.define_metric(kind, name).ok();
                self.ids.insert(name.to_string(), id);
                id
            }
        }
    }

    pub fn increment(&mut self, host: &impl Host, name: &str) {
        if let Some(id) = self.id(host, MetricType::Counter, name) {
            let _ = host.increment_metric(id, 1);
        }
    }

    pub fn gauge(&mut self, host: &impl Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, MetricType::Gauge, name) {
            let _ = host.record_metric(id, value);
        }
    }
}
