//! End-to-end soak on both real hosts — Envoy 1.40 (V8) and Kong Gateway 3.9 (Wasmtime),
//! two workers each — loading the built filter: `SOAK_SECONDS` (default 10; `make soak`
//! runs 60) of mixed traffic from a few client threads, each request on a new connection
//! (so both workers serve), while the IdP rotates its keys twice (a planned rotation, then
//! an emergency one that retires the old keys) and fails once (JWKS 500, then garbage).
//!
//! Every answer is checked against the outcome its request must have:
//!
//! | traffic | expected |
//! | --- | --- |
//! | valid token of a published key | 200 (401 `kid_unknown` allowed only while its key is younger than the node's refetch limit + 4 s, or when the request straddled a key change) |
//! | forged signature | 401 `signature_invalid` (`kid_unknown` once its kid is retired) |
//! | unknown `kid` | 401 `kid_unknown` |
//! | no token | 401 `token_missing` |
//! | rate-limited route, one caller far over its limit | 200 or 429 `rate_limited`; at least one 429, and no more 200s than the limit allows |
//!
//! A 503 `jwks_unavailable` counts as deliberate while the IdP fails (and a few seconds
//! after, the node's backoff); any other 5xx is counted as unexpected. At the end the test
//! prints `SOAK <host>: ...` with the requests, wrong decisions, unexpected 5xx, deliberate
//! 503s and worker/VM restarts in the host's log, and asserts the last three bad counts are 0.
//!
//! Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aml_harness::{both_hosts, default_filter_config, post_score, Gateway, Host, ENDPOINT_KEY};
use serde_json::{json, Value};

const CLIENTS: usize = 4;
/// Pause between one client's requests: steady traffic, not the machine's maximum.
const PAUSE: Duration = Duration::from_millis(3);
const MIN_REFETCH_S: u64 = 1;
/// A new key's tokens may meet the node's unknown-kid refetch limit this long (the limit,
/// then a fetch and a tick on a busy machine).
const YOUNG_KEY: Duration = Duration::from_secs(MIN_REFETCH_S + 4);
/// After the IdP recovers, the node may still back off this long (503s still deliberate).
const BACKOFF_GRACE: Duration = Duration::from_secs(8);
const LIMIT: u64 = 5;
const WINDOW_S: u64 = 1;
const VALID_POOL: usize = 6;

fn seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s >= 5)
        .unwrap_or(10)
}

fn config(port: u16) -> Value {
    let mut c = default_filter_config(port);
    c["providers"][0]["jwks_min_refetch_seconds"] = json!(MIN_REFETCH_S);
    let routes = c["routes"].as_array_mut().expect("routes");
    routes.insert(
        1,
        json!({
            "name": "limited",
            "match": {"path_prefix": "/limited/"},
            "rate_limit": {"requests": LIMIT, "window_seconds": WINDOW_S, "key": "oid"},
            "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}
        }),
    );
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Valid,
    Forged,
    UnknownKid,
    NoToken,
    OverLimit,
}

/// What the clients send, replaced by the controller at each key change.
#[derive(Clone)]
struct Tokens {
    /// Bumped at every key change (rotation, retirement).
    epoch: u64,
    key_born: Instant,
    valid: Vec<String>,
    limited: String,
    forged: String,
    unknown: Vec<String>,
}

#[derive(Default)]
struct Idp {
    failing: bool,
    recovered_at: Option<Instant>,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    by_class: BTreeMap<(Class, u16, String), u64>,
    wrong: Vec<String>,
    wrong_count: u64,
    unexpected_5xx: u64,
    deliberate_503: u64,
    young_key_401: u64,
    limited_ok: u64,
    limited_429: u64,
}

fn mint(gw: &Gateway, spec: Value) -> String {
    gw.idp.token(spec).unwrap_or_else(|e| panic!("{e}"))
}

fn mint_all(gw: &Gateway, epoch: u64) -> Tokens {
    Tokens {
        epoch,
        key_born: Instant::now(),
        valid: (0..VALID_POOL)
            .map(|i| mint(gw, json!({"client_id": format!("soak-app-{i}")})))
            .collect(),
        limited: mint(gw, json!({"client_id": "soak-limited"})),
        forged: mint(gw, json!({"sign_with": "forged"})),
        unknown: (0..3)
            .map(|_| mint(gw, json!({"sign_with": "unpublished"})))
            .collect(),
    }
}

fn control(gw: &Gateway, what: &str) {
    gw.idp
        .control("POST", what)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Lines of the host's log that say a worker or Wasm VM died or was restarted.
fn restart_lines(gw: &Gateway) -> Vec<String> {
    let mut bad = vec![
        "panicked",
        "wasm trap",
        "Uncaught RuntimeError",
        "unreachable",
    ];
    if gw.is_kong() {
        bad.extend(["exited on signal", "[emerg]", "[alert]"]);
    }
    let mut out: Vec<String> = gw
        .log()
        .lines()
        .filter(|l| bad.iter().any(|b| l.contains(b)))
        .map(str::to_string)
        .collect();
    out.extend(gw.crash_lines());
    out.sort();
    out.dedup();
    out
}

/// nginx logs one `start worker process <pid>` line per worker it starts (again after a
/// crash).
fn worker_starts(gw: &Gateway) -> usize {
    if !gw.is_kong() {
        return 0;
    }
    gw.log_lines(&["start worker process "])
        .iter()
        .filter(|l| {
            l.rsplit("start worker process ")
                .next()
                .is_some_and(|pid| pid.trim().parse::<u32>().is_ok())
        })
        .count()
}

struct Sent<'a> {
    class: Class,
    tokens: &'a Tokens,
    /// How old the token's key was when the request was sent.
    key_age: Duration,
    epoch_after: u64,
    idp_disturbed: bool,
}

/// Whether `(status, code)` is a right answer to this request; `Err` says what was wrong.
fn judge(s: &Sent<'_>, status: u16, code: &str, t: &mut Tally) -> Result<(), String> {
    let straddled = s.epoch_after != s.tokens.epoch;
    let young = s.key_age < YOUNG_KEY || straddled;
    if status == 503 && code == "jwks_unavailable" && s.idp_disturbed {
        t.deliberate_503 += 1;
        return Ok(());
    }
    if status >= 500 {
        t.unexpected_5xx += 1;
        return Err(format!("{:?}: {status} {code}", s.class));
    }
    let ok = match s.class {
        Class::Valid => {
            status == 200
                || (young && status == 401 && code == "kid_unknown" && {
                    t.young_key_401 += 1;
                    true
                })
        }
        Class::OverLimit => match (status, code) {
            (200, _) => {
                t.limited_ok += 1;
                true
            }
            (429, "rate_limited") => {
                t.limited_429 += 1;
                true
            }
            (401, "kid_unknown") if young => {
                t.young_key_401 += 1;
                true
            }
            _ => false,
        },
        Class::Forged => status == 401 && matches!(code, "signature_invalid" | "kid_unknown"),
        Class::UnknownKid => status == 401 && code == "kid_unknown",
        Class::NoToken => status == 401 && code == "token_missing",
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} (epoch {} -> {}, key age {:?}): {status} {code}",
            s.class, s.tokens.epoch, s.epoch_after, s.key_age
        ))
    }
}

fn class_of(i: usize) -> Class {
    match i % 10 {
        0..=3 => Class::Valid,
        4 => Class::Forged,
        5 => Class::UnknownKid,
        6 => Class::NoToken,
        _ => Class::OverLimit,
    }
}

both_hosts! {
    fn soak_mixed_traffic_through_two_rotations_and_an_idp_failure(host: Host) {
        let secs = seconds();
        let total = Duration::from_secs(secs);
        let gw = Gateway::builder(host)
            .workers(2)
            .start(config)
            .unwrap_or_else(|e| panic!("{e}"));
        let tokens = Mutex::new(mint_all(&gw, 0));
        // Keys loaded before the clock starts (cold start is another test's subject).
        let warm = tokens.lock().unwrap().valid[0].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while post_score(&gw.url("/score"), Some(&warm), &[]).map(|r| r.status).ok() != Some(200) {
            assert!(Instant::now() < deadline, "no first 200\n{}", gw.log_tail(30));
            std::thread::sleep(Duration::from_millis(100));
        }
        let starts_before = worker_starts(&gw);
        let jwks_before = gw.idp.jwks_requests().unwrap_or(0);
        let idp = Mutex::new(Idp::default());
        let tally = Mutex::new(Tally::default());
        let stop = AtomicBool::new(false);
        let seq = AtomicUsize::new(0);
        let t0 = Instant::now();
        // Each step waits this long after the previous one finished (a rotation's key
        // generation takes the mock a while on a busy machine). The failure lasts a tenth of
        // the run (at least a second); the emergency rotation comes after the node's backoff
        // of that failure has surely ended (its new key must pass after one refetch).
        let part = |frac: f64| total.mul_f64(frac);
        let fail_for = part(0.1).max(Duration::from_secs(1));
        let plan = [
            (part(0.2), "rotate"),
            (part(0.15), "fail500"),
            (fail_for / 2, "failgarbage"),
            (fail_for / 2, "recover"),
            (part(0.3).max(Duration::from_secs(6)), "emergency"),
            // Past the young-key allowance: the new key's tokens must pass.
            (part(0.15).max(YOUNG_KEY + Duration::from_secs(2)), "end"),
        ];
        std::thread::scope(|s| {
            for _ in 0..CLIENTS {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = seq.fetch_add(1, Ordering::Relaxed);
                        let class = class_of(i);
                        let snap = tokens.lock().unwrap().clone();
                        let disturbed_before = idp_disturbed(&idp);
                        let key_age = snap.key_born.elapsed();
                        let (path, token) = match class {
                            Class::Valid => ("/score", Some(snap.valid[i % VALID_POOL].as_str())),
                            Class::Forged => ("/score", Some(snap.forged.as_str())),
                            Class::UnknownKid => ("/score", Some(snap.unknown[i % 3].as_str())),
                            Class::NoToken => ("/score", None),
                            Class::OverLimit => ("/limited/score", Some(snap.limited.as_str())),
                        };
                        let r = post_score(&gw.url(path), token, &[]);
                        let epoch_after = tokens.lock().unwrap().epoch;
                        let sent = Sent {
                            class,
                            tokens: &snap,
                            key_age,
                            epoch_after,
                            idp_disturbed: disturbed_before || idp_disturbed(&idp),
                        };
                        let mut t = tally.lock().unwrap();
                        t.requests += 1;
                        let (status, code) = match &r {
                            Ok(r) => (r.status, r.json()["error"].as_str().unwrap_or_default().to_string()),
                            Err(e) => (0, format!("transport: {e}")),
                        };
                        *t.by_class.entry((class, status, code.clone())).or_default() += 1;
                        let verdict = if status == 0 {
                            Err(format!("{class:?}: {code}"))
                        } else {
                            judge(&sent, status, &code, &mut t)
                        };
                        if let Err(e) = verdict {
                            t.wrong_count += 1;
                            if t.wrong.len() < 20 {
                                t.wrong.push(format!("{:?} {e}", t0.elapsed()));
                            }
                        }
                        drop(t);
                        std::thread::sleep(PAUSE);
                    }
                });
            }
            // The controller: the IdP's plan, then the end of the run.
            let mut epoch = 0;
            for (after, step) in plan {
                std::thread::sleep(after);
                match step {
                    "end" => break,
                    "rotate" | "emergency" => {
                        control(&gw, "rotate?family=rsa");
                        epoch += 1;
                        let fresh = mint_all(&gw, epoch);
                        *tokens.lock().unwrap() = fresh;
                        if step == "emergency" {
                            // The old keys' tokens are no longer sent from here on.
                            let mut t = tokens.lock().unwrap();
                            epoch += 1;
                            t.epoch = epoch;
                            control(&gw, "retire");
                        }
                    }
                    "fail500" | "failgarbage" => {
                        idp.lock().unwrap().failing = true;
                        let mode = if step == "fail500" { "status500" } else { "garbage" };
                        control(&gw, &format!("jwks?mode={mode}"));
                    }
                    _ => {
                        control(&gw, "jwks?mode=ok");
                        let mut i = idp.lock().unwrap();
                        i.failing = false;
                        i.recovered_at = Some(Instant::now());
                    }
                }
                println!("soak {host:?}: {:?} {step}", t0.elapsed());
            }
            // At least the configured time, longer when the steps took longer.
            std::thread::sleep((t0 + total).saturating_duration_since(Instant::now()));
            stop.store(true, Ordering::Relaxed);
        });
        let elapsed = t0.elapsed();
        let restarts = restart_lines(&gw);
        let new_workers = worker_starts(&gw).saturating_sub(starts_before);
        let jwks = gw.idp.jwks_requests().unwrap_or(0).saturating_sub(jwks_before);
        let fetches = |result: &str| {
            gw.metric(&format!("jwks_fetches_total_provider=entra_result={result}"))
                .unwrap_or(0.0) as u64
        };
        let (fetch_ok, fetch_failed, adopted) = (
            fetches("ok"),
            fetches("http_error") + fetches("parse_error"),
            fetches("adopted_shared"),
        );
        let t = tally.into_inner().unwrap();
        for ((class, status, code), n) in &t.by_class {
            println!("  {class:?} {status} {code}: {n}");
        }
        let allowed_max = LIMIT * (elapsed.as_secs() / WINDOW_S + 2);
        let over_allowed = t.limited_ok.saturating_sub(allowed_max);
        println!(
            "SOAK {}: {} s, {} requests ({:.0}/s), wrong decisions {}, unexpected 5xx {}, \
             deliberate 503 {}, worker/VM restarts {} (log lines {}, new nginx workers {}), \
             young-key 401 {}, rate-limited route {} x 200 (at most {allowed_max}) {} x 429, \
             JWKS requests {jwks} (filter: {fetch_ok} fetched, {fetch_failed} failed, \
             {adopted} adopted from another worker), nginx workers started before the run \
             {starts_before}",
            host.name(),
            elapsed.as_secs(),
            t.requests,
            t.requests as f64 / elapsed.as_secs_f64(),
            t.wrong_count + over_allowed,
            t.unexpected_5xx,
            t.deliberate_503,
            restarts.len() + new_workers,
            restarts.len(),
            new_workers,
            t.young_key_401,
            t.limited_ok,
            t.limited_429,
        );
        assert!(t.wrong.is_empty(), "{} wrong decisions, first:\n{}\n{}", t.wrong_count,
                t.wrong.join("\n"), gw.log_tail(40));
        assert_eq!(t.unexpected_5xx, 0);
        assert!(restarts.is_empty() && new_workers == 0, "{restarts:?}, {new_workers} new workers");
        assert_eq!(over_allowed, 0, "{} allowed over the limit", t.limited_ok);
        assert!(t.limited_429 > 0, "the over-limit caller was never limited");
        assert!(t.requests > 100 * secs / 10, "too little traffic: {}", t.requests);
        assert!(jwks >= 3, "the rotations and the failure fetched keys: {jwks}");
    }
}

fn idp_disturbed(idp: &Mutex<Idp>) -> bool {
    let i = idp.lock().unwrap();
    i.failing || i.recovered_at.is_some_and(|r| r.elapsed() < BACKOFF_GRACE)
}
