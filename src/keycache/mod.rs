//! The sans-IO JWKS lifecycle: one [`KeyCache`] per provider holds the last known
//! good key set and decides when to fetch, whom to wake, and what to share with the
//! other workers. Time (`now_ms`), randomness and HTTP responses come in as values;
//! what to do comes out as [`Action`]s. No Proxy-Wasm calls here.
//!
//! # Adapter contract
//!
//! Setup (`on_configure`): `JwksSource::new(&cfg.providers[i], "providers[i]")?` then
//! `KeyCache::new(source, owner_id)` per provider, where `owner_id` is a random `u64`
//! drawn once per root context (it names the lease holder). Never fetch here (Kong
//! traps on dispatch from `on_configure`); the first tick starts the fetch.
//!
//! Every call that can do I/O takes an [`Io`]: `now_ms` (`get_current_time()` in ms),
//! a fresh random `u64`, and a [`SharedStore`] (the host's shared data, or
//! [`NoSharedStore`] when shared data is not configured: per-worker fetching). It
//! appends [`Action`]s to `out`; perform them in order:
//!
//! * [`Action::Dispatch`] → `dispatch_http_call(req.upstream, req.header_refs(), None,
//!   vec![], Duration::from_millis(req.timeout_ms))`. On `Ok(token)` remember
//!   `token → (provider index, req.ticket)`; on `Err` call
//!   [`KeyCache::on_dispatch_error`] with the ticket (and perform its actions).
//! * [`Action::Resume`]`(id)` → keys are present: that paused request re-runs
//!   verification with [`KeyCache::keys`] right away (before other cache calls) and
//!   is then answered or resumed. If its `kid` is still unknown,
//!   `request_refetch_for_unknown_kid` with the same id answers `Refused` → 401
//!   `kid_unknown` (a request never waits twice).
//! * [`Action::Unavailable`] → answer that paused request 503 `jwks_unavailable` with
//!   `Retry-After: retry_after_secs` (no keys and the fetch failed, or the request
//!   waited out its budget).
//! * [`Action::Event`] → log at [`Event::level`] and count metrics.
//!
//! Root context (tick of e.g. 200 ms, set once):
//! * `on_tick`: for every cache, [`KeyCache::on_tick`]. This starts the first fetch,
//!   background refreshes, retries after backoff, takes/observes the node-wide lease,
//!   adopts keys other workers fetched, times out lost calls (Kong 3.8 never calls
//!   back on failure) and expires waiting requests.
//! * `on_http_call_response(token, _, body_size, _)`: look up `(provider, ticket)`,
//!   build [`HttpResponse`] from `get_http_call_response_headers()`, `body_size`, and
//!   the body (read it only if `body_size <= source().max_body_bytes`), then
//!   [`KeyCache::on_response`]. Kong's failure shape (zero sizes, a `:dispatch_status`
//!   pseudo-header) and Envoy's (no `:status`) are classified here, so pass them as is.
//!
//! Request (`on_http_request_headers`), after picking the provider:
//! * `keys()` is `Some` → verify. The `kid` is unknown → call
//!   [`KeyCache::request_refetch_for_unknown_kid`]: `Wait` → pause (`Action::Pause`)
//!   and wait for `Resume`; `Refused` → 401 `kid_unknown`.
//! * `keys()` is `None` → [`KeyCache::wait_for_keys`]: `Wait` → pause; `Unavailable`
//!   → 503 now; `Ready` → verify now.
//! * A paused request whose context goes away: [`KeyCache::cancel_waiter`].
//!
//! Request-side calls never dispatch: the next tick does (≤ one tick of latency),
//! so dispatched calls always answer in the root context. That is the Envoy way, where
//! the root context can finish a paused request (`set_effective_context`).
//!
//! **Rides (Kong).** Kong's engine cannot finish a paused request from the root context
//! (`set_effective_context` is a no-op there): a paused request ends only in its own
//! callbacks, and a call it dispatched itself calls back into it. So on Kong a request
//! that needs keys *rides*: [`KeyCache::ride`] answers `Dispatch(req)` and the request
//! sends that call from its own context, pauses, and hands the answer to
//! [`KeyCache::on_ride_response`], which installs and shares the keys like any fetch
//! (or, for discovery, gives the key-set request to send next); then the request is
//! decided again with whatever keys the cache holds, and never rides twice. Rides are
//! bounded: at most [`MAX_RIDES`] at once per cache (beyond: 503 `Retry-After: 1`), none
//! while the provider backs off (a failed ride backs off like a failed fetch), and an
//! unknown-`kid` ride only when a refetch is allowed (`jwks_min_refetch_seconds`) or one
//! is already riding. [`KeyCache::ride_ended`] frees the slot (answer or client gone). A waiting request is
//! answered within the fetch budget (`jwks_timeout_ms`, doubled while a discovery
//! document is still needed, + 1 s margin) — by `Resume` or `Unavailable`.
//!
//! Key sets: the parse closure turns a JWKS body into `K` (the adapter passes
//! `crate::jwks::KeySet` parsing); `K: KeyCount` so that empty sets count as
//! failures. A new `K` replaces the old one entirely (removed keys stop verifying)
//! and bumps [`KeyCache::generation`] when the body changed; key caches derived from
//! the keys must be keyed by it.
//!
//! Discovery: the cycle fetches the discovery document, then its `jwks_uri`. If that
//! URI is on another host, `:authority`/`:scheme`/`:path` follow the discovered URI;
//! a configured `upstream` (Envoy cluster, Kong host) is kept as is, a defaulted one
//! becomes the discovered URI's `host:port`. The discovered URI is reused until the
//! next cycle after a refresh period or after a failed JWKS fetch. An `issuer` in the
//! document that none of the provider's issuers equals is an [`Event`], not an error.
//!
//! Sharing (keys `amlk:jwks:<configured uri>`, `amlk:lease:<configured uri>`): when a
//! fetch is needed the cache reads the lease; if another owner holds it, it waits
//! (if the lease carries a failure newer than what it saw, its waiters get 503 and it
//! backs off until the lease ends). Otherwise it reads the record and adopts it if
//! newer; if still needed, it takes the lease by CAS (lease length = fetch budget) and
//! dispatches. On success it writes the record (unless a newer one is there) and
//! releases the lease; on failure it keeps the lease until its backoff ends and stores
//! the failure in it. Caches with fresh keys poll the record every
//! [`SHARED_POLL_MS`]. All writes are get → set(cas) → retry ([`shared::cas_update`]).

pub mod response;
pub mod shared;
pub mod source;

#[cfg(test)]
mod tests;

pub use response::{FailReason, HttpResponse};
pub use shared::{Lease, NoSharedStore, SharedFailure, SharedRecord, SharedStore, StoreError};
pub use source::{FetchRequest, HttpUri, JwksSource, Scheme, SourceKind, Step, Ticket};

use shared::CasOutcome;

/// A paused request, named by the adapter (e.g. its http context id).
pub type WaiterId = u32;

/// Extra time, beyond the call timeouts, that a fetch (and a waiting request) gets.
pub const MARGIN_MS: u64 = 1_000;
/// How often a cache with fresh keys looks for keys fetched by other workers.
pub const SHARED_POLL_MS: u64 = 5_000;
/// Upper bound on paused requests per cache; beyond it requests get 503 at once.
pub const MAX_WAITERS: usize = 10_000;
/// Upper bound on rides (Kong: requests fetching keys for themselves) at once per cache.
pub const MAX_RIDES: usize = 8;

/// The parsed key set must say how many usable keys it holds (0 = failed fetch).
pub trait KeyCount {
    fn key_count(&self) -> usize;
}

impl KeyCount for crate::jwks::KeySet {
    fn key_count(&self) -> usize {
        self.len()
    }
}

impl<T: KeyCount + ?Sized> KeyCount for std::rc::Rc<T> {
    fn key_count(&self) -> usize {
        (**self).key_count()
    }
}

/// What the caller passes to every call that may do I/O.
pub struct Io<'a> {
    pub now_ms: u64,
    /// Fresh randomness for jitter (not security-relevant).
    pub random: u64,
    pub store: &'a mut dyn SharedStore,
}

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dispatch(FetchRequest),
    Resume(WaiterId),
    Unavailable {
        waiter: WaiterId,
        retry_after_secs: u32,
    },
    Event(Event),
}

/// Log level the adapter should use for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// Things worth logging or counting. Failures are reported once per failed fetch
/// (never per request); `first_of_streak` marks the one to log loudly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FetchOk {
        uri: String,
        keys: usize,
        bytes: usize,
        /// The body differed from the previous key set (generation bumped).
        changed: bool,
        generation: u64,
        ttl_ms: u64,
    },
    DiscoveryOk {
        jwks_uri: String,
    },
    FetchFailed {
        step: Step,
        reason: FailReason,
        /// Stable code: `jwks_http_500`, `jwks_timeout`, `jwks_garbage`, ...
        code: String,
        detail: String,
        first_of_streak: bool,
        streak: u32,
        retry_in_ms: u64,
        /// Last known good keys are still in use.
        have_keys: bool,
    },
    Recovered {
        failures: u32,
        outage_ms: u64,
    },
    AdoptedFromShared {
        keys: usize,
        bytes: usize,
        fetched_at_ms: u64,
        generation: u64,
    },
    /// Another worker's fetch failed (seen through the lease); we back off with it.
    SharedFailureSeen {
        code: String,
        retry_in_ms: u64,
    },
    DiscoveryIssuerMismatch {
        discovered_issuer: String,
    },
}

impl Event {
    pub fn level(&self) -> Level {
        match self {
            Event::FetchFailed {
                first_of_streak: true,
                ..
            }
            | Event::Recovered { .. }
            | Event::DiscoveryIssuerMismatch { .. } => Level::Warn,
            Event::FetchOk { changed: true, .. } | Event::DiscoveryOk { .. } => Level::Info,
            _ => Level::Debug,
        }
    }

    /// Short metric-style name of the event.
    pub fn name(&self) -> &'static str {
        match self {
            Event::FetchOk { .. } => "jwks_fetch_ok",
            Event::DiscoveryOk { .. } => "jwks_discovery_ok",
            Event::FetchFailed { .. } => "jwks_fetch_failed",
            Event::Recovered { .. } => "jwks_recovered",
            Event::AdoptedFromShared { .. } => "jwks_adopted_shared",
            Event::SharedFailureSeen { .. } => "jwks_shared_failure",
            Event::DiscoveryIssuerMismatch { .. } => "jwks_discovery_issuer_mismatch",
        }
    }
}

/// Answer to [`KeyCache::wait_for_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitDecision {
    /// Keys are present: verify now.
    Ready,
    /// Pause the request; it will get `Resume` or `Unavailable`.
    Wait,
    /// Answer 503 now.
    Unavailable { retry_after_secs: u32 },
}

/// Answer to [`KeyCache::request_refetch_for_unknown_kid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A refetch is (or will be, at the next tick) under way: pause the request.
    Wait,
    /// Too soon after the last fetch (or backing off): 401 `kid_unknown`.
    Refused,
}

/// Answer to [`KeyCache::ride`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ride {
    /// Keys are there now (adopted from shared data): decide again at once.
    Ready,
    /// Send this call from the request's own context and pause.
    Dispatch(FetchRequest),
    /// Answer 503 with this `Retry-After` now.
    Unavailable { retry_after_secs: u32 },
    /// Unknown `kid`, no refetch allowed now: 401 `kid_unknown`.
    Refused,
}

/// Freshness of the held keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysState {
    Cold,
    Fresh,
    /// Past their TTL, still used until a fetch succeeds.
    Stale,
}

struct Held<K> {
    keys: K,
    body: Vec<u8>,
    fetched_at_ms: u64,
    expires_at_ms: u64,
    version: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    ticket: Ticket,
    step: Step,
    deadline_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: WaiterId,
    deadline_ms: u64,
}

/// Per-provider key lifecycle (see the module docs for how to drive it).
pub struct KeyCache<K> {
    src: JwksSource,
    owner_id: u64,
    record_key: String,
    lease_key: String,
    held: Option<Held<K>>,
    generation: u64,
    discovered: Option<(HttpUri, u64)>,
    next_seq: u64,
    in_flight: Option<InFlight>,
    /// A fetch is wanted (cold waiters / unknown kid) since this time.
    want_since: Option<u64>,
    /// Start of my last fetch, or `fetched_at` of the last adopted record.
    last_fetch_ms: Option<u64>,
    streak: u32,
    streak_started_ms: u64,
    /// No fetch before this (my backoff, or the node's via the lease).
    next_attempt_ms: u64,
    seen_failure_at_ms: u64,
    next_shared_poll_ms: u64,
    rejected_record: Option<(u64, u64)>,
    waiters: Vec<Waiter>,
    /// Waiters resumed by the last resolution: they must not wait again.
    just_resumed: Vec<WaiterId>,
    /// Rides under way (Kong).
    rides: usize,
}

impl<K: KeyCount> KeyCache<K> {
    pub fn new(src: JwksSource, owner_id: u64) -> Self {
        KeyCache {
            record_key: src.shared_record_key(),
            lease_key: src.shared_lease_key(),
            src,
            owner_id,
            held: None,
            generation: 0,
            discovered: None,
            next_seq: 1,
            in_flight: None,
            want_since: None,
            last_fetch_ms: None,
            streak: 0,
            streak_started_ms: 0,
            next_attempt_ms: 0,
            seen_failure_at_ms: 0,
            next_shared_poll_ms: 0,
            rejected_record: None,
            waiters: Vec::new(),
            just_resumed: Vec::new(),
            rides: 0,
        }
    }

    pub fn source(&self) -> &JwksSource {
        &self.src
    }

    // ----- request side (no I/O) -----

    /// The last known good keys (fresh or stale), if any.
    pub fn keys(&self) -> Option<&K> {
        self.held.as_ref().map(|h| &h.keys)
    }

    /// Increments whenever the key set changes (0 = never had keys).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Age of the held keys (since they were fetched, by whichever worker).
    pub fn keys_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.held
            .as_ref()
            .map(|h| now_ms.saturating_sub(h.fetched_at_ms))
    }

    pub fn keys_state(&self, now_ms: u64) -> KeysState {
        match &self.held {
            None => KeysState::Cold,
            Some(h) if now_ms < h.expires_at_ms => KeysState::Fresh,
            Some(_) => KeysState::Stale,
        }
    }

    pub fn fetch_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Consecutive failed fetches (0 when healthy).
    pub fn failure_streak(&self) -> u32 {
        self.streak
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// `Retry-After` seconds for a 503: until the next attempt, else the fetch budget.
    pub fn retry_after_secs(&self, now_ms: u64) -> u32 {
        let ms = if self.next_attempt_ms > now_ms {
            self.next_attempt_ms - now_ms
        } else {
            self.budget_for(now_ms)
        };
        u32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
    }

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

    fn needs_discovery(&self, now_ms: u64) -> bool {
        self.src.kind == SourceKind::Discovery
            && match &self.discovered {
                None => true,
                Some((_, at)) => now_ms >= at.saturating_add(self.src.refresh_ms),
            }
    }

    // ----- rides (Kong: the request fetches for itself) -----

    pub fn rides(&self) -> usize {
        self.rides
    }

    /// A request needs keys (`unknown_kid`: it has keys, not its `kid`) and can only be
    /// finished from its own context. See "Rides" in the module docs.
    pub fn ride<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        unknown_kid: bool,
        out: &mut Vec<Action>,
    ) -> Ride {
        let now = io.now_ms;
        let generation = self.generation;
        if !unknown_kid && self.held.is_some() {
            return Ride::Ready;
        }
        if self.poll_record(io, parse, out) && (!unknown_kid || self.generation != generation) {
            return Ride::Ready;
        }
        let backing_off = now < self.next_attempt_ms;
        if unknown_kid {
            let too_soon = self
                .last_fetch_ms
                .is_some_and(|t| now < t.saturating_add(self.src.min_refetch_ms));
            let joinable = self.rides > 0 && self.rides < MAX_RIDES;
            if !joinable && (too_soon || backing_off || self.rides >= MAX_RIDES) {
                return Ride::Refused;
            }
        } else if backing_off || self.rides >= MAX_RIDES {
            return Ride::Unavailable {
                retry_after_secs: if backing_off {
                    self.retry_after_secs(now)
                } else {
                    1
                },
            };
        }
        self.rides += 1;
        let step = if self.needs_discovery(now) {
            Step::Discovery
        } else {
            Step::Jwks
        };
        Ride::Dispatch(self.ride_request(now, step))
    }

    fn ride_request(&mut self, now: u64, step: Step) -> FetchRequest {
        let ticket = Ticket(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        let target = match step {
            Step::Discovery => self.src.uri.clone(),
            Step::Jwks => self.target().clone(),
        };
        if step == Step::Jwks {
            self.last_fetch_ms = Some(self.last_fetch_ms.map_or(now, |t| t.max(now)));
        }
        self.src.request(&target, step, ticket)
    }

    /// The answer to a ride's call. `Some(req)`: send that next from the same context
    /// (the key set after a discovery document); `None`: the ride is over, decide again.
    pub fn on_ride_response<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        step: Step,
        resp: &HttpResponse,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<Action>,
    ) -> Option<FetchRequest> {
        let now = io.now_ms;
        let body = match response::classify(resp, self.src.max_body_bytes) {
            Ok(b) => b,
            Err((r, d)) => {
                self.ride_failed(now, io.random, step, r, d, out);
                return None;
            }
        };
        match step {
            Step::Discovery => match self.accept_discovery(body, now, out) {
                Ok(()) => Some(self.ride_request(now, Step::Jwks)),
                Err((r, detail)) => {
                    self.ride_failed(now, io.random, step, r, detail, out);
                    None
                }
            },
            Step::Jwks => {
                let keys = match usable_keys(parse, body) {
                    Ok(k) => k,
                    Err((r, detail)) => {
                        self.ride_failed(now, io.random, step, r, detail, out);
                        return None;
                    }
                };
                self.accept(io, resp, body, keys, out);
                if self.want_since.is_some() && self.in_flight.is_none() {
                    self.resolve_waiters(now, out);
                }
                None
            }
        }
    }

    /// A ride is over (answered, or its request went away): free its slot.
    pub fn ride_ended(&mut self) {
        self.rides = self.rides.saturating_sub(1);
    }

    /// A failed ride backs the provider off like a failed fetch (so an IdP outage is
    /// not hit once per request), without touching the background fetch in flight.
    fn ride_failed(
        &mut self,
        now: u64,
        random: u64,
        step: Step,
        reason: FailReason,
        detail: String,
        out: &mut Vec<Action>,
    ) {
        let delay = self.note_failure(now, random, step, reason, detail, out);
        self.next_attempt_ms = self.next_attempt_ms.max(now.saturating_add(delay));
    }

    // ----- driver side -----

    /// Call on every root-context tick.
    pub fn on_tick<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<Action>,
    ) {
        let now = io.now_ms;
        if let Some(f) = self.in_flight {
            if now >= f.deadline_ms {
                self.fail(
                    io,
                    f.step,
                    FailReason::Timeout,
                    "no answer within timeout + margin".into(),
                    out,
                );
            }
        }
        self.expire_waiters(now, out);
        if self.in_flight.is_some() {
            return;
        }
        let needed = self.held.is_none()
            || self.want_since.is_some()
            || self.keys_state(now) == KeysState::Stale;
        if !needed {
            if now >= self.next_shared_poll_ms {
                self.next_shared_poll_ms = now.saturating_add(SHARED_POLL_MS);
                self.poll_record(io, parse, out);
            }
            return;
        }
        if now < self.next_attempt_ms {
            return;
        }
        self.start_cycle(io, parse, out);
    }

    /// `dispatch_http_call` returned an error for this ticket.
    pub fn on_dispatch_error(&mut self, io: &mut Io<'_>, ticket: Ticket, out: &mut Vec<Action>) {
        if let Some(f) = self.in_flight.filter(|f| f.ticket == ticket) {
            self.fail(
                io,
                f.step,
                FailReason::DispatchFailed,
                "dispatch_http_call failed".into(),
                out,
            );
        }
    }

    /// The response (or the host's failure callback) for a dispatched call.
    pub fn on_response<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        ticket: Ticket,
        resp: &HttpResponse,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<Action>,
    ) {
        let Some(f) = self.in_flight.filter(|f| f.ticket == ticket) else {
            return; // stale (timed out earlier) or unknown
        };
        self.in_flight = None;
        let body = match response::classify(resp, self.src.max_body_bytes) {
            Ok(b) => b,
            Err((r, d)) => return self.fail(io, f.step, r, d, out),
        };
        match f.step {
            Step::Discovery => {
                if let Err((r, detail)) = self.accept_discovery(body, io.now_ms, out) {
                    self.fail(io, f.step, r, detail, out);
                }
                // The key set is fetched on the next tick, not from this callback: Kong's
                // engine kills the worker when a root context dispatches from a call's
                // response. The fetch is still needed (cold, stale or wanted), the lease is
                // still ours, and the cycle budget's margin covers the tick.
            }
            Step::Jwks => {
                let keys = match usable_keys(parse, body) {
                    Ok(k) => k,
                    Err((r, detail)) => return self.fail(io, f.step, r, detail, out),
                };
                self.accept(io, resp, body, keys, out);
                self.release_lease(io);
                self.resolve_waiters(io.now_ms, out);
            }
        }
    }

    // ----- internals -----

    /// A failed fetch or ride: the streak, its backoff delay (returned), rediscovery after
    /// a failed key set, and the event.
    fn note_failure(
        &mut self,
        now: u64,
        random: u64,
        step: Step,
        reason: FailReason,
        detail: String,
        out: &mut Vec<Action>,
    ) -> u64 {
        if self.streak == 0 {
            self.streak_started_ms = now;
        }
        self.streak = self.streak.saturating_add(1);
        let delay = response::backoff_ms(self.streak, random);
        if step == Step::Jwks && self.src.kind == SourceKind::Discovery {
            self.discovered = None; // rediscover on the next attempt
        }
        out.push(Action::Event(Event::FetchFailed {
            step,
            reason,
            code: reason.code(step),
            detail,
            first_of_streak: self.streak == 1,
            streak: self.streak,
            retry_in_ms: delay,
            have_keys: self.held.is_some(),
        }));
        delay
    }

    /// A discovery document: remember its `jwks_uri` and report it (and an issuer that
    /// fits none of the provider's).
    fn accept_discovery(
        &mut self,
        body: &[u8],
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), (FailReason, String)> {
        let d = response::parse_discovery(body, &self.src.uri)?;
        if let Some(iss) = d.issuer.filter(|i| !self.src.issuer_fits(i)) {
            out.push(Action::Event(Event::DiscoveryIssuerMismatch {
                discovered_issuer: iss,
            }));
        }
        out.push(Action::Event(Event::DiscoveryOk {
            jwks_uri: d.jwks_uri.to_string(),
        }));
        self.discovered = Some((d.jwks_uri, now));
        Ok(())
    }

    /// A fetched, usable key set (background fetch or ride): share it, install it, report.
    fn accept(
        &mut self,
        io: &mut Io<'_>,
        resp: &HttpResponse,
        body: &[u8],
        keys: K,
        out: &mut Vec<Action>,
    ) {
        let now = io.now_ms;
        let ttl = response::ttl_ms(resp.header("cache-control"), self.src.refresh_ms);
        let expires = now.saturating_add(ttl);
        let body = body.to_vec();
        // Share first, so the record version is known.
        let version = self.write_record(io, now, expires, &body);
        let (count, bytes) = (keys.key_count(), body.len());
        let changed = self.install(keys, body, now, expires, version);
        out.push(Action::Event(Event::FetchOk {
            uri: self.target().to_string(),
            keys: count,
            bytes,
            changed,
            generation: self.generation,
            ttl_ms: ttl,
        }));
        self.recovered(now, out);
        self.next_shared_poll_ms = now.saturating_add(SHARED_POLL_MS);
    }

    fn target(&self) -> &HttpUri {
        match (&self.src.kind, &self.discovered) {
            (SourceKind::Discovery, Some((u, _))) => u,
            _ => &self.src.uri,
        }
    }

    fn mine(&self) -> Option<shared::Stamp> {
        self.held.as_ref().map(|h| (h.fetched_at_ms, h.version))
    }

    /// Replace the key set; returns whether it changed (generation bumped).
    fn install(
        &mut self,
        keys: K,
        body: Vec<u8>,
        fetched: u64,
        expires: u64,
        version: u64,
    ) -> bool {
        let changed = self.held.as_ref().is_none_or(|h| h.body != body);
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        self.held = Some(Held {
            keys,
            body,
            fetched_at_ms: fetched,
            expires_at_ms: expires,
            version,
        });
        self.last_fetch_ms = Some(self.last_fetch_ms.map_or(fetched, |t| t.max(fetched)));
        changed
    }

    fn recovered(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.streak > 0 {
            out.push(Action::Event(Event::Recovered {
                failures: self.streak,
                outage_ms: now.saturating_sub(self.streak_started_ms),
            }));
        }
        self.streak = 0;
        self.next_attempt_ms = 0;
    }

    /// Fetch finished (or keys arrived from shared data): wake every waiter.
    fn resolve_waiters(&mut self, now: u64, out: &mut Vec<Action>) {
        self.want_since = None;
        self.just_resumed.clear();
        let ra = self.retry_after_secs(now);
        for w in self.waiters.drain(..) {
            out.push(match &self.held {
                Some(_) => {
                    self.just_resumed.push(w.id);
                    Action::Resume(w.id)
                }
                None => Action::Unavailable {
                    waiter: w.id,
                    retry_after_secs: ra,
                },
            });
        }
    }

    /// Waiting longer than the budget: 503 (the refetch, if any, may still land for
    /// later requests).
    fn expire_waiters(&mut self, now: u64, out: &mut Vec<Action>) {
        if !self.waiters.iter().any(|w| now >= w.deadline_ms) {
            return;
        }
        let ra = self.retry_after_secs(now);
        self.waiters.retain(|w| {
            if now < w.deadline_ms {
                return true;
            }
            out.push(Action::Unavailable {
                waiter: w.id,
                retry_after_secs: ra,
            });
            false
        });
        if self.waiters.is_empty() && self.held.is_some() {
            self.want_since = None;
        }
    }

    fn fail(
        &mut self,
        io: &mut Io<'_>,
        step: Step,
        reason: FailReason,
        detail: String,
        out: &mut Vec<Action>,
    ) {
        let now = io.now_ms;
        self.in_flight = None;
        let delay = self.note_failure(now, io.random, step, reason, detail, out);
        self.next_attempt_ms = now.saturating_add(delay);
        let code = reason.code(step);
        // Node-wide backoff + failure info: keep the lease until the retry time.
        let me = self.owner_id;
        let lease = Lease {
            owner_id: me,
            until_ms: self.next_attempt_ms,
            failure: Some(SharedFailure {
                at_ms: now,
                reason: code,
                streak: self.streak,
            }),
        };
        let _ = shared::cas_update(io.store, &self.lease_key, |cur| {
            let cur = cur.and_then(Lease::decode);
            (
                shared::may_take_lease(cur.as_ref(), me, now).then(|| lease.encode()),
                (),
            )
        });
        self.seen_failure_at_ms = self.seen_failure_at_ms.max(now);
        self.resolve_waiters(now, out);
    }

    fn dispatch(&mut self, now: u64, step: Step, out: &mut Vec<Action>) {
        let ticket = Ticket(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        let target = match step {
            Step::Discovery => self.src.uri.clone(),
            Step::Jwks => self.target().clone(),
        };
        let req = self.src.request(&target, step, ticket);
        self.in_flight = Some(InFlight {
            ticket,
            step,
            deadline_ms: now
                .saturating_add(self.src.timeout_ms)
                .saturating_add(MARGIN_MS),
        });
        if step == Step::Discovery || self.src.kind == SourceKind::Jwks {
            self.last_fetch_ms = Some(now);
        }
        out.push(Action::Dispatch(req));
    }

    /// Read the shared record and adopt it if newer. Returns true if adopted.
    fn poll_record<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<Action>,
    ) -> bool {
        let Ok(Some((raw, _))) = io.store.get(&self.record_key) else {
            return false;
        };
        let Some(rec) = SharedRecord::decode(&raw) else {
            return false;
        };
        let stamp = (rec.fetched_at_ms, rec.version);
        if !shared::should_adopt(&rec, self.mine()) || self.rejected_record == Some(stamp) {
            return false;
        }
        let keys = match parse(&rec.body) {
            Ok(k) if k.key_count() > 0 => k,
            _ => {
                self.rejected_record = Some(stamp);
                return false;
            }
        };
        let count = keys.key_count();
        let bytes = rec.body.len();
        self.install(
            keys,
            rec.body,
            rec.fetched_at_ms,
            rec.expires_at_ms,
            rec.version,
        );
        out.push(Action::Event(Event::AdoptedFromShared {
            keys: count,
            bytes,
            fetched_at_ms: rec.fetched_at_ms,
            generation: self.generation,
        }));
        self.recovered(io.now_ms, out);
        true
    }

    /// A fetch is needed and allowed by my own backoff: coordinate, then dispatch.
    fn start_cycle<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<Action>,
    ) {
        let now = io.now_ms;
        let me = self.owner_id;
        let shared_ok = match io.store.get(&self.lease_key) {
            Err(_) => false,
            Ok(cur) => {
                let lease = cur.and_then(|(v, _)| Lease::decode(&v));
                if let Some(l) = lease.as_ref().filter(|l| l.held_by_other(me, now)) {
                    if let Some(f) = l
                        .failure
                        .as_ref()
                        .filter(|f| f.at_ms > self.seen_failure_at_ms)
                    {
                        // Another worker's fetch failed: back off with the node.
                        self.seen_failure_at_ms = f.at_ms;
                        self.next_attempt_ms = self.next_attempt_ms.max(l.until_ms);
                        if self.streak == 0 {
                            self.streak_started_ms = f.at_ms;
                        }
                        // Continue the node's backoff sequence if I try next.
                        self.streak = self.streak.max(f.streak);
                        out.push(Action::Event(Event::SharedFailureSeen {
                            code: f.reason.clone(),
                            retry_in_ms: l.until_ms.saturating_sub(now),
                        }));
                        self.resolve_waiters(now, out);
                    }
                    return; // someone else is fetching (or backing off): wait
                }
                true
            }
        };
        if shared_ok {
            let was_cold = self.held.is_none();
            if self.poll_record(io, parse, out) {
                // The adopted keys answer my waiters if they were fetched after the waiters
                // asked, or — unknown-kid refetches — less than `min_refetch_ms` ago: the
                // refetch limit is per node, so a worker that had not yet seen another
                // worker's fresh refetch must not make a second one (a resumed request whose
                // kid is still unknown gets 401 `kid_unknown`).
                let min_refetch = self.src.min_refetch_ms;
                let satisfied = was_cold
                    || self
                        .held
                        .as_ref()
                        .zip(self.want_since)
                        .is_some_and(|(h, since)| {
                            h.fetched_at_ms >= since
                                || now < h.fetched_at_ms.saturating_add(min_refetch)
                        });
                if satisfied {
                    self.resolve_waiters(now, out);
                }
                if self.keys_state(now) == KeysState::Fresh && self.want_since.is_none() {
                    return;
                }
            }
            let budget = self.budget_for(now);
            let lease = Lease {
                owner_id: me,
                until_ms: now.saturating_add(budget),
                failure: None,
            };
            match shared::cas_update(io.store, &self.lease_key, |cur| {
                let cur = cur.and_then(Lease::decode);
                (
                    shared::may_take_lease(cur.as_ref(), me, now).then(|| lease.encode()),
                    (),
                )
            }) {
                CasOutcome::Written(()) | CasOutcome::Unavailable => {}
                CasOutcome::Declined(()) | CasOutcome::Contended => return,
            }
        }
        let step = if self.needs_discovery(now) {
            Step::Discovery
        } else {
            Step::Jwks
        };
        self.dispatch(now, step, out);
    }

    /// Time one fetch cycle may take: one or two calls plus the margin.
    fn budget_for(&self, now: u64) -> u64 {
        let steps = if self.needs_discovery(now) { 2 } else { 1 };
        self.src
            .timeout_ms
            .saturating_mul(steps)
            .saturating_add(MARGIN_MS)
    }

    /// Store my fresh keys unless a newer record is there; returns the version used.
    fn write_record(&mut self, io: &mut Io<'_>, fetched: u64, expires: u64, body: &[u8]) -> u64 {
        let mut version = self.mine().map_or(1, |(_, v)| v.wrapping_add(1));
        let res = shared::cas_update(io.store, &self.record_key, |cur| {
            let existing = cur.and_then(SharedRecord::decode);
            match shared::record_to_write(existing.as_ref(), fetched, expires, body) {
                Some(r) => {
                    let v = r.version;
                    (Some(r.encode()), v)
                }
                None => (None, 0),
            }
        });
        if let CasOutcome::Written(v) = res {
            version = v;
        }
        version
    }

    fn release_lease(&mut self, io: &mut Io<'_>) {
        let me = self.owner_id;
        let released = Lease {
            owner_id: me,
            until_ms: 0,
            failure: None,
        };
        let _ = shared::cas_update(io.store, &self.lease_key, |cur| {
            let cur = cur.and_then(Lease::decode);
            let mine = cur.as_ref().is_some_and(|l| l.owner_id == me);
            (mine.then(|| released.encode()), ())
        });
    }
}

/// A key-set body parsed into keys, refusing sets without usable keys.
fn usable_keys<K: KeyCount, E: core::fmt::Display>(
    parse: impl FnOnce(&[u8]) -> Result<K, E>,
    body: &[u8],
) -> Result<K, (FailReason, String)> {
    match parse(body) {
        Ok(k) if k.key_count() > 0 => Ok(k),
        Ok(_) => Err((FailReason::Empty, "no usable keys".into())),
        Err(e) => Err((FailReason::Garbage, e.to_string())),
    }
}
