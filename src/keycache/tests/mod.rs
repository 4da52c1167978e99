//! The key cache, natively: fixtures and the key source here, the cache's rooms in the
//! files named after them.

use super::response::{backoff_ms, ttl_ms};
use super::shared::{may_take_lease, record_to_write, should_adopt};
use super::*;
use crate::config::ProviderConfig;
use crate::store::testing::KongStore;
use crate::store::{NoSharedStore, SharedStore};

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
    crate::config::from_json::provider(&format!("{base}, {json}}}")).unwrap()
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

fn disco_doc(jwks_uri: &str, issuer: &str) -> String {
    format!(r#"{{"issuer":"{issuer}","jwks_uri":"{jwks_uri}","token_endpoint":"x"}}"#)
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

mod fetch;
mod rides;
mod shared;
mod waiters;
