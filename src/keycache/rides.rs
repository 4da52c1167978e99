//! Rides (Kong): a request that needs keys sends the fetch from its own context and is
//! decided again on the answer. See "Rides" in the module docs.

use super::fetch::usable_keys;
use super::response::{self, FailReason, HttpResponse};
use super::source::{FetchRequest, Step, Ticket};
use super::{Io, KeyAction, KeyCache, KeyCount, Ride, MAX_RIDES};

impl<K: KeyCount> KeyCache<K> {
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
        out: &mut Vec<KeyAction>,
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
        out: &mut Vec<KeyAction>,
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
        out: &mut Vec<KeyAction>,
    ) {
        let delay = self.note_failure(now, random, step, reason, detail, out);
        self.next_attempt_ms = self.next_attempt_ms.max(now.saturating_add(delay));
    }
}
