//! End-to-end on both real hosts (two workers each): the caller registry ("who owns this
//! token?"), route caller allow-lists, `unknown_callers: deny`, rate limits keyed by
//! caller with the `RateLimit-Policy` / `RateLimit` headers, and concurrency limits on a
//! slow backend. Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aml_harness::{both_hosts, http, teams_filter_config, Gateway, Host, Resp, ENDPOINT_KEY};
use serde_json::{json, Value};

const BODY: &str = r#"{"input_data": {"data": [[1, 2, 3]]}}"#;
const FRAUD: &str = "/teams/fraud/endpoints/fraud-v2/score";

/// The teams config plus a registry of two callers, a route only `fraud-scoring` may use
/// and a route limited per caller.
fn config(idp_port: u16, unknown: &str) -> Value {
    let mut c = teams_filter_config(idp_port);
    c["callers"] = json!([
        {"name": "fraud-scoring", "app_ids": ["fraud-svc"], "owner": "fraud-team",
         "contact": "fraud-oncall@contoso.com"},
        {"name": "churn-scoring", "app_ids": ["churn-svc"], "owner": "churn-team"}
    ]);
    c["unknown_callers"] = json!(unknown);
    let routes = c["routes"].as_array_mut().expect("routes");
    routes.insert(
        0,
        json!({
            "name": "fraud-only",
            "match": {"path_prefix": "/fraud-only/"},
            "callers": ["fraud-scoring"],
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    routes.insert(
        0,
        json!({
            "name": "open-limited",
            "match": {"path_prefix": "/open/"},
            "auth": "none",
            "rate_limit": {"requests": 2, "window_seconds": 60},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    routes.insert(
        0,
        json!({
            "name": "gpu",
            "match": {"path_prefix": "/gpu/"},
            "concurrency_limit": {"max_in_flight": 2, "key": "caller"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    routes.insert(
        0,
        json!({
            "name": "burst",
            "match": {"path_prefix": "/burst/"},
            "rate_limit": {"requests": 20, "window_seconds": 600, "key": "caller"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    routes.insert(
        0,
        json!({
            "name": "per-caller",
            "match": {"path_prefix": "/per-caller/"},
            "rate_limit": {"requests": 3, "window_seconds": 60, "key": "caller"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    c
}

fn start(host: Host, unknown: &'static str) -> Gateway {
    Gateway::start_on(host, move |port| config(port, unknown)).unwrap_or_else(|e| panic!("{e}"))
}

fn post(gw: &Gateway, path: &str, token: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {token}");
    let mut h: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("authorization", &auth),
    ];
    h.extend_from_slice(extra);
    http("POST", &gw.url(path), &h, Some(BODY)).unwrap_or_else(|e| panic!("{e}"))
}

fn token(gw: &Gateway, app: &str, team: &str) -> String {
    gw.idp
        .client_credentials(app, "Endpoint.Score", Some(team))
        .unwrap_or_else(|e| panic!("{e}"))
}

both_hosts! {
    fn registered_callers_are_named_upstream_in_audit_lines_and_metrics(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let churn = token(&gw, "churn-svc", "churn");
        let stranger = token(&gw, "stranger-svc", "fraud");

        // Named upstream; a client's own x-caller-name is overwritten in place.
        let r = post(&gw, FRAUD, &fraud, &[("x-caller-name", "churn-scoring")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend_values("x-caller-name"), ["fraud-scoring"]);
        // An unregistered app is allowed (unknown_callers: allow), named by nobody.
        let r = post(&gw, FRAUD, &stranger, &[("x-caller-name", "fraud-scoring")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.backend_values("x-caller-name").iter().all(|v| v.is_empty()),
            "a spoofed caller name reached the backend: {}",
            r.body
        );
        // The restricted route admits only fraud-scoring.
        assert_eq!(post(&gw, "/fraud-only/score", &fraud, &[]).status, 200);
        let r = post(&gw, "/fraud-only/score", &churn, &[]);
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"], "caller_not_allowed");
        let r = post(&gw, "/fraud-only/score", &stranger, &[]);
        assert_eq!(r.json()["error"], "caller_not_allowed");

        let lines = gw.wait_audit_lines(5, Duration::from_secs(10));
        assert_eq!(lines.len(), 5, "{}", gw.log());
        assert_eq!(lines[0]["caller"], "fraud-scoring");
        assert_eq!(lines[0]["owner"], "fraud-team");
        assert_eq!(lines[1]["caller"], "unregistered");
        assert!(lines[1].get("owner").is_none(), "{}", lines[1]);
        assert_eq!(lines[3]["caller"], "churn-scoring");
        assert_eq!(lines[3]["reason"], "caller_not_allowed");

        let stats = gw.metrics_text();
        let count = |name: &str| -> u64 { gw.metric(name).unwrap_or(0.0) as u64 };
        let named = "decisions_total_route=team-score_caller=fraud-scoring_decision=allow_reason=authenticated";
        let refused = "decisions_total_route=fraud-only_caller=churn-scoring_decision=deny_reason=caller_not_allowed";
        let unregistered = "decisions_total_route=fraud-only_caller=unregistered_decision=deny_reason=caller_not_allowed";
        assert_eq!(count(named), 1, "{stats}");
        assert_eq!(count(refused), 1, "{stats}");
        assert_eq!(count(unregistered), 1, "{stats}");
    }
}

both_hosts! {
    fn unknown_callers_deny_refuses_unregistered_apps(host: Host) {
        let gw = start(host, "deny");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let stranger = token(&gw, "stranger-svc", "fraud");
        assert_eq!(post(&gw, FRAUD, &fraud, &[]).status, 200);
        let r = post(&gw, FRAUD, &stranger, &[]);
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"], "caller_unknown");
        assert!(r.header("www-authenticate").is_some_and(|v| v.contains("insufficient_scope")));
        // Routes without auth stay open: there is no caller to refuse.
        let r = http("GET", &gw.url("/health"), &[], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

both_hosts! {
    fn a_caller_over_its_limit_gets_429_with_limit_headers_and_others_do_not(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        // A second token of the same app (another team claim) counts in the same bucket.
        let fraud_again = token(&gw, "fraud-svc", "churn");
        let churn = token(&gw, "churn-svc", "churn");
        let mut statuses = Vec::new();
        for t in [&fraud, &fraud_again, &fraud, &fraud_again] {
            let r = post(&gw, "/per-caller/score", t, &[]);
            if r.status == 200 {
                // Allowed responses carry the quota too.
                assert_eq!(r.header("ratelimit-policy"), Some(r#""per-caller";q=3;w=60"#));
                let left = r.header("ratelimit").unwrap_or_default();
                assert!(left.starts_with(r#""per-caller";r="#), "{:?}", r.headers);
            }
            if r.status == 429 {
                assert_eq!(r.json()["error"], "rate_limited");
                let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
                assert!(retry >= 1, "{:?}", r.headers);
                assert_eq!(r.header("ratelimit-policy"), Some(r#""per-caller";q=3;w=60"#));
                assert_eq!(
                    r.header("ratelimit"),
                    Some(format!(r#""per-caller";r=0;t={retry}"#).as_str())
                );
            }
            statuses.push(r.status);
        }
        // Per node (shared data): both workers count together.
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_eq!(post(&gw, "/per-caller/score", &churn, &[]).status, 200);
    }
}

/// A slow scoring request (the mock answers after `delay_ms`) that holds a slot, on its
/// own connection, which the caller may drop before the answer. Sent again while the
/// gateway refuses it at once (a quick probe may hold the slot for a moment).
fn hold_slot(gw: &Gateway, token: &str, delay_ms: u64) -> TcpStream {
    hold_slot_with(gw, token, &[("x-mock-delay-ms", &delay_ms.to_string())])
}

/// [`hold_slot`] with the mock's controls in `mock` (`x-mock-delay-ms`, `x-mock-drop`).
fn hold_slot_with(gw: &Gateway, token: &str, mock: &[(&str, &str)]) -> TcpStream {
    let controls: String = mock.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let addr = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    for attempt in 0..50 {
        // A request id of its own: the audit line says whether this attempt was admitted.
        let rid = format!("hold-{}-{attempt}", HOLDS.fetch_add(1, Ordering::Relaxed));
        let req = format!(
            "POST /gpu/score HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             content-type: application/json\r\nx-request-id: {rid}\r\n{controls}\
             Content-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut first = [0u8; 12];
        match s.read(&mut first) {
            // No answer yet: upstream holding its slot, or a refusal slow to arrive (a
            // loaded host); the audit line decides.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if admitted(gw, &rid) {
                    return s;
                }
            }
            Ok(n) => assert!(
                first.get(..n).is_some_and(|b| b.ends_with(b"429")),
                "{}",
                String::from_utf8_lossy(&first)
            ),
            Err(e) => panic!("{e}"),
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("a slow request never got a slot: {}", gw.log());
}

static HOLDS: AtomicU32 = AtomicU32::new(0);

/// Whether the filter admitted the request with id `rid`, from its audit line.
fn admitted(gw: &Gateway, rid: &str) -> bool {
    let needle = format!("\"request_id\":\"{rid}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = gw.log_lines(&[&needle]).first() {
            return line.contains("\"decision\":\"allow\"");
        }
        assert!(Instant::now() < deadline, "no audit line for {rid}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The status of the answer on a held connection.
fn status_of(mut s: TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0)
}

/// Quick requests until one is refused with 429 `concurrency_limited` (the slow ones
/// hold every slot), within `within`.
fn until_refused(gw: &Gateway, token: &str, within: Duration) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        let r = post(gw, "/gpu/score", token, &[]);
        if r.status == 429 {
            return r;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(Instant::now() < deadline, "never refused: {}", gw.log());
        thread::sleep(Duration::from_millis(50));
    }
}

/// Quick requests until one is admitted, within `within`.
fn until_admitted(gw: &Gateway, token: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = post(gw, "/gpu/score", token, &[]);
        if r.status == 200 {
            return;
        }
        assert_eq!(r.json()["error"], "concurrency_limited", "{}", r.body);
        assert!(
            Instant::now() < deadline,
            "slots never came back: {}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

both_hosts! {
    fn requests_without_a_token_are_limited_per_client_address(host: Host) {
        let gw = start(host, "allow");
        let get = || http("GET", &gw.url("/open/status"), &[], None).unwrap_or_else(|e| panic!("{e}"));
        let statuses: Vec<u16> = (0..3).map(|_| get().status).collect();
        // Per node: both workers count this address together.
        assert_eq!(statuses, [200, 200, 429]);
        let r = get();
        assert_eq!(r.json()["error"], "rate_limited", "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some(r#""open-limited";q=2;w=60"#));
        // A verified caller on a limited route has a bucket of its own.
        let fraud = token(&gw, "fraud-svc", "fraud");
        assert_eq!(post(&gw, "/per-caller/score", &fraud, &[]).status, 200);
    }
}

both_hosts! {
    fn a_caller_holding_max_in_flight_slow_requests_is_refused_until_one_ends(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let churn = token(&gw, "churn-svc", "churn");
        // Two slow calls in flight (the limit is per node: they may land on either worker).
        let slow = [hold_slot(&gw, &fraud, 6000), hold_slot(&gw, &fraud, 6000)];
        let r = until_refused(&gw, &fraud, Duration::from_secs(4));
        assert_eq!(r.json()["error"], "concurrency_limited", "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"));
        // Another caller has slots of its own.
        assert_eq!(post(&gw, "/gpu/score", &churn, &[]).status, 200);
        for s in slow {
            assert_eq!(status_of(s), 200);
        }
        // Both ended: admitted again.
        assert_eq!(post(&gw, "/gpu/score", &fraud, &[]).status, 200);

        // Callers that go away before the answer give their slots back too.
        let gone = [hold_slot(&gw, &fraud, 20_000), hold_slot(&gw, &fraud, 20_000)];
        until_refused(&gw, &fraud, Duration::from_secs(3));
        drop(gone);
        until_admitted(&gw, &fraud, Duration::from_secs(10));
    }
}

both_hosts! {
    fn a_slot_comes_back_when_the_upstream_drops_the_connection(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        // More failed calls than max_in_flight (2): each must give its slot back.
        for _ in 0..4 {
            let r = post(&gw, "/gpu/score", &fraud, &[("x-mock-drop", "1")]);
            // The host's own answer to a backend that reset the connection.
            assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.body);
        }
        // The same for a backend that dies while a slow request is in flight.
        let dying = [
            hold_slot_with(&gw, &fraud, &[("x-mock-delay-ms", "1500"), ("x-mock-drop", "1")]),
            hold_slot_with(&gw, &fraud, &[("x-mock-delay-ms", "1500"), ("x-mock-drop", "1")]),
        ];
        until_refused(&gw, &fraud, Duration::from_secs(3));
        for s in dying {
            assert!(matches!(status_of(s), 502 | 503));
        }
        // Every slot is free: max_in_flight slow calls are admitted, and the next refused.
        let slow = [hold_slot(&gw, &fraud, 6000), hold_slot(&gw, &fraud, 6000)];
        let r = until_refused(&gw, &fraud, Duration::from_secs(4));
        assert_eq!(r.json()["error"], "concurrency_limited", "{}", r.body);
        for s in slow {
            assert_eq!(status_of(s), 200);
        }
    }
}

/// How many workers wrote audit lines for `route`: nginx prefixes its error-log lines with
/// the worker's `pid#tid`, Envoy with `[time][thread id]`.
fn workers_deciding(gw: &Gateway, route: &str) -> usize {
    let mut ids: Vec<String> = gw
        .log_lines(&[&format!("\"route\":\"{route}\"")])
        .iter()
        .filter_map(|l| gw.worker_of(l))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

both_hosts! {
    fn rate_limit_counts_are_shared_across_workers_within_the_stated_tolerance(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let mut allowed = 0;
        let mut sent = 0;
        // Bursts of concurrent requests, each on a new connection, until both workers have
        // decided some (nginx may hand a burst to one worker). A worker counting alone would
        // admit its own 20.
        for _ in 0..60 {
            let statuses: Vec<u16> = thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            (0..4)
                                .map(|_| post(&gw, "/burst/score", &fraud, &[]).status)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                hs.into_iter().flat_map(|h| h.join().expect("thread")).collect()
            });
            assert!(statuses.iter().all(|s| matches!(s, 200 | 429)), "{statuses:?}");
            allowed += statuses.iter().filter(|s| **s == 200).count();
            sent += statuses.len();
            if workers_deciding(&gw, "burst") >= 2 && sent >= 64 {
                break;
            }
        }
        assert!(
            workers_deciding(&gw, "burst") >= 2,
            "the requests never reached the second worker"
        );
        // The tolerance docs/LIMITS.md states: exact while shared data answers; a request
        // whose compare-and-swap loses 4 times in a row counts in its worker's own window
        // (rare; two such are allowed here).
        assert!((20..=22).contains(&allowed), "{allowed} of {sent} allowed (limit 20)");
    }
}

both_hosts! {
    fn one_slow_request_ending_frees_one_slot(host: Host) {
        let gw = start(host, "allow");
        let fraud = token(&gw, "fraud-svc", "fraud");
        let short = hold_slot(&gw, &fraud, 3000);
        let long = hold_slot(&gw, &fraud, 10_000);
        until_refused(&gw, &fraud, Duration::from_secs(2));
        assert_eq!(status_of(short), 200);
        // One ended, one still in flight: one slot is free, and only one.
        let again = hold_slot(&gw, &fraud, 4000);
        let r = until_refused(&gw, &fraud, Duration::from_secs(4));
        assert_eq!(r.json()["error"], "concurrency_limited", "{}", r.body);
        for s in [again, long] {
            assert_eq!(status_of(s), 200);
        }
    }
}
