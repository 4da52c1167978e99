//! mock-aml: health, key mode, the received-headers echo, predictions, body cap.

mod common;

use std::net::SocketAddr;

use aml_mocks::aml::{self, Config};
use common::{get, request};
use serde_json::json;

fn start(key: Option<&str>) -> SocketAddr {
    let config = Config {
        key: key.map(str::to_string),
        quiet: false,
    };
    aml::spawn(config, "127.0.0.1:0").expect("mock-aml")
}

#[test]
fn health_needs_no_auth() {
    let addr = start(Some("k"));
    for path in ["/health", "/"] {
        let r = get(addr, path);
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"status": "ok"}));
    }
}

#[test]
fn key_mode_requires_exact_bearer_key() {
    let addr = start(Some("s3cret-key"));
    let body = br#"{"data": [[1, 2]]}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("bearer s3cret-key"),
        Some("s3cret-key"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let r = request(addr, "POST", "/score", &headers, body).unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        let j = r.json();
        assert_eq!(j["error"], "unauthorized");
        assert!(j["message"].is_string());
        assert_eq!(j["received"]["path"], "/score");
    }
    let r = request(
        addr,
        "POST",
        "/teams/a/endpoints/b/score",
        &[("Authorization", "Bearer s3cret-key")],
        body,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["predictions"], json!([3.0]));
}

#[test]
fn echoes_all_headers_in_order_with_duplicates() {
    let addr = start(None);
    let r = request(
        addr,
        "PUT",
        "/score?x=1",
        &[
            ("X-Caller-Oid", "abc"),
            ("X-Dup", "one"),
            ("azureml-model-deployment", "green"),
            ("x-dup", "two"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("azureml-model-deployment"), Some("green"));
    let j = r.json();
    assert_eq!(j["deployment"], "green");
    assert_eq!(j["predictions"], json!([0.0]));
    let rec = &j["received"];
    assert_eq!(rec["method"], "PUT");
    assert_eq!(rec["path"], "/score?x=1");
    let headers: Vec<(String, String)> = rec["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    // Our client sends host and connection first, then these, then content-length.
    assert_eq!(
        names,
        [
            "host",
            "connection",
            "x-caller-oid",
            "x-dup",
            "azureml-model-deployment",
            "x-dup",
            "content-length"
        ]
    );
    let dups: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "x-dup")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(dups, ["one", "two"]);

    // Default deployment.
    let r = request(addr, "POST", "/score", &[], b"").unwrap();
    assert_eq!(r.json()["deployment"], "blue");
}

#[test]
fn predictions_per_row() {
    assert_eq!(
        aml::predictions(br#"{"input_data": {"data": [[1, 2.5], [0.12345, 0.00001]]}}"#),
        vec![3.5, 0.1235]
    );
    assert_eq!(aml::predictions(br#"{"data": [[1, 2, 3]]}"#), vec![6.0]);
    assert_eq!(
        aml::predictions(br#"{"input_data": [[1], [2]]}"#),
        vec![1.0, 2.0]
    );
    assert_eq!(
        aml::predictions(br#"{"data": [[1, "x", null, 2]]}"#),
        vec![3.0]
    );
    for other in [&b"not json"[..], b"{}", b"[1]", br#"{"data": []}"#, b""] {
        assert_eq!(aml::predictions(other), vec![0.0]);
    }
}

#[test]
fn bodies_over_5_mib_get_413() {
    let addr = start(None);
    let big = vec![b' '; 5 * 1024 * 1024 + 1];
    let r = request(addr, "POST", "/score", &[], &big).unwrap();
    assert_eq!(r.status, 413);
    let ok = vec![b' '; 5 * 1024 * 1024];
    let r = request(addr, "POST", "/score", &[], &ok).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn binary_announces_port_and_exits_on_stdin_eof() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-aml"))
        .args(["--key", "k1", "--exit-on-stdin-eof", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    assert_eq!(
        request(addr, "POST", "/score", &[], b"").unwrap().status,
        401
    );
    let r = request(
        addr,
        "POST",
        "/score",
        &[("Authorization", "Bearer k1")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit on stdin EOF");
        std::thread::sleep(Duration::from_millis(20));
    }
}
