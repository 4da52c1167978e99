//! Requests waiting for keys: coalescing, unknown-`kid` refetches, timeouts.

use super::*;

#[test]
fn cold_start_coalesces_waiters_onto_one_fetch() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    assert_eq!(c.keys_state(0), KeysState::Cold);
    for id in 0..50 {
        assert_eq!(c.wait_for_keys(10, id), WaitDecision::Wait);
    }
    // Request side never dispatches; the tick does, once.
    let a = tick(&mut c, &mut env, 200);
    let d = one_dispatch(&a);
    for t in [400, 600, 800] {
        assert!(dispatches(&tick(&mut c, &mut env, t)).is_empty());
    }
    assert_eq!(c.wait_for_keys(900, 99), WaitDecision::Wait);
    assert_eq!(c.waiter_count(), 51);
    let a = respond(&mut c, &mut env, 1000, d.ticket, &ok("keys:k1"));
    let mut r = resumed(&a);
    r.sort();
    assert_eq!(r.len(), 51);
    assert_eq!(c.waiter_count(), 0);
    assert_eq!(c.wait_for_keys(1001, 7), WaitDecision::Ready);
}

#[test]
fn unknown_kid_refetch_is_rate_limited_and_single_flight() {
    let (mut c, mut env) = warm(JWKS); // keys fetched at t=100
    assert_eq!(
        c.request_refetch_for_unknown_kid(10_000, 1),
        Refetch::Refused
    );
    assert_eq!(
        c.request_refetch_for_unknown_kid(300_099, 1),
        Refetch::Refused
    );
    assert_eq!(c.waiter_count(), 0);
    let t = 300_100;
    assert_eq!(c.request_refetch_for_unknown_kid(t, 1), Refetch::Wait);
    assert_eq!(c.request_refetch_for_unknown_kid(t + 5, 2), Refetch::Wait);
    let d = one_dispatch(&tick(&mut c, &mut env, t + 200));
    // Joining while in flight is allowed.
    assert_eq!(c.request_refetch_for_unknown_kid(t + 300, 3), Refetch::Wait);
    assert!(dispatches(&tick(&mut c, &mut env, t + 400)).is_empty());
    let a = respond(&mut c, &mut env, t + 500, d.ticket, &ok("keys:a,b,new"));
    let mut r = resumed(&a);
    r.sort();
    assert_eq!(r, vec![1, 2, 3]);
    // Right after a fetch: refused again.
    assert_eq!(
        c.request_refetch_for_unknown_kid(t + 600, 4),
        Refetch::Refused
    );
}

#[test]
fn unknown_kid_waiter_is_resumed_when_refetch_fails_or_times_out() {
    let (mut c, mut env) = warm(JWKS);
    let t = 400_000;
    assert_eq!(c.request_refetch_for_unknown_kid(t, 1), Refetch::Wait);
    let d = one_dispatch(&tick(&mut c, &mut env, t + 200));
    let a = respond(&mut c, &mut env, t + 300, d.ticket, &status("500"));
    assert_eq!(resumed(&a), vec![1]); // re-run → 401 kid_unknown, keys kept
    assert_eq!(
        c.request_refetch_for_unknown_kid(t + 300, 1),
        Refetch::Refused
    );
    assert!(c.keys().is_some());
    // During backoff a new unknown kid is refused.
    assert_eq!(
        c.request_refetch_for_unknown_kid(t + 400, 2),
        Refetch::Refused
    );

    // A refetch that does not answer in time: 503 at the waiter's deadline.
    let t = 800_000;
    assert_eq!(c.request_refetch_for_unknown_kid(t, 3), Refetch::Wait);
    one_dispatch(&tick(&mut c, &mut env, t + 200));
    let a = tick(&mut c, &mut env, t + 4000);
    assert_eq!(unavailable(&a), vec![(3, 4)]); // budget: 3000 + 1000 ms
}

#[test]
fn resumed_request_never_waits_twice_even_without_min_refetch() {
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_min_refetch_seconds": 0"#));
    assert_eq!(c.request_refetch_for_unknown_kid(1000, 1), Refetch::Wait);
    let d = one_dispatch(&tick(&mut c, &mut env, 1000));
    let a = respond(&mut c, &mut env, 1100, d.ticket, &ok("keys:a,b"));
    assert_eq!(resumed(&a), vec![1]);
    // Its re-run still misses the kid: refused, no second fetch for it.
    assert_eq!(c.request_refetch_for_unknown_kid(1100, 1), Refetch::Refused);
    // Another request may refetch (min_refetch 0).
    assert_eq!(c.request_refetch_for_unknown_kid(1100, 2), Refetch::Wait);
}

#[test]
fn cold_failure_answers_waiters_503_and_new_requests_fail_fast() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    for id in 1..=3 {
        assert_eq!(c.wait_for_keys(0, id), WaitDecision::Wait);
    }
    let d = one_dispatch(&tick(&mut c, &mut env, 0));
    let a = respond(&mut c, &mut env, 100, d.ticket, &kong_failure("timeout"));
    let u = unavailable(&a);
    assert_eq!(u.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(u.iter().all(|x| x.1 == 1)); // 1 s backoff
    assert!(matches!(
        events(&a)[0],
        Event::FetchFailed {
            have_keys: false,
            first_of_streak: true,
            ..
        }
    ));
    // During the backoff, new requests are answered 503 at once.
    assert_eq!(
        c.wait_for_keys(500, 9),
        WaitDecision::Unavailable {
            retry_after_secs: 1
        }
    );
    // After the backoff they wait again.
    assert_eq!(c.wait_for_keys(1100, 9), WaitDecision::Wait);
}

#[test]
fn waiter_times_out_with_503_and_retry_after() {
    let mut env = Env::per_worker();
    let mut c = cache(&format!(r#"{JWKS}, "jwks_timeout_ms": 2000"#), 1);
    assert_eq!(c.wait_for_keys(0, 1), WaitDecision::Wait);
    one_dispatch(&tick(&mut c, &mut env, 200));
    assert!(unavailable(&tick(&mut c, &mut env, 2800)).is_empty());
    // The host never calls back: the waiter's budget (2000 + 1000 ms) runs out.
    let a = tick(&mut c, &mut env, 3000);
    assert_eq!(unavailable(&a), vec![(1, 3)]);
    assert_eq!(c.waiter_count(), 0);
    // Then the call itself times out; the late response is ignored.
    let a = tick(&mut c, &mut env, 3200);
    assert_eq!(failure_codes(&a), vec![("jwks_timeout".into(), true)]);
    assert!(c.keys().is_none());
}

#[test]
fn cancelled_waiter_is_forgotten_and_stale_ticket_ignored() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    c.wait_for_keys(0, 1);
    c.wait_for_keys(0, 2);
    c.wait_for_keys(0, 2); // duplicate registration is one waiter
    assert_eq!(c.waiter_count(), 2);
    c.cancel_waiter(1);
    let d = one_dispatch(&tick(&mut c, &mut env, 0));
    assert!(respond(&mut c, &mut env, 10, Ticket(d.ticket.0 + 7), &ok("keys:a")).is_empty());
    let a = respond(&mut c, &mut env, 10, d.ticket, &ok("keys:a"));
    assert_eq!(resumed(&a), vec![2]);
    // A duplicate response for the same ticket does nothing.
    assert!(respond(&mut c, &mut env, 20, d.ticket, &ok("keys:b")).is_empty());
    assert_eq!(c.keys().unwrap().0, vec!["a"]);
}
