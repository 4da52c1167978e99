//! The gateway's own token on each host: who sends the token request, from which context,
//! and what the upstream request gets.

use super::*;

const IMDS_PATH: &str = "/msi/token?api-version=2018-02-01&resource=https%3A%2F%2Fml.azure.com";
const GW_TOKEN: &str = "gw.tok.en";

fn lending_config() -> String {
    format!(
        r#"{{
        "providers": [
          {{"name": "entra", "issuers": ["https://login.microsoftonline.com/{{tenantid}}/v2.0"],
            "tenants": ["{T1}"], "jwks_uri": "https://login.example.com{JWKS_PATH}",
            "audiences": ["api://gw"]}}
        ],
        "routes": [
          {{"name": "gw", "match": {{"path_prefix": "/gw"}}, "upstream_credential": "aml"}},
          {{"name": "score", "match": {{"path_prefix": "/score"}}}}
        ],
        "upstream_credentials": [
          {{"name": "aml", "managed_identity": {{"endpoint": "http://127.0.0.1:9/msi/token",
                                                 "upstream": "imds"}}}}
        ]
    }}"#
    )
}

fn grant() -> String {
    format!(r#"{{"access_token":"{GW_TOKEN}","expires_in":"3600","token_type":"Bearer"}}"#)
}

fn gw_auth() -> Call {
    Call::SetHeader("authorization".into(), Some(format!("Bearer {GW_TOKEN}")))
}

fn paths(calls: &[(u32, Call)]) -> Vec<(u32, String)> {
    dispatches(calls)
        .into_iter()
        .map(|(ctx, _, path)| (ctx, path))
        .collect()
}

/// Envoy's first tick: the root sends the key-set and the token request. Their tokens.
fn first_tick(w: &mut World) -> (u32, u32) {
    w.tick();
    let calls = w.take();
    let d = dispatches(&calls);
    assert_eq!(d.len(), 2, "keys and token on the first tick: {calls:?}");
    assert!(d.iter().all(|(ctx, _, _)| *ctx == ROOT), "{calls:?}");
    let find = |path: &str| d.iter().find(|(_, _, p)| p == path).map(|x| x.1);
    (
        find(JWKS_PATH).expect("JWKS call"),
        find(IMDS_PATH).expect("IMDS call"),
    )
}

#[test]
fn envoy_the_root_fetches_the_token_on_its_first_tick_and_requests_carry_it() {
    let mut w = World::new(false, &lending_config());
    let (jwks_token, imds_token) = first_tick(&mut w);
    {
        let m = w.host.mem();
        let sent = m
            .dispatched
            .iter()
            .find(|(u, _, _)| u == "imds")
            .expect("to imds");
        assert_eq!(sent.1, None, "IMDS is a GET");
    }
    w.answer_root(jwks_token, 200, &key_set());
    w.answer_root(imds_token, 200, &grant());
    w.take();
    let (_, action) = w.request(2, "/gw/score", true);
    assert_eq!(action, Action::Continue);
    let calls = w.take();
    assert!(calls.contains(&(2, gw_auth())), "{calls:?}");
    // Other routes never get it.
    w.request(3, "/score", true);
    let calls = w.take();
    assert!(!calls.contains(&(3, gw_auth())), "{calls:?}");
    // One token request per refresh: none on the next ticks.
    w.tick();
    assert!(dispatches(&w.take()).is_empty());
}

#[test]
fn envoy_a_request_before_the_token_is_parked_and_finished_by_the_root() {
    let mut w = World::new(false, &lending_config());
    let (jwks_token, imds_token) = first_tick(&mut w);
    w.answer_root(jwks_token, 200, &key_set());
    let (mut http, action) = w.request(2, "/gw/score", true);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    assert!(responses(&calls).is_empty() && !calls.contains(&(2, gw_auth())));
    assert_eq!(
        w.body(&mut http, 2),
        Action::Pause,
        "a parked request's body is held"
    );
    w.answer_root(imds_token, 200, &grant());
    let calls = w.take();
    let switch = position(&calls, &(ROOT, Call::SetEffectiveContext(2)));
    let auth = position(&calls, &(2, gw_auth()));
    let resumed = position(&calls, &(2, Call::Resume));
    assert!(switch < auth && auth < resumed, "{calls:?}");
}

#[test]
fn envoy_a_parked_request_gets_503_when_the_token_request_fails() {
    let mut w = World::new(false, &lending_config());
    let (jwks_token, imds_token) = first_tick(&mut w);
    w.answer_root(jwks_token, 200, &key_set());
    w.request(2, "/gw/score", true);
    w.take();
    w.answer_root(imds_token, 500, "{}");
    let calls = w.take();
    assert_eq!(
        responses(&calls),
        vec![(2, 503, "upstream_credential_unavailable".to_string())]
    );
    assert!(!calls.iter().any(|(_, c)| *c == gw_auth()));
}

#[test]
fn kong_a_request_before_the_token_rides_the_token_request_itself() {
    let mut w = World::new(true, &lending_config());
    w.warm_kong(9);
    let (mut http, action) = w.request(2, "/gw/score", true);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    assert_eq!(paths(&calls), vec![(2, IMDS_PATH.to_string())]);
    let (_, token) = one_dispatch(&calls);
    // A second request meanwhile cannot wait in Kong: 503 at once, no second IMDS call.
    w.request(3, "/gw/score", true);
    let calls = w.take();
    assert!(dispatches(&calls).is_empty(), "{calls:?}");
    assert_eq!(
        responses(&calls),
        vec![(3, 503, "upstream_credential_unavailable".to_string())]
    );
    w.answer_ride(&mut http, 2, token, 200, &grant());
    let calls = w.take();
    assert!(calls.contains(&(2, gw_auth())), "{calls:?}");
    assert_eq!(count(&calls, is_resume), 0, "Kong resumes it: {calls:?}");
    // The token is there for every request now, and the root does not ask again.
    let (_, action) = w.request(4, "/gw/score", true);
    assert_eq!(action, Action::Continue);
    assert!(w.take().contains(&(4, gw_auth())));
    w.tick();
    assert!(paths(&w.take()).iter().all(|(_, p)| p != IMDS_PATH));
}

#[test]
fn client_credentials_post_the_form_to_the_token_endpoint() {
    let config = lending_config().replace(
        r#"{"name": "aml", "managed_identity": {"endpoint": "http://127.0.0.1:9/msi/token",
                                                 "upstream": "imds"}}"#,
        r#"{"name": "aml", "client_credentials": {
             "token_endpoint": "https://login.example.com/t1/oauth2/v2.0/token",
             "client_id": "gw-app", "client_secret": "s3cret"}}"#,
    );
    assert!(config.contains("client_credentials"));
    let mut w = World::new(false, &config);
    w.tick();
    let m = w.host.mem();
    let forms: Vec<String> = m
        .dispatched
        .iter()
        .filter_map(|(_, body, _)| body.clone())
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(
        forms,
        vec!["grant_type=client_credentials&client_id=gw-app&client_secret=s3cret&scope=https%3A%2F%2Fml.azure.com%2F.default"]
    );
}
