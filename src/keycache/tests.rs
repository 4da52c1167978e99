use super::response::{backoff_ms, ttl_ms};
use super::shared::{may_take_lease, record_to_write, should_adopt};
use super::*;
use crate::config::ProviderConfig;
use crate::store::testing::KongStore;
use crate::store::{NoSharedStore, SharedStore};

// ----- fixtures -----

/// Dummy key set: body `keys:a,b,c`; anything else is garbage.
#[derive(Debug, Clone, PartialEq)]
struct Dummy(Vec<String>);

impl KeyCount for Dummy {
    fn key_count(&self) -> usize {
        self.0.len()
    }
}

fn parse(b: &[u8]) -> Result<Dummy, String> {
    let s = core::str::from_utf8(b).map_err(|e| e.to_string())?;
    let rest = s.strip_prefix("keys:").ok_or("not a key set")?;
    Ok(Dummy(
        rest.split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

fn provider(json: &str) -> ProviderConfig {
    let base = r#"{"name":"entra","issuers":["https://login.microsoftonline.com/{tenantid}/v2.0"],
                   "audiences":["api://x"]"#;
    serde_json::from_str(&format!("{base}, {json}}}")).unwrap()
}

const JWKS: &str = r#""jwks_uri": "https://login.example.com/t/discovery/v2.0/keys?appid=1""#;
const DISCO: &str =
    r#""discovery_uri": "https://login.example.com/t/v2.0/.well-known/openid-configuration""#;

fn source(json: &str) -> JwksSource {
    JwksSource::new(&provider(json), "providers[0]").unwrap()
}

fn cache(json: &str, owner: u64) -> KeyCache<Dummy> {
    KeyCache::new(source(json), owner)
}

fn ok(body: &str) -> HttpResponse {
    ok_with(body, &[])
}

fn ok_with(body: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![(":status".to_string(), "200".to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    HttpResponse {
        headers,
        body_size: body.len(),
        body: Some(body.as_bytes().to_vec()),
    }
}

fn status(code: &str) -> HttpResponse {
    HttpResponse {
        headers: vec![(":status".into(), code.into())],
        body_size: 5,
        body: Some(b"oops!".to_vec()),
    }
}

fn kong_failure(ds: &str) -> HttpResponse {
    HttpResponse {
        headers: vec![(":dispatch_status".into(), ds.into())],
        body_size: 0,
        body: None,
    }
}

struct Env {
    store: Box<dyn SharedStore>,
    rand: u64,
}

impl Env {
    fn per_worker() -> Env {
        Env {
            store: Box::new(NoSharedStore),
            rand: 200, // jitter factor exactly 1.0
        }
    }
    fn io(&mut self, now_ms: u64) -> Io<'_> {
        Io {
            now_ms,
            random: self.rand,
            store: self.store.as_mut(),
        }
    }
}

fn tick(c: &mut KeyCache<Dummy>, env: &mut Env, now: u64) -> Vec<KeyAction> {
    let mut out = Vec::new();
    c.on_tick(&mut env.io(now), parse, &mut out);
    out
}

fn respond(
    c: &mut KeyCache<Dummy>,
    env: &mut Env,
    now: u64,
    t: Ticket,
    r: &HttpResponse,
) -> Vec<KeyAction> {
    let mut out = Vec::new();
    c.on_response(&mut env.io(now), t, r, parse, &mut out);
    out
}

fn dispatches(a: &[KeyAction]) -> Vec<&FetchRequest> {
    a.iter()
        .filter_map(|x| match x {
            KeyAction::Dispatch(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn one_dispatch(a: &[KeyAction]) -> FetchRequest {
    let d = dispatches(a);
    assert_eq!(d.len(), 1, "{a:?}");
    d[0].clone()
}

fn resumed(a: &[KeyAction]) -> Vec<WaiterId> {
    a.iter()
        .filter_map(|x| match x {
            KeyAction::Resume(w) => Some(*w),
            _ => None,
        })
        .collect()
}

fn unavailable(a: &[KeyAction]) -> Vec<(WaiterId, u32)> {
    a.iter()
        .filter_map(|x| match x {
            KeyAction::Unavailable {
                waiter,
                retry_after_secs,
            } => Some((*waiter, *retry_after_secs)),
            _ => None,
        })
        .collect()
}

fn events(a: &[KeyAction]) -> Vec<&Event> {
    a.iter()
        .filter_map(|x| match x {
            KeyAction::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn failure_codes(a: &[KeyAction]) -> Vec<(String, bool)> {
    events(a)
        .into_iter()
        .filter_map(|e| match e {
            Event::FetchFailed {
                code,
                first_of_streak,
                ..
            } => Some((code.clone(), *first_of_streak)),
            _ => None,
        })
        .collect()
}

fn hdr<'a>(r: &'a FetchRequest, k: &str) -> &'a str {
    r.headers
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap()
}

/// A per-worker cache that has fetched `keys:a,b` at t=0.
fn warm(json: &str) -> (KeyCache<Dummy>, Env) {
    let mut env = Env::per_worker();
    let mut c = cache(json, 1);
    let d = one_dispatch(&tick(&mut c, &mut env, 0));
    respond(&mut c, &mut env, 100, d.ticket, &ok("keys:a,b"));
    assert_eq!(c.keys().unwrap().0, vec!["a", "b"]);
    (c, env)
}

// ----- source -----

#[test]
fn uri_parsing_and_upstream_default() {
    let s = source(JWKS);
    assert_eq!(s.kind, SourceKind::Jwks);
    assert_eq!(s.uri.scheme, Scheme::Https);
    assert_eq!(s.uri.host, "login.example.com");
    assert_eq!(s.uri.port, None);
    assert_eq!(s.uri.path_and_query, "/t/discovery/v2.0/keys?appid=1");
    assert_eq!(s.upstream, "login.example.com:443");
    assert!(s.upstream_defaulted);
    assert_eq!(
        s.shared_record_key(),
        "amlk:jwks:https://login.example.com/t/discovery/v2.0/keys?appid=1"
    );
    assert_eq!(
        s.shared_lease_key(),
        "amlk:lease:https://login.example.com/t/discovery/v2.0/keys?appid=1"
    );

    let u = HttpUri::parse("HTTP://Idp.Local:8080").unwrap();
    assert_eq!(
        (u.scheme, u.host.as_str(), u.port),
        (Scheme::Http, "idp.local", Some(8080))
    );
    assert_eq!(u.path_and_query, "/");
    assert_eq!(u.authority(), "idp.local:8080");
    assert_eq!(u.host_port(), "idp.local:8080");
    let u = HttpUri::parse("https://[::1]:443?x=1").unwrap();
    assert_eq!(u.authority(), "[::1]");
    assert_eq!(u.host_port(), "[::1]:443");
    assert_eq!(u.path_and_query, "/?x=1");

    let s = source(r#""jwks_uri": "http://127.0.0.1:9000/keys", "upstream": "entra_jwks""#);
    assert_eq!(s.upstream, "entra_jwks");
    assert!(!s.upstream_defaulted);
}

#[test]
fn source_errors_name_the_field() {
    let cases = [
        (format!("{JWKS}, {DISCO}"), "providers[0]", "exactly one"),
        (r#""upstream": "x""#.to_string(), "providers[0]", "one of"),
        (
            r#""jwks_uri": "ftp://h/k""#.into(),
            "providers[0].jwks_uri",
            "scheme",
        ),
        (
            r#""jwks_uri": "/keys""#.into(),
            "providers[0].jwks_uri",
            "absolute",
        ),
        (
            r#""jwks_uri": "https://u:p@h/k""#.into(),
            "providers[0].jwks_uri",
            "user",
        ),
        (
            r#""jwks_uri": "https://h:99999/k""#.into(),
            "providers[0].jwks_uri",
            "port",
        ),
        (
            r#""jwks_uri": "https://h:/k""#.into(),
            "providers[0].jwks_uri",
            "port",
        ),
        (
            r#""jwks_uri": "https:///k""#.into(),
            "providers[0].jwks_uri",
            "host",
        ),
        (
            r#""jwks_uri": "https://h/k#f""#.into(),
            "providers[0].jwks_uri",
            "fragment",
        ),
        (
            r#""jwks_uri": "https://h/a b""#.into(),
            "providers[0].jwks_uri",
            "spaces",
        ),
        (
            r#""discovery_uri": "https://h^/k""#.into(),
            "providers[0].discovery_uri",
            "host",
        ),
        (
            format!(r#"{JWKS}, "upstream": "a b""#),
            "providers[0].upstream",
            "cluster",
        ),
        (
            format!(r#"{JWKS}, "jwks_timeout_ms": 0"#),
            "providers[0].jwks_timeout_ms",
            "at least",
        ),
        (
            format!(r#"{JWKS}, "jwks_refresh_seconds": 0"#),
            "providers[0].jwks_refresh_seconds",
            "at least",
        ),
    ];
    for (json, path, msg) in cases {
        let e = JwksSource::new(&provider(&json), "providers[0]").unwrap_err();
        assert_eq!(e.path, path, "{json}: {e}");
        assert!(e.message.contains(msg), "{json}: {e}");
    }
}

#[test]
fn fetch_request_carries_required_headers_and_timeout() {
    let mut env = Env::per_worker();
    let mut c = cache(&format!(r#"{JWKS}, "jwks_timeout_ms": 1500"#), 1);
    let r = one_dispatch(&tick(&mut c, &mut env, 0));
    assert_eq!(r.upstream, "login.example.com:443");
    assert_eq!(hdr(&r, ":method"), "GET");
    assert_eq!(hdr(&r, ":path"), "/t/discovery/v2.0/keys?appid=1");
    assert_eq!(hdr(&r, ":authority"), "login.example.com");
    assert_eq!(hdr(&r, ":scheme"), "https");
    assert_eq!(hdr(&r, "accept"), "application/json");
    assert_eq!(r.timeout_ms, 1500);
    assert_eq!(r.step, Step::Jwks);
    assert_eq!(r.header_refs().len(), 5);
}

// ----- lifecycle -----

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

// ----- discovery -----

fn disco_doc(jwks_uri: &str, issuer: &str) -> String {
    format!(r#"{{"issuer":"{issuer}","jwks_uri":"{jwks_uri}","token_endpoint":"x"}}"#)
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
    assert!(events(&a)
        .iter()
        .all(|e| !matches!(e, Event::DiscoveryIssuerMismatch { .. })));
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

    // Defaulted upstream follows the discovered host; issuer mismatch is an event.
    let mut c = cache(DISCO, 1);
    let d1 = one_dispatch(&tick(&mut c, &mut env, 0));
    assert_eq!(d1.upstream, "login.example.com:443");
    let doc = disco_doc("https://keys.example.net/k", "https://evil.example/");
    let a = respond(&mut c, &mut env, 100, d1.ticket, &ok(&doc));
    let mism: Vec<_> = events(&a)
        .into_iter()
        .filter(|e| matches!(e, Event::DiscoveryIssuerMismatch { discovered_issuer } if discovered_issuer == "https://evil.example/"))
        .collect();
    assert_eq!(mism.len(), 1);
    assert_eq!(mism[0].level(), Level::Warn);
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

// ----- shared data -----

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
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    let d = one_dispatch(&n.tick(&mut a, 0));
    n.respond(&mut a, 100, d.ticket, &ok("keys:a"));
    n.tick(&mut b, 200);
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

#[test]
fn unknown_kid_refetch_limit_is_per_node_even_before_the_record_was_seen() {
    // jwks_min_refetch_seconds = 300 (default).
    let mut n = Node {
        store: KongStore::default(),
    };
    let mut a = cache(JWKS, 1);
    let mut b = cache(JWKS, 2);
    let d = one_dispatch(&n.tick(&mut a, 0));
    n.respond(&mut a, 100, d.ticket, &ok("keys:a"));
    n.tick(&mut b, 200);
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
fn events_have_names_and_levels() {
    let e = Event::FetchFailed {
        step: Step::Jwks,
        reason: FailReason::Timeout,
        code: "jwks_timeout".into(),
        detail: String::new(),
        first_of_streak: false,
        streak: 3,
        retry_in_ms: 4000,
        have_keys: true,
    };
    assert_eq!(e.level(), Level::Debug);
    assert_eq!(e.name(), "jwks_fetch_failed");
    assert_eq!(FailReason::Http(500).code(Step::Jwks), "jwks_http_500");
    assert_eq!(FailReason::TooLarge.code(Step::Jwks), "jwks_too_large");
    assert_eq!(FailReason::Empty.code(Step::Jwks), "jwks_empty");
}

// ----- rides (Kong: a request fetches for itself) -----

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

#[test]
fn discovered_issuer_fits_templates() {
    let s = source(DISCO);
    // The provider's issuer is `https://login.microsoftonline.com/{tenantid}/v2.0`.
    for (iss, fits) in [
        (
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            true,
        ),
        ("https://login.microsoftonline.com/{tenantid}/v2.0", true),
        ("https://login.microsoftonline.com/not-a-guid/v2.0", false),
        (
            "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            false,
        ),
        ("https://evil.example/", false),
    ] {
        assert_eq!(s.issuer_fits(iss), fits, "{iss}");
    }
}
