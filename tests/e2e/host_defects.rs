//! One regression test per defect that running the filter in real Kong showed (each runs
//! on both hosts: the rule it checks holds on both). All failed on the code before the fix:
//! Kong answered 503 to every token, hung or crashed on requests that waited for keys,
//! crashed on discovery, let an encoded path cross teams, never matched `match.hosts` and
//! forwarded query-string tokens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use aml_harness::{both_hosts, entra_provider, teams_filter_config, Gateway, Host, ENDPOINT_KEY};
use serde_json::{json, Value};

/// One request with the target sent byte for byte (no client-side normalization).
fn raw(gw: &Gateway, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let url = gw.url("/");
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&authority).unwrap_or_else(|e| panic!("{authority}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {authority}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-length: 2\r\n\r\n{}");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn team_token(gw: &Gateway, team: &str) -> String {
    gw.idp
        .client_credentials(
            "11111111-2222-3333-4444-555555555555",
            "Endpoint.Score",
            Some(team),
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The decision counter of an unregistered caller denied on `route` for `reason`.
fn denied_counter(route: &str, reason: &str) -> String {
    format!("decisions_total_route={route}_caller=unregistered_decision=deny_reason={reason}")
}

fn crashed_workers(gw: &Gateway) -> Vec<String> {
    ["exited on signal", "panicked at", "wasm trap"]
        .iter()
        .flat_map(|p| gw.log_lines(&[p]))
        .collect()
}

both_hosts! {
    /// Kong tags successful calls `:dispatch_status: ok`; it used to be read as a failure.
    fn fetched_keys_are_used(host: Host) {
        let gw = Gateway::start_on(host, teams_filter_config).unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        let (status, body) = raw(&gw, "POST", "/teams/a/endpoints/e/score", &[("authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(ENDPOINT_KEY), "the backend got the endpoint key: {body}");
        assert!(gw.metric("jwks_fetches_total_provider=entra_result=ok").unwrap_or(0.0) >= 1.0);
        let failed = gw.metric("jwks_fetches_total_provider=entra_result=dispatch_error");
        assert_eq!(failed.unwrap_or(0.0), 0.0, "defined at load, never counted");
    }

    /// Requests that arrive while the first key set is still on its way are all answered
    /// (200 once keys are there, or 503 with Retry-After), no worker dies, and the key-set
    /// requests are bounded (Envoy: one per node; Kong: one background fetch plus at most 8
    /// rides per worker).
    fn cold_burst_is_answered_without_crash(host: Host) {
        let gw = Gateway::builder(host)
            .setup_idp(|idp| {
                idp.control("POST", "jwks?mode=ok&delay_ms=1000").expect("delay");
            })
            .start(teams_filter_config)
            .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        let timed: Vec<(u16, String, Duration)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..20)
                .map(|_| {
                    s.spawn(|| {
                        let t = std::time::Instant::now();
                        let (status, body) = raw(
                            &gw,
                            "POST",
                            "/teams/a/endpoints/e/score",
                            &[("authorization", &auth)],
                        );
                        (status, body, t.elapsed())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("join")).collect()
        });
        let slowest = timed.iter().map(|t| t.2).max().unwrap_or_default();
        let statuses: Vec<(u16, String)> = timed.into_iter().map(|(s, b, _)| (s, b)).collect();
        for (status, body) in &statuses {
            match status {
                200 => {}
                503 => assert!(
                    body.to_ascii_lowercase().contains("retry-after") && body.contains("jwks_unavailable"),
                    "{body}"
                ),
                _ => panic!("unexpected answer: {body}"),
            }
        }
        let fetches = gw.idp.jwks_requests().expect("stats");
        match host {
            Host::Envoy => {
                assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
                assert_eq!(fetches, 1);
            }
            Host::Kong => {
                assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
                assert!((1..=2 * 8 + 1).contains(&fetches), "{fetches} JWKS requests");
            }
        }
        eprintln!(
            "{host}: cold burst of 20 (JWKS answers after 1 s): {} x 200, {} x 503, {fetches} JWKS request(s), slowest answer {slowest:?}",
            statuses.iter().filter(|(s, _)| *s == 200).count(),
            statuses.iter().filter(|(s, _)| *s == 503).count()
        );
        // Keys are there now: every request passes, and nothing crashed.
        let (status, body) = raw(&gw, "POST", "/teams/a/endpoints/e/score", &[("authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        assert!(crashed_workers(&gw).is_empty(), "{:?}", crashed_workers(&gw));
    }

    /// The path the filter authorizes is the path that is routed and forwarded: a target
    /// that others could read as another team's path (or as an `auth: none` route) is
    /// refused before any route, never forwarded.
    fn encoded_paths_cannot_cross_teams(host: Host) {
        let gw = Gateway::start_on(host, teams_filter_config).unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        for target in [
            "/teams/b/..%2Fa/endpoints/e/score",
            "/teams/b/../a/endpoints/e/score",
            "/teams/b/%2e%2e/a/endpoints/e/score",
            "/teams/b/%252e%252e/a/endpoints/e/score",
            "/teams/b//../a/endpoints/e/score",
            "/teams/%61/endpoints/e/score",
        ] {
            let (status, body) = raw(&gw, "POST", target, &[("authorization", &auth)]);
            assert_eq!(status, 400, "{target}: {body}");
            assert!(body.contains("path_not_normalized"), "{target}: {body}");
            assert!(!body.contains("received"), "{target} reached the backend: {body}");
        }
        // No token at all, through the `auth: none` route.
        let (status, body) = raw(&gw, "GET", "/teams/b/../../health", &[]);
        assert_eq!(status, 400, "{body}");
        // The normal form of the same request passes.
        let (status, body) = raw(&gw, "POST", "/teams/a/endpoints/e/score", &[("authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
    }

    /// `match.hosts` compares the client's host (Kong's `:authority` is its server name).
    fn match_hosts_uses_the_clients_host(host: Host) {
        let gw = Gateway::start_on(host, |idp| {
            json!({
                "providers": [entra_provider(idp)],
                "routes": [{"name": "ml", "match": {"hosts": ["ml.example.com"]},
                            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}]
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        let (status, body) = raw(&gw, "POST", "/score", &[("authorization", &auth), ("host", "ml.example.com")]);
        assert_eq!(status, 200, "{body}");
        let (status, body) = raw(&gw, "POST", "/score", &[("authorization", &auth), ("host", "ML.example.com:8443")]);
        assert_eq!(status, 200, "{body}");
        let (status, body) = raw(&gw, "POST", "/score", &[("authorization", &auth), ("host", "other.example.com")]);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("no_route"), "{body}");
    }

    /// A provider configured by discovery (how Entra is configured) loads its keys.
    fn discovery_provider_loads_keys(host: Host) {
        let gw = Gateway::builder(host)
            .setup_idp(|idp| {
                idp.control("POST", "jwks?mode=ok&delay_ms=300").expect("delay");
            })
            .start(|idp| {
                let mut p = entra_provider(idp);
                let o = p.as_object_mut().expect("provider");
                o.remove("jwks_uri");
                o.insert(
                    "discovery_uri".into(),
                    Value::String(format!(
                        "http://127.0.0.1:{idp}/{}/v2.0/.well-known/openid-configuration",
                        aml_harness::TENANT
                    )),
                );
                json!({"providers": [p], "routes": [{"name": "all",
                    "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}]})
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        // The first requests may ride the discovery + key-set fetch themselves (Kong).
        let answers: Vec<u16> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| raw(&gw, "POST", "/score", &[("authorization", &auth)]).0))
                .collect();
            hs.into_iter().map(|h| h.join().expect("join")).collect()
        });
        assert!(answers.iter().all(|s| *s == 200 || *s == 503), "{answers:?}");
        std::thread::sleep(Duration::from_millis(500));
        let (status, body) = raw(&gw, "POST", "/score", &[("authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        let stats = gw.idp.control("GET", "stats").expect("stats");
        assert!(stats["discovery_requests"].as_u64().unwrap_or(0) >= 1, "{stats}");
        assert!(crashed_workers(&gw).is_empty(), "{:?}", crashed_workers(&gw));
    }

    /// A query-string token is gone from what the backend really receives.
    fn query_token_never_reaches_the_backend(host: Host) {
        let gw = Gateway::start_on(host, |idp| {
            json!({
                "providers": [entra_provider(idp)],
                "token_sources": [{"query": "access_token"}],
                "routes": [{"name": "all",
                            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}]
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let (status, body) = raw(&gw, "POST", &format!("/score?x=1&access_token={a}&y=2"), &[]);
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains(&a), "the backend received the caller's token: {body}");
        assert!(!body.contains("access_token"), "{body}");
        assert!(body.contains("x=1&y=2"), "other parameters are kept: {body}");
    }

    /// Kong forwards header names with underscores (`underscores_in_headers on`), and
    /// CGI/WSGI backends read `x_caller_oid` as `x-caller-oid`: such aliases of the
    /// headers the filter owns are refused (Envoy: the same rule, whatever its settings).
    fn underscore_aliases_of_identity_headers_are_refused(host: Host) {
        // Kong's own default (the harness, like kong/kong.conf, turns underscores off).
        let gw = Gateway::builder(host)
            .kong_conf("nginx_proxy_underscores_in_headers", "")
            .start(teams_filter_config)
            .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let auth = bearer(&a);
        let (status, body) = raw(
            &gw,
            "POST",
            "/teams/a/endpoints/e/score",
            &[("authorization", &auth), ("x_caller_oid", "evil")],
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("duplicate_identity_header"), "{body}");
        assert!(!body.contains("received"), "{body}");
    }

    /// Metrics scrapes while requests produce decisions no series had counted yet never
    /// wedge a worker. Kong 3.9's `/metrics` holds the metrics memory's lock while it
    /// yields: a series defined in that worker then waited for itself forever (the first
    /// scrape hung at the ninth such request); every series is now defined at load.
    fn metrics_scrapes_during_new_decisions_never_wedge_a_worker(host: Host) {
        const ROUTES: usize = 40;
        let gw = Gateway::builder(host)
            .workers(1)
            .start(|idp| {
                let routes: Vec<Value> = (0..ROUTES)
                    .map(|i| json!({"name": format!("r{i}"), "match": {"path": format!("/r{i}/score")}}))
                    .collect();
                json!({"providers": [entra_provider(idp)], "routes": routes})
            })
            .unwrap_or_else(|e| panic!("{e}"));
        // Scrapes back to back while the requests go; stop at the first request not
        // answered (a wedged worker answers none).
        let done = std::sync::atomic::AtomicBool::new(false);
        let (scrapes, answers) = std::thread::scope(|s| {
            let scraper = s.spawn(|| {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = gw.try_metric(&denied_counter("r0", "token_missing")) {
                        return Err(format!("scrape {n}: {e}"));
                    }
                    n += 1;
                }
                Ok(n)
            });
            let mut answers = Vec::new();
            'send: for i in 0..ROUTES {
                let url = gw.url(&format!("/r{i}/score"));
                for auth in [None, Some("Bearer not.a.jwt")] {
                    let headers: Vec<(&str, &str)> =
                        auth.map(|a| ("authorization", a)).into_iter().collect();
                    let r = aml_harness::http("POST", &url, &headers, Some("{}"));
                    answers.push(r.map_or(0, |r| r.status));
                    if answers.last() != Some(&401) {
                        break 'send;
                    }
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (scraper.join().expect("scraper"), answers)
        });
        let scrapes = scrapes.unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{scrapes} scrapes during {} requests", answers.len());
        assert_eq!(answers.len(), 2 * ROUTES, "a request was not answered: {answers:?}");
        for i in [0, ROUTES / 2, ROUTES - 1] {
            let route = format!("r{i}");
            for reason in ["token_missing", "token_malformed"] {
                assert_eq!(gw.metric(&denied_counter(&route, reason)), Some(1.0), "{route} {reason}");
            }
        }
        assert!(crashed_workers(&gw).is_empty(), "{:?}", crashed_workers(&gw));
    }

    /// A cookie token is gone from the cookie header the backend really receives, the
    /// other cookies are kept.
    fn cookie_token_never_reaches_the_backend(host: Host) {
        let gw = Gateway::start_on(host, |idp| {
            json!({
                "providers": [entra_provider(idp)],
                "token_sources": [{"cookie": "aml_token"}],
                "routes": [{"name": "all",
                            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}]
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let a = team_token(&gw, "a");
        let cookie = format!("a=1; aml_token={a}; b=2");
        let (status, body) = raw(&gw, "POST", "/score", &[("cookie", &cookie)]);
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains(&a), "the backend received the caller's token: {body}");
        assert!(body.contains(r#"["cookie","a=1; b=2"]"#), "{body}");
    }
}
