//! Proxy-Wasm metrics on the host: defined on first use, ids cached per VM. The names
//! come from `crate::metrics`.

use std::collections::HashMap;

use super::abi;
use proxy_wasm::types::MetricType;

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
                let id = abi::define_metric(kind, name).ok();
                self.ids.insert(name.to_string(), id);
                id
            }
        }
    }

    pub fn increment(&mut self, name: &str) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = abi::increment_metric(id, 1);
        }
    }

    pub fn gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = abi::record_metric(id, value);
        }
    }
}
