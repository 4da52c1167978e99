//! Proxy-Wasm metrics on the host. Every series comes from `crate::metrics::catalog` and is
//! defined when the configuration loads, never later (why: `catalog`). Per request, ids are
//! found without building a name: decisions by route and labels, the others by a fixed
//! index.

use std::collections::HashMap;

use proxy_wasm::types::MetricType;

use super::host::Host;
use crate::audit::AuditRecord;
use crate::engine::{CacheEvent, Filter};
use crate::metrics::{Kind, Series};

/// A decision counter's labels besides the route (caller, decision, reason), and its id.
type DecisionIds = Vec<(String, &'static str, &'static str, Option<u32>)>;

#[derive(Default)]
pub struct Metrics {
    /// Every name defined in this worker (kept across configurations: ids do not change).
    ids: HashMap<String, Option<u32>>,
    /// Decision counters by configured route name (`None`: no route matched).
    decisions: HashMap<Option<String>, DecisionIds>,
    /// The verified-token event counters, by [`CacheEvent`].
    events: [Option<u32>; 3],
    dropped: Option<u32>,
    warned: bool,
}

impl Metrics {
    /// Define every series of this configuration (`None`: none is valid).
    pub fn define_all(&mut self, host: &impl Host, filter: Option<&Filter>) {
        let (series, cut) = crate::metrics::catalog(filter);
        if cut > 0 {
            log::warn!(
                "azure_ml_kong: {cut} metric series beyond the cap of {} not defined (routes × \
                 callers); their updates count in {}",
                crate::metrics::MAX_SERIES,
                crate::metrics::DROPPED
            );
        }
        self.decisions.clear();
        for Series {
            kind,
            name,
            decision,
        } in series
        {
            let id = match self.ids.get(&name) {
                Some(id) => *id,
                None => {
                    let kind = match kind {
                        Kind::Counter => MetricType::Counter,
                        Kind::Gauge => MetricType::Gauge,
                    };
                    let id = host.define_metric(kind, &name).ok();
                    self.ids.insert(name, id);
                    id
                }
            };
            if let Some(d) = decision {
                self.decisions
                    .entry(d.route)
                    .or_default()
                    .push((d.caller, d.decision, d.reason, id));
            }
        }
        let named =
            |ids: &HashMap<String, Option<u32>>, name: &str| ids.get(name).copied().flatten();
        self.events = [
            named(&self.ids, crate::metrics::VERIFICATIONS),
            named(&self.ids, crate::metrics::SHARED_HITS),
            named(&self.ids, crate::metrics::REJECTED_HITS),
        ];
        self.dropped = named(&self.ids, crate::metrics::DROPPED);
    }

    fn id(&mut self, host: &impl Host, name: &str) -> Option<u32> {
        match self.ids.get(name) {
            Some(id) => *id,
            None => {
                self.drop_update(host, name);
                None
            }
        }
    }

    /// An update to a series that was not defined at load: counted, never defined now.
    fn drop_update(&mut self, host: &impl Host, name: &str) {
        if !self.warned {
            self.warned = true;
            log::warn!(
                "azure_ml_kong: metric {name} was not defined at load; its updates are dropped \
                 and counted in {}",
                crate::metrics::DROPPED
            );
        }
        if let Some(id) = self.dropped {
            let _ = host.increment_metric(id, 1);
        }
    }

    pub fn increment(&mut self, host: &impl Host, name: &str) {
        if let Some(id) = self.id(host, name) {
            let _ = host.increment_metric(id, 1);
        }
    }

    pub fn add(&mut self, host: &impl Host, name: &str, n: u64) {
        if let Some(id) = self.id(host, name) {
            let _ = host.increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn gauge(&mut self, host: &impl Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, name) {
            let _ = host.record_metric(id, value);
        }
    }

    /// Count one decision (`crate::metrics::decision_counter`). A route name the
    /// configuration does not hold (Kong's own route name) counts as no route.
    pub fn decision(&mut self, host: &impl Host, audit: &AuditRecord) {
        let (decision, reason) = crate::metrics::decision_labels(audit);
        let caller = crate::metrics::caller_label(audit);
        let find = |v: &DecisionIds| {
            v.iter()
                .find(|(c, d, r, _)| c == caller && *d == decision && *r == reason)
                .map(|(_, _, _, id)| *id)
        };
        let by_route = self
            .decisions
            .get(&audit.route)
            .or_else(|| self.decisions.get(&None));
        match by_route.and_then(find) {
            Some(Some(id)) => {
                let _ = host.increment_metric(id, 1);
            }
            Some(None) => {}
            None => self.drop_update(host, &crate::metrics::decision_counter(audit)),
        }
    }

    /// Count one event of the verified-token path.
    pub fn event(&mut self, host: &impl Host, event: CacheEvent) {
        let i = match event {
            CacheEvent::Verified => 0,
            CacheEvent::SharedHit => 1,
            CacheEvent::RejectedHit => 2,
        };
        if let Some(Some(id)) = self.events.get(i) {
            let _ = host.increment_metric(*id, 1);
        }
    }
}
