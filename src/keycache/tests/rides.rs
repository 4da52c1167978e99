//! Rides (Kong): a request fetches the keys for itself.

use super::*;

fn ride(c: &mut KeyCache<Dummy>, env: &mut Env, now: u64, unknown_kid: bool) -> Ride {
    let mut out = Vec::new();
    c.ride(&mut env.io(now), parse, unknown_kid, &mut out)
}

fn ride_dispatch(r: Ride) -> FetchRequest {
    match r {
        Ride::Dispatch(req) => req,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

fn ride_respond(
    c: &mut KeyCache<Dummy>,
    env: &mut Env,
    now: u64,
    step: Step,
    r: &HttpResponse,
) -> (Option<FetchRequest>, Vec<KeyAction>) {
    let mut out = Vec::new();
    let next = c.on_ride_response(&mut env.io(now), step, r, parse, &mut out);
    (next, out)
}

#[test]
fn cold_ride_installs_and_shares_the_keys() {
    let mut env = Env {
        store: Box::new(KongStore::default()),
        rand: 200,
    };
    let mut c = cache(JWKS, 1);
    let req = ride_dispatch(ride(&mut c, &mut env, 0, false));
    assert_eq!(req.step, Step::Jwks);
    assert_eq!(hdr(&req, ":path"), "/t/discovery/v2.0/keys?appid=1");
    assert_eq!(c.rides(), 1);
    let (next, out) = ride_respond(&mut c, &mut env, 50, Step::Jwks, &ok("keys:a"));
    assert!(next.is_none());
    assert!(matches!(events(&out)[0], Event::FetchOk { keys: 1, .. }));
    c.ride_ended();
    assert_eq!(
        (c.rides(), c.keys().unwrap().0.clone()),
        (0, vec!["a".into()])
    );
    assert_eq!(ride(&mut c, &mut env, 60, false), Ride::Ready);
    // Another worker adopts the shared record instead of riding.
    let mut other = cache(JWKS, 2);
    assert_eq!(ride(&mut other, &mut env, 70, false), Ride::Ready);
    assert_eq!(other.keys().unwrap().0, vec!["a"]);
}

#[test]
fn rides_are_capped_and_slots_freed() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    for _ in 0..MAX_RIDES {
        ride_dispatch(ride(&mut c, &mut env, 0, false));
    }
    assert_eq!(
        ride(&mut c, &mut env, 0, false),
        Ride::Unavailable {
            retry_after_secs: 1
        }
    );
    c.ride_ended();
    ride_dispatch(ride(&mut c, &mut env, 0, false));
}

#[test]
fn a_failed_ride_backs_the_provider_off() {
    let mut env = Env::per_worker();
    let mut c = cache(JWKS, 1);
    let first = ride_dispatch(ride(&mut c, &mut env, 0, false));
    let second = ride_dispatch(ride(&mut c, &mut env, 0, false));
    let (_, out) = ride_respond(&mut c, &mut env, 10, first.step, &status("500"));
    assert_eq!(failure_codes(&out), vec![("jwks_http_500".into(), true)]);
    c.ride_ended();
    // Backing off: no new ride, 503 with the time to the next attempt.
    assert_eq!(
        ride(&mut c, &mut env, 20, false),
        Ride::Unavailable {
            retry_after_secs: 1
        }
    );
    // The ride already out may still succeed; the provider recovers.
    let (_, out) = ride_respond(&mut c, &mut env, 30, second.step, &ok("keys:a"));
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, Event::Recovered { failures: 1, .. })));
    assert_eq!(ride(&mut c, &mut env, 40, false), Ride::Ready);
    // Kong's failure shape backs off too (no `:status`, a reason).
    let mut c = cache(JWKS, 1);
    let r = ride_dispatch(ride(&mut c, &mut env, 0, false));
    let (_, out) = ride_respond(&mut c, &mut env, 10, r.step, &kong_failure("timeout"));
    assert_eq!(failure_codes(&out), vec![("jwks_timeout".into(), true)]);
}

#[test]
fn discovery_ride_chains_to_the_key_set() {
    let mut env = Env::per_worker();
    let mut c = cache(DISCO, 1);
    let d = ride_dispatch(ride(&mut c, &mut env, 0, false));
    assert_eq!(d.step, Step::Discovery);
    let doc = disco_doc(
        "https://login.example.com/t/discovery/v2.0/keys",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
    );
    let (next, _) = ride_respond(&mut c, &mut env, 10, Step::Discovery, &ok(&doc));
    let j = next.expect("the key-set request follows");
    assert_eq!(
        (j.step, hdr(&j, ":path")),
        (Step::Jwks, "/t/discovery/v2.0/keys")
    );
    let (next, _) = ride_respond(&mut c, &mut env, 20, Step::Jwks, &ok("keys:a"));
    assert!(next.is_none());
    assert!(c.keys().is_some());
}

#[test]
fn unknown_kid_rides_respect_the_refetch_limit() {
    let (mut c, mut env) = warm(JWKS); // fetched at 0 (300 s limit)
    assert_eq!(ride(&mut c, &mut env, 1_000, true), Ride::Refused);
    let t = 301_000;
    let first = ride_dispatch(ride(&mut c, &mut env, t, true));
    // While one rides, others with unknown kids may ride along (bounded).
    let second = ride_dispatch(ride(&mut c, &mut env, t + 5, true));
    ride_respond(&mut c, &mut env, t + 50, first.step, &ok("keys:a,b,c"));
    c.ride_ended();
    ride_respond(&mut c, &mut env, t + 60, second.step, &ok("keys:a,b,c"));
    c.ride_ended();
    assert_eq!(c.keys().unwrap().0.len(), 3);
    // Once they are back, the limit holds again.
    assert_eq!(ride(&mut c, &mut env, t + 100, true), Ride::Refused);
}
