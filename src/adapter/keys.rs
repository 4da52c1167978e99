//! Bridges the sans-IO JWKS caches (`crate::keycache`) and rate limits
//! (`crate::ratelimit`) to the host: dispatches fetches, routes call responses back, gives
//! the core the host's shared data, and gives the engine its view of keys and limits
//! (`engine::Env`). See the contract in `keycache`'s docs.

use std::collections::HashMap;
use std::rc::Rc;

use super::credentials::{CredentialManager, CredentialRide};
use super::host::{Host, Outbound};
use super::metrics::Metrics;
use super::store::HostStore;
use crate::engine::{CredentialState, Env, KeyState};
use crate::jwks::KeySet;
use crate::keycache::{
    Event, FetchRequest, HttpResponse, Io, JwksSource, KeyAction, KeyCache, Level, Refetch, Ride,
    Step, Ticket, WaitDecision, WaiterId,
};
use crate::ratelimit::{CountedIn, Limiter, Verdict};
use crate::reason::Reason;

type Cache = KeyCache<Rc<KeySet>>;

/// How often the JWKS gauges are recorded (each is one host call per provider).
const GAUGE_PERIOD_MS: u64 = 5_000;

/// What the root context must do for a paused request.
pub enum Wake {
    Resume(WaiterId),
    Unavailable {
        waiter: WaiterId,
        retry_after_secs: u32,
        /// What it waited for in vain: keys, or the gateway's own token.
        reason: Reason,
    },
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

/// What a key-cache call needs besides its own arguments: the host, the time, fresh
/// randomness and the metrics to count in.
pub struct Cx<'a, H> {
    pub host: &'a H,
    pub now_ms: u64,
    pub random: u64,
    pub metrics: &'a mut Metrics,
}

pub struct KeyManager {
    /// One cache per provider (`None`: the provider needs no JWKS).
    caches: Vec<Option<Cache>>,
    calls: HashMap<u32, (usize, Ticket)>,
    /// Shared data is off: configured so, or switched off after its first host error.
    store_off: bool,
    limiter: Limiter,
    next_gauges_ms: u64,
}

impl KeyManager {
    pub fn empty() -> KeyManager {
        KeyManager {
            caches: Vec::new(),
            calls: HashMap::new(),
            store_off: false,
            limiter: Limiter::default(),
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
            m.store_off = true;
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

    /// The engine's view for one request (`waiter` = its HTTP context id).
    pub fn env<'a, H: Host>(
        &'a mut self,
        cx: Cx<'a, H>,
        waiter: WaiterId,
        wait: WaitMode,
        creds: &'a mut CredentialManager,
    ) -> RequestEnv<'a, H> {
        RequestEnv {
            keys: self,
            host: cx.host,
            now_ms: cx.now_ms,
            random: cx.random,
            waiter,
            wait,
            metrics: cx.metrics,
            creds,
            ride: None,
            credential_ride: None,
        }
    }

    /// The answer to a ride's call (made from the request's own context). `Some`: send
    /// that request next from the same context; `None`: the ride is over.
    pub fn on_ride_response<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        provider: usize,
        step: Step,
        body_size: usize,
    ) -> Option<FetchRequest> {
        let host = cx.host;
        let mut out = Vec::new();
        let (next, name) = self.with_cache(host, cx.now_ms, cx.random, provider, |c, io| {
            let resp = read_call_response(host, c.source().max_body_bytes, body_size);
            let next = c.on_ride_response(io, step, &resp, parse_keys, &mut out);
            (next, c.source().provider.clone())
        })?;
        report_all(host, &name, &out, cx.metrics);
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

    pub fn on_tick<H: Host>(&mut self, cx: &mut Cx<'_, H>) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for i in 0..self.caches.len() {
            let mut out = Vec::new();
            self.with_cache(cx.host, cx.now_ms, cx.random, i, |c, io| {
                c.on_tick(io, parse_keys, &mut out)
            });
            self.perform(cx, i, out, &mut wakes);
        }
        if cx.now_ms >= self.next_gauges_ms {
            self.next_gauges_ms = cx.now_ms.saturating_add(GAUGE_PERIOD_MS);
            self.record_gauges(cx);
        }
        wakes
    }

    pub fn on_http_call_response<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        token: u32,
        body_size: usize,
    ) -> Vec<Wake> {
        let mut wakes = Vec::new();
        let Some((i, ticket)) = self.calls.remove(&token) else {
            return wakes;
        };
        let host = cx.host;
        let mut out = Vec::new();
        self.with_cache(host, cx.now_ms, cx.random, i, |c, io| {
            let resp = read_call_response(host, c.source().max_body_bytes, body_size);
            c.on_response(io, ticket, &resp, parse_keys, &mut out)
        });
        self.perform(cx, i, out, &mut wakes);
        wakes
    }

    fn cache(&mut self, i: usize) -> Option<&mut Cache> {
        self.caches.get_mut(i).and_then(Option::as_mut)
    }

    /// Run `f` on provider `i`'s cache with the shared data it may use.
    fn with_cache<H: Host, T>(
        &mut self,
        host: &H,
        now_ms: u64,
        random: u64,
        i: usize,
        f: impl FnOnce(&mut Cache, &mut Io<'_>) -> T,
    ) -> Option<T> {
        let KeyManager {
            caches, store_off, ..
        } = self;
        let cache = caches.get_mut(i).and_then(Option::as_mut)?;
        let mut store = HostStore::new(host, store_off);
        Some(f(cache, &mut io(&mut store, now_ms, random)))
    }

    /// Keys held and their age, per provider (the JWKS health a dashboard wants).
    fn record_gauges<H: Host>(&self, cx: &mut Cx<'_, H>) {
        for cache in self.caches.iter().flatten() {
            let (keys, age) = crate::metrics::jwks_gauges(&cache.source().provider);
            let count = cache.keys().map(|k| k.len() as u64).unwrap_or(0);
            cx.metrics.gauge(cx.host, &keys, count);
            if let Some(ms) = cache.keys_age_ms(cx.now_ms) {
                cx.metrics.gauge(cx.host, &age, ms / 1000);
            }
        }
    }

    /// Carry out cache actions; dispatch failures feed back into the cache.
    fn perform<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        mut out: Vec<KeyAction>,
        wakes: &mut Vec<Wake>,
    ) {
        while !out.is_empty() {
            let mut next = Vec::new();
            for action in out {
                match action {
                    KeyAction::Dispatch(req) => match cx.host.dispatch(&Outbound::fetch(&req)) {
                        Ok(token) => {
                            self.calls.insert(token, (i, req.ticket));
                        }
                        Err(e) => {
                            log::warn!(
                                "azure_ml_kong: dispatch_http_call to upstream {:?} failed: {e:?} (Envoy: is it a defined cluster? Kong: host:port)",
                                req.upstream
                            );
                            self.with_cache(cx.host, cx.now_ms, cx.random, i, |c, io| {
                                c.on_dispatch_error(io, req.ticket, &mut next)
                            });
                        }
                    },
                    KeyAction::Resume(w) => wakes.push(Wake::Resume(w)),
                    KeyAction::Unavailable {
                        waiter,
                        retry_after_secs,
                    } => wakes.push(Wake::Unavailable {
                        waiter,
                        retry_after_secs,
                        reason: Reason::JwksUnavailable,
                    }),
                    KeyAction::Event(ev) => {
                        let provider = self
                            .caches
                            .get(i)
                            .and_then(Option::as_ref)
                            .map(|c| c.source().provider.as_str());
                        report(cx.host, provider.unwrap_or(""), &ev, cx.metrics)
                    }
                }
            }
            out = next;
        }
    }
}

/// A dispatched call's answer; the body only when within `cap`.
pub fn read_call_response(host: &impl Host, cap: usize, body_size: usize) -> HttpResponse {
    let headers = host.call_response_headers();
    let body = match body_size {
        0 => Some(Vec::new()),
        n if n <= cap => host.call_response_body(n),
        _ => None,
    };
    HttpResponse {
        headers,
        body_size,
        body,
    }
}

/// Log and count the events among `out` (rides and shared-data polls yield no others).
fn report_all(host: &impl Host, provider: &str, out: &[KeyAction], metrics: &mut Metrics) {
    for a in out {
        if let KeyAction::Event(ev) = a {
            report(host, provider, ev, metrics);
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

fn report(host: &impl Host, provider: &str, ev: &Event, metrics: &mut Metrics) {
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
        metrics.increment(host, &name);
    }
}

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
    /// A ride the request must dispatch from its own context: (provider, request).
    pub ride: Option<(usize, FetchRequest)>,
    /// A token request the request must dispatch from its own context (Kong).
    pub credential_ride: Option<CredentialRide>,
}

impl<H: Host> RequestEnv<'_, H> {
    fn ride(&mut self, provider: usize, unknown_kid: bool) -> Option<Ride> {
        let mut out = Vec::new();
        let (r, name) =
            self.keys
                .with_cache(self.host, self.now_ms, self.random, provider, |c, io| {
                    let r = c.ride(io, parse_keys, unknown_kid, &mut out);
                    (r, c.source().provider.clone())
                })?;
        report_all(self.host, &name, &out, self.metrics);
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
            metrics: self.metrics,
        };
        self.creds.upstream_token(
            &mut cx,
            credential,
            self.waiter,
            self.wait,
            &mut self.credential_ride,
        )
    }

    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> Verdict {
        let KeyManager {
            store_off, limiter, ..
        } = &mut *self.keys;
        let mut store = HostStore::new(self.host, store_off);
        let (verdict, counted_in) =
            limiter.count(store.as_dyn(), bucket, self.now_ms, limit, window_secs);
        if counted_in == CountedIn::WorkerContended {
            log::debug!("azure_ml_kong: rate-limit CAS contention on {bucket}");
        }
        verdict
    }
}

fn io<'s, H: Host>(store: &'s mut HostStore<'_, H>, now_ms: u64, random: u64) -> Io<'s> {
    Io {
        now_ms,
        random,
        store: store.as_dyn(),
    }
}
