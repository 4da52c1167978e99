//! Kong's nginx variables `$azure_ml_kong_*`: set where the decision is carried out (header
//! phase or the request's own call callback), only those Kong declares, and an undeclared
//! one tried once per worker.

use super::*;

const PREFIX: &str = "ngx.azure_ml_kong_";

/// The `$azure_ml_kong_*` sets among `calls`, by variable name: (context, value).
fn ngx_sets(calls: &[(u32, Call)]) -> Vec<(u32, String, String)> {
    calls
        .iter()
        .filter_map(|(ctx, c)| match c {
            Call::SetProperty(p, v) => p
                .strip_prefix(PREFIX)
                .map(|name| (*ctx, name.to_string(), v.clone())),
            _ => None,
        })
        .collect()
}

fn kong_declaring(vars: &[&str], extra: &str) -> World {
    let w = World::new(true, &jwks_config(extra));
    w.host.mem().ngx_declared = vars.iter().map(|v| format!("azure_ml_kong_{v}")).collect();
    w
}

#[test]
fn kong_sets_declared_variables_in_the_rides_callback_and_its_header_phase() {
    let mut w = kong_declaring(&["decision", "reason", "subject", "tid", "app"], "");
    let (mut http, _) = w.request(2, "/score/x", true);
    let (_, token) = one_dispatch(&w.take());
    w.answer_ride(&mut http, 2, token, 200, &key_set());
    let calls = w.take();
    // In the callback itself (nginx variables are set in C: no request phase needed), after
    // the header operations, and without `kong.ctx.shared`.
    let sets = ngx_sets(&calls);
    let declared: Vec<(u32, String, String)> = [
        ("decision", "allow"),
        ("subject", OID),
        ("tid", T1),
        ("app", "app-1"),
    ]
    .iter()
    .map(|(n, v)| (2, n.to_string(), v.to_string()))
    .collect();
    for d in &declared {
        assert!(sets.contains(d), "{d:?} not in {sets:?}");
    }
    // Each with a value tried once (three are not declared); an empty one is not set:
    // the declared `''` is already there.
    assert!(!sets.iter().any(|(_, n, _)| n == "reason"), "{sets:?}");
    assert_eq!(sets.len(), 7, "{sets:?}");
    let header = position(&calls, &(2, model_header()));
    let first = calls
        .iter()
        .position(|(_, c)| matches!(c, Call::SetProperty(p, _) if p.starts_with(PREFIX)))
        .unwrap();
    assert!(header < first, "{calls:?}");
    assert_eq!(count(&calls, is_publish), 0, "{calls:?}");
    assert_eq!(w.response_headers(&mut http, 2), Action::Continue);
    assert!(w.take().is_empty(), "nothing left for the response phase");

    // Decided in its header phase: only the declared ones now.
    let (_, action) = w.request(3, "/score/x", true);
    assert_eq!(action, Action::Continue);
    let sets = ngx_sets(&w.take());
    let want: Vec<(u32, String, String)> = declared
        .iter()
        .map(|(_, n, v)| (3, n.clone(), v.clone()))
        .collect();
    assert_eq!(sets, want);

    // A denial: decision and reason.
    let (_, action) = w.request(4, "/score/x", false);
    assert_eq!(action, Action::Pause);
    let sets = ngx_sets(&w.take());
    assert!(
        sets.contains(&(4, "decision".into(), "deny".into())),
        "{sets:?}"
    );
    assert!(
        sets.contains(&(4, "reason".into(), "token_missing".into())),
        "{sets:?}"
    );
}

#[test]
fn kong_without_declared_variables_tries_each_once_per_worker() {
    let mut w = kong_declaring(&[], "");
    let (_, action) = w.request(2, "/score/x", false);
    assert_eq!(action, Action::Pause);
    let calls = w.take();
    // The four with a value; the others are tried when they first have one (the allow).
    assert_eq!(ngx_sets(&calls).len(), 4, "{calls:?}");
    assert_eq!(
        responses(&calls),
        vec![(2, 401, "token_missing".to_string())],
        "NotFound changes nothing"
    );
    w.warm_kong(3);
    for id in 4..8 {
        let (_, _) = w.request(id, "/score/x", id % 2 == 0);
        assert!(ngx_sets(&w.take()).is_empty());
    }
}

#[test]
fn kong_lua_properties_and_nginx_variables_carry_the_same_values() {
    let mut w = kong_declaring(
        &[
            "decision",
            "reason",
            "route",
            "request_id",
            "subject",
            "tid",
            "app",
            "caller",
        ],
        LUA_PROPERTIES,
    );
    let (mut http, _) = w.request(2, "/score/x", true);
    let (_, token) = one_dispatch(&w.take());
    w.answer_ride(&mut http, 2, token, 200, &key_set());
    let vars = ngx_sets(&w.take());
    assert_eq!(vars.len(), 7, "all but the empty reason: {vars:?}");
    // `kong.ctx.shared` still waits for the response phase.
    w.response_headers(&mut http, 2);
    let shared = published(&w.take());
    for (_, name, value) in &vars {
        assert_eq!(
            shared[format!("azure_ml_kong_{name}")],
            json!(value),
            "{name}"
        );
    }
}

#[test]
fn envoy_sets_no_nginx_variables() {
    let mut w = World::envoy();
    w.host.mem().ngx_declared = vec!["azure_ml_kong_decision".into()];
    w.warm_envoy(2);
    w.request(3, "/score/x", true);
    w.request(4, "/score/x", false);
    assert!(ngx_sets(&w.take()).is_empty());
}
