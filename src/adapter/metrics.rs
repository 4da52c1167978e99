//! Proxy-Wasm metrics on the host: defined on first use, ids cached per VM. The names
//! come from `crate::metrics`. The per-request counters (decisions, verified-token events)
//! find their id without building their name: decisions by route and labels, the others
//! by a fixed index.

use std::collections::HashMap;

use proxy_wasm::types::MetricType;

use super::host::Host;
use crate::audit::AuditRecord;
use crate::engine::CacheEvent;

/// Bound on distinct metric names per VM (Kong traps when its metrics memory is full).
const MAX_METRICS: usize = 2048;

/// A decision counter's labels besides the route (caller, decision, reason), and its id.
type DecisionIds = Vec<(Option<String>, &'static str, &'static str, Option<u32>)>;

#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
    /// Decision counters by configured route name (`None`: no route matched).
    decisions: HashMap<Option<String>, DecisionIds>,
    decision_count: usize,
    /// The verified-token event counters, by [`CacheEvent`].
    events: [Option<Option<u32>>; 3],
}

impl Metrics {
    fn full(&self) -> bool {
        self.ids.len() + self.decision_count >= MAX_METRICS
    }

    fn id(&mut self, host: &impl Host, kind: MetricType, name: &str) -> Option<u32> {
        match self.ids.get(name) {
            Some(id) => *id,
            None if self.full() => None,
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

    pub fn add(&mut self, host: &impl Host, name: &str, n: u64) {
        if let Some(id) = self.id(host, MetricType::Counter, name) {
            let _ = host.increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn gauge(&mut self, host: &impl Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, MetricType::Gauge, name) {
            let _ = host.record_metric(id, value);
        }
    }

    /// Count one decision (`crate::metrics::decision_counter`).
    pub fn decision(&mut self, host: &impl Host, audit: &AuditRecord) {
        let (decision, reason) = crate::metrics::decision_labels(audit);
        let caller = audit.caller.as_deref();
        let known = self
            .decisions
            .get(&audit.route)
            .and_then(|v| {
                v.iter()
                    .find(|(c, d, r, _)| c.as_deref() == caller && *d == decision && *r == reason)
            })
            .map(|(_, _, _, id)| *id);
        let id = match known {
            Some(id) => id,
            None if self.full() => None,
            None => {
                let name = crate::metrics::decision_counter_for(
                    audit.route.as_deref(),
                    crate::metrics::caller_label(audit),
                    decision,
                    reason,
                );
                let id = host.define_metric(MetricType::Counter, &name).ok();
                self.decision_count += 1;
                self.decisions
                    .entry(audit.route.clone())
                    .or_default()
                    .push((audit.caller.clone(), decision, reason, id));
                id
            }
        };
        if let Some(id) = id {
            let _ = host.increment_metric(id, 1);
        }
    }

    /// Count one event of the verified-token path.
    pub fn event(&mut self, host: &impl Host, event: CacheEvent) {
        let (i, name) = match event {
            CacheEvent::Verified => (0, crate::metrics::VERIFICATIONS),
            CacheEvent::SharedHit => (1, crate::metrics::SHARED_HITS),
            CacheEvent::RejectedHit => (2, crate::metrics::REJECTED_HITS),
        };
        let Some(slot) = self.events.get_mut(i) else {
            return;
        };
        let id = *slot.get_or_insert_with(|| host.define_metric(MetricType::Counter, name).ok());
        if let Some(id) = id {
            let _ = host.increment_metric(id, 1);
        }
    }
}
