//! The adapter's own logic, natively: the context callbacks run against an in-memory host
//! that records every host call ([`mem_host`]), and the tests assert their sequence — how
//! a request waits on each host, who answers it, when Kong's `kong.ctx.shared` is
//! published. The end-to-end tests run the same code in real Kong and Envoy.

mod credentials;
mod hit_path;
mod mem_host;
mod metrics;
mod ngx_vars;
mod slots;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::http::Http;
use super::root::{Root, TICK};
use crate::jwks::testkeys::{jwks, rsa_jwk, RSA_A_PEM};
use mem_host::{Call, MemHost, ROOT};

const NOW: u64 = 1_700_000_000;
const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OID: &str = "11111111-2222-3333-4444-555555555555";
const JWKS_PATH: &str = "/t/keys";
const TICK_MS: u64 = TICK.as_millis() as u64;
const LUA_PROPERTIES: &str = r#", "audit": {"kong_lua_properties": true}"#;

fn config(source: &str, extra: &str) -> String {
    format!(
        r#"{{
        "providers": [
          {{"name": "entra", "issuers": ["https://login.microsoftonline.com/{{tenantid}}/v2.0"],
            "tenants": ["{T1}"], {source}, "audiences": ["api://gw"]}}
        ],
        "routes": [
          {{"name": "score", "match": {{"path_prefix": "/score"}},
            "set_request_headers": {{"azureml-model-deployment": "blue"}}}},
          {{"name": "limited", "match": {{"path_prefix": "/limited"}},
            "rate_limit": {{"requests": 1, "window_seconds": 60, "key": "oid"}}}}
        ]{extra}
    }}"#
    )
}

fn jwks_config(extra: &str) -> String {
    config(
        &format!(r#""jwks_uri": "https://login.example.com{JWKS_PATH}""#),
        extra,
    )
}

fn token() -> String {
    use jwt_simple::prelude::*;
    let claims = json!({
        "iss": format!("https://login.microsoftonline.com/{T1}/v2.0"), "tid": T1,
        "aud": "api://gw", "oid": OID, "sub": "s-1", "azp": "app-1",
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600, "ver": "2.0"
    });
    let custom = claims.as_object().cloned().unwrap();
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(1));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    RS256KeyPair::from_pem(RSA_A_PEM)
        .unwrap()
        .with_key_id("k1")
        .sign(c)
        .unwrap()
}

fn key_set() -> String {
    jwks(&[rsa_jwk(RSA_A_PEM, "k1", "")])
}

/// One worker: a root context on the in-memory host, and the requests' contexts.
struct World {
    host: MemHost,
    root: Root<MemHost>,
    token: String,
}

impl World {
    fn new(kong: bool, config: &str) -> World {
        World::on(MemHost::default(), kong, config)
    }

    /// Another worker on the same host (`host`'s shared data is the node's).
    fn on(host: MemHost, kong: bool, config: &str) -> World {
        {
            let mut m = host.mem();
            m.kong = kong;
            m.now_ms = NOW * 1000;
            m.config = config.as_bytes().to_vec();
            m.current = ROOT;
        }
        let mut root = Root::new(ROOT, host.clone());
        assert!(root.on_configure(0));
        World {
            host,
            root,
            token: token(),
        }
    }

    fn envoy() -> World {
        World::new(false, &jwks_config(""))
    }

    /// Kong with `kong.ctx.shared` publishing on (`audit.kong_lua_properties`).
    fn kong() -> World {
        World::new(true, &jwks_config(LUA_PROPERTIES))
    }

    /// A new request's header callback, with a valid token unless `token` is false.
    fn request(&mut self, id: u32, path: &str, token: bool) -> (Http<MemHost>, Action) {
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "gw".to_string()),
            ("host".to_string(), "gw".to_string()),
        ];
        if token {
            headers.push(("authorization".into(), format!("Bearer {}", self.token)));
        }
        {
            let mut m = self.host.mem();
            m.request_headers.insert(id, headers);
            m.current = id;
        }
        let mut http = self.root.http(id);
        let action = http.on_http_request_headers(0, true);
        (http, action)
    }

    fn tick(&mut self) {
        {
            let mut m = self.host.mem();
            m.now_ms += TICK_MS;
            m.current = ROOT;
        }
        self.root.on_tick();
    }

    fn set_answer(&self, status: u16, body: &str) {
        self.host.mem().call_response = (
            vec![(":status".into(), status.to_string())],
            body.as_bytes().to_vec(),
        );
    }

    /// The answer to a call the root context dispatched.
    fn answer_root(&mut self, token: u32, status: u16, body: &str) {
        self.set_answer(status, body);
        self.host.mem().current = ROOT;
        self.root.on_http_call_response(token, 1, body.len(), 0);
    }

    /// The answer to a call request `id` dispatched itself (a ride).
    fn answer_ride(
        &mut self,
        http: &mut Http<MemHost>,
        id: u32,
        token: u32,
        status: u16,
        body: &str,
    ) {
        self.set_answer(status, body);
        self.host.mem().current = id;
        http.on_http_call_response(token, 1, body.len(), 0);
    }

    fn response_headers(&mut self, http: &mut Http<MemHost>, id: u32) -> Action {
        self.host.mem().current = id;
        http.on_http_response_headers(0, false)
    }

    fn body(&mut self, http: &mut Http<MemHost>, id: u32) -> Action {
        self.host.mem().current = id;
        http.on_http_request_body(10, true)
    }

    fn take(&self) -> Vec<(u32, Call)> {
        self.host.take_calls()
    }

    /// Kong: a request rides for the keys and is answered with them (warms the cache).
    fn warm_kong(&mut self, id: u32) {
        let (mut http, _) = self.request(id, "/score", true);
        let (_, token) = one_dispatch(&self.take());
        self.answer_ride(&mut http, id, token, 200, &key_set());
        self.take();
    }

    /// Envoy: a parked request is finished once the root fetched the keys.
    fn warm_envoy(&mut self, id: u32) {
        self.request(id, "/score", true);
        self.tick();
        let (_, token) = one_dispatch(&self.take());
        self.answer_root(token, 200, &key_set());
        self.take();
    }
}

fn dispatches(calls: &[(u32, Call)]) -> Vec<(u32, u32, String)> {
    calls
        .iter()
        .filter_map(|(ctx, c)| match c {
            Call::Dispatch { token, path } => Some((*ctx, *token, path.clone())),
            _ => None,
        })
        .collect()
}

/// The single dispatch among `calls`: (context, token).
fn one_dispatch(calls: &[(u32, Call)]) -> (u32, u32) {
    let d = dispatches(calls);
    assert_eq!(d.len(), 1, "{calls:?}");
    (d[0].0, d[0].1)
}

fn responses(calls: &[(u32, Call)]) -> Vec<(u32, u32, String)> {
    calls
        .iter()
        .filter_map(|(ctx, c)| match c {
            Call::SendResponse { status, error } => Some((*ctx, *status, error.clone())),
            _ => None,
        })
        .collect()
}

/// Kong's `kong.ctx.shared` values set among `calls`, by name.
fn published(calls: &[(u32, Call)]) -> Value {
    let mut props = serde_json::Map::new();
    for (_, c) in calls {
        if let Call::SetProperty(path, value) = c {
            if let Some(name) = path.strip_prefix("kong.ctx.shared.") {
                props.insert(name.to_string(), Value::String(value.clone()));
            }
        }
    }
    Value::Object(props)
}

fn position(calls: &[(u32, Call)], want: &(u32, Call)) -> usize {
    calls
        .iter()
        .position(|c| c == want)
        .unwrap_or_else(|| panic!("{want:?} not in {calls:?}"))
}

fn count(calls: &[(u32, Call)], pred: impl Fn(&Call) -> bool) -> usize {
    calls.iter().filter(|(_, c)| pred(c)).count()
}

fn is_resume(c: &Call) -> bool {
    *c == Call::Resume
}

fn is_switch(c: &Call) -> bool {
    matches!(c, Call::SetEffectiveContext(_))
}

fn is_publish(c: &Call) -> bool {
    matches!(c, Call::SetProperty(p, _) if p.starts_with("kong.ctx.shared."))
}

const MODEL_HEADER: &str = "azureml-model-deployment";

fn model_header() -> Call {
    Call::SetHeader(MODEL_HEADER.into(), Some("blue".into()))
}

#[test]
fn envoy_parks_a_request_and_the_root_finishes_it_when_keys_arrive() {
    let mut w = World::envoy();
    let (mut http, action) = w.request(2, "/score/x", true);
    assert_eq!(action, Action::Pause);
    // Request-side calls never dispatch: the root does, on its next tick.
    let calls = w.take();
    assert!(
        dispatches(&calls).is_empty() && responses(&calls).is_empty(),
        "{calls:?}"
    );
    assert_eq!(
        w.body(&mut http, 2),
        Action::Pause,
        "a parked request's body is held"
    );

    w.tick();
    let (ctx, token) = one_dispatch(&w.take());
    assert_eq!(ctx, ROOT);
    w.answer_root(token, 200, &key_set());
    let calls = w.take();
    // Switched to the request, its headers set, counted, then resumed — in that order.
    let switch = position(&calls, &(ROOT, Call::SetEffectiveContext(2)));
    let header = position(&calls, &(2, model_header()));
    let counted = position(
        &calls,
        &(
            2,
            Call::Count("decisions_total_route=score_caller=unregistered_decision=allow_reason=authenticated".into()),
        ),
    );
    let resumed = position(&calls, &(2, Call::Resume));
    assert!(
        switch < header && header < counted && counted < resumed,
        "{calls:?}"
    );
    assert_eq!(count(&calls, is_resume), 1);
    assert_eq!(count(&calls, is_publish), 0, "no Kong properties on Envoy");
    assert!(responses(&calls).is_empty());
    assert_eq!(w.body(&mut http, 2), Action::Continue);
}

#[test]
fn kong_a_request_rides_its_own_fetch_and_is_not_resumed_by_the_filter() {
    let mut w = World::kong();
    let (mut http, action) = w.request(2, "/score/x", true);
    assert_eq!(action, Action::Pause);
    // The ride is dispatched from the request's own context: its answer comes back there.
    let calls = w.take();
    assert_eq!(dispatches(&calls), vec![(2, 1, JWKS_PATH.to_string())]);
    assert_eq!(
        w.body(&mut http, 2),
        Action::Pause,
        "a riding request's body is held"
    );

    w.answer_ride(&mut http, 2, 1, 200, &key_set());
    let calls = w.take();
    assert!(calls.contains(&(2, model_header())), "{calls:?}");
    // Decided in its own call callback: Kong resumes it; the filter must not (twice crashes
    // the worker), and `kong.ctx.shared` waits for the response phase.
    assert_eq!(count(&calls, is_resume), 0, "{calls:?}");
    assert_eq!(count(&calls, is_switch), 0, "{calls:?}");
    assert_eq!(count(&calls, is_publish), 0, "{calls:?}");
    assert!(responses(&calls).is_empty());

    assert_eq!(w.response_headers(&mut http, 2), Action::Continue);
    let calls = w.take();
    assert!(calls.iter().all(|(ctx, c)| *ctx == 2 && is_publish(c)));
    let p = published(&calls);
    assert_eq!(p["azure_ml_kong_decision"], "allow");
    assert_eq!(p["azure_ml_kong_reason"], "");
    assert_eq!(p["azure_ml_kong_route"], "score");
    assert_eq!(p["azure_ml_kong_subject"], OID);
    assert_eq!(p["azure_ml_kong_tid"], T1);
    assert_eq!(p["azure_ml_kong_app"], "app-1");
    assert_eq!(p.as_object().unwrap().len(), 8);
}

#[test]
fn kong_a_request_decided_in_its_header_phase_publishes_at_once() {
    let mut w = World::kong();
    w.warm_kong(2);
    let (mut http, action) = w.request(3, "/score/x", true);
    assert_eq!(action, Action::Continue);
    let calls = w.take();
    let header = position(&calls, &(3, model_header()));
    let first_publish = calls.iter().position(|(_, c)| is_publish(c)).unwrap();
    assert!(
        header < first_publish,
        "published after the header operations"
    );
    assert_eq!(published(&calls)["azure_ml_kong_decision"], "allow");
    assert!(dispatches(&calls).is_empty());
    assert_eq!(w.response_headers(&mut http, 3), Action::Continue);
    assert!(w.take().is_empty(), "nothing left for the response phase");
    // The root's periodic work never acts for a request on Kong.
    for _ in 0..30 {
        w.tick();
    }
    let calls = w.take();
    assert_eq!(count(&calls, is_switch) + count(&calls, is_resume), 0);
}

#[test]
fn envoy_a_paused_request_is_answered_when_the_fetch_cannot_be_sent() {
    let mut w = World::envoy();
    w.request(2, "/score/x", true);
    w.host.mem().dispatch_fails = true;
    w.tick();
    let calls = w.take();
    let switch = position(&calls, &(ROOT, Call::SetEffectiveContext(2)));
    let answer = position(
        &calls,
        &(
            2,
            Call::SendResponse {
                status: 503,
                error: "jwks_unavailable".into(),
            },
        ),
    );
    assert!(switch < answer);
    assert_eq!(count(&calls, is_resume), 0);
}

#[test]
fn envoy_a_paused_request_is_answered_when_the_fetch_is_never_answered() {
    let mut w = World::envoy();
    let (mut http, _) = w.request(2, "/score/x", true);
    let start = w.host.mem().now_ms;
    let mut answered = None;
    for _ in 0..40 {
        w.tick();
        let r = responses(&w.take());
        if !r.is_empty() {
            answered = Some((r, w.host.mem().now_ms - start));
            break;
        }
    }
    let (r, after_ms) = answered.expect("the waiter was answered");
    assert_eq!(r, vec![(2, 503, "jwks_unavailable".to_string())]);
    // Within the fetch budget (3 s call timeout + 1 s margin) and a tick or two.
    assert!(after_ms <= 3_000 + 1_000 + 2 * TICK_MS, "{after_ms}");
    assert_eq!(
        w.body(&mut http, 2),
        Action::Pause,
        "a denied request's body is held"
    );
}

#[test]
fn kong_a_riding_request_is_answered_when_its_fetch_fails() {
    // The ride cannot be sent: answered at once, in the header phase.
    let mut w = World::kong();
    w.host.mem().dispatch_fails = true;
    let (_, action) = w.request(2, "/score/x", true);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(2, 503, "jwks_unavailable".to_string())]
    );
    assert_eq!(
        published(&calls)["azure_ml_kong_reason"],
        "jwks_unavailable"
    );

    // The ride's answer is an error: answered from its own callback, published later.
    let mut w = World::kong();
    let (mut http, _) = w.request(2, "/score/x", true);
    let (_, token) = one_dispatch(&w.take());
    w.answer_ride(&mut http, 2, token, 500, "oops");
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(2, 503, "jwks_unavailable".to_string())]
    );
    assert_eq!(count(&calls, is_resume) + count(&calls, is_publish), 0);
    w.response_headers(&mut http, 2);
    let p = published(&w.take());
    assert_eq!(p["azure_ml_kong_decision"], "deny");
    assert_eq!(p["azure_ml_kong_reason"], "jwks_unavailable");
}

#[test]
fn envoy_a_request_gone_while_parked_is_not_finished() {
    let mut w = World::envoy();
    let (mut http, _) = w.request(2, "/score/x", true);
    assert!(http.on_done());
    w.tick();
    let (_, token) = one_dispatch(&w.take());
    w.answer_root(token, 200, &key_set());
    let calls = w.take();
    assert_eq!(count(&calls, is_switch), 0, "{calls:?}");
    assert!(responses(&calls).is_empty());
}

#[test]
fn kong_a_failed_header_operation_fails_closed_and_is_published_as_denied() {
    // Decided in the ride's callback: 503 there, the denial published in the response phase.
    let mut w = World::kong();
    let (mut http, _) = w.request(2, "/score/x", true);
    let (_, token) = one_dispatch(&w.take());
    w.host.mem().header_ops_fail = true;
    w.answer_ride(&mut http, 2, token, 200, &key_set());
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(2, 503, "internal_error".to_string())]
    );
    assert_eq!(count(&calls, is_resume) + count(&calls, is_publish), 0);
    w.response_headers(&mut http, 2);
    let p = published(&w.take());
    assert_eq!(p["azure_ml_kong_decision"], "deny");
    assert_eq!(p["azure_ml_kong_reason"], "internal_error");

    // Decided in the header phase: published before the answer, the request stays paused.
    let (mut http, action) = w.request(3, "/score/x", true);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    let answer = position(
        &calls,
        &(
            3,
            Call::SendResponse {
                status: 503,
                error: "internal_error".into(),
            },
        ),
    );
    let publish = calls.iter().position(|(_, c)| is_publish(c)).unwrap();
    assert!(publish < answer);
    assert_eq!(published(&calls)["azure_ml_kong_decision"], "deny");
    assert_eq!(
        w.body(&mut http, 3),
        Action::Pause,
        "its body is held like a denial's"
    );
}

#[test]
fn the_root_sends_the_key_set_request_on_the_tick_after_discovery() {
    let disco =
        r#""discovery_uri": "https://login.example.com/t/.well-known/openid-configuration""#;
    for kong in [false, true] {
        let mut w = World::new(kong, &config(disco, ""));
        w.tick();
        let calls = w.take();
        let d = dispatches(&calls);
        assert_eq!(d.len(), 1, "{calls:?}");
        assert_eq!(d[0].0, ROOT);
        assert_eq!(d[0].2, "/t/.well-known/openid-configuration");
        let doc = format!(
            r#"{{"issuer": "https://login.microsoftonline.com/{{tenantid}}/v2.0",
                 "jwks_uri": "https://login.example.com{JWKS_PATH}"}}"#
        );
        w.answer_root(d[0].1, 200, &doc);
        // Never from the root's own call callback (that killed Kong workers).
        assert!(dispatches(&w.take()).is_empty(), "kong: {kong}");
        w.tick();
        let d = dispatches(&w.take());
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].0, d[0].2.as_str()), (ROOT, JWKS_PATH));
    }
}

#[test]
fn rate_limits_count_in_shared_data_or_per_worker() {
    let mut w = World::envoy();
    w.warm_envoy(2);
    let (mut first, action) = w.request(3, "/limited", true);
    assert_eq!(action, Action::Continue);
    w.take();
    assert_eq!(w.response_headers(&mut first, 3), Action::Continue);
    let set: Vec<(u32, Call)> = w.take();
    assert_eq!(
        set,
        [
            (
                3,
                Call::SetResponseHeader("ratelimit-policy".into(), r#""limited";q=1;w=60"#.into())
            ),
            (
                3,
                Call::SetResponseHeader("ratelimit".into(), r#""limited";r=0;t=40"#.into())
            ),
        ]
    );
    let (_, action) = w.request(4, "/limited", true);
    assert_eq!(action, Action::Pause);
    assert_eq!(
        responses(&w.take()),
        vec![(4, 429, "rate_limited".to_string())]
    );
    assert!(w.host.mem().shared.keys().any(|k| k.starts_with("aml-rl:")));
    // The allowed one's response carries the quota left, set in its response phase.
    let (mut http, _) = w.request(5, "/score", true);
    assert_eq!(w.response_headers(&mut http, 5), Action::Continue);
    assert!(
        !w.take()
            .iter()
            .any(|(_, c)| matches!(c, Call::SetResponseHeader(..))),
        "not on an unlimited route"
    );

    // Shared data failing: switched off after the first error, limits still apply.
    let mut w = World::envoy();
    w.host.mem().shared_data_fails = true;
    w.warm_envoy(2);
    assert_eq!(w.request(3, "/limited", true).1, Action::Continue);
    w.request(4, "/limited", true);
    assert_eq!(
        responses(&w.take()),
        vec![(4, 429, "rate_limited".to_string())]
    );
    assert_eq!(w.host.mem().shared_data_calls, 1);

    // `cache.shared_data: false`: never touched.
    let mut w = World::new(false, &jwks_config(r#", "cache": {"shared_data": false}"#));
    w.warm_envoy(2);
    w.request(3, "/limited", true);
    w.request(4, "/limited", true);
    assert_eq!(
        responses(&w.take()),
        vec![(4, 429, "rate_limited".to_string())]
    );
    assert_eq!(w.host.mem().shared_data_calls, 0);
}

#[test]
fn an_invalid_configuration_fails_closed_and_ticks_start_once() {
    for kong in [false, true] {
        let mut w = World::new(kong, r#"{"providers": "#);
        let (mut http, action) = w.request(2, "/score/x", true);
        assert_eq!(action, Action::Pause);
        let calls = w.take();
        assert_eq!(count(&calls, |c| *c == Call::SetTickPeriod), 1);
        assert_eq!(
            responses(&calls),
            vec![(2, 503, "config_invalid".to_string())]
        );
        assert_eq!(w.body(&mut http, 2), Action::Pause);
        // A reload with a valid configuration does not set the tick period again.
        w.host.mem().config = jwks_config("").into_bytes();
        assert!(w.root.on_configure(0));
        assert_eq!(count(&w.take(), |c| *c == Call::SetTickPeriod), 0);
    }
}

#[test]
fn a_request_without_a_token_is_denied_and_its_body_held() {
    for (kong, lua) in [(false, ""), (true, ""), (true, LUA_PROPERTIES)] {
        let mut w = World::new(kong, &jwks_config(lua));
        let (mut http, action) = w.request(2, "/score/x", false);
        assert_eq!(action, Action::Pause);
        let calls = w.take();
        assert_eq!(
            responses(&calls),
            vec![(2, 401, "token_missing".to_string())]
        );
        assert!(dispatches(&calls).is_empty(), "no keys needed to deny");
        // Kong's Lua-backed properties only when asked for: they can crash a worker.
        assert_eq!(
            count(&calls, is_publish) > 0,
            !lua.is_empty(),
            "{kong} {lua}"
        );
        assert_eq!(w.body(&mut http, 2), Action::Pause);
        assert!(http.on_done());
    }
}
