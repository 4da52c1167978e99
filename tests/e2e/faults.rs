//! End-to-end on both real hosts: the fault-injection table of issue 11. The provider
//! discovers its keys (OpenID discovery, then `jwks_uri`) from a fault server in this test
//! process, which serves the mock IdP's real key set or one fault at a time: slow just under
//! and just over `jwks_timeout_ms`, a connection reset mid-body, a chunked body, 301, 404, an
//! HTML page, empty `keys`, keys with bad base64, a 1024-bit RSA modulus, 10 MB, 10,000 keys,
//! a discovery document whose `jwks_uri` is plain http on another host, has none, or whose
//! `issuer` is foreign.
//!
//! With keys loaded (refresh every second): tokens signed with the good key keep passing
//! through every fault, each failure streak is logged once, and the next good answer ends it.
//! On a fresh gateway (no keys yet): every fault answers 503 `jwks_unavailable`, the whole
//! streak is logged once, and good keys end it. Neither crashes a worker or traps a VM.
//!
//! Already covered elsewhere (not repeated here): status 500 and a hang (tests/e2e/jwks.rs
//! `idp_down_*`), a 200 non-JSON body, ~1 MiB and a hang during refresh with once-per-streak
//! logging (jwks.rs `jwks_*_during_refresh_*`), 500 from the start then recovery
//! (foundation.rs), a foreign `issuer` on a fresh gateway (harden.rs).
//!
//! Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aml_harness::{both_hosts, entra_provider, http, Gateway, Host, ENDPOINT_KEY, TENANT};
use serde_json::{json, Value};

/// The provider's `jwks_timeout_ms` (the default). "Just under" leaves a second of slack for
/// a loaded machine.
const TIMEOUT_MS: u64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Ok,
    /// The good key set after this many milliseconds.
    Slow(u64),
    /// Headers and half the body, then a TCP reset.
    Reset,
    /// The good key set, `Transfer-Encoding: chunked` (not a fault: it must load).
    Chunked,
    Moved,
    NotFound,
    Html,
    EmptyKeys,
    BadBase64,
    SmallRsa,
    TenMb,
    /// The good keys first, then 9,998 more entries (cut at the caps, not a failure).
    TenThousandKeys,
    DiscoveryForeignHost,
    DiscoveryNoJwksUri,
    DiscoveryForeignIssuer,
}

impl Fault {
    fn in_discovery(self) -> bool {
        matches!(
            self,
            Fault::DiscoveryForeignHost | Fault::DiscoveryNoJwksUri | Fault::DiscoveryForeignIssuer
        )
    }
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    /// Requests for the faulted document (discovery or key set) since the fault was set.
    hits: u64,
}

/// Serves `/{tenant}/v2.0/.well-known/openid-configuration` and the key set.
struct FaultServer {
    port: u16,
    state: Arc<Mutex<State>>,
    /// The mock IdP's key set (known once the IdP runs).
    idp_jwks: Arc<Mutex<String>>,
}

impl FaultServer {
    fn start() -> FaultServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            fault: Some(Fault::Ok),
            hits: 0,
        }));
        let idp_jwks = Arc::new(Mutex::new(String::new()));
        let (st, jw) = (state.clone(), idp_jwks.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (st, jw) = (st.clone(), jw.clone());
                std::thread::spawn(move || {
                    let jwks = lock(&jw).clone();
                    serve(c, port, &st, &jwks)
                });
            }
        });
        FaultServer {
            port,
            state,
            idp_jwks,
        }
    }

    fn set(&self, f: Fault) {
        let mut s = lock(&self.state);
        s.fault = Some(f);
        s.hits = 0;
    }

    fn hits(&self) -> u64 {
        lock(&self.state).hits
    }

    fn discovery_uri(&self) -> String {
        format!(
            "http://127.0.0.1:{}/{TENANT}/v2.0/.well-known/openid-configuration",
            self.port
        )
    }
}

fn serve(mut c: TcpStream, port: u16, state: &Mutex<State>, idp_jwks: &str) {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let is_discovery = path.ends_with("/.well-known/openid-configuration");
    let fault = {
        let mut s = lock(state);
        let f = s.fault.unwrap_or(Fault::Ok);
        if f.in_discovery() == is_discovery {
            s.hits += 1;
        }
        f
    };
    if is_discovery {
        let issuer = match fault {
            Fault::DiscoveryForeignIssuer => {
                "https://login.microsoftonline.com/evil/v2.0".to_string()
            }
            _ => format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        };
        let mut doc = json!({"issuer": issuer,
                             "jwks_uri": format!("http://127.0.0.1:{port}/{TENANT}/discovery/v2.0/keys")});
        match fault {
            Fault::DiscoveryForeignHost => {
                doc["jwks_uri"] = json!(format!(
                    "http://login.evil.example/{TENANT}/discovery/v2.0/keys"
                ))
            }
            Fault::DiscoveryNoJwksUri => {
                doc.as_object_mut().map(|o| o.remove("jwks_uri"));
            }
            _ => {}
        }
        return reply(
            &mut c,
            "200 OK",
            "application/json",
            doc.to_string().as_bytes(),
        );
    }
    let good = || {
        http("GET", idp_jwks, &[], None)
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let good_keys = || -> Vec<Value> {
        serde_json::from_str::<Value>(&good())
            .ok()
            .and_then(|v| v["keys"].as_array().cloned())
            .unwrap_or_default()
    };
    let first_kid = || {
        good_keys()
            .first()
            .map(|k| k["kid"].clone())
            .unwrap_or(Value::Null)
    };
    match fault {
        Fault::Ok
        | Fault::DiscoveryForeignHost
        | Fault::DiscoveryNoJwksUri
        | Fault::DiscoveryForeignIssuer => {
            reply(&mut c, "200 OK", "application/json", good().as_bytes())
        }
        Fault::Slow(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            reply(&mut c, "200 OK", "application/json", good().as_bytes())
        }
        Fault::Reset => {
            let body = good();
            let half = body.len() / 2;
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                body.len(),
                &body[..half]
            );
            let _ = c.flush();
            std::thread::sleep(Duration::from_millis(100));
            reset(c);
        }
        Fault::Chunked => {
            let body = good();
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            );
            let third = (body.len() / 3).max(1);
            for chunk in body.as_bytes().chunks(third) {
                out.push_str(&format!(
                    "{:x}\r\n{}\r\n",
                    chunk.len(),
                    String::from_utf8_lossy(chunk)
                ));
            }
            out.push_str("0\r\n\r\n");
            let _ = c.write_all(out.as_bytes());
        }
        Fault::Moved => {
            let _ = write!(
                c,
                "HTTP/1.1 301 Moved Permanently\r\nlocation: {idp_jwks}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
        Fault::NotFound => reply(
            &mut c,
            "404 Not Found",
            "application/json",
            br#"{"error":"not_found"}"#,
        ),
        Fault::Html => reply(
            &mut c,
            "200 OK",
            "text/html",
            b"<!DOCTYPE html><html><head><title>Sign in to your account</title></head>\
              <body><h1>Service unavailable</h1><p>Please try again later.</p></body></html>",
        ),
        Fault::EmptyKeys => reply(&mut c, "200 OK", "application/json", br#"{"keys":[]}"#),
        Fault::BadBase64 => {
            let doc = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": first_kid(),
                                       "n": "!!not*base64url!!", "e": "AQAB"}]});
            reply(
                &mut c,
                "200 OK",
                "application/json",
                doc.to_string().as_bytes(),
            )
        }
        Fault::SmallRsa => {
            // A 1024-bit modulus (odd, top bit set) under the good key's kid.
            let mut n = vec![0xc3u8; 128];
            n[127] = 0x01;
            let doc = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": first_kid(),
                                       "n": b64(&n), "e": "AQAB"}]});
            reply(
                &mut c,
                "200 OK",
                "application/json",
                doc.to_string().as_bytes(),
            )
        }
        Fault::TenMb => {
            let mut keys = good_keys();
            let pad = "A".repeat(10_000);
            let mut i = 0;
            while keys.len() < 1_100 {
                keys.push(
                    json!({"kty": "RSA", "kid": format!("decoy-{i}"), "n": pad, "e": "AQAB"}),
                );
                i += 1;
            }
            let body = json!({"keys": keys}).to_string();
            reply(&mut c, "200 OK", "application/json", body.as_bytes())
        }
        Fault::TenThousandKeys => {
            let mut keys = good_keys();
            let mut i = 0;
            while keys.len() < 10_000 {
                keys.push(json!({"kty": "oct", "kid": format!("d{i}")}));
                i += 1;
            }
            let body = json!({"keys": keys}).to_string();
            reply(&mut c, "200 OK", "application/json", body.as_bytes())
        }
    }
}

fn reply(c: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body);
    let _ = c.flush();
}

/// Close with a TCP RST (SO_LINGER on, 0 s) instead of a FIN.
fn reset(c: TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        onoff: i32,
        linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        onoff: 1,
        linger: 0,
    };
    // SAFETY: a valid open socket and a correctly sized `struct linger`.
    unsafe {
        setsockopt(
            c.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        );
    }
    drop(c);
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Gw {
    gw: Gateway,
    faults: FaultServer,
}

/// A gateway whose single provider discovers its keys from a fault server set to `initial`.
fn start(host: Host, initial: Fault) -> Gw {
    let faults = FaultServer::start();
    faults.set(initial);
    let (port, idp_jwks) = (faults.port, faults.idp_jwks.clone());
    let discovery = faults.discovery_uri();
    let gw = Gateway::builder(host)
        .workers(2)
        .cluster("faults", port)
        .setup_idp(move |idp| *lock(&idp_jwks) = idp.jwks_uri(TENANT))
        .start(|idp| {
            let mut p = entra_provider(idp);
            let o = p.as_object_mut().expect("provider");
            o.remove("jwks_uri");
            o.insert("discovery_uri".into(), json!(discovery));
            o.insert("upstream".into(), json!("faults"));
            o.insert("jwks_timeout_ms".into(), json!(TIMEOUT_MS));
            o.insert("jwks_refresh_seconds".into(), json!(1));
            json!({"providers": [p],
                   "routes": [{"name": "score", "match": {"path_prefix": "/"},
                               "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}]})
        })
        .unwrap_or_else(|e| panic!("{e}"));
    Gw { gw, faults }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gw {
    fn valid(&self) -> String {
        self.gw
            .idp
            .token(json!({}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn post(&self, token: &str) -> aml_harness::Resp {
        aml_harness::post_score(&self.gw.url("/score"), Some(token), &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn lines(&self, pat: &str) -> Vec<String> {
        self.gw.log_lines(&[pat])
    }

    fn assert_healthy(&mut self) {
        let host = self.gw.host();
        assert!(
            self.gw.is_running(),
            "{host} exited\n{}",
            self.gw.log_tail(40)
        );
        let bad = self.gw.vm_fault_lines();
        assert!(bad.is_empty(), "{host} log:\n{}", bad.join("\n"));
    }
}

fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What a fault does to a gateway that has keys.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// The answer is good: the keys it carries are installed.
    Loads,
    /// A failed fetch with one of these codes: the last good keys stay.
    Fails(&'static [&'static str]),
}

fn refresh_table() -> Vec<(Fault, Then)> {
    use Fault::*;
    use Then::*;
    vec![
        (Slow(TIMEOUT_MS * 2 / 3), Loads),
        // Envoy answers a call that outlives its timeout with its own 504; Kong reports
        // `:dispatch_status: timeout`.
        (
            Slow(TIMEOUT_MS + 1500),
            Fails(&["jwks_timeout", "jwks_http_504"]),
        ),
        (Reset, Fails(&["jwks_dispatch_failed"])),
        (Chunked, Loads),
        (Moved, Fails(&["jwks_http_301"])),
        (NotFound, Fails(&["jwks_http_404"])),
        (Html, Fails(&["jwks_garbage"])),
        (EmptyKeys, Fails(NO_USABLE_KEYS)),
        (BadBase64, Fails(NO_USABLE_KEYS)),
        (SmallRsa, Fails(NO_USABLE_KEYS)),
        (
            TenMb,
            Fails(&[
                "jwks_too_large",
                "jwks_dispatch_failed",
                "jwks_http_503",
                "jwks_timeout",
                "jwks_http_504",
            ]),
        ),
        (TenThousandKeys, Loads),
        (DiscoveryForeignHost, Fails(&["discovery_bad_jwks_uri"])),
        (DiscoveryNoJwksUri, Fails(&["discovery_bad_jwks_uri"])),
        (
            DiscoveryForeignIssuer,
            Fails(&["discovery_issuer_mismatch"]),
        ),
    ]
}

/// A key set without a usable key (none at all, or all skipped). The parser reports both
/// as `JWKS has no (usable) keys`, which the cache logs as `jwks_garbage`.
const NO_USABLE_KEYS: &[&str] = &["jwks_empty", "jwks_garbage"];

const FAILED: &str = "jwks_fetch_failed";
const RECOVERED: &str = "jwks_recovered";

both_hosts! {
    /// With keys loaded, each fault in turn: good tokens keep passing, a failing fault is
    /// logged once per streak (with its code), good answers end the streak, good answers of
    /// an unusual shape (slow, chunked, 10,000 keys) load their keys.
    fn faults_during_refresh_keep_the_last_good_keys(host: Host) {
        let mut g = start(host, Fault::Ok);
        poll(Duration::from_secs(20), "a first 200", || {
            let r = g.post(&g.valid());
            (r.status == 200).then_some(()).ok_or(format!("{} {}", r.status, r.body))
        });
        for (fault, then) in refresh_table() {
            let (failed0, recovered0) = (g.lines(FAILED).len(), g.lines(RECOVERED).len());
            g.faults.set(fault);
            let must_pass = |g: &Gw, t: &str| {
                let r = g.post(t);
                assert_eq!(r.status, 200, "{fault:?}: {}\n{}", r.body, g.gw.log_tail(30));
            };
            match then {
                Then::Fails(codes) => {
                    poll(Duration::from_secs(40), &format!("{fault:?}: two failed attempts"), || {
                        must_pass(&g, &g.valid());
                        let n = g.faults.hits();
                        (n >= 2).then_some(()).ok_or(format!("{n} attempts"))
                    });
                    let lines = poll(Duration::from_secs(5), &format!("{fault:?}: the log line"), || {
                        let l = g.lines(FAILED);
                        (l.len() > failed0).then_some(l).ok_or("none yet".to_string())
                    });
                    let new = &lines[failed0..];
                    assert_eq!(new.len(), 1, "{fault:?}: one line per streak:\n{}", new.join("\n"));
                    assert!(new[0].contains("first_of_streak: true") && new[0].contains("have_keys: true"), "{}", new[0]);
                    assert!(
                        codes.iter().any(|c| new[0].contains(&format!("code: \"{c}\""))),
                        "{fault:?}: expected one of {codes:?}: {}",
                        new[0]
                    );
                    println!("{host} {fault:?}: {} attempts failed, logged once: {}", g.faults.hits(),
                             new[0].split("FetchFailed").nth(1).unwrap_or(&new[0]));
                    g.faults.set(Fault::Ok);
                    poll(Duration::from_secs(40), &format!("{fault:?}: recovery"), || {
                        must_pass(&g, &g.valid());
                        let n = g.lines(RECOVERED).len();
                        (n > recovered0).then_some(()).ok_or(format!("{n} recovered lines"))
                    });
                    // Every worker ends its streak (some by adopting the shared keys, a
                    // little later): wait for a few good fetches before the next fault.
                    poll(Duration::from_secs(40), &format!("{fault:?}: good fetches"), || {
                        must_pass(&g, &g.valid());
                        let n = g.faults.hits();
                        (n >= 3).then_some(()).ok_or(format!("{n} good fetches"))
                    });
                    assert_eq!(g.lines(FAILED).len(), failed0 + 1, "{fault:?}: still one line");
                }
                Then::Loads => {
                    let old = g.valid();
                    poll(Duration::from_secs(20), &format!("{fault:?}: a fetch"), || {
                        let n = g.faults.hits();
                        (n >= 1).then_some(()).ok_or(format!("{n} fetches"))
                    });
                    // A key published now can only arrive by a fetch in this mode.
                    g.gw.idp.control("POST", "rotate").unwrap_or_else(|e| panic!("{e}"));
                    let hits0 = g.faults.hits();
                    let fresh = g.valid();
                    // Six 200s in a row (fresh connections, spread over the workers): every
                    // worker has the new key.
                    let mut in_a_row = 0;
                    poll(Duration::from_secs(40), &format!("{fault:?}: the new key loads"), || {
                        must_pass(&g, &old);
                        let r = g.post(&fresh);
                        in_a_row = if r.status == 200 { in_a_row + 1 } else { 0 };
                        (in_a_row >= 6 && g.faults.hits() > hits0)
                            .then_some(())
                            .ok_or(format!("{} {}", r.status, r.body))
                    });
                    assert_eq!(g.lines(FAILED).len(), failed0, "{fault:?}: no failure logged");
                    println!("{host} {fault:?}: loaded (rotated key passes after {} fetches)", g.faults.hits());
                    g.faults.set(Fault::Ok);
                }
            }
            if fault == Fault::TenThousandKeys {
                let cut = g.lines("key set cut");
                assert!(!cut.is_empty(), "no warning for the cut set\n{}", g.gw.log_tail(30));
                let m = g.gw.metric("jwks_key_sets_cut_total_provider=entra").unwrap_or(0.0);
                assert!(m >= 1.0, "cut metric {m}\n{}", g.gw.metrics_text());
            }
        }
        g.assert_healthy();
    }

    /// A fresh gateway (no keys yet): every fault answers 503 `jwks_unavailable` with
    /// `Retry-After`, the whole streak (changing faults) is logged once, good keys end it.
    fn faults_on_a_fresh_gateway_answer_503(host: Host) {
        use Fault::*;
        // The discovery fault comes first: during a discovery fault the key set itself is
        // good, so a worker still holding the previous phase's discovery would load it.
        let mut g = start(host, DiscoveryForeignHost);
        let t = g.valid();
        for fault in [DiscoveryForeignHost, NotFound, Html, EmptyKeys, SmallRsa, Reset] {
            g.faults.set(fault);
            let mut answered = 0;
            poll(Duration::from_secs(60), &format!("{fault:?}: a failed attempt"), || {
                let r = g.post(&t);
                assert_eq!(r.status, 503, "{fault:?}: {}\n{}", r.body, g.gw.log_tail(30));
                assert_eq!(r.json()["error"], "jwks_unavailable", "{fault:?}: {}", r.body);
                assert!(r.header("retry-after").is_some(), "{fault:?}: {:?}", r.headers);
                answered += 1;
                let n = g.faults.hits();
                (n >= 1).then_some(()).ok_or(format!("{n} attempts"))
            });
            let r = g.post(&t);
            assert_eq!(r.status, 503, "{fault:?} after a failed attempt: {}", r.body);
            println!("{host} {fault:?}: {} attempts, {} answers 503", g.faults.hits(), answered + 1);
        }
        let failed = g.lines(FAILED);
        g.faults.set(Ok);
        poll(Duration::from_secs(90), "recovery", || {
            let r = g.post(&t);
            (r.status == 200).then_some(()).ok_or(format!("{} {}", r.status, r.body))
        });
        println!("{host}: {} failure lines for the cold streak:\n{}", failed.len(), failed.join("\n"));
        // One streak per worker that fetched (Kong's requests fetch for themselves).
        assert!(!failed.is_empty() && failed.len() <= 2, "{}", failed.join("\n"));
        assert!(failed.iter().all(|l| l.contains("first_of_streak: true") && l.contains("have_keys: false")));
        g.assert_healthy();
    }
}
