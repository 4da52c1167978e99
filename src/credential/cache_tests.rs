use super::*;
use crate::config::UpstreamCredentialConfig;
use crate::credential::spec::compile;
use crate::store::testing::KongStore;
use crate::store::NoSharedStore;
fn spec() -> CredentialSpec {
    let cfg: UpstreamCredentialConfig =
        crate::config::from_json::upstream_credential(r#"{"name":"aml","managed_identity":{}}"#)
            .unwrap();
    compile(&cfg, "upstream_credentials[0]").unwrap()
}

fn ok(lifetime: u64) -> HttpResponse {
    HttpResponse {
        headers: vec![(":status".into(), "200".into())],
        body_size: 0,
        body: Some(
            format!(r#"{{"access_token":"tok-{lifetime}","expires_in":"{lifetime}","token_type":"Bearer"}}"#)
                .into_bytes(),
        ),
    }
}

fn status(code: u16, body: &str) -> HttpResponse {
    HttpResponse {
        headers: vec![(":status".into(), code.to_string())],
        body_size: body.len(),
        body: Some(body.as_bytes().to_vec()),
    }
}

fn tick(c: &mut CredentialCache, store: &mut dyn SharedStore, now_ms: u64) -> Vec<CredAction> {
    let mut out = vec![];
    c.on_tick(
        &mut CredIo {
            now_ms,
            random: 0,
            store,
        },
        &mut out,
    );
    out
}

fn respond(
    c: &mut CredentialCache,
    store: &mut dyn SharedStore,
    now_ms: u64,
    t: CredTicket,
    r: &HttpResponse,
) -> Vec<CredAction> {
    let mut out = vec![];
    c.on_response(
        t,
        r,
        &mut CredIo {
            now_ms,
            random: 0,
            store,
        },
        &mut out,
    );
    out
}

fn dispatched(out: &[CredAction]) -> Vec<CredTicket> {
    out.iter()
        .filter_map(|a| match a {
            CredAction::Dispatch(t) => Some(*t),
            _ => None,
        })
        .collect()
}

fn failures(out: &[CredAction]) -> Vec<(&'static str, bool)> {
    out.iter()
        .filter_map(|a| match a {
            CredAction::Event(CredEvent::Failed { why, first, .. }) => Some((why.code(), *first)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_token_request_per_node_and_the_other_workers_adopt_it() {
    let mut store = KongStore::default();
    let mut w1 = CredentialCache::new(spec(), 1);
    let mut w2 = CredentialCache::new(spec(), 2);
    let t = dispatched(&tick(&mut w1, &mut store, 1000));
    assert_eq!(t.len(), 1);
    // The second worker sees the lease and does not send its own.
    assert!(dispatched(&tick(&mut w2, &mut store, 1000)).is_empty());
    assert!(dispatched(&tick(&mut w2, &mut store, 1200)).is_empty());
    let out = respond(&mut w1, &mut store, 1300, t[0], &ok(3600));
    assert!(out.contains(&CredAction::Event(CredEvent::Acquired {
        lifetime_secs: 3600,
        fetched: true
    })));
    assert_eq!(w1.token(1300), Some("tok-3600"));
    let out = tick(&mut w2, &mut store, 1400);
    assert!(dispatched(&out).is_empty());
    assert!(out.contains(&CredAction::Event(CredEvent::Acquired {
        lifetime_secs: 3600,
        fetched: false
    })));
    assert_eq!(w2.token(1400), Some("tok-3600"));
    // Nothing more until the refresh is due, for either worker.
    for now in (1500..3_000_000).step_by(200_000) {
        assert!(dispatched(&tick(&mut w1, &mut store, now)).is_empty());
        assert!(dispatched(&tick(&mut w2, &mut store, now)).is_empty());
    }
}

#[test]
fn refresh_comes_before_expiry_and_the_old_token_serves_meanwhile() {
    let mut store = KongStore::default();
    let mut w1 = CredentialCache::new(spec(), 1);
    let mut w2 = CredentialCache::new(spec(), 2);
    let t = dispatched(&tick(&mut w1, &mut store, 0))[0];
    respond(&mut w1, &mut store, 0, t, &ok(120));
    tick(&mut w2, &mut store, 100);
    // Half of a 120 s life: the refresh is due at 60 s; one worker sends it.
    assert!(dispatched(&tick(&mut w1, &mut store, 59_900)).is_empty());
    let a = dispatched(&tick(&mut w1, &mut store, 60_000));
    let b = dispatched(&tick(&mut w2, &mut store, 60_000));
    assert_eq!(a.len() + b.len(), 1);
    assert_eq!(w2.token(60_500), Some("tok-120"));
    respond(&mut w1, &mut store, 60_500, a[0], &ok(3600));
    assert_eq!(w1.token(60_600), Some("tok-3600"));
    tick(&mut w2, &mut store, 60_600);
    assert_eq!(w2.token(60_600), Some("tok-3600"));
}

#[test]
fn a_failing_refresh_keeps_the_valid_token_warns_once_and_recovers() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    let t = dispatched(&tick(&mut c, &mut store, 0))[0];
    respond(&mut c, &mut store, 0, t, &ok(600));
    let mut now = 300_000; // refresh due (half of 600 s)
    let mut seen = vec![];
    for _ in 0..4 {
        let out = tick(&mut c, &mut store, now);
        let t = dispatched(&out);
        assert_eq!(t.len(), 1, "at {now}");
        let out = respond(&mut c, &mut store, now + 10, t[0], &status(500, "{}"));
        seen.extend(failures(&out));
        assert_eq!(c.token(now + 10), Some("tok-600"));
        // Backing off: no new request right away.
        assert!(dispatched(&tick(&mut c, &mut store, now + 20)).is_empty());
        now += 61_000;
    }
    assert_eq!(
        seen,
        vec![
            ("credential_http_5xx", true),
            ("credential_http_5xx", false),
            ("credential_http_5xx", false),
            ("credential_http_5xx", false)
        ]
    );
    let t = dispatched(&tick(&mut c, &mut store, now))[0];
    let out = respond(&mut c, &mut store, now, t, &ok(3600));
    assert!(out.contains(&CredAction::Event(CredEvent::Recovered {
        after_failures: 4
    })));
    assert_eq!(c.token(now), Some("tok-3600"));
}

#[test]
fn down_from_the_start_waiters_get_503_then_recovery_serves_them() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    let t = dispatched(&tick(&mut c, &mut store, 0))[0];
    assert_eq!(c.wait(7, 10), WaitAnswer::Wait);
    let out = respond(
        &mut c,
        &mut store,
        50,
        t,
        &status(
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        ),
    );
    assert!(
        out.contains(&CredAction::Unavailable {
            id: 7,
            retry_after_secs: 1
        }),
        "{out:?}"
    );
    let detail = out.iter().find_map(|a| match a {
        CredAction::Event(CredEvent::Failed { detail, .. }) => Some(detail.clone()),
        _ => None,
    });
    assert_eq!(detail.as_deref(), Some("HTTP 400 (invalid_request)"));
    // While backing off a new request is answered at once.
    assert!(matches!(c.wait(8, 60), WaitAnswer::Unavailable { .. }));
    // Next attempt succeeds; a waiter parked before it resumes.
    let t = dispatched(&tick(&mut c, &mut store, 2000))[0];
    assert_eq!(c.wait(9, 2001), WaitAnswer::Wait);
    let out = respond(&mut c, &mut store, 2002, t, &ok(3600));
    assert!(out.contains(&CredAction::Resume(9)));
    assert_eq!(c.wait(10, 2003), WaitAnswer::Ready);
}

#[test]
fn another_workers_failure_backs_off_the_node_and_answers_waiters() {
    let mut store = KongStore::default();
    let mut w1 = CredentialCache::new(spec(), 1);
    let mut w2 = CredentialCache::new(spec(), 2);
    let t = dispatched(&tick(&mut w1, &mut store, 0))[0];
    assert!(dispatched(&tick(&mut w2, &mut store, 0)).is_empty());
    assert_eq!(w2.wait(3, 10), WaitAnswer::Wait);
    respond(&mut w1, &mut store, 100, t, &status(503, ""));
    let out = tick(&mut w2, &mut store, 200);
    assert!(
        out.iter()
            .any(|a| matches!(a, CredAction::Unavailable { id: 3, .. })),
        "{out:?}"
    );
    assert!(dispatched(&out).is_empty());
    // The lease keeps the node quiet until the backoff ends; then one of them retries
    // with the streak carried on.
    assert!(dispatched(&tick(&mut w2, &mut store, 400)).is_empty());
    let t2 = dispatched(&tick(&mut w2, &mut store, 1200));
    assert_eq!(t2.len(), 1);
    let out = respond(&mut w2, &mut store, 1300, t2[0], &status(503, ""));
    assert_eq!(failures(&out), vec![("credential_http_5xx", false)]);
}

#[test]
fn kong_rides_one_request_for_the_node_and_refuses_the_rest() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    let mut out = vec![];
    let mut io = CredIo {
        now_ms: 0,
        random: 0,
        store: &mut store,
    };
    let RideAnswer::Dispatch(t) = c.ride(&mut io, &mut out) else {
        panic!("first request rides")
    };
    assert_eq!(
        c.ride(&mut io, &mut out),
        RideAnswer::Unavailable {
            retry_after_secs: 1
        }
    );
    c.on_response(t, &ok(3600), &mut io, &mut out);
    assert_eq!(c.ride(&mut io, &mut out), RideAnswer::Ready);
    assert_eq!(c.token(0), Some("tok-3600"));
}

#[test]
fn a_ride_whose_request_goes_away_frees_the_node_after_backoff() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    let mut out = vec![];
    let mut io = CredIo {
        now_ms: 0,
        random: 0,
        store: &mut store,
    };
    let RideAnswer::Dispatch(t) = c.ride(&mut io, &mut out) else {
        panic!()
    };
    c.ride_ended(t, &mut io, &mut out);
    assert_eq!(failures(&out), vec![("credential_dispatch_failed", true)]);
    // The late answer of the abandoned call is ignored.
    let mut late = vec![];
    c.on_response(t, &ok(3600), &mut io, &mut late);
    assert!(c.token(0).is_none());
    assert!(!dispatched(&tick(&mut c, &mut store, 2000)).is_empty());
}

#[test]
fn a_lost_call_times_out_and_is_retried() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    dispatched(&tick(&mut c, &mut store, 0));
    assert!(tick(&mut c, &mut store, 5_999).is_empty());
    let out = tick(&mut c, &mut store, 6_000);
    assert_eq!(failures(&out), vec![("credential_timeout", true)]);
    assert_eq!(dispatched(&tick(&mut c, &mut store, 7_100)).len(), 1);
}

#[test]
fn clock_jumps_refresh_at_once_and_never_stretch_a_token() {
    let mut store = KongStore::default();
    let mut c = CredentialCache::new(spec(), 1);
    let t = dispatched(&tick(&mut c, &mut store, 1_000_000))[0];
    respond(&mut c, &mut store, 1_000_000, t, &ok(3600));
    // Back in time: still usable, refresh sent.
    assert_eq!(dispatched(&tick(&mut c, &mut store, 10_000)).len(), 1);
    assert_eq!(c.token(10_000), Some("tok-3600"));
    // Far ahead: unusable.
    assert_eq!(c.token(1_000_000 + 3_600_000), None);
}

#[test]
fn garbage_answers_fail_with_typed_codes() {
    let cases: &[(HttpResponse, &str)] = &[
        (status(200, "<html>"), "credential_garbage"),
        (
            status(200, r#"{"access_token":"a","expires_in":"2"}"#),
            "credential_bad_lifetime",
        ),
        (status(429, ""), "credential_http_429"),
        (status(401, ""), "credential_http_4xx"),
        (
            HttpResponse {
                headers: vec![(":dispatch_status".into(), "timeout".into())],
                ..Default::default()
            },
            "credential_timeout",
        ),
        (HttpResponse::default(), "credential_dispatch_failed"),
    ];
    for (resp, code) in cases {
        let mut store = KongStore::default();
        let mut c = CredentialCache::new(spec(), 1);
        let t = dispatched(&tick(&mut c, &mut store, 0))[0];
        let out = respond(&mut c, &mut store, 1, t, resp);
        assert_eq!(failures(&out), vec![(*code, true)], "{resp:?}");
    }
}

#[test]
fn without_shared_data_each_worker_fetches_for_itself() {
    let mut a = CredentialCache::new(spec(), 1);
    let mut b = CredentialCache::new(spec(), 2);
    assert_eq!(dispatched(&tick(&mut a, &mut NoSharedStore, 0)).len(), 1);
    assert_eq!(dispatched(&tick(&mut b, &mut NoSharedStore, 0)).len(), 1);
}

#[test]
fn the_shared_record_round_trips_and_rejects_junk() {
    let h = Held {
        token: "abc".into(),
        life: Lifetime::new(5, 60),
    };
    assert!(decode_record(&encode_record(&h)) == Some(h));
    assert!(decode_record(b"AMLC\x01short").is_none());
    assert!(decode_record(b"junk").is_none());
    let mut empty = encode_record(&Held {
        token: "x".into(),
        life: Lifetime::new(5, 60),
    });
    empty.pop();
    assert!(decode_record(&empty).is_none());
}
