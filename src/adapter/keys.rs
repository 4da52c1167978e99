//! Bridges the sans-IO JWKS caches (`crate::keycache`) to the host: dispatches fetches,
//! routes call responses back, reads and writes shared data, and gives the engine its
//! view of keys and rate limits (`engine::Env`). See the contract in `keycache`'s docs.

use std::collections::HashMap;
use std::rc::Rc;

use super::abi;
use proxy_wasm::types::Status;

use super::host;
use super::metrics::Metrics;
use crate::engine::{Env, KeyState};
use crate::jwks::KeySet;
use crate::keycache::{
    Event, FetchRequest, HttpResponse, Io, JwksSource, KeyAction, KeyCache, Level, Refetch, Ride,
    Step, Ticket, WaitDecision, WaiterId,
};
use crate::ratelimit::{self, Verdict, Window};
use crate::store::{NoSharedStore, SharedStore, StoreError, Versioned};

type Cache = KeyCache<Rc<KeySet>>;

/// How often the JWKS gauges are recorded (each is one host call per provider).
const GAUGE_PERIOD_MS: u64 = 5_000;

/// What the root context must do for a paused request.
pub enum Wake {
    Resume(WaiterId),
    Unavailable {
        waiter: WaiterId,
        retry_after_secs: u32,
    },
}

pub struct KeyManager {
    /// One cache per provider (`None`: the provider needs no JWKS).
    caches: Vec<Option<Cache>>,
    calls: HashMap<u32, (usize, Ticket)>,
    store: HostStore,
    /// Per-worker rate-limit windows, used only when shared data is unavailable.
    local_windows: HashMap<String, Window>,
    next_gauges_ms: u64,
}

impl KeyManager {
    pub fn empty() -> KeyManager {
        KeyManager {
            caches: Vec::new(),
            calls: HashMap::new(),
            store: HostStore { disabled: false },
            local_windows: HashMap::new(),
            next_gauges_ms: 0,
        }
    }

    pub fn new(sources: &[Option<JwksSource>], owner_id: u64, shared_data: bool) -> KeyManager {
        let mut m = KeyManager::empty();
        if !shared_data {
            // Kong traps on shared data without an shm_kv zone: never touch it then.
            log::warn!(
                "azure_ml_kong: cache.shared_data is false: JWKS and rate limits are per worker"
            );
            m.store.disabled = true;
        }
        m.caches = sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_ref()
                    .map(|s| Cache::new(s.clone(), owner_id.wrapping_add(i as u64)))
            })
            .collect();
        m
    }

    fn cache(&mut self, i: usize) -> Option<&mut Cache> {
        self.caches.get_mut(i).and_then(Option::as_mut)
    }

    /// The engine's view for one request (`waiter` = its HTTP context id).
    pub fn env<'a>(
        &'a mut self,
        now_ms: u64,
        random: u64,
        waiter: WaiterId,
        wait: WaitMode,
        metrics: &'a mut Metrics,
    ) -> RequestEnv<'a> {
        RequestEnv {
            keys: self,
            now_ms,
            random,
            waiter,
            wait,
            metrics,
            ride: None,
        }
    }

    /// The answer to a ride's call (made from the request's own context). `Some`: send
    /// that request next from the same context; `None`: the ride is over.
    pub fn on_ride_response(
        &mut self,
        provider: usize,
        step: Step,
        body_size: usize,
        now_ms: u64,
        random: u64,
        metrics: &mut Metrics,
    ) -> Option<FetchRequest> {
        let KeyManager { caches, store, .. } = self;
        let cache = caches.get_mut(provider).and_then(Option::as_mut)?;
        let resp = read_call_response(cache.source().max_body_bytes, body_size);
        let mut out = Vec::new();
        let mut io = store.io(now_ms, random);
        let next = cache.on_ride_response(&mut io.as_io(), step, &resp, parse_keys, &mut out);
        let name = cache.source().provider.clone();
        report_all(&name, &out, metrics);
        next
    }

    /// A ride is over (answered, failed to dispatch, or its request went away).
    pub fn ride_ended(&mut self, provider: usize) {
        if let Some(c) = self.cache(provider) {
            c.ride_ended();
        }
    }

    pub fn cancel_waiter(&mut self, waiter: WaiterId) {
        for c in self.caches.iter_mut().flatten() {
            c.cancel_waiter(waiter);
        }
    }

    pub fn on_tick(&mut self, now_ms: u64, random: u64, metrics: &mut Metrics) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for i in 0..self.caches.len() {
            let mut out = Vec::new();
            if let Some(cache) = self.caches.get_mut(i).and_then(Option::as_mut) {
                let mut io = self.store.io(now_ms, random);
                cache.on_tick(&mut io.as_io(), parse_keys, &mut out);
            }
            self.perform(i, out, now_ms, random, metrics, &mut wakes);
        }
        if now_ms >= self.next_gauges_ms {
            self.next_gauges_ms = now_ms.saturating_add(GAUGE_PERIOD_MS);
            self.record_gauges(now_ms, metrics);
        }
        wakes
    }

    /// Keys held and their age, per provider (the JWKS health a dashboard wants).
    fn record_gauges(&self, now_ms: u64, metrics: &mut Metrics) {
        for cache in self.caches.iter().flatten() {
            let (keys, age) = crate::metrics::jwks_gauges(&cache.source().provider);
            let count = cache.keys().map(|k| k.len() as u64).unwrap_or(0);
            metrics.gauge(&keys, count);
            if let Some(ms) = cache.keys_age_ms(now_ms) {
                metrics.gauge(&age, ms / 1000);
            }
        }
    }

    pub fn on_http_call_response(
        &mut self,
        token: u32,
        body_size: usize,
        now_ms: u64,
        random: u64,
        metrics: &mut Metrics,
    ) -> Vec<Wake> {
        let mut wakes = Vec::new();
        let Some((i, ticket)) = self.calls.remove(&token) else {
            return wakes;
        };
        let mut out = Vec::new();
        if let Some(cache) = self.caches.get_mut(i).and_then(Option::as_mut) {
            let resp = read_call_response(cache.source().max_body_bytes, body_size);
            let mut io = self.store.io(now_ms, random);
            cache.on_response(&mut io.as_io(), ticket, &resp, parse_keys, &mut out);
        }
        self.perform(i, out, now_ms, random, metrics, &mut wakes);
        wakes
    }

    /// Carry out cache actions; dispatch failures feed back into the cache.
    fn perform(
        &mut self,
        i: usize,
        mut out: Vec<KeyAction>,
        now_ms: u64,
        random: u64,
        metrics: &mut Metrics,
        wakes: &mut Vec<Wake>,
    ) {
        while !out.is_empty() {
            let mut next = Vec::new();
            for action in out {
                match action {
                    KeyAction::Dispatch(req) => match host::dispatch(&req) {
                        Ok(token) => {
                            self.calls.insert(token, (i, req.ticket));
                        }
                        Err(e) => {
                            log::warn!(
                                    "azure_ml_kong: dispatch_http_call to upstream {:?} failed: {e:?} (Envoy: is it a defined cluster? Kong: host:port)",
                                    req.upstream
                                );
                            if let Some(cache) = self.caches.get_mut(i).and_then(Option::as_mut) {
                                let mut io = self.store.io(now_ms, random);
                                cache.on_dispatch_error(&mut io.as_io(), req.ticket, &mut next);
                            }
                        }
                    },
                    KeyAction::Resume(w) => wakes.push(Wake::Resume(w)),
                    KeyAction::Unavailable {
                        waiter,
                        retry_after_secs,
                    } => wakes.push(Wake::Unavailable {
                        waiter,
                        retry_after_secs,
                    }),
                    KeyAction::Event(ev) => {
                        let provider = self
                            .caches
                            .get(i)
                            .and_then(Option::as_ref)
                            .map(|c| c.source().provider.as_str());
                        report(provider.unwrap_or(""), &ev, metrics)
                    }
                }
            }
            out = next;
        }
    }
}

/// A dispatched call's answer; the body only when within `cap`.
fn read_call_response(cap: usize, body_size: usize) -> HttpResponse {
    HttpResponse {
        headers: host::call_response_headers(),
        body_size,
        body: if body_size <= cap {
            host::call_response_body(body_size, cap)
        } else {
            None
        },
    }
}

/// Log and count the events among `out` (rides and shared-data polls yield no others).
fn report_all(provider: &str, out: &[KeyAction], metrics: &mut Metrics) {
    for a in out {
        if let KeyAction::Event(ev) = a {
            report(provider, ev, metrics);
        }
    }
}

fn parse_keys(body: &[u8]) -> Result<Rc<KeySet>, crate::jwks::JwksError> {
    let ks = KeySet::parse(body)?;
    for s in ks.skipped() {
        log::info!("azure_ml_kong: JWKS key skipped: {s}");
    }
    Ok(Rc::new(ks))
}

fn report(provider: &str, ev: &Event, metrics: &mut Metrics) {
    let msg = format!(
        "azure_ml_kong: provider {provider:?}: {}: {ev:?}",
        ev.name()
    );
    match ev.level() {
        Level::Warn => log::warn!("{msg}"),
        Level::Info => log::info!("{msg}"),
        Level::Debug => log::debug!("{msg}"),
    }
    if let Some(name) = crate::metrics::jwks_counter(provider, ev) {
        metrics.increment(&name);
    }
}

/// How a request that needs keys waits on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Envoy: parked with the root context, which finishes it when keys arrive.
    Park,
    /// Kong: the request fetches for itself (a ride; see `keycache`'s docs), or — when
    /// `allowed` is false, after its ride — takes what the cache holds.
    Ride { allowed: bool },
}

/// The engine's view of keys and limits for one request.
pub struct RequestEnv<'a> {
    keys: &'a mut KeyManager,
    now_ms: u64,
    random: u64,
    waiter: WaiterId,
    wait: WaitMode,
    metrics: &'a mut Metrics,
    /// A ride the request must dispatch from its own context: (provider, request).
    pub ride: Option<(usize, FetchRequest)>,
}

impl RequestEnv<'_> {
    fn ride(&mut self, provider: usize, unknown_kid: bool) -> Option<Ride> {
        let KeyManager { caches, store, .. } = &mut *self.keys;
        let cache = caches.get_mut(provider).and_then(Option::as_mut)?;
        let mut out = Vec::new();
        let mut io = store.io(self.now_ms, self.random);
        let r = cache.ride(&mut io.as_io(), parse_keys, unknown_kid, &mut out);
        let name = cache.source().provider.clone();
        report_all(&name, &out, self.metrics);
        if let Ride::Dispatch(req) = &r {
            self.ride = Some((provider, req.clone()));
        }
        Some(r)
    }

    fn ready(&mut self, provider: usize) -> Option<KeyState> {
        let cache = self.keys.cache(provider)?;
        let generation = cache.generation();
        cache.keys().map(|k| KeyState::Ready {
            keys: k.clone(),
            generation,
        })
    }
}

impl Env for RequestEnv<'_> {
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

    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> Verdict {
        let now = self.now_ms / 1000;
        if !self.keys.store.disabled {
            for _ in 0..crate::store::CAS_RETRIES {
                let (prev, cas) = match self.keys.store.get(bucket) {
                    Ok(Some((v, cas))) => (Window::decode(&v), cas),
                    Ok(None) => (None, None),
                    Err(_) => break,
                };
                let (verdict, window) = ratelimit::check(prev, now, limit, window_secs);
                if !verdict.allowed {
                    return verdict;
                }
                match self.keys.store.set(bucket, &window.encode(), cas) {
                    Ok(()) => return verdict,
                    Err(StoreError::CasMismatch) => continue,
                    Err(StoreError::Unavailable) => break,
                }
            }
            if !self.keys.store.disabled {
                // Contention beyond retries: count locally rather than fail open or closed.
                log::debug!("azure_ml_kong: rate-limit CAS contention on {bucket}");
            }
        }
        let prev = self.keys.local_windows.get(bucket).cloned();
        let (verdict, window) = ratelimit::check(prev, now, limit, window_secs);
        if verdict.allowed {
            self.keys.local_windows.insert(bucket.to_string(), window);
        }
        verdict
    }
}

/// Proxy-Wasm shared data through the raw host calls (the SDK helpers panic on errors).
/// After the first host error it switches itself off: per-worker caching from then on.
struct HostStore {
    disabled: bool,
}

struct HostIo<'a> {
    store: &'a mut HostStore,
    now_ms: u64,
    random: u64,
    none: NoSharedStore,
}

impl HostStore {
    fn io(&mut self, now_ms: u64, random: u64) -> HostIo<'_> {
        HostIo {
            store: self,
            now_ms,
            random,
            none: NoSharedStore,
        }
    }
}

impl HostIo<'_> {
    fn as_io(&mut self) -> Io<'_> {
        let store: &mut dyn SharedStore = if self.store.disabled {
            &mut self.none
        } else {
            self.store
        };
        Io {
            now_ms: self.now_ms,
            random: self.random,
            store,
        }
    }
}

impl HostStore {
    fn fail(&mut self, what: &str, e: Status) -> StoreError {
        if !self.disabled {
            self.disabled = true;
            log::warn!(
                "azure_ml_kong: shared data unavailable ({what}: {e:?}); caching JWKS and rate limits per worker"
            );
        }
        StoreError::Unavailable
    }
}

impl SharedStore for HostStore {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match abi::get_shared_data(key) {
            Ok((Some(v), cas)) => Ok(Some((v, cas))),
            Ok((None, _)) => Ok(None),
            Err(Status::NotFound) => Ok(None),
            Err(e) => Err(self.fail("get", e)),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(self.fail("set", e)),
        }
    }
}
