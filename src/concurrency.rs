//! Concurrency limits (`routes[].concurrency_limit`): at most `max_in_flight` requests of
//! one key in flight upstream at once, per node — GPU protection for slow inference calls.
//!
//! State, in shared data so every worker counts together:
//! - one slot list per bucket, `aml-cc:` + 32 hex digits of SHA-256 over the route name and
//!   the key value (as rate-limit buckets, [`crate::ratelimit::bucket_key_for_value`]):
//!   the `(worker, ticket)` pairs of the requests holding a slot, 16 bytes each;
//! - one heartbeat per worker, `aml-cc-w:` + the worker id in hex: the unix time in ms the
//!   worker last said it was alive ([`Slots::heartbeat`], from the adapter's tick).
//!
//! A request takes a slot when it is allowed ([`Slots::acquire`]) and gives it back when it
//! ends, however it ends ([`Slots::release`], from the adapter's `on_done`). A worker that
//! dies cannot give its slots back: its heartbeat stops, and once it is older than
//! [`RECLAIM_AFTER_MS`] the next acquire on that bucket drops the worker's slots. A worker's
//! own slots that it no longer holds (its list of live tickets says so) are dropped too, so
//! a release lost to a full zone or a contended CAS heals at the next acquire.
//!
//! Without shared data (switched off, unavailable, contended beyond its retries) the
//! worker counts its own requests only: the limit then holds per worker, not per node —
//! looser, never a request refused for a reason other than this worker's own load.

use std::collections::HashMap;

use crate::claims::check_claim_path;
use crate::config::{ConfigError, FilterConfig};
use crate::store::{self, CasOutcome, SharedStore};

/// A worker whose heartbeat is older than this has its slots reclaimed (it died, or its
/// VM was replaced). Heartbeats are written every [`HEARTBEAT_EVERY_MS`].
pub const RECLAIM_AFTER_MS: u64 = 10_000;
pub const HEARTBEAT_EVERY_MS: u64 = 1_000;
/// Largest `max_in_flight` accepted at load (a slot list stays within 16 KB).
pub const MAX_IN_FLIGHT: u64 = 1_000;
/// `Retry-After` of a `concurrency_limited` answer.
pub const RETRY_AFTER_SECS: u64 = 1;

const VERSION: u8 = 1;
const ENTRY: usize = 16;

/// A route's compiled `concurrency_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    pub max_in_flight: u64,
    /// Claim path alternatives (`azp|appid`), or `["caller"]` for the caller registry.
    pub key: Vec<String>,
}

/// Every route's `concurrency_limit`, by route index.
pub fn compile(cfg: &FilterConfig) -> Result<Vec<Option<ConcurrencyLimit>>, ConfigError> {
    cfg.routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let Some(c) = &r.concurrency_limit else {
                return Ok(None);
            };
            let base = format!("routes[{i}].concurrency_limit");
            if !(1..=MAX_IN_FLIGHT).contains(&c.max_in_flight) {
                return Err(ConfigError::new(
                    format!("{base}.max_in_flight"),
                    format!("expected 1 to {MAX_IN_FLIGHT}"),
                ));
            }
            let key: Vec<String> = c.key.split('|').map(|s| s.trim().to_string()).collect();
            for alt in &key {
                check_claim_path(&format!("{base}.key"), alt)?;
            }
            Ok(Some(ConcurrencyLimit {
                max_in_flight: c.max_in_flight,
                key,
            }))
        })
        .collect()
}

/// One held slot: the worker that took it and the request's ticket there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub worker: u64,
    pub ticket: u64,
}

/// The shared-data key of `bucket`'s slot list is `bucket` itself (`aml-cc:`…).
pub fn bucket_key(route_name: &str, value: &str) -> String {
    let rl = crate::ratelimit::bucket_key_for_value(route_name, value);
    format!("aml-cc:{}", rl.trim_start_matches("aml-rl:"))
}

pub fn heartbeat_key(worker: u64) -> String {
    format!("aml-cc-w:{worker:016x}")
}

pub fn encode(slots: &[Slot]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + slots.len() * ENTRY);
    out.push(VERSION);
    for s in slots {
        out.extend_from_slice(&s.worker.to_le_bytes());
        out.extend_from_slice(&s.ticket.to_le_bytes());
    }
    out
}

/// Anything that is not exactly a slot list of this version is an empty list.
pub fn decode(bytes: &[u8]) -> Vec<Slot> {
    let Some((&VERSION, rest)) = bytes.split_first() else {
        return Vec::new();
    };
    if rest.len() % ENTRY != 0 {
        return Vec::new();
    }
    rest.chunks_exact(ENTRY)
        .filter_map(|c| {
            let (w, t) = c.split_at(8);
            Some(Slot {
                worker: u64::from_le_bytes(w.try_into().ok()?),
                ticket: u64::from_le_bytes(t.try_into().ok()?),
            })
        })
        .collect()
}

/// Whether an acquire got a slot, and where it was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Node-wide, in shared data.
    Shared,
    /// In this worker's own counts (no usable shared data).
    Worker,
    /// `max_in_flight` requests of this key are in flight.
    Full,
}

/// One worker's view: its id, its live tickets per bucket, its heartbeat schedule.
#[derive(Debug)]
pub struct Slots {
    worker: u64,
    next_ticket: u64,
    /// Tickets this worker holds, per bucket, and whether each is counted in shared data.
    held: HashMap<String, Vec<(u64, bool)>>,
    last_heartbeat_ms: Option<u64>,
    /// Slot lists (and this worker's heartbeat) found gone while this worker had entries in
    /// them (evicted by a full zone), since the last [`Slots::take_lost`].
    lost: u64,
}

impl Slots {
    /// `worker`: a random id for this worker (its VM), fixed for its life.
    pub fn new(worker: u64) -> Slots {
        Slots {
            worker,
            next_ticket: 1,
            held: HashMap::new(),
            last_heartbeat_ms: None,
            lost: 0,
        }
    }

    pub fn worker(&self) -> u64 {
        self.worker
    }

    /// Requests this worker holds slots for, over all buckets.
    pub fn in_flight(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// Take a slot in `bucket` for a new request if fewer than `max` are held; returns the
    /// ticket to release with.
    pub fn acquire(
        &mut self,
        store: &mut dyn SharedStore,
        bucket: &str,
        max: u64,
        now_ms: u64,
    ) -> (Acquired, Option<u64>) {
        // Alive before holding anything: a slot without a heartbeat looks abandoned.
        self.heartbeat(store, now_ms);
        let ticket = self.next_ticket;
        let me = self.worker;
        let dead = self.dead_workers(store, bucket, now_ms);
        let mine: Vec<u64> = self.tickets(bucket);
        let mine_shared = self.shared_tickets(bucket);
        let max_len = usize::try_from(max).unwrap_or(usize::MAX);
        let mut lost = false;
        let outcome = store::cas_update(store, bucket, |cur| {
            let mut slots = cur.map(decode).unwrap_or_default();
            let before = slots.len();
            slots.retain(|s| {
                if s.worker == me {
                    mine.contains(&s.ticket)
                } else {
                    !dead.contains(&s.worker)
                }
            });
            // This worker's slots missing from the list: the zone evicted it. Put them back,
            // so its requests in flight keep counting.
            let missing: Vec<u64> = mine_shared
                .iter()
                .copied()
                .filter(|t| !slots.iter().any(|s| s.worker == me && s.ticket == *t))
                .collect();
            lost = !missing.is_empty();
            slots.extend(
                missing
                    .into_iter()
                    .map(|ticket| Slot { worker: me, ticket }),
            );
            if slots.len() >= max_len {
                let changed = slots.len() != before || lost;
                return (changed.then(|| encode(&slots)), false);
            }
            slots.push(Slot { worker: me, ticket });
            (Some(encode(&slots)), true)
        });
        let shared = match outcome {
            CasOutcome::Written(true) => Some(true),
            CasOutcome::Written(false) | CasOutcome::Declined(false) => Some(false),
            CasOutcome::Declined(true) => Some(true), // not produced by the closure
            CasOutcome::Contended | CasOutcome::Unavailable => None,
        };
        if lost && shared.is_some() {
            self.lost += 1;
        }
        if !dead.is_empty() {
            self.forget_dead(store, &dead, now_ms);
        }
        match shared {
            Some(true) => {
                self.hold(bucket, ticket, true);
                (Acquired::Shared, Some(ticket))
            }
            Some(false) => (Acquired::Full, None),
            None => {
                // This worker's own requests only.
                if self.tickets(bucket).len() >= max_len {
                    return (Acquired::Full, None);
                }
                self.hold(bucket, ticket, false);
                (Acquired::Worker, Some(ticket))
            }
        }
    }

    /// Give back the slot of `ticket` in `bucket` (a request ended). Unknown tickets are
    /// ignored, so releasing twice is harmless.
    pub fn release(&mut self, store: &mut dyn SharedStore, bucket: &str, ticket: u64) {
        let Some(list) = self.held.get_mut(bucket) else {
            return;
        };
        let Some(pos) = list.iter().position(|(t, _)| *t == ticket) else {
            return;
        };
        let (_, shared) = list.swap_remove(pos);
        if list.is_empty() {
            self.held.remove(bucket);
        }
        if !shared {
            return;
        }
        let me = self.worker;
        // A lost release (contention, full zone) is healed by the next acquire here.
        let outcome = store::cas_update_or_delete(store, bucket, |cur| {
            let mut slots = cur.map(decode).unwrap_or_default();
            let before = slots.len();
            slots.retain(|s| !(s.worker == me && s.ticket == ticket));
            if slots.len() == before {
                return (None, true);
            }
            // Nothing left in flight: the key goes, so idle callers leave no lists behind.
            ((Some((!slots.is_empty()).then(|| encode(&slots)))), false)
        });
        // The list lost this worker's slot before it ended: evicted.
        if outcome == CasOutcome::Declined(true) {
            self.lost += 1;
        }
    }

    /// Slot lists and heartbeats lost to eviction since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn shared_tickets(&self, bucket: &str) -> Vec<u64> {
        self.held
            .get(bucket)
            .map(|l| l.iter().filter(|(_, s)| *s).map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    /// Remove the heartbeats of dead workers (still stale), so they do not pile up.
    fn forget_dead(&self, store: &mut dyn SharedStore, dead: &[u64], now_ms: u64) {
        for w in dead {
            store::delete_if(store, &heartbeat_key(*w), |v| {
                <[u8; 8]>::try_from(v)
                    .map(u64::from_le_bytes)
                    .is_ok_and(|t| now_ms.saturating_sub(t) > RECLAIM_AFTER_MS)
            });
        }
    }

    /// From the tick: say this worker is alive, at most every [`HEARTBEAT_EVERY_MS`].
    pub fn heartbeat(&mut self, store: &mut dyn SharedStore, now_ms: u64) {
        if self
            .last_heartbeat_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < HEARTBEAT_EVERY_MS)
        {
            return;
        }
        let wrote_before = self.last_heartbeat_ms.is_some();
        self.last_heartbeat_ms = Some(now_ms);
        let key = heartbeat_key(self.worker);
        let holds = self.held.values().flatten().any(|(_, s)| *s);
        let outcome = store::cas_update(store, &key, |cur| {
            (Some(now_ms.to_le_bytes().to_vec()), cur.is_none())
        });
        // Gone while this worker holds slots: others may have taken them as abandoned.
        if outcome == CasOutcome::Written(true) && wrote_before && holds {
            self.lost += 1;
        }
    }

    fn tickets(&self, bucket: &str) -> Vec<u64> {
        self.held
            .get(bucket)
            .map(|l| l.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    fn hold(&mut self, bucket: &str, ticket: u64, shared: bool) {
        self.next_ticket = self.next_ticket.wrapping_add(1).max(1);
        self.held
            .entry(bucket.to_string())
            .or_default()
            .push((ticket, shared));
    }

    /// Workers holding slots in `bucket` whose heartbeat is missing or too old.
    fn dead_workers(&self, store: &mut dyn SharedStore, bucket: &str, now_ms: u64) -> Vec<u64> {
        let Ok(Some((bytes, _))) = store.get(bucket) else {
            return Vec::new();
        };
        let mut workers: Vec<u64> = decode(&bytes)
            .into_iter()
            .map(|s| s.worker)
            .filter(|w| *w != self.worker)
            .collect();
        workers.sort_unstable();
        workers.dedup();
        workers
            .into_iter()
            .filter(|w| {
                let seen = match store.get(&heartbeat_key(*w)) {
                    Ok(Some((b, _))) => <[u8; 8]>::try_from(b.as_slice())
                        .ok()
                        .map(u64::from_le_bytes),
                    Ok(None) => None,
                    // Cannot tell: keep its slots rather than over-admit.
                    Err(_) => return false,
                };
                seen.is_none_or(|t| now_ms.saturating_sub(t) > RECLAIM_AFTER_MS)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::KongStore;
    use crate::store::NoSharedStore;

    const B: &str = "aml-cc:b";

    fn alive(store: &mut KongStore, workers: &mut [&mut Slots], now: u64) {
        for w in workers.iter_mut() {
            w.heartbeat(store, now);
        }
    }

    #[test]
    fn encode_decode_and_garbage() {
        let s = [
            Slot {
                worker: 1,
                ticket: 2,
            },
            Slot {
                worker: u64::MAX,
                ticket: 7,
            },
        ];
        assert_eq!(decode(&encode(&s)), s);
        assert!(decode(b"").is_empty());
        assert!(decode(&encode(&s)[..20]).is_empty());
        let mut bad = encode(&s);
        bad[0] = 9;
        assert!(decode(&bad).is_empty());
        assert!(bucket_key("r", "v").starts_with("aml-cc:"));
        assert_eq!(bucket_key("r", "v").len(), "aml-cc:".len() + 32);
        assert_ne!(bucket_key("r", "v"), bucket_key("r", "w"));
    }

    #[test]
    fn at_most_max_in_flight_across_workers_and_release_frees_one() {
        let mut store = KongStore::default();
        let (mut a, mut b) = (Slots::new(1), Slots::new(2));
        alive(&mut store, &mut [&mut a, &mut b], 0);
        let (r1, t1) = a.acquire(&mut store, B, 2, 0);
        let (r2, _t2) = b.acquire(&mut store, B, 2, 0);
        assert_eq!((r1, r2), (Acquired::Shared, Acquired::Shared));
        assert_eq!(b.acquire(&mut store, B, 2, 0), (Acquired::Full, None));
        assert_eq!(a.acquire(&mut store, B, 2, 0), (Acquired::Full, None));
        // Another bucket is not affected.
        assert_eq!(
            a.acquire(&mut store, "aml-cc:other", 2, 0).0,
            Acquired::Shared
        );
        a.release(&mut store, B, t1.unwrap());
        a.release(&mut store, B, t1.unwrap()); // twice: harmless
        let (r, t3) = b.acquire(&mut store, B, 2, 0);
        assert_eq!(r, Acquired::Shared);
        assert_eq!(decode(&store.map[B].0).len(), 2);
        b.release(&mut store, B, t3.unwrap());
        assert_eq!(decode(&store.map[B].0).len(), 1);
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn a_dead_workers_slots_are_reclaimed_after_its_heartbeat_stops() {
        let mut store = KongStore::default();
        let (mut a, mut b) = (Slots::new(1), Slots::new(2));
        alive(&mut store, &mut [&mut a, &mut b], 0);
        assert_eq!(a.acquire(&mut store, B, 1, 0).0, Acquired::Shared);
        // Worker 1 dies holding the slot. Until its heartbeat is stale, the slot holds.
        let mut t = 0;
        while t <= RECLAIM_AFTER_MS {
            b.heartbeat(&mut store, t);
            assert_eq!(
                b.acquire(&mut store, B, 1, t).0,
                Acquired::Full,
                "at {t} ms"
            );
            t += HEARTBEAT_EVERY_MS;
        }
        b.heartbeat(&mut store, t);
        assert_eq!(
            b.acquire(&mut store, B, 1, t).0,
            Acquired::Shared,
            "reclaimed at {t} ms"
        );
        // A slot whose worker has no heartbeat at all is abandoned too.
        let mut store = KongStore::default();
        store.map.insert(
            B.into(),
            (
                encode(&[Slot {
                    worker: 3,
                    ticket: 1,
                }]),
                1,
            ),
        );
        let mut d = Slots::new(4);
        assert_eq!(d.acquire(&mut store, B, 1, 0).0, Acquired::Shared);
        // A worker that just started is alive from its first acquire on.
        let mut e = Slots::new(5);
        assert_eq!(e.acquire(&mut store, B, 1, 0).0, Acquired::Full);
    }

    #[test]
    fn own_slots_it_no_longer_holds_are_dropped() {
        let mut store = KongStore::default();
        let mut a = Slots::new(1);
        a.heartbeat(&mut store, 0);
        // A stale entry of this worker (a release that never reached shared data).
        store.map.insert(
            B.into(),
            (
                encode(&[Slot {
                    worker: 1,
                    ticket: 999,
                }]),
                1,
            ),
        );
        assert_eq!(a.acquire(&mut store, B, 1, 0).0, Acquired::Shared);
    }

    #[test]
    fn without_shared_data_each_worker_counts_its_own() {
        let mut a = Slots::new(1);
        let (r, t) = a.acquire(&mut NoSharedStore, B, 1, 0);
        assert_eq!(r, Acquired::Worker);
        assert_eq!(
            a.acquire(&mut NoSharedStore, B, 1, 0),
            (Acquired::Full, None)
        );
        a.release(&mut NoSharedStore, B, t.unwrap());
        assert_eq!(a.acquire(&mut NoSharedStore, B, 1, 0).0, Acquired::Worker);
        // Contended beyond the retries: the same per-worker count.
        let mut store = KongStore {
            interfere: 100,
            ..KongStore::default()
        };
        assert_eq!(a.acquire(&mut store, B, 1, 0), (Acquired::Full, None));
        assert_eq!(a.acquire(&mut store, "aml-cc:c", 1, 0).0, Acquired::Worker);
    }

    #[test]
    fn an_evicted_slot_list_is_found_and_rebuilt_from_the_workers_own_slots() {
        let mut store = KongStore::default();
        let mut a = Slots::new(1);
        a.heartbeat(&mut store, 0);
        let (_, t1) = a.acquire(&mut store, B, 2, 0);
        let (_, t2) = a.acquire(&mut store, B, 2, 0);
        assert_eq!(a.take_lost(), 0);
        store.evict(B);
        // Its two requests are still in flight: the list comes back with them, and holds.
        assert_eq!(a.acquire(&mut store, B, 2, 0), (Acquired::Full, None));
        assert_eq!(a.take_lost(), 1);
        assert_eq!(decode(&store.map[B].0).len(), 2);
        a.release(&mut store, B, t1.unwrap());
        assert_eq!(a.take_lost(), 0);
        // A release that finds its slot gone is a loss too.
        store.evict(B);
        a.release(&mut store, B, t2.unwrap());
        assert_eq!(a.take_lost(), 1);
        // The last release removes the emptied list.
        let (_, t) = a.acquire(&mut store, B, 2, 0);
        assert_eq!(decode(&store.map[B].0).len(), 1);
        a.release(&mut store, B, t.unwrap());
        assert_eq!(a.take_lost(), 0);
        assert!(!store.map.contains_key(B), "no list left for an idle key");
        // The heartbeat found gone while slots are held: others may reclaim them.
        let (_, _t3) = a.acquire(&mut store, B, 2, 0);
        store.evict(&heartbeat_key(1));
        a.heartbeat(&mut store, HEARTBEAT_EVERY_MS);
        assert_eq!(a.take_lost(), 1);
    }

    #[test]
    fn a_dead_workers_heartbeat_goes_with_its_slots() {
        let mut store = KongStore::default();
        let (mut a, mut b) = (Slots::new(1), Slots::new(2));
        alive(&mut store, &mut [&mut a, &mut b], 0);
        assert_eq!(a.acquire(&mut store, B, 1, 0).0, Acquired::Shared);
        let t = RECLAIM_AFTER_MS + HEARTBEAT_EVERY_MS;
        b.heartbeat(&mut store, t);
        let (got, t2) = b.acquire(&mut store, B, 1, t);
        assert_eq!(got, Acquired::Shared);
        assert!(!store.map.contains_key(&heartbeat_key(1)));
        assert!(store.map.contains_key(&heartbeat_key(2)));
        b.release(&mut store, B, t2.unwrap());
        assert!(!store.map.contains_key(B));
    }
}
