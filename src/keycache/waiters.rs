//! Requests waiting for a [`KeyCache`]'s keys (Envoy: parked with the root context):
//! registering them, coalescing them onto one fetch, waking them when it ends, and
//! answering them when they have waited out the fetch budget.

use super::{KeyAction, KeyCache, KeyCount, Refetch, WaitDecision, Waiter, WaiterId, MAX_WAITERS};

impl<K: KeyCount> KeyCache<K> {
    /// A request needs keys. Registers `waiter` (coalesced onto one fetch) unless
    /// keys are present or the provider is known to be failing.
    pub fn wait_for_keys(&mut self, now_ms: u64, waiter: WaiterId) -> WaitDecision {
        if self.held.is_some() {
            return WaitDecision::Ready;
        }
        if (self.in_flight.is_none() && now_ms < self.next_attempt_ms)
            || self.waiters.len() >= MAX_WAITERS
        {
            return WaitDecision::Unavailable {
                retry_after_secs: self.retry_after_secs(now_ms),
            };
        }
        self.add_waiter(now_ms, waiter);
        WaitDecision::Wait
    }

    /// A token's `kid` is not in the held keys. `Wait` joins (or asks the next tick to
    /// start) one refetch; `Refused` when the last fetch was less than
    /// `jwks_min_refetch_seconds` ago or the provider is backing off.
    pub fn request_refetch_for_unknown_kid(&mut self, now_ms: u64, waiter: WaiterId) -> Refetch {
        if self.just_resumed.contains(&waiter) {
            return Refetch::Refused; // it already waited for a fetch
        }
        if self.held.is_none() {
            return match self.wait_for_keys(now_ms, waiter) {
                WaitDecision::Wait => Refetch::Wait,
                _ => Refetch::Refused,
            };
        }
        let under_way = self.in_flight.is_some() || self.want_since.is_some();
        if !under_way {
            let too_soon = self
                .last_fetch_ms
                .is_some_and(|t| now_ms < t.saturating_add(self.src.min_refetch_ms));
            if too_soon || now_ms < self.next_attempt_ms || self.waiters.len() >= MAX_WAITERS {
                return Refetch::Refused;
            }
        } else if self.waiters.len() >= MAX_WAITERS {
            return Refetch::Refused;
        }
        self.add_waiter(now_ms, waiter);
        Refetch::Wait
    }

    /// The paused request is gone (context destroyed): forget it.
    pub fn cancel_waiter(&mut self, waiter: WaiterId) {
        self.waiters.retain(|w| w.id != waiter);
    }

    fn add_waiter(&mut self, now_ms: u64, id: WaiterId) {
        let deadline_ms = now_ms.saturating_add(self.budget_for(now_ms));
        self.waiters.retain(|w| w.id != id);
        self.waiters.push(Waiter { id, deadline_ms });
        if self.want_since.is_none() {
            self.want_since = Some(now_ms);
        }
    }

    /// Fetch finished (or keys arrived from shared data): wake every waiter.
    pub(super) fn resolve_waiters(&mut self, now: u64, out: &mut Vec<KeyAction>) {
        self.want_since = None;
        self.just_resumed.clear();
        let ra = self.retry_after_secs(now);
        for w in self.waiters.drain(..) {
            out.push(match &self.held {
                Some(_) => {
                    self.just_resumed.push(w.id);
                    KeyAction::Resume(w.id)
                }
                None => KeyAction::Unavailable {
                    waiter: w.id,
                    retry_after_secs: ra,
                },
            });
        }
    }

    /// Waiting longer than the budget: 503 (the refetch, if any, may still land for
    /// later requests).
    pub(super) fn expire_waiters(&mut self, now: u64, out: &mut Vec<KeyAction>) {
        if !self.waiters.iter().any(|w| now >= w.deadline_ms) {
            return;
        }
        let ra = self.retry_after_secs(now);
        self.waiters.retain(|w| {
            if now < w.deadline_ms {
                return true;
            }
            out.push(KeyAction::Unavailable {
                waiter: w.id,
                retry_after_secs: ra,
            });
            false
        });
        if self.waiters.is_empty() && self.held.is_some() {
            self.want_since = None;
        }
    }
}
