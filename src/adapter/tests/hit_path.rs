//! The warm path's host-call budget, pinned by kind (counts, not timings), and the
//! node-wide verified-token cache and key-set changes across two workers on one host's shared data.

use super::mem_host::Call;
use std::collections::BTreeMap;

use super::*;

/// The host calls of one warm request (header callback and response headers), by kind.
fn hit(w: &mut World, id: u32, path: &str) -> (Action, BTreeMap<&'static str, usize>) {
    w.take();
    w.host.take_tally();
    let (mut http, action) = w.request(id, path, true);
    w.response_headers(&mut http, id);
    (action, w.host.take_tally())
}

fn budget(pairs: &[(&'static str, usize)]) -> BTreeMap<&'static str, usize> {
    pairs.iter().copied().collect()
}

fn counted(calls: &[(u32, Call)], name: &str) -> usize {
    count(calls, |c| matches!(c, Call::Count(n) if n == name))
}

#[test]
fn kong_warm_request_host_call_budget() {
    let mut w = World::new(true, &jwks_config(""));
    w.warm_kong(1);
    // The first request after warming learns what is per worker (undeclared nginx
    // variables); from the next one on, the budget holds.
    hit(&mut w, 2, "/score");
    for id in 3..5 {
        let (action, tally) = hit(&mut w, id, "/score");
        assert_eq!(action, Action::Continue);
        assert_eq!(
            tally,
            budget(&[
                ("audit_line", 1),
                ("increment_metric", 1),
                ("now_ms", 1),
                // ngx.request_uri: the raw target is per request (Kong's `:path` is decoded).
                ("property", 1),
                ("request_headers", 1),
                // authorization set to "" (Kong forwards the emptied value; its remove
                // would not remove), four identity headers, the route's header, x-request-id.
                ("set_request_header", 7),
            ]),
            "{:?}",
            w.take()
        );
    }
}

#[test]
fn envoy_warm_request_host_call_budget() {
    let mut w = World::envoy();
    w.warm_envoy(1);
    hit(&mut w, 2, "/score");
    for id in 3..5 {
        let (action, tally) = hit(&mut w, id, "/score");
        assert_eq!(action, Action::Continue);
        assert_eq!(
            tally,
            budget(&[
                ("audit_line", 1),
                ("increment_metric", 1),
                ("now_ms", 1),
                ("request_headers", 1),
                // authorization emptied then removed, four identity headers, the route's
                // header, x-request-id.
                ("set_request_header", 8),
            ]),
            "{:?}",
            w.take()
        );
    }
}

#[test]
fn a_token_verified_by_one_worker_is_a_shared_hit_in_another() {
    for kong in [true, false] {
        let mut a = World::new(kong, &jwks_config(""));
        if kong {
            a.warm_kong(1);
        } else {
            a.warm_envoy(1);
        }
        // Worker B: same host, so same shared data (key set and verified tokens).
        let mut b = World::on(a.host.clone(), kong, &jwks_config(""));
        if !kong {
            // Envoy: B parks until its tick adopts the node's key set.
            b.request(2, "/score", true);
            b.tick();
        } else {
            b.request(2, "/score", true);
        }
        let calls = b.take();
        assert_eq!(
            responses(&calls),
            vec![],
            "kong={kong}: allowed without a local answer: {calls:?}"
        );
        assert!(
            dispatches(&calls).is_empty(),
            "kong={kong}: no key fetch: {calls:?}"
        );
        assert_eq!(
            counted(&calls, "verifications_total"),
            0,
            "kong={kong}: {calls:?}"
        );
        assert_eq!(
            counted(&calls, "verified_cache_total_result=shared_hit"),
            1,
            "kong={kong}: {calls:?}"
        );
        assert!(
            calls.contains(&(2, model_header())),
            "kong={kong}: {calls:?}"
        );
        // From then on B's own cache answers: no shared-data read at all.
        let before = b.host.mem().shared_data_calls;
        b.request(3, "/score", true);
        assert_eq!(b.host.mem().shared_data_calls, before, "kong={kong}");
    }
}

#[test]
fn new_keys_or_another_configuration_are_not_served_from_shared_data() {
    let mut a = World::new(true, &jwks_config(""));
    a.warm_kong(1);
    // Another configuration (another audience list): the shared record is not taken.
    let other = jwks_config("").replace(
        r#""audiences": ["api://gw"]"#,
        r#""audiences": ["api://gw", "api://x"]"#,
    );
    let mut b = World::on(a.host.clone(), true, &other);
    b.request(2, "/score", true);
    let calls = b.take();
    assert_eq!(
        counted(&calls, "verified_cache_total_result=shared_hit"),
        0,
        "{calls:?}"
    );
    assert_eq!(counted(&calls, "verifications_total"), 1, "{calls:?}");
}

#[test]
fn a_repeated_forged_token_is_refused_again_without_verification() {
    let mut w = World::new(true, &jwks_config(""));
    w.warm_kong(1);
    let good = w.token.clone();
    let (rest, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    w.token = format!("{rest}.{flipped}{}", &sig[1..]);
    for id in 2..5 {
        w.request(id, "/score", true);
        let calls = w.take();
        assert_eq!(
            responses(&calls),
            vec![(id, 401, "signature_invalid".to_string())],
            "{calls:?}"
        );
        let (verified, rejected) = (
            counted(&calls, "verifications_total"),
            counted(&calls, "verified_cache_total_result=rejected_hit"),
        );
        assert_eq!((verified, rejected), if id == 2 { (1, 0) } else { (0, 1) });
    }
    // A forged token writes nothing to shared data (only the warm-up's one record).
    let slots = |w: &World| {
        w.host
            .mem()
            .shared
            .keys()
            .filter(|k| k.starts_with("amlk:verified:"))
            .count()
    };
    assert_eq!(slots(&w), 1);
    // A valid token still passes, verified once.
    w.token = good;
    w.request(5, "/score", true);
    assert!(responses(&w.take()).is_empty());
}

#[test]
fn failing_verified_slots_leave_key_sets_and_rate_limits_in_shared_data() {
    let mut w = World::new(true, &jwks_config(""));
    w.host.mem().shared_fails_under = Some("amlk:verified:".into());
    w.warm_kong(1);
    let before = w.host.mem().shared_data_calls;
    // The shelf is off now: a new token costs no more verified-slot calls...
    w.token = {
        use jwt_simple::prelude::*;
        let claims = json!({
            "iss": format!("https://login.microsoftonline.com/{T1}/v2.0"), "tid": T1,
            "aud": "api://gw", "oid": "o-2", "iat": NOW - 60, "exp": NOW + 3600
        });
        let mut c = Claims::with_custom_claims(
            claims.as_object().cloned().unwrap(),
            Duration::from_secs(1),
        );
        c.issued_at = None;
        c.expires_at = None;
        c.invalid_before = None;
        RS256KeyPair::from_pem(RSA_A_PEM)
            .unwrap()
            .with_key_id("k1")
            .sign(c)
            .unwrap()
    };
    w.request(2, "/score", true);
    let calls = w.take();
    assert!(responses(&calls).is_empty(), "{calls:?}");
    assert_eq!(w.host.mem().shared_data_calls, before);
    // ...while rate limits still count in shared data.
    w.request(3, "/limited", true);
    assert!(w.host.mem().shared.keys().any(|k| k.starts_with("aml-rl:")));
}

/// The node's tokens signed by `pem` under `kid` (the claims of `token()`).
fn token_of(pem: &str, kid: &str) -> String {
    use jwt_simple::prelude::*;
    let claims = json!({
        "iss": format!("https://login.microsoftonline.com/{T1}/v2.0"), "tid": T1,
        "aud": "api://gw", "oid": OID, "sub": "s-1", "azp": "app-1",
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600, "ver": "2.0"
    });
    let mut c =
        Claims::with_custom_claims(claims.as_object().cloned().unwrap(), Duration::from_secs(1));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    RS256KeyPair::from_pem(pem)
        .unwrap()
        .with_key_id(kid)
        .sign(c)
        .unwrap()
}

#[test]
fn a_key_removed_by_one_worker_is_refused_by_another_after_its_next_tick() {
    use crate::jwks::testkeys::RSA_B_PEM;
    let mut a = World::new(true, &jwks_config(""));
    a.warm_kong(1);
    let mut b = World::on(a.host.clone(), true, &jwks_config(""));
    // B accepts the old key (from shared data, then from its own cache).
    for id in [2, 3] {
        b.request(id, "/score", true);
        assert_eq!(responses(&b.take()), vec![], "request {id}");
    }
    // Past the unknown-kid refetch limit; B has just read the node's record.
    a.host.mem().now_ms += 301_000;
    b.tick();
    b.take();
    // The IdP dropped k1 for k2: A's request with a k2 token refetches (a ride on Kong).
    a.token = token_of(RSA_B_PEM, "k2");
    let (mut http, _) = a.request(10, "/score", true);
    let (_, call) = one_dispatch(&a.take());
    a.answer_ride(
        &mut http,
        10,
        call,
        200,
        &jwks(&[rsa_jwk(RSA_B_PEM, "k2", "")]),
    );
    assert_eq!(responses(&a.take()), vec![], "k2 passes on A");
    // B's very next tick takes the new set: the k1 token is refused, the k2 token passes.
    b.tick();
    let calls = b.take();
    assert!(dispatches(&calls).is_empty(), "{calls:?}");
    b.request(11, "/score", true);
    assert_eq!(
        responses(&b.take()),
        vec![(11, 401, "kid_unknown".to_string())]
    );
    b.token = a.token.clone();
    b.request(12, "/score", true);
    assert_eq!(responses(&b.take()), vec![]);
}
