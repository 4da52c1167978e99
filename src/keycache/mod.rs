//! The sans-IO JWKS lifecycle: one [`KeyCache`] per provider holds the last known
//! good key set and decides when to fetch, whom to wake, and what to share with the
//! other workers. Time (`now_ms`), randomness and HTTP responses come in as values;
//! what to do comes out as [`KeyAction`]s. No Proxy-Wasm calls here.
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
//! [`NoSharedStore`](crate::store::NoSharedStore) when shared data is not configured: per-worker fetching). It
//! appends [`KeyAction`]s to `out`; perform them in order:
//!
//! * [`KeyAction::Dispatch`] → `dispatch_http_call(req.upstream, req.header_refs(), None,
//!   vec![], Duration::from_millis(req.timeout_ms))`. On `Ok(token)` remember
//!   `token → (provider index, req.ticket)`; on `Err` call
//!   [`KeyCache::on_dispatch_error`] with the ticket (and perform its actions).
//! * [`KeyAction::Resume`]`(id)` → keys are present: that paused request re-runs
//!   verification with [`KeyCache::keys`] right away (before other cache calls) and
//!   is then answered or resumed. If its `kid` is still unknown,
//!   `request_refetch_for_unknown_kid` with the same id answers `Refused` → 401
//!   `kid_unknown` (a request never waits twice).
//! * [`KeyAction::Unavailable`] → answer that paused request 503 `jwks_unavailable` with
//!   `Retry-After: retry_after_secs` (no keys and the fetch failed, or the request
//!   waited out its budget).
//! * [`KeyAction::Event`] → log at [`Event::level`] and count metrics.
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
//! next cycle after a refresh period or after a failed JWKS fetch. A document whose
//! `issuer` is missing or none of the provider's is a failed fetch
//! (`discovery_issuer_mismatch`): its `jwks_uri` is never fetched. A plain-http
//! `jwks_uri` on another, non-loopback host is refused (`discovery_bad_jwks_uri`).
//!
//! Sharing (keys `amlk:jwks:<configured uri>`, `amlk:lease:<configured uri>`): when a
//! fetch is needed the cache reads the lease; if another owner holds it, it waits
//! (if the lease carries a failure newer than what it saw, its waiters get 503 and it
//! backs off until the lease ends), and while it waits or backs off it still adopts a
//! newer record on each tick. Otherwise it reads the record and adopts it if newer; a
//! lease that ran out less than `BACKOFF_MAX_MS` ago with a failure in it continues the
//! node's failure streak (logged once); if still needed, it takes the lease by CAS (lease
//! length = fetch budget) and dispatches. On success it writes the record (unless a newer one is there) and
//! releases the lease; on failure it keeps the lease until its backoff ends and stores
//! the failure in it. Every writer of the record also writes its stamp
//! (`amlk:jwks-stamp:<configured uri>`: `fetched_at` and version, 21 bytes). Caches with
//! fresh keys read the stamp on every tick and adopt the record as soon as it is newer
//! than what they hold, so a key removed from the set on one worker stops verifying on
//! every worker of the node within one tick; they also read the record itself every
//! [`SHARED_POLL_MS`] (a record without a stamp, a lost stamp write). All writes are get → set(cas) → retry ([`crate::store::cas_update`]).
//!
//! Layout: this file holds the types and the cache's state; `fetch.rs` the fetch cycle
//! (ticks, responses, sharing), `waiters.rs` the requests waiting for keys, `rides.rs`
//! Kong's rides, `shared.rs` the shared-data formats and rules, `source.rs` and
//! `response.rs` the requests sent and the answers classified.

mod fetch;
pub mod response;
mod rides;
pub mod shared;
pub mod source;
mod waiters;

#[cfg(test)]
mod tests;

pub use response::{FailReason, HttpResponse};
pub use shared::{Lease, SharedFailure, SharedRecord};
pub use source::{FetchRequest, HttpUri, JwksSource, Scheme, SourceKind, Step, Ticket};

use crate::store::SharedStore;

/// A paused request, named by the adapter (e.g. its http context id).
pub type WaiterId = u32;

/// Extra time, beyond the call timeouts, that a fetch (and a waiting request) gets.
pub const MARGIN_MS: u64 = 1_000;
/// How often a cache with fresh keys reads the shared record even when its stamp says
/// nothing changed (the stamp is checked on every tick).
pub const SHARED_POLL_MS: u64 = 5_000;
/// Upper bound on paused requests per cache; beyond it requests get 503 at once.
pub const MAX_WAITERS: usize = 10_000;
/// Upper bound on rides (Kong: requests fetching keys for themselves) at once per cache.
pub const MAX_RIDES: usize = 8;

/// The parsed key set must say how many usable keys it holds (0 = failed fetch).
/// It may also say how many keys its caps cut (reported in [`Event::FetchOk`]).
pub trait KeyCount {
    fn key_count(&self) -> usize;
    fn cut_count(&self) -> usize {
        0
    }
}

impl KeyCount for crate::jwks::KeySet {
    fn key_count(&self) -> usize {
        self.len()
    }
    fn cut_count(&self) -> usize {
        self.cut()
    }
}

impl<T: KeyCount + ?Sized> KeyCount for std::rc::Rc<T> {
    fn key_count(&self) -> usize {
        (**self).key_count()
    }
    fn cut_count(&self) -> usize {
        (**self).cut_count()
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
pub enum KeyAction {
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
        /// Keys beyond the set's caps, not kept (the adapter warns and counts when not 0).
        cut: usize,
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
}

impl Event {
    pub fn level(&self) -> Level {
        match self {
            Event::FetchFailed {
                first_of_streak: true,
                ..
            }
            | Event::Recovered { .. } => Level::Warn,
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
    stamp_key: String,
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
    /// The last stamp that made me read the record (not read again for the same stamp).
    stamp_seen: Option<(u64, u64)>,
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
            stamp_key: src.shared_stamp_key(),
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
            stamp_seen: None,
            waiters: Vec::new(),
            just_resumed: Vec::new(),
            rides: 0,
        }
    }

    pub fn source(&self) -> &JwksSource {
        &self.src
    }

    /// The last known good keys (fresh or stale), if any.
    pub fn keys(&self) -> Option<&K> {
        self.held.as_ref().map(|h| &h.keys)
    }

    /// The key-set document the held keys came from (the same bytes in every worker).
    pub fn body(&self) -> Option<&[u8]> {
        self.held.as_ref().map(|h| h.body.as_slice())
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

    fn needs_discovery(&self, now_ms: u64) -> bool {
        self.src.kind == SourceKind::Discovery
            && match &self.discovered {
                None => true,
                Some((_, at)) => now_ms >= at.saturating_add(self.src.refresh_ms),
            }
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

    /// Time one fetch cycle may take: one or two calls plus the margin.
    fn budget_for(&self, now: u64) -> u64 {
        let steps = if self.needs_discovery(now) { 2 } else { 1 };
        self.src
            .timeout_ms
            .saturating_mul(steps)
            .saturating_add(MARGIN_MS)
    }
}
