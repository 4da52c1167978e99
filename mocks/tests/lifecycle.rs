//! In-process servers stop when their handle drops: connections (even a withheld answer)
//! are closed, the port is released and no thread is left behind. A test binary of its own,
//! so that counting the process's threads sees no other test's servers.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aml_mocks::{aml, idp};
use common::{get, post, request_timeout};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Waits (briefly) for the thread count to come back to `baseline`.
fn settles_to(baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = threads();
        if n <= baseline || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let baseline = threads();

    let running = aml::start(aml::Config::default(), "127.0.0.1:0").expect("mock-aml");
    let addr = running.addr();
    assert_eq!(get(addr, "/health").status, 200);
    drop(running);
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    TcpListener::bind(addr).expect("port released");
    assert_eq!(settles_to(baseline), baseline, "threads left by mock-aml");

    let (running, _idp) = idp::start(idp::Config::default(), "127.0.0.1:0").expect("mock-idp");
    let addr = running.addr();
    assert_eq!(post(addr, "/_control/jwks?mode=hang", "").status, 200);
    let path = format!("/{}/discovery/v2.0/keys", idp::DEFAULT_TENANT);
    let hung = std::thread::spawn(move || {
        let t = Instant::now();
        let answer = request_timeout(addr, "GET", &path, &[], b"", Duration::from_secs(30));
        (answer.is_err(), t.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/_control/stats").json()["jwks_requests"] != 1 {
        assert!(Instant::now() < deadline, "the JWKS request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(running);
    let (unanswered, took) = hung.join().unwrap();
    assert!(unanswered, "a hanging request gets no answer");
    assert!(
        took < Duration::from_secs(10),
        "cut off when the server stopped: {took:?}"
    );
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    TcpListener::bind(addr).expect("port released");
    assert_eq!(settles_to(baseline), baseline, "threads left by mock-idp");
}
