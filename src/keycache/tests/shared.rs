//! Node-wide sharing: record and lease formats and rules, several workers over one store.

use super::*;

#[test]
fn shared_record_roundtrip_and_junk() {
    let r = SharedRecord {
        version: 7,
        fetched_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_003_600_000,
        body: b"{\"keys\":[]}".to_vec(),
    };
    let e = r.encode();
    assert_eq!(e.len(), 5 + 28 + r.body.len());
    assert_eq!(SharedRecord::decode(&e), Some(r.clone()));
    assert_eq!(SharedRecord::decode(&[]), None);
    assert_eq!(SharedRecord::decode(b"hello world"), None);
    assert_eq!(SharedRecord::decode(&e[..e.len() - 1]), None);
    let mut extra = e.clone();
    extra.push(0);
    assert_eq!(SharedRecord::decode(&extra), None);
    let mut other_version = e.clone();
    other_version[4] = 2;
    assert_eq!(SharedRecord::decode(&other_version), None);
    for n in 0..e.len() {
        let _ = SharedRecord::decode(&e[..n]); // never panics
    }
    assert_eq!(Lease::decode(&e), None);
}

#[test]
fn lease_roundtrip_and_take_decision() {
    let l = Lease {
        owner_id: 42,
        until_ms: 5000,
        failure: None,
    };
    assert_eq!(Lease::decode(&l.encode()), Some(l.clone()));
    let f = Lease {
        owner_id: 42,
        until_ms: 9000,
        failure: Some(SharedFailure {
            at_ms: 8000,
            reason: "jwks_http_500".into(),
            streak: 3,
        }),
    };
    let e = f.encode();
    assert_eq!(Lease::decode(&e), Some(f.clone()));
    assert_eq!(Lease::decode(&e[..e.len() - 1]), None);
    assert_eq!(Lease::decode(b"AMLL\x01short"), None);
    assert_eq!(SharedRecord::decode(&e), None);

    assert!(may_take_lease(None, 1, 0));
    assert!(!may_take_lease(Some(&l), 1, 4999));
    assert!(may_take_lease(Some(&l), 1, 5000));
    assert!(may_take_lease(Some(&l), 42, 10));
}

#[test]
fn adoption_and_write_rules() {
    let rec = |v, at| SharedRecord {
        version: v,
        fetched_at_ms: at,
        expires_at_ms: at + 1,
        body: vec![],
    };
    assert!(should_adopt(&rec(1, 100), None));
    assert!(should_adopt(&rec(1, 101), Some((100, 5))));
    assert!(should_adopt(&rec(6, 100), Some((100, 5))));
    assert!(!should_adopt(&rec(5, 100), Some((100, 5))));
    assert!(!should_adopt(&rec(9, 99), Some((100, 5))));

    assert_eq!(record_to_write(None, 10, 20, b"x").unwrap().version, 1);
    assert_eq!(
        record_to_write(Some(&rec(4, 9)), 10, 20, b"x")
            .unwrap()
            .version,
        5
    );
    assert_eq!(
        record_to_write(Some(&rec(4, 10)), 10, 20, b"x")
            .unwrap()
            .version,
        5
    );
    assert!(record_to_write(Some(&rec(4, 11)), 10, 20, b"x").is_none());
}

/// Two caches (two workers) over one store.
struct Node {
    store: KongStore,
}

impl Node {
    fn io(&mut self, now_ms: u64) -> Io<'_> {
        Io {
            now_ms,
            random: 200,
            store: &mut self.store,
        }
    }
    fn tick(&mut self, c: &mut KeyCache<Dummy>, now: u64) -> Vec<KeyAction> {
        let mut out = Vec::new();
        c.on_tick(&mut self.io(now), parse, &mut out);
        out
    }
    fn respond(
        &mut self,
        c: &mut KeyCache<Dummy>,
        now: u64,
        t: Ticket,
        r: &HttpResponse,
    ) -> Vec<KeyAction> {
        let mut out = Vec::new();
        c.on_response(&mut self.io(now), t, r, parse, &mut out);
        out
    }
}

/// Two workers of one node: A fetched `keys:a` at 0-100 and B adopted it at 200.
fn two_workers_holding_keys_a() -> (Node, KeyCache<Dummy>, KeyCache<Dummy>) {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    let d = one_dispatch(&n.tick(&mut a, 0));
    n.respond(&mut a, 100, d.ticket, &ok("keys:a"));
    n.tick(&mut b, 200);
    (n, a, b)
}

/// A (worker 1) holds the node's lease until `until_ms`, backing off after a third failed
/// attempt (502) at `failed_at_ms`.
fn hold_failed_lease(n: &mut Node, a: &KeyCache<Dummy>, failed_at_ms: u64, until_ms: u64) {
    let lease_key = a.source().shared_lease_key();
    let lease = Lease {
        owner_id: 1,
        until_ms,
        failure: Some(SharedFailure {
            at_ms: failed_at_ms,
            reason: "jwks_http_502".into(),
            streak: 3,
        }),
    };
    let cas = n.store.map[&lease_key].1;
    n.store.set(&lease_key, &lease.encode(), Some(cas)).unwrap();
}

#[test]
fn one_worker_fetches_others_adopt() {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    assert_eq!(b.wait_for_keys(0, 7), WaitDecision::Wait);
    let d = one_dispatch(&n.tick(&mut a, 0));
    // B sees A's lease: no second fetch.
    for t in [0, 200, 400] {
        assert!(dispatches(&n.tick(&mut b, t)).is_empty());
    }
    n.respond(&mut a, 500, d.ticket, &ok("keys:a,b"));
    let rec = SharedRecord::decode(&n.store.map[&a.source().shared_record_key()].0).unwrap();
    assert_eq!(
        (rec.version, rec.fetched_at_ms, rec.expires_at_ms),
        (1, 500, 3_600_500)
    );
    let lease = Lease::decode(&n.store.map[&a.source().shared_lease_key()].0).unwrap();
    assert_eq!(lease.until_ms, 0); // released
                                   // B adopts on its next tick and wakes its waiter; no fetch.
    let acts = n.tick(&mut b, 600);
    assert!(dispatches(&acts).is_empty());
    assert_eq!(resumed(&acts), vec![7]);
    assert!(matches!(
        events(&acts)[0],
        Event::AdoptedFromShared {
            keys: 2,
            fetched_at_ms: 500,
            ..
        }
    ));
    assert_eq!(b.keys().unwrap().0, vec!["a", "b"]);
    assert_eq!(b.keys_age_ms(1500), Some(1000));
    // Both refresh at the same expiry; only one fetches.
    let t = 3_600_500;
    let d = one_dispatch(&n.tick(&mut b, t));
    assert!(dispatches(&n.tick(&mut a, t)).is_empty());
    n.respond(&mut b, t + 100, d.ticket, &ok("keys:b,c"));
    // A (fresh-keys poll or refresh) adopts B's newer set.
    let acts = n.tick(&mut a, t + 200);
    assert!(dispatches(&acts).is_empty());
    assert_eq!(a.keys().unwrap().0, vec!["b", "c"]);
    assert_eq!(a.generation(), 2);
    // A new instance (e.g. after a trap) starts warm from shared data.
    let mut c = cache(JWKS, 3);
    let acts = n.tick(&mut c, t + 300);
    assert!(dispatches(&acts).is_empty());
    assert_eq!(c.keys().unwrap().0, vec!["b", "c"]);
    // Unknown-kid refetch on A is refused: B fetched recently (node-wide).
    assert_eq!(
        a.request_refetch_for_unknown_kid(t + 1000, 1),
        Refetch::Refused
    );
}

#[test]
fn fresh_workers_poll_shared_record() {
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    assert_eq!(b.generation(), 1);
    // A refetches for an unknown kid later; B picks it up within SHARED_POLL_MS.
    let t = 400_000;
    assert_eq!(a.request_refetch_for_unknown_kid(t, 9), Refetch::Wait);
    let d = one_dispatch(&n.tick(&mut a, t));
    n.respond(&mut a, t + 100, d.ticket, &ok("keys:a,new"));
    n.tick(&mut b, t + 200);
    n.tick(&mut b, t + 200 + SHARED_POLL_MS);
    assert_eq!(b.keys().unwrap().0, vec!["a", "new"]);
}

/// A worker whose keys are stale while another holds the lease (fetching, or backing off
/// after a failure) still takes the newer set the other installed: it never keeps
/// refusing the IdP's newest key for a whole outage.
#[test]
fn waiting_workers_adopt_newer_keys_while_another_holds_the_lease() {
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    assert_eq!(b.keys().unwrap().0, vec!["a"]);
    // Shortly before B's keys go stale, A refetches for a new kid...
    let t = 3_599_000;
    assert_eq!(a.request_refetch_for_unknown_kid(t, 9), Refetch::Wait);
    let d = one_dispatch(&n.tick(&mut a, t));
    n.respond(&mut a, t + 100, d.ticket, &ok("keys:a,new"));
    // ...and then fails its next attempt: it backs off holding the lease.
    hold_failed_lease(&mut n, &a, t + 500, t + 60_000);
    // B goes stale (needs a fetch) while A holds the lease: no fetch, but A's newer keys.
    let stale = 3_600_200;
    assert!(dispatches(&n.tick(&mut b, stale)).is_empty());
    assert!(dispatches(&n.tick(&mut b, stale + 100)).is_empty());
    assert_eq!(b.keys().unwrap().0, vec!["a", "new"]);
}

/// A worker backing off with the node (another's failure seen) still polls the record, and
/// takes the set the other worker installs after all.
#[test]
fn workers_backing_off_with_the_node_adopt_the_next_good_set() {
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    // A failed an attempt and backs off for a minute, holding the lease.
    let t = 3_599_000;
    hold_failed_lease(&mut n, &a, t, t + 60_000);
    // B's keys go stale: it sees the failure and backs off with the node.
    let stale = 3_600_200;
    assert!(dispatches(&n.tick(&mut b, stale)).is_empty());
    // A refetches for a new kid (its own lease) and succeeds.
    assert_eq!(
        a.request_refetch_for_unknown_kid(stale + 100, 9),
        Refetch::Wait
    );
    let d = one_dispatch(&n.tick(&mut a, stale + 100));
    n.respond(&mut a, stale + 200, d.ticket, &ok("keys:a,new"));
    // B, still in the node's backoff, takes it on its next tick without fetching.
    let acts = n.tick(&mut b, stale + 300);
    assert!(dispatches(&acts).is_empty());
    assert_eq!(b.keys().unwrap().0, vec!["a", "new"]);
}

/// A worker that never saw another's failed attempt while its lease was held (its own keys
/// were fresh) and fails the next attempt continues the node's streak: one loud log line
/// per outage per node. An old failure starts a new streak.
#[test]
fn a_lapsed_failed_lease_continues_the_nodes_streak() {
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    let t = 3_600_100; // both stale now; A tries first and fails
    let d = one_dispatch(&n.tick(&mut a, t));
    let acts = n.respond(&mut a, t + 100, d.ticket, &status("502"));
    assert_eq!(failure_codes(&acts), vec![("jwks_http_502".into(), true)]);
    // A's lease (its backoff) runs out before B looks; B takes the next attempt.
    let later = t + 5_000;
    let d = one_dispatch(&n.tick(&mut b, later));
    let acts = n.respond(&mut b, later + 100, d.ticket, &status("502"));
    assert_eq!(failure_codes(&acts), vec![("jwks_http_502".into(), false)]);
    assert_eq!(b.failure_streak(), 2);

    // A failure long past is another outage: logged again.
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    let d = one_dispatch(&n.tick(&mut a, t));
    n.respond(&mut a, t + 100, d.ticket, &status("502"));
    let much_later = t + 600_000;
    let d = one_dispatch(&n.tick(&mut b, much_later));
    let acts = n.respond(&mut b, much_later + 100, d.ticket, &status("502"));
    assert_eq!(failure_codes(&acts), vec![("jwks_http_502".into(), true)]);
}

#[test]
fn unknown_kid_refetch_limit_is_per_node_even_before_the_record_was_seen() {
    // jwks_min_refetch_seconds = 300 (default).
    let (mut n, mut a, mut b) = two_workers_holding_keys_a();
    // A refetches for a new kid; B gets the same kid before it polled A's record.
    let t = 400_000;
    assert_eq!(a.request_refetch_for_unknown_kid(t, 9), Refetch::Wait);
    let d = one_dispatch(&n.tick(&mut a, t));
    n.respond(&mut a, t + 100, d.ticket, &ok("keys:a,new"));
    assert_eq!(b.request_refetch_for_unknown_kid(t + 150, 5), Refetch::Wait);
    // B adopts A's refetch (younger than the limit) instead of fetching again.
    let acts = n.tick(&mut b, t + 200);
    assert!(dispatches(&acts).is_empty(), "{acts:?}");
    assert_eq!(resumed(&acts), vec![5]);
    assert_eq!(b.keys().unwrap().0, vec!["a", "new"]);
    // Still unknown after resuming: refused, no fetch.
    assert_eq!(
        b.request_refetch_for_unknown_kid(t + 200, 5),
        Refetch::Refused
    );
    assert!(dispatches(&n.tick(&mut b, t + 400)).is_empty());
    // Past the limit, B's own unknown kid fetches again.
    let later = t + 100 + 300_000;
    assert_eq!(b.request_refetch_for_unknown_kid(later, 6), Refetch::Wait);
    one_dispatch(&n.tick(&mut b, later));
}

#[test]
fn shared_failure_answers_other_workers_promptly() {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    assert_eq!(b.wait_for_keys(0, 5), WaitDecision::Wait);
    let d = one_dispatch(&n.tick(&mut a, 0));
    assert!(dispatches(&n.tick(&mut b, 100)).is_empty());
    n.respond(&mut a, 200, d.ticket, &status("502"));
    let lease = Lease::decode(&n.store.map[&a.source().shared_lease_key()].0).unwrap();
    assert_eq!(lease.owner_id, 1);
    assert_eq!(lease.until_ms, 1200);
    assert_eq!(lease.failure.as_ref().unwrap().reason, "jwks_http_502");
    // B answers its waiter 503 on the next tick, and doesn't fetch during the backoff.
    let acts = n.tick(&mut b, 400);
    assert_eq!(unavailable(&acts), vec![(5, 1)]);
    assert!(dispatches(&acts).is_empty());
    assert!(matches!(events(&acts)[0], Event::SharedFailureSeen { .. }));
    assert_eq!(
        b.wait_for_keys(500, 6),
        WaitDecision::Unavailable {
            retry_after_secs: 1
        }
    );
    // After the backoff exactly one of them takes the lease.
    let da = dispatches(&n.tick(&mut a, 1200)).len();
    let acts = n.tick(&mut b, 1200);
    assert_eq!(da + dispatches(&acts).len(), 1);
    assert_eq!(da, 1);
    assert!(dispatches(&acts).is_empty());
    // If B takes the next attempt (A's lease lapsed), the node's backoff keeps growing
    // and B's failure is not logged loudly again.
    let mut b2 = cache(JWKS, 3);
    n.tick(&mut b2, 1300); // sees the lease held (A is fetching)
    let lease_key = a.source().shared_lease_key();
    let lease = Lease {
        owner_id: 1,
        until_ms: 2000,
        failure: Some(SharedFailure {
            at_ms: 1250,
            reason: "jwks_http_502".into(),
            streak: 4,
        }),
    };
    let cas = n.store.map[&lease_key].1;
    n.store.set(&lease_key, &lease.encode(), Some(cas)).unwrap();
    n.tick(&mut b2, 1400);
    assert_eq!(b2.failure_streak(), 4);
    let d = one_dispatch(&n.tick(&mut b2, 2000));
    let acts = n.respond(&mut b2, 2100, d.ticket, &status("502"));
    assert_eq!(failure_codes(&acts), vec![("jwks_http_502".into(), false)]);
    assert_eq!(b2.failure_streak(), 5);
    assert_eq!(b2.retry_after_secs(2100), 16);
}

#[test]
fn lapsed_lease_is_taken_over() {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    one_dispatch(&n.tick(&mut a, 0));
    // A's instance dies; its lease lapses after timeout + margin.
    assert!(dispatches(&n.tick(&mut b, 3_999)).is_empty());
    assert_eq!(dispatches(&n.tick(&mut b, 4_000)).len(), 1);
}

#[test]
fn junk_in_shared_data_is_ignored_and_overwritten() {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let rk = a.source().shared_record_key();
    let lk = a.source().shared_lease_key();
    n.store.map.insert(rk.clone(), (b"garbage".to_vec(), 3));
    n.store.map.insert(lk.clone(), (b"garbage".to_vec(), 3));
    let d = one_dispatch(&n.tick(&mut a, 0));
    n.respond(&mut a, 10, d.ticket, &ok("keys:a"));
    assert!(SharedRecord::decode(&n.store.map[&rk].0).is_some());
    // A decodable record whose body is not a key set is not adopted (and not retried).
    let bad = SharedRecord {
        version: 9,
        fetched_at_ms: 50,
        expires_at_ms: 9_999_999,
        body: b"keys:".to_vec(),
    };
    n.store.map.insert(rk.clone(), (bad.encode(), 9));
    let mut b = cache(JWKS, 2);
    let acts = n.tick(&mut b, 100);
    assert!(b.keys().is_none());
    assert_eq!(dispatches(&acts).len(), 1);
}

#[test]
fn per_worker_mode_fetches_independently() {
    let mut env = Env::per_worker();
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    assert_eq!(dispatches(&tick(&mut a, &mut env, 0)).len(), 1);
    assert_eq!(dispatches(&tick(&mut b, &mut env, 0)).len(), 1);
}

#[test]
fn stamp_roundtrip_and_junk() {
    use crate::keycache::shared::{decode_stamp, encode_stamp};
    let raw = encode_stamp((500, 3));
    assert_eq!(raw.len(), 21);
    assert_eq!(decode_stamp(&raw), Some((500, 3)));
    assert_eq!(decode_stamp(&raw[..20]), None);
    assert_eq!(decode_stamp(b"AMLK\x01aaaaaaaabbbbbbbb"), None);
    let mut longer = raw.clone();
    longer.push(0);
    assert_eq!(decode_stamp(&longer), None);
}

/// Emergency removal: once one worker installed a set without key `a`, the other worker
/// holds the same set after its next tick (not after the record poll period).
#[test]
fn a_key_removed_on_one_worker_is_gone_on_every_worker_after_one_tick() {
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    let d = one_dispatch(&n.tick(&mut a, 0));
    n.respond(&mut a, 100, d.ticket, &ok("keys:a,b"));
    n.tick(&mut b, 200);
    assert_eq!(b.keys().unwrap().0, vec!["a", "b"]);
    let stamp_key = a.source().shared_stamp_key();
    assert_eq!(
        crate::keycache::shared::decode_stamp(&n.store.map[&stamp_key].0),
        Some((100, 1))
    );
    // Nothing new: B's ticks change nothing.
    for t in [400, 600, 800] {
        assert!(n.tick(&mut b, t).is_empty());
    }
    // Long after the record was last read, A refetches for an unknown kid: `a` is gone.
    let t = 400_000;
    assert_eq!(a.request_refetch_for_unknown_kid(t, 9), Refetch::Wait);
    let d = one_dispatch(&n.tick(&mut a, t));
    n.respond(&mut a, t + 100, d.ticket, &ok("keys:b,c"));
    assert_eq!(
        crate::keycache::shared::decode_stamp(&n.store.map[&stamp_key].0),
        Some((t + 100, 2))
    );
    // B's next tick, whenever its periodic record poll is due: B's set is A's.
    b.next_shared_poll_ms = u64::MAX;
    let acts = n.tick(&mut b, t + 150);
    assert!(dispatches(&acts).is_empty(), "{acts:?}");
    assert_eq!(b.keys().unwrap().0, vec!["b", "c"]);
    assert_eq!(b.generation(), a.generation());
    assert_eq!(b.body(), a.body());
    // The same stamp does not make B read the record again.
    assert!(n.tick(&mut b, t + 350).is_empty());
}

/// A stamp that is junk, or names a record B cannot use, leaves B on its keys and its
/// periodic poll; a stamp older than B's keys is ignored.
#[test]
fn junk_or_useless_stamps_change_nothing() {
    let (mut n, a, mut b) = two_workers_holding_keys_a();
    let stamp_key = a.source().shared_stamp_key();
    b.next_shared_poll_ms = u64::MAX;
    n.store.map.insert(stamp_key.clone(), (b"junk".to_vec(), 9));
    assert!(n.tick(&mut b, 400).is_empty());
    n.store.map.insert(
        stamp_key.clone(),
        (crate::keycache::shared::encode_stamp((50, 7)), 10),
    );
    assert!(n.tick(&mut b, 600).is_empty());
    // A newer stamp but a record of garbage: refused once, keys kept.
    let rec = SharedRecord {
        version: 2,
        fetched_at_ms: 700,
        expires_at_ms: 3_600_700,
        body: b"not keys".to_vec(),
    };
    let record_key = a.source().shared_record_key();
    n.store.map.insert(record_key, (rec.encode(), 11));
    n.store.map.insert(
        stamp_key,
        (crate::keycache::shared::encode_stamp((700, 2)), 12),
    );
    n.tick(&mut b, 800);
    n.tick(&mut b, 1000);
    assert_eq!(b.keys().unwrap().0, vec!["a"]);
}
