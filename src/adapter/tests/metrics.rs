//! Metrics are defined when the configuration loads and never while requests or ticks run
//! (in Kong 3.9 a definition during a `/metrics` scrape in the same worker deadlocks it).

use super::mem_host::Call;
use super::*;

fn defines(w: &World) -> usize {
    w.host
        .take_tally()
        .get("define_metric")
        .copied()
        .unwrap_or(0)
}

fn dropped(calls: &[(u32, Call)]) -> usize {
    count(
        calls,
        |c| matches!(c, Call::Count(n) if n == crate::metrics::DROPPED),
    )
}

/// The token's client app as a registered caller: its decisions carry its name.
const CALLERS: &str = r#", "callers": [{"name": "app-one", "app_ids": ["app-1"]}]"#;

#[test]
fn every_series_is_defined_at_load_and_none_later() {
    for (kong, extra) in [
        (false, ""),
        (true, LUA_PROPERTIES),
        (false, CALLERS),
        (true, CALLERS),
    ] {
        let config = jwks_config(extra);
        let mut w = World::new(kong, &config);
        let (series, cut) = crate::metrics::catalog(Some(
            &crate::engine::Filter::from_json(config.as_bytes()).unwrap(),
        ));
        assert_eq!(cut, 0);
        assert_eq!(w.host.mem().metrics.len(), series.len());
        w.host.take_tally();
        if kong {
            w.warm_kong(1);
        } else {
            w.warm_envoy(1);
        }
        // Allowed, denied before and after verification, unmatched, limited, and ticks
        // that record key-set gauges.
        for (id, path, token) in [
            (2, "/score", true),
            (3, "/score", false),
            (4, "/nowhere", true),
            (5, "/limited", true),
            (6, "/limited", true),
            (7, "/score/%2e%2e/limited", true),
        ] {
            let (mut http, _) = w.request(id, path, token);
            w.response_headers(&mut http, id);
            http.on_done();
        }
        w.tick();
        w.tick();
        let calls = w.take();
        assert_eq!(defines(&w), 0, "kong={kong} {extra}: {calls:?}");
        assert_eq!(dropped(&calls), 0, "kong={kong} {extra}: {calls:?}");
        if extra == CALLERS {
            let named = |r: &str| {
                count(
                    &calls,
                    |c| matches!(c, Call::Count(n) if n.contains("_caller=app-one_") && n.ends_with(r)),
                )
            };
            assert_eq!(named("_reason=authenticated"), 2, "{calls:?}");
            assert_eq!(named("_reason=rate_limited"), 1, "{calls:?}");
        }
        // A reload with the same configuration defines nothing again.
        assert!(w.root.on_configure(0));
        assert_eq!(defines(&w), 0);
    }
}

#[test]
fn an_invalid_configuration_defines_what_it_counts() {
    let mut w = World::new(true, r#"{"providers": "#);
    let before = w.host.mem().metrics.len();
    assert!(before > 0);
    w.host.take_tally();
    let (mut http, _) = w.request(2, "/score/x", true);
    http.on_done();
    let calls = w.take();
    assert_eq!(defines(&w), 0);
    assert_eq!(dropped(&calls), 0);
    assert!(
        count(
            &calls,
            |c| matches!(c, Call::Count(n) if n.ends_with("_reason=config_invalid"))
        ) == 1,
        "{calls:?}"
    );
}
