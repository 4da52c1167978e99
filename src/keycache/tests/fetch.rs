//! The fetch cycle: success, TTLs, failures and backoff, discovery.

use super::*;

#[test]
fn success_path_events_generation_and_age() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    assert_eq!(c.generation(), 0);
    let d = one_dispatch(&tick(&mut c, &mut env, 0));
    assert!(c.fetch_in_flight());
    let a = respond(&mut c, &mut env, 250, d.ticket, &ok("keys:a,b,c"));
    assert_eq!(c.generation(), 1);
    assert!(!c.fetch_in_flight());
    let ev = events(&a);
    assert!(matches!(
        ev[0],
        Event::FetchOk {
            keys: 3,
            bytes: 10,
            changed: true,
            generation: 1,
            ttl_ms: 3_600_000,
            ..
        }
    ));
    assert_eq!(ev[0].level(), Level::Info);
    assert_eq!(c.keys_age_ms(10_250), Some(10_000));
    assert_eq!(c.keys_state(10_250), KeysState::Fresh);
    // No fetch while fresh.
    assert!(dispatches(&tick(&mut c, &mut env, 60_000)).is_empty());
}

#[test]
fn ttl_rules_from_cache_control() {
    let h = 3_600_000;
    assert_eq!(ttl_ms(None, h), h);
    assert_eq!(ttl_ms(Some("public, max-age=600"), h), 600_000);
    assert_eq!(ttl_ms(Some("max-age=5"), h), 60_000);
    assert_eq!(ttl_ms(Some("max-age=999999"), h), h);
    assert_eq!(ttl_ms(Some("no-cache"), h), 60_000);
    assert_eq!(ttl_ms(Some("private, No-Store"), h), 60_000);
    assert_eq!(ttl_ms(Some("max-age=\"120\""), h), 120_000);
    assert_eq!(ttl_ms(Some("max-age=abc"), h), h);
    // Refresh period below the floor: the period wins.
    assert_eq!(ttl_ms(Some("max-age=1"), 30_000), 30_000);

    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    let d = one_dispatch(&tick(&mut c, &mut env, 0));
    respond(
        &mut c,
        &mut env,
        0,
        d.ticket,
        &ok_with("keys:a", &[("Cache-Control", "max-age=120")]),
    );
    assert_eq!(c.keys_state(119_999), KeysState::Fresh);
    assert!(dispatches(&tick(&mut c, &mut env, 119_999)).is_empty());
    assert_eq!(c.keys_state(120_000), KeysState::Stale);
    assert_eq!(dispatches(&tick(&mut c, &mut env, 120_000)).len(), 1);
}

#[test]
fn background_refresh_does_not_block_requests() {
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
    let t = 600_100;
    assert_eq!(c.keys_state(t), KeysState::Stale);
    let d = one_dispatch(&tick(&mut c, &mut env, t));
    // While refreshing, requests keep using the stale keys.
    assert!(c.keys().is_some());
    assert_eq!(c.wait_for_keys(t + 10, 1), WaitDecision::Ready);
    assert_eq!(c.waiter_count(), 0);
    let a = respond(&mut c, &mut env, t + 200, d.ticket, &ok("keys:a,b"));
    // Same body: no generation bump, TTL renewed.
    assert_eq!(c.generation(), 1);
    assert!(matches!(
        events(&a)[0],
        Event::FetchOk { changed: false, .. }
    ));
    assert_eq!(c.keys_state(t + 300), KeysState::Fresh);
}

#[test]
fn removed_keys_stop_verifying_after_next_fetch() {
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
    let d = one_dispatch(&tick(&mut c, &mut env, 600_100));
    respond(&mut c, &mut env, 600_200, d.ticket, &ok("keys:b,c"));
    assert_eq!(c.keys().unwrap().0, vec!["b", "c"]);
    assert_eq!(c.generation(), 2);
}

#[test]
fn failure_kinds_keep_last_good_keys() {
    let mut big = ok("keys:a");
    big.body_size = DEFAULT_BODY_CAP + 1;
    big.body = None;
    let mut big_read = ok("keys:a");
    big_read.body = Some(vec![b'x'; DEFAULT_BODY_CAP + 1]);
    big_read.body_size = 10;
    let cases: Vec<(HttpResponse, &str)> = vec![
        (status("500"), "jwks_http_500"),
        (status("404"), "jwks_http_404"),
        (status("abc"), "jwks_garbage"),
        (kong_failure("timeout"), "jwks_timeout"),
        (kong_failure("broken connection"), "jwks_dispatch_failed"),
        (
            kong_failure("tls handshake failure"),
            "jwks_dispatch_failed",
        ),
        (kong_failure("resolver failure"), "jwks_dispatch_failed"),
        (HttpResponse::default(), "jwks_dispatch_failed"), // Envoy failure: no headers
        (ok("<html>"), "jwks_garbage"),
        (ok(""), "jwks_garbage"),
        (ok("keys:"), "jwks_empty"),
        (big, "jwks_too_large"),
        (big_read, "jwks_too_large"),
    ];
    for (resp, code) in cases {
        let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
        let d = one_dispatch(&tick(&mut c, &mut env, 600_100));
        let a = respond(&mut c, &mut env, 600_200, d.ticket, &resp);
        assert_eq!(
            failure_codes(&a),
            vec![(code.to_string(), true)],
            "{resp:?}"
        );
        assert_eq!(c.keys().unwrap().0, vec!["a", "b"], "{code}");
        assert_eq!(c.generation(), 1);
        assert_eq!(c.failure_streak(), 1);
    }
    // dispatch_http_call error, and no callback at all (Kong 3.8).
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
    let d = one_dispatch(&tick(&mut c, &mut env, 600_100));
    let mut a = Vec::new();
    c.on_dispatch_error(&mut env.io(600_100), d.ticket, &mut a);
    assert_eq!(
        failure_codes(&a),
        vec![("jwks_dispatch_failed".into(), true)]
    );
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
    one_dispatch(&tick(&mut c, &mut env, 600_100));
    assert!(failure_codes(&tick(&mut c, &mut env, 603_000)).is_empty());
    let a = tick(&mut c, &mut env, 604_100); // 3000 ms timeout + 1000 ms margin
    assert_eq!(failure_codes(&a), vec![("jwks_timeout".into(), true)]);
    assert!(c.keys().is_some());
}

const DEFAULT_BODY_CAP: usize = source::DEFAULT_MAX_BODY_BYTES;

#[test]
fn backoff_grows_with_bounded_jitter() {
    for r in [0u64, 1, 200, 400, 401, u64::MAX, 123_456_789] {
        let f = 800 + r % 401;
        assert_eq!(backoff_ms(1, r), 1000 * f / 1000);
        assert_eq!(backoff_ms(2, r), 2000 * f / 1000);
        assert_eq!(backoff_ms(6, r), 32_000 * f / 1000);
        assert_eq!(backoff_ms(7, r), 60_000 * f / 1000);
        assert_eq!(backoff_ms(u32::MAX, r), 60_000 * f / 1000);
        for n in 1..20 {
            let b = backoff_ms(n, r);
            let nominal = (1000u64 << (n - 1).min(16)).min(60_000);
            assert!(
                b >= nominal * 8 / 10 && b <= nominal * 12 / 10,
                "{n} {r} {b}"
            );
        }
    }

    // The state machine waits out each delay (jitter factor 1.0 in Env).
    let (mut c, mut env) = warm(&format!(r#"{JWKS}, "jwks_refresh_seconds": 600"#));
    let mut now = 600_100;
    let mut logged = 0;
    for n in 1..=8u32 {
        let d = one_dispatch(&tick(&mut c, &mut env, now));
        let a = respond(&mut c, &mut env, now, d.ticket, &status("503"));
        let f = failure_codes(&a);
        assert_eq!(f.len(), 1);
        if f[0].1 {
            logged += 1;
        }
        assert_eq!(c.failure_streak(), n);
        let delay = backoff_ms(n, env.rand);
        assert!(dispatches(&tick(&mut c, &mut env, now + delay - 1)).is_empty());
        assert_eq!(
            c.retry_after_secs(now),
            u32::try_from(delay.div_ceil(1000)).unwrap()
        );
        now += delay;
    }
    assert_eq!(logged, 1, "only the first failure of a streak is loud");
    // Recovery: one event, streak reset.
    let d = one_dispatch(&tick(&mut c, &mut env, now));
    let a = respond(&mut c, &mut env, now + 50, d.ticket, &ok("keys:z"));
    let rec: Vec<_> = events(&a)
        .into_iter()
        .filter(|e| matches!(e, Event::Recovered { failures: 8, .. }))
        .collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].level(), Level::Warn);
    assert_eq!(c.failure_streak(), 0);
    assert_eq!(c.keys().unwrap().0, vec!["z"]);
}

#[test]
fn discovery_two_step() {
    let mut env = Env::per_worker();
    let mut c = cache(&format!(r#"{DISCO}, "upstream": "entra_cluster""#), 1);
    assert_eq!(c.wait_for_keys(0, 1), WaitDecision::Wait);
    let d1 = one_dispatch(&tick(&mut c, &mut env, 0));
    assert_eq!(d1.step, Step::Discovery);
    assert_eq!(
        hdr(&d1, ":path"),
        "/t/v2.0/.well-known/openid-configuration"
    );
    let doc = disco_doc(
        "https://keys.example.net:8443/t/keys",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
    );
    let a = respond(&mut c, &mut env, 100, d1.ticket, &ok(&doc));
    assert!(failure_codes(&a).is_empty());
    // Never dispatched from the discovery response's callback (Kong's engine crashes):
    // the key set goes out on the next tick.
    assert!(dispatches(&a).is_empty());
    let d2 = one_dispatch(&tick(&mut c, &mut env, 150));
    assert_eq!(d2.step, Step::Jwks);
    assert_eq!(d2.upstream, "entra_cluster"); // configured upstream kept
    assert_eq!(hdr(&d2, ":authority"), "keys.example.net:8443");
    assert_eq!(hdr(&d2, ":path"), "/t/keys");
    assert_eq!(hdr(&d2, ":scheme"), "https");
    let a = respond(&mut c, &mut env, 200, d2.ticket, &ok("keys:a"));
    assert_eq!(resumed(&a), vec![1]);

    // An issuer that fits none of the provider's (or none at all) is refused (OIDC
    // Discovery §4.3): its jwks_uri is never fetched, the retry starts at discovery.
    for doc in [
        disco_doc("https://keys.example.net/k", "https://evil.example/"),
        r#"{"jwks_uri":"https://keys.example.net/k"}"#.to_string(),
    ] {
        let mut c = cache(DISCO, 1);
        c.wait_for_keys(0, 1);
        let d1 = one_dispatch(&tick(&mut c, &mut env, 0));
        let a = respond(&mut c, &mut env, 100, d1.ticket, &ok(&doc));
        assert_eq!(
            failure_codes(&a),
            vec![("discovery_issuer_mismatch".to_string(), true)]
        );
        assert_eq!(unavailable(&a).len(), 1);
        assert!(dispatches(&a).is_empty());
        let again = one_dispatch(&tick(&mut c, &mut env, 5_000));
        assert_eq!(again.step, Step::Discovery, "{doc}");
        assert!(c.keys().is_none());
    }

    // Defaulted upstream follows the discovered host.
    let mut c = cache(DISCO, 1);
    let d1 = one_dispatch(&tick(&mut c, &mut env, 0));
    assert_eq!(d1.upstream, "login.example.com:443");
    let doc = disco_doc(
        "https://keys.example.net/k",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
    );
    let a = respond(&mut c, &mut env, 100, d1.ticket, &ok(&doc));
    assert!(failure_codes(&a).is_empty());
    assert!(dispatches(&a).is_empty());
    let d2 = one_dispatch(&tick(&mut c, &mut env, 150));
    assert_eq!(d2.upstream, "keys.example.net:443");
    assert_eq!(hdr(&d2, ":authority"), "keys.example.net");
    respond(&mut c, &mut env, 200, d2.ticket, &ok("keys:a"));
    assert!(c.keys().is_some());

    // A refresh within the refresh period reuses the discovered URI.
    assert_eq!(c.request_refetch_for_unknown_kid(400_000, 5), Refetch::Wait);
    let d3 = one_dispatch(&tick(&mut c, &mut env, 400_000));
    assert_eq!(d3.step, Step::Jwks);
    // A JWKS failure forces rediscovery next time.
    respond(&mut c, &mut env, 400_100, d3.ticket, &status("404"));
    assert_eq!(c.request_refetch_for_unknown_kid(800_000, 6), Refetch::Wait);
    assert_eq!(
        one_dispatch(&tick(&mut c, &mut env, 800_000)).step,
        Step::Discovery
    );
}

#[test]
fn bad_discovery_documents() {
    let cases = [
        (ok("not json"), "discovery_garbage"),
        (ok("[1,2]"), "discovery_garbage"),
        (ok(r#"{"issuer":"x"}"#), "discovery_bad_jwks_uri"),
        (ok(r#"{"jwks_uri":5}"#), "discovery_bad_jwks_uri"),
        (ok(r#"{"jwks_uri":"ftp://h/k"}"#), "discovery_bad_jwks_uri"),
        (ok(r#"{"jwks_uri":"http://h/k"}"#), "discovery_bad_jwks_uri"), // downgrade
        (
            ok(r#"{"jwks_uri":"https://h/k","issuer":"https://evil.example/"}"#),
            "discovery_issuer_mismatch",
        ),
        (status("500"), "discovery_http_500"),
        (kong_failure("timeout"), "discovery_timeout"),
    ];
    for (resp, code) in cases {
        let mut env = Env::per_worker();
        let mut c = cache(DISCO, 1);
        c.wait_for_keys(0, 1);
        let d = one_dispatch(&tick(&mut c, &mut env, 0));
        let a = respond(&mut c, &mut env, 10, d.ticket, &resp);
        assert_eq!(failure_codes(&a), vec![(code.to_string(), true)]);
        assert!(dispatches(&a).is_empty());
        assert_eq!(unavailable(&a).len(), 1);
        // The retry starts again at discovery.
        assert_eq!(
            one_dispatch(&tick(&mut c, &mut env, 2000)).step,
            Step::Discovery
        );
    }
    // Cold waiter budget covers both steps.
    let mut env = Env::per_worker();
    let mut c = cache(DISCO, 1);
    c.wait_for_keys(0, 1);
    assert_eq!(c.retry_after_secs(0), 7); // 2 × 3000 + 1000 ms
    one_dispatch(&tick(&mut c, &mut env, 0));
    assert!(unavailable(&tick(&mut c, &mut env, 6_999)).len() <= 1);
}

#[test]
fn discovered_jwks_uri_on_another_host_must_be_https() {
    use crate::keycache::response::parse_discovery;
    use crate::keycache::source::HttpUri;
    let via = HttpUri::parse("http://127.0.0.1:9000/t/.well-known/openid-configuration").unwrap();
    let doc = |u: &str| format!(r#"{{"issuer":"x","jwks_uri":"{u}"}}"#);
    for fine in [
        "http://127.0.0.1:9000/t/keys",
        "http://127.0.0.1:9001/t/keys",
        "http://localhost/k",
        "https://keys.example.net/k",
    ] {
        assert!(
            parse_discovery(doc(fine).as_bytes(), &via).is_ok(),
            "{fine}"
        );
    }
    for bad in ["http://keys.example.net/k", "http://10.0.0.1:9000/k"] {
        let e = parse_discovery(doc(bad).as_bytes(), &via).unwrap_err();
        assert_eq!(e.0, FailReason::BadJwksUri, "{bad}");
    }
    let plain = HttpUri::parse("http://idp.internal/t/.well-known/openid-configuration").unwrap();
    assert!(parse_discovery(doc("http://idp.internal/k").as_bytes(), &plain).is_ok());
    assert!(parse_discovery(doc("http://other.internal/k").as_bytes(), &plain).is_err());
}
