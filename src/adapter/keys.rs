//! Bridges the sans-IO JWKS caches (`crate::keycache`) and rate limits
//! (`crate::ratelimit`) to the host: dispatches fetches, routes call responses back, gives
//! the core the host's shared data, and gives the engine its view of keys and limits
//! (`engine::Env`). See the contract in `keycache`'s docs.

use std::collections::HashMap;
use std::rc::Rc;

use super::host::{Host, Outbound};
use super::metrics::Metrics;
use super::pressure::Streak;
use super::store::HostStore;
use super::waiting::{read_call_response, Cx, Wake};
use crate::engine::KeyState;
use crate::jwks::KeySet;
use crate::keycache::{
    Event, FetchRequest, Io, JwksSource, KeyAction, KeyCache, Level, Ride, Step, Ticket, WaiterId,
};
use crate::ratelimit::{CountedIn, Limiter, Verdict};
use crate::reason::Reason;

type Cache = KeyCache<Rc<KeySet>>;

/// How often the JWKS gauges are recorded (each is one host call per provider).
const GAUGE_PERIOD_MS: u64 = 5_000;

pub struct KeyManager {
    /// One cache per provider (`None`: the provider needs no JWKS).
    caches: Vec<Option<Cache>>,
    calls: HashMap<u32, (usize, Ticket)>,
    /// Shared data is off: configured so, or switched off after its first host error.
    store_off: bool,
    limiter: Limiter,
    lost_windows: Streak,
    next_gauges_ms: u64,
    /// Per provider: (the cache's generation, the node-wide id of that key set).
    key_set_ids: Vec<Option<(u64, u64)>>,
}

impl KeyManager {
    pub fn empty() -> KeyManager {
        KeyManager {
            caches: Vec::new(),
            calls: HashMap::new(),
            store_off: false,
            limiter: Limiter::default(),
            lost_windows: Streak::new("rate-limit windows", crate::metrics::LOST_WINDOWS),
            next_gauges_ms: 0,
            key_set_ids: Vec::new(),
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
        let mut store = HostStore::new(cx.host, &mut self.store_off);
        self.limiter.sweep(store.as_dyn(), cx.now_ms);
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

    /// Kong: a request that needs provider `i`'s keys rides for them (see `keycache`).
    pub fn ride<H: Host>(
        &mut self,
        cx: &mut Cx<'_, H>,
        i: usize,
        unknown_kid: bool,
    ) -> Option<Ride> {
        let mut out = Vec::new();
        let (r, name) = self.with_cache(cx.host, cx.now_ms, cx.random, i, |c, io| {
            let r = c.ride(io, parse_keys, unknown_kid, &mut out);
            (r, c.source().provider.clone())
        })?;
        report_all(cx.host, &name, &out, cx.metrics);
        Some(r)
    }

    /// Provider `i`'s keys, when it has usable ones. Their generation is the same in every
    /// worker holding the same key set (from the document's SHA-256, computed once per key
    /// set), so verified tokens can be shared between workers under it.
    pub fn ready(&mut self, i: usize) -> Option<KeyState> {
        let KeyManager {
            caches,
            key_set_ids,
            ..
        } = self;
        let cache = caches.get(i).and_then(Option::as_ref)?;
        let keys = cache.keys()?.clone();
        let local = cache.generation();
        if key_set_ids.len() <= i {
            key_set_ids.resize(i + 1, None);
        }
        let slot = key_set_ids.get_mut(i)?;
        let generation = match *slot {
            Some((g, id)) if g == local => id,
            _ => {
                let id = key_set_id(cache.body().unwrap_or_default());
                *slot = Some((local, id));
                id
            }
        };
        Some(KeyState::Ready { keys, generation })
    }

    /// Count one request against a rate-limit window (node-wide when shared data works).
    pub fn count<H: Host>(
        &mut self,
        host: &H,
        metrics: &mut Metrics,
        now_ms: u64,
        bucket: &str,
        limit: u64,
        window_secs: u64,
    ) -> Verdict {
        let mut store = HostStore::new(host, &mut self.store_off);
        let (verdict, counted_in) =
            self.limiter
                .count(store.as_dyn(), bucket, now_ms, limit, window_secs);
        if counted_in == CountedIn::WorkerContended {
            log::debug!("azure_ml_kong: rate-limit CAS contention on {bucket}");
        }
        let lost = self.limiter.take_lost();
        self.lost_windows.note(host, metrics, lost, now_ms);
        verdict
    }

    /// Whether the key caches' shared data is off (the verified-token shelf follows it).
    pub fn store_off(&mut self) -> &mut bool {
        &mut self.store_off
    }

    pub fn cache(&mut self, i: usize) -> Option<&mut Cache> {
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
    if let Some(name) = crate::metrics::jwks_cut_counter(provider, ev) {
        if let Event::FetchOk { keys, cut, .. } = ev {
            log::warn!(
                "azure_ml_kong: provider {provider:?}: key set cut: {cut} keys beyond the caps \
                 ({} keys, {} entries) not used, {keys} kept",
                crate::jwks::MAX_KEYS,
                crate::jwks::MAX_ENTRIES
            );
        }
        metrics.increment(host, &name);
    }
}

fn io<'s, H: Host>(store: &'s mut HostStore<'_, H>, now_ms: u64, random: u64) -> Io<'s> {
    Io {
        now_ms,
        random,
        store: store.as_dyn(),
    }
}

/// A key set's node-wide id: the first eight bytes of its document's SHA-256 (never 0,
/// the generation of "no key set").
fn key_set_id(body: &[u8]) -> u64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(body);
    let mut first = [0u8; 8];
    first.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(first).max(1)
}
