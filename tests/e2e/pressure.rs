//! End-to-end on both real hosts: limits under shared-data pressure. Many distinct
//! callers (clients from many loopback addresses on a route limited per client address)
//! fill a tiny Kong `shm_kv` zone, which evicts least-recently-used windows. The gateway
//! keeps serving, the filter says so (a warn line, `limit_state_lost_total`), and an
//! active caller's limit still holds. Envoy's shared data never evicts: nothing is lost.
//! Every test runs twice: `<name>_envoy` and `<name>_kong`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use aml_harness::{both_hosts, entra_provider, http, Gateway, Host, ENDPOINT_KEY};
use serde_json::json;
use socket2::{Domain, Socket, Type};

const LOST: &str = "limit_state_lost_total_result=window";
const WARN: &str = "were evicted from shared data";

fn start(host: Host, workers: u32, zone: &str) -> Gateway {
    let zone = zone.to_string();
    Gateway::start_with_on(
        host,
        |port| {
            json!({
                "providers": [entra_provider(port)],
                "routes": [
                    {"name": "health", "match": {"path": "/health"}, "auth": "none"},
                    {"name": "open", "match": {"path_prefix": "/open/"}, "auth": "none",
                     "rate_limit": {"requests": 3, "window_seconds": 600},
                     "set_request_headers": {"authorization": format!("Bearer {ENDPOINT_KEY}")}}
                ]
            })
        },
        move |o| {
            o.workers = workers;
            o.kong_conf.push(("nginx_wasm_shm_kv".into(), zone));
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The `n`-th distinct client address (127.0.1.1 onwards; 127.0.0.1 is the active caller).
fn client(n: u32) -> Ipv4Addr {
    let n = n + 250;
    Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// `GET /open/x` from `from`; the answer's status.
fn get_from(gw: &Gateway, from: Ipv4Addr) -> u16 {
    let url = gw.url("/open/x");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{url}"));
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /open/x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0)
}

fn lost(gw: &Gateway) -> u64 {
    gw.metric(LOST).unwrap_or(0.0) as u64
}

fn health(gw: &Gateway) -> u16 {
    let r = http("GET", &gw.url("/health"), &[], None).unwrap_or_else(|e| panic!("{e}"));
    r.status
}

both_hosts! {
    fn many_callers_in_a_tiny_zone_keep_the_gateway_serving_and_active_limits_holding(host: Host) {
        let gw = start(host, 2, "64k");
        let active = Ipv4Addr::LOCALHOST;
        let mut active_statuses = Vec::new();
        // 900 callers once each, then again: far more windows than the zone holds.
        for round in 0..2 {
            for n in 0..900 {
                assert_eq!(get_from(&gw, client(n)), 200, "caller {n}, round {round}: {}", gw.log());
                // The active caller keeps calling throughout (3 allowed per 10 minutes), more
                // often than the zone turns over (it holds some 200 windows).
                if n % 50 == 25 {
                    active_statuses.push(get_from(&gw, active));
                }
            }
        }
        let mut expected = vec![429; active_statuses.len()];
        expected[..3].copy_from_slice(&[200; 3]);
        assert_eq!(active_statuses, expected, "{}", gw.log());
        assert_eq!(get_from(&gw, active), 429, "the active caller's limit still holds");
        assert_eq!(health(&gw), 200);
        let log = gw.log();
        assert!(!log.contains("exited on signal"), "a worker crashed: {log}");
        assert!(!log.contains("[crit]"), "{log}");
        if gw.is_kong() {
            assert!(lost(&gw) > 0, "{}", gw.metrics_text());
            // Once per streak, not once per loss.
            let warns = log.matches(WARN).count();
            assert!((1..=2).contains(&warns), "{warns} warn lines: {log}");
        } else {
            assert_eq!(lost(&gw), 0, "Envoy never evicts: {}", gw.metrics_text());
            assert!(!log.contains(WARN), "{log}");
        }
    }
}

/// Windows a zone of `zone` holds: `k` callers once each, then again newest first; with one
/// worker (which saw every window) every window found gone is counted, and in LRU order
/// the revisit finds exactly the windows the zone kept.
fn windows_held(host: Host, zone: &str, k: u32) -> u64 {
    let gw = start(host, 1, zone);
    for n in 0..k {
        assert_eq!(get_from(&gw, client(n)), 200, "{}", gw.log());
    }
    for n in (0..k).rev() {
        assert_eq!(get_from(&gw, client(n)), 200, "{}", gw.log());
    }
    assert_eq!(health(&gw), 200);
    u64::from(k) - lost(&gw)
}

both_hosts! {
    fn windows_per_zone_size_are_measured(host: Host) {
        let k = 800;
        let small = windows_held(host, "64k", k);
        let large = windows_held(host, "128k", k);
        eprintln!("{host:?}: windows held of {k}: 64k zone {small}, 128k zone {large}");
        if host == Host::Kong {
            assert!(0 < small && small < large && large < u64::from(k), "{small} {large}");
            eprintln!(
                "Kong: {} bytes of zone per rate-limit window (64k more held {} more)",
                65_536 / (large - small),
                large - small
            );
        } else {
            assert_eq!((small, large), (u64::from(k), u64::from(k)));
        }
    }
}
