//! Concurrency-limit slots for this worker's requests (`crate::concurrency`): which
//! request holds which slot, released when the request ends however it ends (`on_done`),
//! and the heartbeat that lets other workers reclaim this worker's slots if it dies.

use std::collections::HashMap;

use super::host::Host;
use super::metrics::Metrics;
use super::pressure::Streak;
use super::store::HostStore;
use crate::concurrency::{Acquired, Slots};

pub struct SlotManager {
    slots: Slots,
    /// HTTP context id → (bucket, ticket).
    by_context: HashMap<u32, (String, u64)>,
    store_off: bool,
    /// Some route has a `concurrency_limit` (else no heartbeat is written).
    active: bool,
    lost: Streak,
}

impl SlotManager {
    pub fn new(worker: u64) -> SlotManager {
        SlotManager {
            slots: Slots::new(worker),
            by_context: HashMap::new(),
            store_off: false,
            active: false,
            lost: Streak::new("concurrency slots", crate::metrics::LOST_SLOTS),
        }
    }

    /// A new configuration: whether limits are in use and may use shared data. Slots held
    /// by requests in flight stay held until those requests end.
    pub fn configure(&mut self, active: bool, shared_data: bool) {
        self.active = active;
        self.store_off = !shared_data;
    }

    /// Take a slot of `bucket` for the request of `context_id`.
    pub fn acquire<H: Host>(
        &mut self,
        host: &H,
        now_ms: u64,
        context_id: u32,
        bucket: &str,
        max_in_flight: u64,
    ) -> bool {
        // Decided again after a wait: the slot it holds is still its own.
        if let Some((b, _)) = self.by_context.get(&context_id) {
            if b == bucket {
                return true;
            }
        }
        self.release(host, context_id);
        let mut store = HostStore::new(host, &mut self.store_off);
        let (got, ticket) = self
            .slots
            .acquire(store.as_dyn(), bucket, max_in_flight, now_ms);
        match (got, ticket) {
            (Acquired::Full, _) | (_, None) => false,
            (_, Some(t)) => {
                self.by_context.insert(context_id, (bucket.to_string(), t));
                true
            }
        }
    }

    /// The request of `context_id` ended: give its slot back.
    pub fn release<H: Host>(&mut self, host: &H, context_id: u32) {
        if let Some((bucket, ticket)) = self.by_context.remove(&context_id) {
            let mut store = HostStore::new(host, &mut self.store_off);
            self.slots.release(store.as_dyn(), &bucket, ticket);
        }
    }

    /// Count and report slot lists found evicted since the last call.
    pub fn note_lost<H: Host>(&mut self, host: &H, metrics: &mut Metrics, now_ms: u64) {
        let lost = self.slots.take_lost();
        self.lost.note(host, metrics, lost, now_ms);
    }

    pub fn on_tick<H: Host>(&mut self, host: &H, metrics: &mut Metrics, now_ms: u64) {
        if self.active {
            let mut store = HostStore::new(host, &mut self.store_off);
            self.slots.heartbeat(store.as_dyn(), now_ms);
        }
        self.note_lost(host, metrics, now_ms);
    }
}
