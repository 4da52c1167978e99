//! End-to-end on both real hosts — Envoy 1.40 (V8) and Kong Gateway 3.9 (Wasmtime), two
//! workers each — loading the built filter: one signature verification per token per node
//! (a worker takes what another verified from shared data), and a repeated forged token
//! refused again without verification, with the reason a fresh check gives. Counted with
//! the filter's metrics, never timed. Every test runs twice: `<name>_envoy` and `<name>_kong`.

use aml_harness::{both_hosts, default_filter_config, post_score, Gateway, Host, Resp};
use serde_json::json;

fn start(host: Host) -> Gateway {
    Gateway::start_on(host, default_filter_config).unwrap_or_else(|e| panic!("{e}"))
}

fn score(gw: &Gateway, token: &str) -> Resp {
    post_score(&gw.url("/score"), Some(token), &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn count(gw: &Gateway, name: &str) -> u64 {
    gw.metric(name).unwrap_or(0.0) as u64
}

/// How many workers wrote allow audit lines: nginx prefixes its error-log lines with the
/// worker's `pid#tid`, Envoy with `[time][thread id]`.
fn workers_deciding(gw: &Gateway) -> usize {
    let mut ids: Vec<String> = gw
        .log_lines(&["\"decision\":\"allow\""])
        .iter()
        .filter_map(|l| gw.worker_of(l))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// `n` requests with `token`, 8 at a time, each over a new connection (both workers).
fn spread(gw: &Gateway, token: &str, n: usize) -> Vec<Resp> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| (0..n / 8).map(|_| score(gw, token)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

both_hosts! {
    fn a_token_is_verified_once_per_node_and_other_workers_take_it_from_shared_data(host: Host) {
        let gw = start(host);
        let token = gw.idp.token(json!({})).unwrap_or_else(|e| panic!("{e}"));
        let first = score(&gw, &token);
        assert_eq!(first.status, 200, "{}\n{}", first.body, gw.log_tail(40));
        assert_eq!(count(&gw, "verifications_total"), 1, "{}", gw.metrics_text());
        // Until both workers have served the token (connections spread over workers; nginx
        // may give a burst to one worker, so try for a while).
        for _ in 0..60 {
            for r in spread(&gw, &token, 40) {
                assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log_tail(40));
            }
            if workers_deciding(&gw) >= 2 {
                break;
            }
        }
        let (verified, shared) = (
            count(&gw, "verifications_total"),
            count(&gw, "verified_cache_total_result=shared_hit"),
        );
        assert!(
            workers_deciding(&gw) >= 2,
            "the requests never reached the second worker (verifications {verified}, shared hits {shared})"
        );
        assert_eq!(
            (verified, shared),
            (1, 1),
            "one verification on the node, one shared hit in the other worker\n{}",
            gw.metrics_text()
        );
        // A second token: verified once more, not once per worker.
        let other = gw
            .idp
            .token(json!({"claims": {"oid": "22222222-3333-4444-5555-666666666666"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(score(&gw, &other).status, 200);
        for r in spread(&gw, &other, 40) {
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert_eq!(count(&gw, "verifications_total"), 2, "{}", gw.metrics_text());
    }

    fn a_repeated_forged_token_is_not_verified_again_and_keeps_its_reason(host: Host) {
        let gw = start(host);
        let forged = gw
            .idp
            .token(json!({"sign_with": "forged"}))
            .unwrap_or_else(|e| panic!("{e}"));
        let valid = gw.idp.token(json!({})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(score(&gw, &valid).status, 200, "{}", gw.log_tail(40));
        let before = count(&gw, "verifications_total");
        let results = spread(&gw, &forged, 40);
        for r in &results {
            assert_eq!(r.status, 401, "{}", r.body);
            assert_eq!(r.json()["error"], "signature_invalid", "{}", r.body);
        }
        let verified = count(&gw, "verifications_total") - before;
        let rejected = count(&gw, "verified_cache_total_result=rejected_hit");
        // Each worker checks it once (two at the same moment may both be first).
        assert!(
            (1..=2).contains(&verified),
            "verifications of one forged token sent 40 times: {verified}\n{}",
            gw.metrics_text()
        );
        assert_eq!(verified + rejected, 40, "{}", gw.metrics_text());
        // Valid callers are unaffected.
        assert_eq!(score(&gw, &valid).status, 200);
    }
}
