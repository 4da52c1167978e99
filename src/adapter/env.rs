//! The engine's view of the worker's state for one request (`engine::Env`): keys,
//! rate limits and the gateway's own token, and the waiting each host allows.

use super::credentials::{CredentialManager, CredentialRide};
use super::host::Host;
use super::keys::KeyManager;
use super::metrics::Metrics;
use super::shelf::SharedShelf;
use super::slots::SlotManager;
use super::store::HostStore;
use super::waiting::{Cx, WaitMode};
use crate::engine::{CacheEvent, CredentialState, Env, KeyState};
use crate::keycache::{FetchRequest, Refetch, Ride, WaitDecision, WaiterId};
use crate::ratelimit::Verdict;
use crate::verify::{TokenKey, Verified};

/// The log line's ending when the shelf's own shared-data calls fail.
const VERIFIED_PER_WORKER: &str = "verified tokens are shared no more (each worker verifies for itself); key sets and rate limits keep their own shared data";

/// The engine's view of keys and limits for one request.
pub struct RequestEnv<'a, H> {
    keys: &'a mut KeyManager,
    host: &'a H,
    now_ms: u64,
    random: u64,
    waiter: WaiterId,
    wait: WaitMode,
    metrics: &'a mut Metrics,
    creds: &'a mut CredentialManager,
    slots: &'a mut SlotManager,
    shared: &'a mut SharedShelf,
    /// A ride the request must dispatch from its own context: (provider, request).
    pub ride: Option<(usize, FetchRequest)>,
    /// A token request the request must dispatch from its own context (Kong).
    pub credential_ride: Option<CredentialRide>,
}

impl<'a, H: Host> RequestEnv<'a, H> {
    /// The engine's view for one request (`waiter` = its HTTP context id).
    pub fn new(
        keys: &'a mut KeyManager,
        creds: &'a mut CredentialManager,
        slots: &'a mut SlotManager,
        cx: Cx<'a, H>,
        waiter: WaiterId,
        wait: WaitMode,
        shared: &'a mut SharedShelf,
    ) -> Self {
        RequestEnv {
            keys,
            host: cx.host,
            now_ms: cx.now_ms,
            random: cx.random,
            waiter,
            wait,
            metrics: cx.metrics,
            creds,
            slots,
            shared,
            ride: None,
            credential_ride: None,
        }
    }

    fn ride(&mut self, provider: usize, unknown_kid: bool) -> Option<Ride> {
        let (keys, mut cx) = (
            &mut *self.keys,
            Cx {
                host: self.host,
                now_ms: self.now_ms,
                random: self.random,
                metrics: &mut *self.metrics,
            },
        );
        let r = keys.ride(&mut cx, provider, unknown_kid)?;
        if let Ride::Dispatch(req) = &r {
            self.ride = Some((provider, req.clone()));
        }
        Some(r)
    }

    fn ready(&mut self, provider: usize) -> Option<KeyState> {
        self.keys.ready(provider)
    }
}

impl<H: Host> Env for RequestEnv<'_, H> {
    fn keys(&mut self, provider: usize) -> KeyState {
        if let Some(ready) = self.ready(provider) {
            return ready;
        }
        let Some(cache) = self.keys.cache(provider) else {
            return KeyState::Unavailable {
                retry_after_secs: 30,
            };
        };
        match self.wait {
            WaitMode::Park => match cache.wait_for_keys(self.now_ms, self.waiter) {
                WaitDecision::Wait => KeyState::Loading,
                WaitDecision::Unavailable { retry_after_secs } => KeyState::Unavailable {
                    retry_after_secs: u64::from(retry_after_secs),
                },
                // Keys appeared between the two calls: cannot happen single-threaded; retry.
                WaitDecision::Ready => KeyState::Loading,
            },
            WaitMode::Ride { allowed: false } => KeyState::Unavailable {
                retry_after_secs: u64::from(cache.retry_after_secs(self.now_ms)),
            },
            WaitMode::Ride { allowed: true } => match self.ride(provider, false) {
                Some(Ride::Ready) => self.ready(provider).unwrap_or(KeyState::Unavailable {
                    retry_after_secs: 1,
                }),
                Some(Ride::Dispatch(_)) => KeyState::Loading,
                Some(Ride::Unavailable { retry_after_secs }) => KeyState::Unavailable {
                    retry_after_secs: u64::from(retry_after_secs),
                },
                Some(Ride::Refused) | None => KeyState::Unavailable {
                    retry_after_secs: 1,
                },
            },
        }
    }

    fn refetch_for_unknown_kid(&mut self, provider: usize) -> bool {
        match self.wait {
            WaitMode::Park => self
                .keys
                .cache(provider)
                .map(|c| {
                    c.request_refetch_for_unknown_kid(self.now_ms, self.waiter) == Refetch::Wait
                })
                .unwrap_or(false),
            WaitMode::Ride { allowed: false } => false,
            // `Ready`: newer keys came from shared data; the adapter decides again at once.
            WaitMode::Ride { allowed: true } => matches!(
                self.ride(provider, true),
                Some(Ride::Dispatch(_) | Ride::Ready)
            ),
        }
    }

    fn upstream_token(&mut self, credential: usize) -> CredentialState {
        let mut cx = Cx {
            host: self.host,
            now_ms: self.now_ms,
            random: self.random,
            metrics: &mut *self.metrics,
        };
        self.creds.upstream_token(
            &mut cx,
            credential,
            self.waiter,
            self.wait,
            &mut self.credential_ride,
        )
    }

    fn client_address(&mut self) -> Option<String> {
        self.host
            .property_str(&["source", "address"])
            .map(|a| crate::limits::client_ip(&a))
    }

    fn acquire_slot(&mut self, bucket: &str, max_in_flight: u64) -> bool {
        let got = self
            .slots
            .acquire(self.host, self.now_ms, self.waiter, bucket, max_in_flight);
        self.slots.note_lost(self.host, self.metrics, self.now_ms);
        got
    }

    fn shared_verified(&mut self, key: &TokenKey, generation: u64, now: u64) -> Option<Verified> {
        let sh = &mut *self.shared;
        if sh.off || *self.keys.store_off() || !sh.slots.enabled() {
            return None;
        }
        let scope = sh.scope(generation);
        let mut store = HostStore::for_users(self.host, &mut sh.off, VERIFIED_PER_WORKER);
        sh.slots.get(store.as_dyn(), key, scope, now)
    }

    fn share_verified(&mut self, key: &TokenKey, generation: u64, v: &Verified, now: u64) {
        let sh = &mut *self.shared;
        if sh.off || *self.keys.store_off() || !sh.slots.enabled() {
            return;
        }
        let scope = sh.scope(generation);
        let mut store = HostStore::for_users(self.host, &mut sh.off, VERIFIED_PER_WORKER);
        sh.slots.put(store.as_dyn(), key, scope, v, now);
    }

    fn note(&mut self, event: CacheEvent) {
        self.metrics.event(self.host, event);
    }

    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> Verdict {
        self.keys.count(
            self.host,
            self.metrics,
            self.now_ms,
            bucket,
            limit,
            window_secs,
        )
    }
}
