//! The fetch cycle of a [`KeyCache`]: ticks start fetches (after coordinating through the
//! node-wide lease and record), responses are classified and installed or counted as
//! failures, and the results are shared with the other workers.

use super::response::{self, FailReason, HttpResponse};
use super::shared::{self, Lease, SharedFailure, SharedRecord};
use super::source::{SourceKind, Step, Ticket};
use super::{
    Event, Held, InFlight, Io, KeyAction, KeyCache, KeyCount, KeysState, MARGIN_MS, SHARED_POLL_MS,
};
use crate::store::{self, CasOutcome};

impl<K: KeyCount> KeyCache<K> {
    /// Call on every root-context tick.
    pub fn on_tick<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<KeyAction>,
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
            if self.stamp_is_newer(io) || now >= self.next_shared_poll_ms {
                self.next_shared_poll_ms = now.saturating_add(SHARED_POLL_MS);
                self.poll_record(io, parse, out);
            }
            return;
        }
        if now < self.next_attempt_ms {
            // Backing off (mine or the node's): a set another worker installed since is
            // still taken, or this worker would refuse the IdP's newest key all outage.
            self.adopt_shared(io, parse, out);
            return;
        }
        self.start_cycle(io, parse, out);
    }

    /// `dispatch_http_call` returned an error for this ticket.
    pub fn on_dispatch_error(&mut self, io: &mut Io<'_>, ticket: Ticket, out: &mut Vec<KeyAction>) {
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
        out: &mut Vec<KeyAction>,
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

    /// A fetch is needed and allowed by my own backoff: coordinate, then dispatch.
    fn start_cycle<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<KeyAction>,
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
                        out.push(KeyAction::Event(Event::SharedFailureSeen {
                            code: f.reason.clone(),
                            retry_in_ms: l.until_ms.saturating_sub(now),
                        }));
                        self.resolve_waiters(now, out);
                    }
                    // Someone else is fetching (or backing off): wait, but take a newer
                    // set it may have installed meanwhile.
                    self.adopt_shared(io, parse, out);
                    return;
                }
                let recent = |l: &&Lease| now < l.until_ms.saturating_add(response::BACKOFF_MAX_MS);
                if let Some(f) = lease
                    .as_ref()
                    .filter(recent)
                    .and_then(|l| l.failure.as_ref())
                    .filter(|f| f.at_ms > self.seen_failure_at_ms)
                {
                    // The node's last attempt failed and its backoff ran out lately, before
                    // I looked: my attempt continues that streak (logged once per node).
                    self.seen_failure_at_ms = f.at_ms;
                    if self.streak == 0 {
                        self.streak_started_ms = f.at_ms;
                    }
                    self.streak = self.streak.max(f.streak);
                }
                true
            }
        };
        if shared_ok
            && self.adopt_shared(io, parse, out)
            && self.keys_state(now) == KeysState::Fresh
            && self.want_since.is_none()
        {
            return;
        }
        if shared_ok {
            let budget = self.budget_for(now);
            let lease = Lease {
                owner_id: me,
                until_ms: now.saturating_add(budget),
                failure: None,
            };
            match store::cas_update(io.store, &self.lease_key, |cur| {
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

    /// The node's stamp names a record newer than my keys that I have not read yet.
    fn stamp_is_newer(&mut self, io: &mut Io<'_>) -> bool {
        let Ok(Some((raw, _))) = io.store.get(&self.stamp_key) else {
            return false;
        };
        let Some(stamp) = shared::decode_stamp(&raw) else {
            return false;
        };
        let newer = self.mine().is_none_or(|m| stamp > m) && self.stamp_seen != Some(stamp);
        if newer {
            self.stamp_seen = Some(stamp);
        }
        newer
    }

    /// [`Self::poll_record`], then answer my waiters if the adopted keys satisfy them:
    /// if they were fetched after the waiters asked, or — unknown-kid refetches — less
    /// than `min_refetch_ms` ago: the refetch limit is per node, so a worker that had not
    /// yet seen another worker's fresh refetch must not make a second one (a resumed
    /// request whose kid is still unknown gets 401 `kid_unknown`). Returns true if adopted.
    fn adopt_shared<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<KeyAction>,
    ) -> bool {
        let now = io.now_ms;
        let was_cold = self.held.is_none();
        if !self.poll_record(io, parse, out) {
            return false;
        }
        let min_refetch = self.src.min_refetch_ms;
        let satisfied = was_cold
            || self
                .held
                .as_ref()
                .zip(self.want_since)
                .is_some_and(|(h, since)| {
                    h.fetched_at_ms >= since || now < h.fetched_at_ms.saturating_add(min_refetch)
                });
        if satisfied {
            self.resolve_waiters(now, out);
        }
        true
    }

    /// Read the shared record and adopt it if newer. Returns true if adopted.
    pub(super) fn poll_record<E: core::fmt::Display>(
        &mut self,
        io: &mut Io<'_>,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        out: &mut Vec<KeyAction>,
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
        out.push(KeyAction::Event(Event::AdoptedFromShared {
            keys: count,
            bytes,
            fetched_at_ms: rec.fetched_at_ms,
            generation: self.generation,
        }));
        self.recovered(io.now_ms, out);
        true
    }

    fn dispatch(&mut self, now: u64, step: Step, out: &mut Vec<KeyAction>) {
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
        out.push(KeyAction::Dispatch(req));
    }

    fn fail(
        &mut self,
        io: &mut Io<'_>,
        step: Step,
        reason: FailReason,
        detail: String,
        out: &mut Vec<KeyAction>,
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
        let _ = store::cas_update(io.store, &self.lease_key, |cur| {
            let cur = cur.and_then(Lease::decode);
            (
                shared::may_take_lease(cur.as_ref(), me, now).then(|| lease.encode()),
                (),
            )
        });
        self.seen_failure_at_ms = self.seen_failure_at_ms.max(now);
        self.resolve_waiters(now, out);
    }

    /// A failed fetch or ride: the streak, its backoff delay (returned), rediscovery after
    /// a failed key set, and the event.
    pub(super) fn note_failure(
        &mut self,
        now: u64,
        random: u64,
        step: Step,
        reason: FailReason,
        detail: String,
        out: &mut Vec<KeyAction>,
    ) -> u64 {
        if self.streak == 0 {
            self.streak_started_ms = now;
        }
        self.streak = self.streak.saturating_add(1);
        let delay = response::backoff_ms(self.streak, random);
        if step == Step::Jwks && self.src.kind == SourceKind::Discovery {
            self.discovered = None; // rediscover on the next attempt
        }
        out.push(KeyAction::Event(Event::FetchFailed {
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

    /// A discovery document: remember its `jwks_uri` and report it. A document whose
    /// `issuer` is missing or fits none of the provider's is refused (OpenID Connect
    /// Discovery 1.0 §4.3): the keys it points to are never fetched.
    pub(super) fn accept_discovery(
        &mut self,
        body: &[u8],
        now: u64,
        out: &mut Vec<KeyAction>,
    ) -> Result<(), (FailReason, String)> {
        let d = response::parse_discovery(body, &self.src.uri)?;
        match d.issuer.as_deref() {
            Some(iss) if self.src.issuer_fits(iss) => {}
            Some(iss) => {
                return Err((
                    FailReason::IssuerMismatch,
                    format!(
                        "discovery issuer `{}` is none of the provider's issuers",
                        crate::audit::capped(iss, 128)
                    ),
                ))
            }
            None => {
                return Err((
                    FailReason::IssuerMismatch,
                    "discovery document without `issuer`".to_string(),
                ))
            }
        }
        out.push(KeyAction::Event(Event::DiscoveryOk {
            jwks_uri: d.jwks_uri.to_string(),
        }));
        self.discovered = Some((d.jwks_uri, now));
        Ok(())
    }

    /// A fetched, usable key set (background fetch or ride): share it, install it, report.
    pub(super) fn accept(
        &mut self,
        io: &mut Io<'_>,
        resp: &HttpResponse,
        body: &[u8],
        keys: K,
        out: &mut Vec<KeyAction>,
    ) {
        let now = io.now_ms;
        let ttl = response::ttl_ms(resp.header("cache-control"), self.src.refresh_ms);
        let expires = now.saturating_add(ttl);
        let body = body.to_vec();
        // Share first, so the record version is known.
        let version = self.write_record(io, now, expires, &body);
        let (count, cut, bytes) = (keys.key_count(), keys.cut_count(), body.len());
        let changed = self.install(keys, body, now, expires, version);
        out.push(KeyAction::Event(Event::FetchOk {
            uri: self.target().to_string(),
            keys: count,
            cut,
            bytes,
            changed,
            generation: self.generation,
            ttl_ms: ttl,
        }));
        self.recovered(now, out);
        self.next_shared_poll_ms = now.saturating_add(SHARED_POLL_MS);
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

    fn recovered(&mut self, now: u64, out: &mut Vec<KeyAction>) {
        if self.streak > 0 {
            out.push(KeyAction::Event(Event::Recovered {
                failures: self.streak,
                outage_ms: now.saturating_sub(self.streak_started_ms),
            }));
        }
        self.streak = 0;
        self.next_attempt_ms = 0;
    }

    /// Store my fresh keys unless a newer record is there; returns the version used.
    fn write_record(&mut self, io: &mut Io<'_>, fetched: u64, expires: u64, body: &[u8]) -> u64 {
        let mut version = self.mine().map_or(1, |(_, v)| v.wrapping_add(1));
        let res = store::cas_update(io.store, &self.record_key, |cur| {
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
            self.write_stamp(io, (fetched, v));
        }
        version
    }

    /// Tell every worker's next tick that the record changed (stamps only move forward).
    fn write_stamp(&mut self, io: &mut Io<'_>, stamp: shared::Stamp) {
        let _ = store::cas_update(io.store, &self.stamp_key, |cur| {
            let newer = cur
                .and_then(shared::decode_stamp)
                .is_none_or(|old| stamp > old);
            (newer.then(|| shared::encode_stamp(stamp)), ())
        });
    }

    fn release_lease(&mut self, io: &mut Io<'_>) {
        let me = self.owner_id;
        let released = Lease {
            owner_id: me,
            until_ms: 0,
            failure: None,
        };
        let _ = store::cas_update(io.store, &self.lease_key, |cur| {
            let cur = cur.and_then(Lease::decode);
            let mine = cur.as_ref().is_some_and(|l| l.owner_id == me);
            (mine.then(|| released.encode()), ())
        });
    }
}

/// A key-set body parsed into keys, refusing sets without usable keys.
pub(super) fn usable_keys<K: KeyCount, E: core::fmt::Display>(
    parse: impl FnOnce(&[u8]) -> Result<K, E>,
    body: &[u8],
) -> Result<K, (FailReason, String)> {
    match parse(body) {
        Ok(k) if k.key_count() > 0 => Ok(k),
        Ok(_) => Err((FailReason::Empty, "no usable keys".into())),
        Err(e) => Err((FailReason::Garbage, e.to_string())),
    }
}
