//! One [`CredentialCache`] per configured credential and worker: holds the gateway's
//! token, decides when to ask for a new one, and shares it with the other workers.
//! Sans-IO: time, randomness, shared data and the token answers come in as values;
//! what to do comes out as [`CredAction`]s.
//!
//! # Adapter contract
//!
//! * Root tick: [`CredentialCache::on_tick`]. The first tick starts the first request
//!   (never `on_configure`); later ticks refresh on schedule, adopt tokens other workers
//!   fetched, time out lost calls and expire waiting requests.
//! * [`CredAction::Dispatch`] → `dispatch_http_call(spec.upstream, spec.header_refs(),
//!   spec.body, [], spec.timeout_ms)`; on `Err` call [`CredentialCache::on_dispatch_error`].
//!   The answer goes to [`CredentialCache::on_response`] with the ticket.
//! * A request allowed on a route with `upstream_credential`: [`CredentialCache::token`]
//!   is `Some` → set `Authorization: Bearer <token>`. `None` → Envoy:
//!   [`CredentialCache::wait`] (park; [`CredAction::Resume`] or [`CredAction::Unavailable`]
//!   follows within the request budget); Kong (a paused request can only finish in its own
//!   callbacks): [`CredentialCache::ride`] — the request sends the node's one token
//!   request itself and hands the answer to `on_response`, or is answered 503 at once.
//!   [`CredentialCache::ride_ended`] when that request goes away.
//!
//! # Sharing (one token request per node per refresh)
//! The token lives in `amlk:cred:<name>` (obtained time, lifetime, token); whoever
//! refreshes holds the lease `amlk:cred-lease:<name>` (taken by CAS, lasting the request
//! budget). A failed request keeps the lease until its backoff ends and records the
//! failure and streak in it, so the whole node backs off and the next attempt, by any
//! worker, continues the backoff sequence. Without shared data every worker fetches
//! for itself.

use crate::keycache::response::{classify, FailReason, HttpResponse};
use crate::keycache::shared::{Lease, SharedFailure};
use crate::store::{cas_update, CasOutcome, SharedStore};

use super::grant::{parse_grant, refusal_code, GrantError, MAX_GRANT_BODY_BYTES};
use super::schedule::{retry_after_secs, retry_at_ms, Lifetime};
use super::spec::CredentialSpec;

/// Margin past the request timeout before a call that never answered counts as lost.
pub const MARGIN_MS: u64 = 1_000;
/// How often a worker with a good token looks for a newer one in shared data.
pub const SHARED_POLL_MS: u64 = 5_000;
/// Paused requests per cache (beyond: 503 at once).
pub const MAX_WAITERS: usize = 10_000;

const RECORD_MAGIC: &[u8; 5] = b"AMLC\x01";

/// Identifies one dispatched token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredTicket(pub u64);

/// What the adapter must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredAction {
    /// Send the spec's token request; report its answer under this ticket.
    Dispatch(CredTicket),
    /// This paused request can go on: [`CredentialCache::token`] is `Some`.
    Resume(u32),
    /// Answer this paused request 503 `upstream_credential_unavailable`.
    Unavailable { id: u32, retry_after_secs: u64 },
    /// Log and count.
    Event(CredEvent),
}

/// Something worth a log line or a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredEvent {
    /// A token was obtained by this worker (`fetched`) or taken from shared data.
    Acquired { lifetime_secs: u64, fetched: bool },
    /// A token request failed. `first` marks the start of a failure streak (log it as a
    /// warning; the rest of the streak at debug).
    Failed {
        why: CredFailure,
        detail: String,
        streak: u32,
        first: bool,
    },
    /// The first success after a failure streak.
    Recovered { after_failures: u32 },
}

/// Why a token request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredFailure {
    /// The host could not send it, or the connection failed.
    DispatchFailed,
    /// No answer in time (the host's, or ours: timeout + margin).
    Timeout,
    /// A status other than 200 (a refusal's OAuth `error` code goes into the detail).
    Http(u16),
    /// An answer above the cap.
    TooLarge,
    /// A 200 whose body is not a usable token answer.
    BadAnswer(&'static str),
}

impl CredFailure {
    /// Stable code for log lines.
    pub fn code(self) -> &'static str {
        match self {
            CredFailure::DispatchFailed => "credential_dispatch_failed",
            CredFailure::Timeout => "credential_timeout",
            CredFailure::Http(429) => "credential_http_429",
            CredFailure::Http(s) if (500..600).contains(&s) => "credential_http_5xx",
            CredFailure::Http(_) => "credential_http_4xx",
            CredFailure::TooLarge => "credential_too_large",
            CredFailure::BadAnswer(code) => code,
        }
    }

    fn from_fetch(r: FailReason) -> CredFailure {
        match r {
            FailReason::Http(s) => CredFailure::Http(s),
            FailReason::Timeout => CredFailure::Timeout,
            FailReason::DispatchFailed => CredFailure::DispatchFailed,
            FailReason::TooLarge => CredFailure::TooLarge,
            FailReason::Garbage
            | FailReason::Empty
            | FailReason::BadJwksUri
            | FailReason::IssuerMismatch => CredFailure::BadAnswer(GrantError::NotJson.code()),
        }
    }
}

/// Answer to [`CredentialCache::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitAnswer {
    /// A token is there: go on.
    Ready,
    /// Pause; a `Resume` or `Unavailable` for this id follows.
    Wait,
    /// Answer 503 now.
    Unavailable { retry_after_secs: u64 },
}

/// Answer to [`CredentialCache::ride`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RideAnswer {
    Ready,
    /// Send the token request from the request's own context, then pause.
    Dispatch(CredTicket),
    Unavailable {
        retry_after_secs: u64,
    },
}

/// Time and randomness for one call, plus the node's shared data.
pub struct CredIo<'a> {
    pub now_ms: u64,
    pub random: u64,
    pub store: &'a mut dyn SharedStore,
}

#[derive(Clone, PartialEq, Eq)]
struct Held {
    token: String,
    life: Lifetime,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    ticket: CredTicket,
    deadline_ms: u64,
    /// Sent by a request's own context (Kong ride) rather than the root.
    ride: bool,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: u32,
    deadline_ms: u64,
}

pub struct CredentialCache {
    spec: CredentialSpec,
    owner_id: u64,
    held: Option<Held>,
    in_flight: Option<InFlight>,
    streak: u32,
    next_attempt_ms: u64,
    /// The newest shared failure this cache has acted on.
    seen_failure_ms: u64,
    waiters: Vec<Waiter>,
    next_poll_ms: u64,
    next_ticket: u64,
}

impl CredentialCache {
    pub fn new(spec: CredentialSpec, owner_id: u64) -> CredentialCache {
        CredentialCache {
            spec,
            owner_id,
            held: None,
            in_flight: None,
            streak: 0,
            next_attempt_ms: 0,
            seen_failure_ms: 0,
            waiters: Vec::new(),
            next_poll_ms: 0,
            next_ticket: 1,
        }
    }

    pub fn spec(&self) -> &CredentialSpec {
        &self.spec
    }

    /// The token to put on a request now, if one is usable.
    pub fn token(&self, now_ms: u64) -> Option<&str> {
        self.held
            .as_ref()
            .filter(|h| h.life.usable(now_ms))
            .map(|h| h.token.as_str())
    }

    /// Seconds until the current token stops being used (for the key-health metric).
    pub fn usable_for_secs(&self, now_ms: u64) -> u64 {
        self.held.as_ref().map_or(0, |h| {
            h.life.usable_until_ms().saturating_sub(now_ms) / 1000
        })
    }

    /// Seconds since the current token arrived on this node (`None`: no token).
    pub fn age_secs(&self, now_ms: u64) -> Option<u64> {
        self.held
            .as_ref()
            .map(|h| now_ms.saturating_sub(h.life.obtained_ms) / 1000)
    }

    /// Envoy: a request needs the token and [`Self::token`] was `None`.
    pub fn wait(&mut self, id: u32, now_ms: u64) -> WaitAnswer {
        if self.token(now_ms).is_some() {
            return WaitAnswer::Ready;
        }
        if now_ms < self.next_attempt_ms && self.in_flight.is_none() && self.streak > 0 {
            return WaitAnswer::Unavailable {
                retry_after_secs: retry_after_secs(now_ms, self.next_attempt_ms),
            };
        }
        if self.waiters.len() >= MAX_WAITERS {
            return WaitAnswer::Unavailable {
                retry_after_secs: 1,
            };
        }
        let deadline_ms = now_ms
            .saturating_add(self.spec.timeout_ms)
            .saturating_add(MARGIN_MS);
        self.waiters.push(Waiter { id, deadline_ms });
        WaitAnswer::Wait
    }

    pub fn cancel_waiter(&mut self, id: u32) {
        self.waiters.retain(|w| w.id != id);
    }

    /// Kong: a request needs the token and [`Self::token`] was `None`. It may send the
    /// node's token request itself when nobody else is sending one.
    pub fn ride(&mut self, io: &mut CredIo<'_>, out: &mut Vec<CredAction>) -> RideAnswer {
        let now = io.now_ms;
        self.adopt_shared(io, out);
        if self.token(now).is_some() {
            return RideAnswer::Ready;
        }
        match self.try_start(io, true) {
            Some(ticket) => RideAnswer::Dispatch(ticket),
            None => RideAnswer::Unavailable {
                retry_after_secs: retry_after_secs(now, self.next_attempt_ms.max(now + 1000)),
            },
        }
    }

    /// The request that rode went away (answered, or the client left) before the answer.
    pub fn ride_ended(
        &mut self,
        ticket: CredTicket,
        io: &mut CredIo<'_>,
        out: &mut Vec<CredAction>,
    ) {
        if self.in_flight.is_some_and(|f| f.ticket == ticket && f.ride) {
            self.fail(
                io,
                FailReason::DispatchFailed,
                "request went away before the token answer".into(),
                out,
            );
        }
    }

    pub fn on_tick(&mut self, io: &mut CredIo<'_>, out: &mut Vec<CredAction>) {
        let now = io.now_ms;
        if let Some(f) = self.in_flight {
            if now >= f.deadline_ms {
                self.fail(
                    io,
                    FailReason::Timeout,
                    "no answer within the timeout".into(),
                    out,
                );
            }
        }
        let needed = self.needs_token(now);
        if needed || now >= self.next_poll_ms {
            self.next_poll_ms = now.saturating_add(SHARED_POLL_MS);
            self.adopt_shared(io, out);
        }
        if self.needs_token(now) && self.in_flight.is_none() {
            if let Some(t) = self.try_start(io, false) {
                out.push(CredAction::Dispatch(t));
            } else {
                self.observe_lease(io, out);
            }
        }
        self.expire_waiters(now, out);
    }

    pub fn on_dispatch_error(
        &mut self,
        ticket: CredTicket,
        io: &mut CredIo<'_>,
        out: &mut Vec<CredAction>,
    ) {
        if self.in_flight.is_some_and(|f| f.ticket == ticket) {
            self.fail(
                io,
                FailReason::DispatchFailed,
                "dispatch_http_call failed".into(),
                out,
            );
        }
    }

    /// The answer to a token request (root callback, or a Kong ride's own callback).
    pub fn on_response(
        &mut self,
        ticket: CredTicket,
        resp: &HttpResponse,
        io: &mut CredIo<'_>,
        out: &mut Vec<CredAction>,
    ) {
        if !self.in_flight.is_some_and(|f| f.ticket == ticket) {
            return;
        }
        let body = match classify(resp, MAX_GRANT_BODY_BYTES) {
            Ok(body) => body,
            Err((reason, detail)) => {
                let detail = match (reason, resp.body.as_deref().and_then(refusal_code)) {
                    (FailReason::Http(_), Some(code)) => format!("{detail} ({code})"),
                    _ => detail,
                };
                self.fail(io, reason, detail, out);
                return;
            }
        };
        match parse_grant(body) {
            Ok(grant) => {
                let life = Lifetime::new(io.now_ms, grant.lifetime_secs);
                self.in_flight = None;
                self.install(
                    Held {
                        token: grant.access_token,
                        life,
                    },
                    io,
                    out,
                );
            }
            Err(e) => self.fail_grant(io, &e, out),
        }
    }

    fn needs_token(&self, now: u64) -> bool {
        match &self.held {
            None => true,
            Some(h) => !h.life.usable(now) || h.life.refresh_due(now),
        }
    }

    /// Take the lease and start a request, unless backing off or another worker holds it.
    fn try_start(&mut self, io: &mut CredIo<'_>, ride: bool) -> Option<CredTicket> {
        let now = io.now_ms;
        if self.in_flight.is_some() || now < self.next_attempt_ms {
            return None;
        }
        let until_ms = now
            .saturating_add(self.spec.timeout_ms)
            .saturating_add(MARGIN_MS);
        let me = self.owner_id;
        let taken = cas_update(io.store, &self.spec.lease_key(), |cur| {
            let lease = cur.and_then(Lease::decode);
            if lease.as_ref().is_some_and(|l| l.held_by_other(me, now)) {
                return (None, lease);
            }
            let failure = lease.as_ref().and_then(|l| l.failure.clone());
            let next = Lease {
                owner_id: me,
                until_ms,
                failure,
            };
            (Some(next.encode()), lease)
        });
        match taken {
            CasOutcome::Written(prev) => {
                // Continue the node's backoff sequence where the last attempt left it.
                if let Some(f) = prev.and_then(|l| l.failure) {
                    self.streak = self.streak.max(f.streak);
                }
            }
            CasOutcome::Unavailable => {} // per-worker mode
            CasOutcome::Declined(_) | CasOutcome::Contended => return None,
        }
        let ticket = CredTicket(self.next_ticket);
        self.next_ticket += 1;
        self.in_flight = Some(InFlight {
            ticket,
            deadline_ms: until_ms,
            ride,
        });
        Some(ticket)
    }

    /// Another worker holds the lease: if it recorded a failure we have not acted on,
    /// back off with the node and answer our waiters.
    fn observe_lease(&mut self, io: &mut CredIo<'_>, out: &mut Vec<CredAction>) {
        let Ok(Some((bytes, _))) = io.store.get(&self.spec.lease_key()) else {
            return;
        };
        let Some(lease) = Lease::decode(&bytes) else {
            return;
        };
        if let Some(f) = lease.failure.filter(|f| f.at_ms > self.seen_failure_ms) {
            self.seen_failure_ms = f.at_ms;
            self.streak = self.streak.max(f.streak);
            if lease.until_ms > io.now_ms {
                self.next_attempt_ms = self.next_attempt_ms.max(lease.until_ms);
            }
            self.refuse_waiters(io.now_ms, out);
        }
    }

    /// Take a newer usable token that another worker stored.
    fn adopt_shared(&mut self, io: &mut CredIo<'_>, out: &mut Vec<CredAction>) {
        let Ok(Some((bytes, _))) = io.store.get(&self.spec.shared_key()) else {
            return;
        };
        let Some(theirs) = decode_record(&bytes) else {
            return;
        };
        let newer = self
            .held
            .as_ref()
            .is_none_or(|h| theirs.life.obtained_ms > h.life.obtained_ms);
        if !newer || !theirs.life.usable(io.now_ms) {
            return;
        }
        out.push(CredAction::Event(CredEvent::Acquired {
            lifetime_secs: theirs.life.lifetime_ms / 1000,
            fetched: false,
        }));
        self.held = Some(theirs);
        self.streak = 0;
        self.next_attempt_ms = 0;
        self.resume_waiters(out);
    }

    fn install(&mut self, held: Held, io: &mut CredIo<'_>, out: &mut Vec<CredAction>) {
        let now = io.now_ms;
        let lifetime_secs = held.life.lifetime_ms / 1000;
        let record = encode_record(&held);
        let obtained = held.life.obtained_ms;
        let _ = cas_update(io.store, &self.spec.shared_key(), |cur| {
            let newer_there = cur
                .and_then(decode_record)
                .is_some_and(|h| h.life.obtained_ms > obtained);
            ((!newer_there).then(|| record.clone()), ())
        });
        let me = self.owner_id;
        let _ = cas_update(io.store, &self.spec.lease_key(), |cur| {
            let mine = cur
                .and_then(Lease::decode)
                .is_some_and(|l| l.owner_id == me);
            let released = Lease {
                owner_id: me,
                until_ms: now,
                failure: None,
            };
            (mine.then(|| released.encode()), ())
        });
        self.held = Some(held);
        out.push(CredAction::Event(CredEvent::Acquired {
            lifetime_secs,
            fetched: true,
        }));
        if self.streak > 0 {
            out.push(CredAction::Event(CredEvent::Recovered {
                after_failures: self.streak,
            }));
        }
        self.streak = 0;
        self.next_attempt_ms = 0;
        self.resume_waiters(out);
    }

    fn fail_grant(&mut self, io: &mut CredIo<'_>, e: &GrantError, out: &mut Vec<CredAction>) {
        self.in_flight = None;
        let why = match e {
            GrantError::TooLarge => CredFailure::TooLarge,
            e => CredFailure::BadAnswer(e.code()),
        };
        self.record_failure(io, why, e.to_string(), out);
    }

    fn fail(
        &mut self,
        io: &mut CredIo<'_>,
        reason: FailReason,
        detail: String,
        out: &mut Vec<CredAction>,
    ) {
        self.in_flight = None;
        self.record_failure(io, CredFailure::from_fetch(reason), detail, out);
    }

    fn record_failure(
        &mut self,
        io: &mut CredIo<'_>,
        why: CredFailure,
        detail: String,
        out: &mut Vec<CredAction>,
    ) {
        let now = io.now_ms;
        self.streak = self.streak.saturating_add(1);
        self.next_attempt_ms = retry_at_ms(
            now,
            self.streak,
            io.random,
            self.held.as_ref().map(|h| &h.life),
        );
        self.seen_failure_ms = now.max(1);
        let me = self.owner_id;
        let lease = Lease {
            owner_id: me,
            until_ms: self.next_attempt_ms,
            failure: Some(SharedFailure {
                at_ms: now.max(1),
                reason: why.code().to_string(),
                streak: self.streak,
            }),
        };
        let _ = cas_update(io.store, &self.spec.lease_key(), |cur| {
            let others = cur
                .and_then(Lease::decode)
                .is_some_and(|l| l.held_by_other(me, now));
            ((!others).then(|| lease.encode()), ())
        });
        out.push(CredAction::Event(CredEvent::Failed {
            why,
            detail,
            streak: self.streak,
            first: self.streak == 1,
        }));
        if self.token(now).is_none() {
            self.refuse_waiters(now, out);
        }
    }

    fn resume_waiters(&mut self, out: &mut Vec<CredAction>) {
        out.extend(self.waiters.drain(..).map(|w| CredAction::Resume(w.id)));
    }

    fn refuse_waiters(&mut self, now: u64, out: &mut Vec<CredAction>) {
        let retry_after_secs = retry_after_secs(now, self.next_attempt_ms);
        out.extend(self.waiters.drain(..).map(|w| CredAction::Unavailable {
            id: w.id,
            retry_after_secs,
        }));
    }

    fn expire_waiters(&mut self, now: u64, out: &mut Vec<CredAction>) {
        let retry_after_secs = retry_after_secs(now, self.next_attempt_ms);
        self.waiters.retain(|w| {
            if now >= w.deadline_ms {
                out.push(CredAction::Unavailable {
                    id: w.id,
                    retry_after_secs,
                });
                false
            } else {
                true
            }
        });
    }
}

/// `AMLC 01 | obtained u64 | lifetime_ms u64 | token` (little-endian).
fn encode_record(h: &Held) -> Vec<u8> {
    let mut v = Vec::with_capacity(21 + h.token.len());
    v.extend_from_slice(RECORD_MAGIC);
    v.extend_from_slice(&h.life.obtained_ms.to_le_bytes());
    v.extend_from_slice(&h.life.lifetime_ms.to_le_bytes());
    v.extend_from_slice(h.token.as_bytes());
    v
}

fn decode_record(buf: &[u8]) -> Option<Held> {
    let rest = buf.strip_prefix(RECORD_MAGIC.as_slice())?;
    let obtained_ms = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let lifetime_ms = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
    let token = core::str::from_utf8(rest.get(16..)?).ok()?;
    if token.is_empty() {
        return None;
    }
    Some(Held {
        token: token.to_string(),
        life: Lifetime {
            obtained_ms,
            lifetime_ms,
        },
    })
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
