//! Concurrency-limit slots on each host: taken when a request is allowed, given back when
//! it ends (`on_done`), whichever way it ends; a heartbeat on the tick.

use super::*;

fn slots_config() -> String {
    jwks_config("").replace(
        r#""rate_limit": {"requests": 1, "window_seconds": 60, "key": "oid"}"#,
        r#""concurrency_limit": {"max_in_flight": 1, "key": "oid"}"#,
    )
}

#[test]
fn a_slot_is_held_until_the_request_ends_and_then_free_again() {
    for kong in [false, true] {
        let mut w = World::new(kong, &slots_config());
        if kong {
            w.warm_kong(2);
        } else {
            w.warm_envoy(2);
        }
        let (mut first, action) = w.request(3, "/limited", true);
        assert_eq!(action, Action::Continue, "kong={kong}");
        let (mut second, action) = w.request(4, "/limited", true);
        assert_eq!(action, Action::Pause);
        assert_eq!(
            responses(&w.take()),
            vec![(4, 429, "concurrency_limited".to_string())]
        );
        assert!(w.host.mem().shared.keys().any(|k| k.starts_with("aml-cc:")));
        // The denied request ends: it held nothing, the first still holds its slot.
        second.on_done();
        let (mut third, action) = w.request(5, "/limited", true);
        assert_eq!(action, Action::Pause);
        third.on_done();
        w.take();
        // The first ends (response sent, upstream error or client gone: all end here).
        first.on_done();
        let (mut fourth, action) = w.request(6, "/limited", true);
        assert_eq!(action, Action::Continue, "kong={kong}: the slot came back");
        fourth.on_done();
        // Other routes never take a slot.
        for id in 7..10 {
            assert_eq!(w.request(id, "/score", true).1, Action::Continue);
        }
        // The tick says this worker is alive, so other workers keep its slots.
        w.tick();
        assert!(w
            .host
            .mem()
            .shared
            .keys()
            .any(|k| k.starts_with("aml-cc-w:")));
    }
}

fn lost_counts(calls: &[(u32, super::mem_host::Call)], name: &str) -> usize {
    count(
        calls,
        |c| matches!(c, super::mem_host::Call::Count(n) if n == name),
    )
}

#[test]
fn limit_state_evicted_by_a_full_zone_is_counted_and_the_limits_still_hold() {
    // Rate limit (1 per minute): the window vanishes after the first request.
    let mut w = World::kong();
    w.warm_kong(2);
    assert_eq!(w.request(3, "/limited", true).1, Action::Continue);
    w.take();
    w.host.mem().shared.retain(|k, _| !k.starts_with("aml-rl:"));
    assert_eq!(w.request(4, "/limited", true).1, Action::Pause);
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(4, 429, "rate_limited".to_string())]
    );
    assert_eq!(lost_counts(&calls, crate::metrics::LOST_WINDOWS), 1);

    // Concurrency limit (1 in flight): the slot list vanishes while the first is in flight.
    let mut w = World::new(true, &slots_config());
    w.warm_kong(2);
    let (mut first, action) = w.request(3, "/limited", true);
    assert_eq!(action, Action::Continue);
    w.take();
    w.host.mem().shared.retain(|k, _| !k.starts_with("aml-cc:"));
    let (mut second, action) = w.request(4, "/limited", true);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(4, 429, "concurrency_limited".to_string())]
    );
    assert_eq!(lost_counts(&calls, crate::metrics::LOST_SLOTS), 1);
    second.on_done();
    first.on_done();
    // Nothing in flight: no slot list is left behind.
    assert!(!w.host.mem().shared.keys().any(|k| k.starts_with("aml-cc:")));
    let (mut third, action) = w.request(5, "/limited", true);
    assert_eq!(action, Action::Continue);
    third.on_done();
}

#[test]
fn a_context_deleted_without_on_done_gives_its_slot_back() {
    // Kong answers a failed upstream with an nginx error page and never calls `on_done`
    // for the request; it deletes the context when the request is freed.
    for kong in [false, true] {
        let mut w = World::new(kong, &slots_config());
        if kong {
            w.warm_kong(2);
        } else {
            w.warm_envoy(2);
        }
        let (first, action) = w.request(3, "/limited", true);
        assert_eq!(action, Action::Continue);
        assert_eq!(
            w.request(4, "/limited", true).1,
            Action::Pause,
            "kong={kong}"
        );
        w.take();
        drop(first);
        let (mut next, action) = w.request(5, "/limited", true);
        assert_eq!(action, Action::Continue, "kong={kong}: the slot came back");
        next.on_done();
    }
}
