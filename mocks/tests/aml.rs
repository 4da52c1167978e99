//! mock-aml: health, key mode, the received-headers echo, predictions, body cap.

mod common;

use std::net::SocketAddr;

use aml_mocks::aml::{self, AadConfig, Config};
use aml_mocks::idp;
use common::{get, read_response, request};
use serde_json::json;

fn start(key: Option<&str>) -> SocketAddr {
    let config = Config {
        key: key.map(str::to_string),
        aad: None,
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

/// The echo reports the request target byte for byte (encoded slashes, dot segments,
/// double slashes, the query as sent) and header names as sent, underscores included.
#[test]
fn echoes_the_raw_target_and_header_names() {
    let addr = start(None);
    for target in [
        "/teams/b/..%2Fa/endpoints/e/score",
        "/teams/b/../a//endpoints/./e/score",
        "/a%20b/%252e%2e?x=%2F&y=a+b&&z=",
        "/score?",
    ] {
        let r = request(
            addr,
            "POST",
            target,
            &[("x_caller_oid", "u"), ("X-Mixed-Case", "m")],
            b"{}",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{target}");
        let rec = &r.json()["received"];
        assert_eq!(rec["path"], target);
        let headers = rec["headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!(["x_caller_oid", "u"])),
            "{headers:?}"
        );
        assert!(
            headers.contains(&json!(["x-mixed-case", "m"])),
            "{headers:?}"
        );
    }
}

/// A body that holds something like a request head is not taken for the next request's
/// head: the echo of the request after it is still exact.
#[test]
fn a_head_inside_a_body_is_not_echoed() {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let addr = start(None);
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let fake = "\r\nPOST /fake HTTP/1.1\r\nHost: x\r\nX-B: 1\r\n\r\n";
    let second =
        "POST /real?q HTTP/1.1\r\nX-B: 2\r\nHost: y\r\nX-A: 3\r\nContent-Length: 0\r\n\r\n";
    w.write_all(
        format!(
            "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{fake}{second}",
            fake.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["received"]["path"], "/first");
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["received"]["path"], "/real?q");
    assert_eq!(
        j["received"]["headers"],
        json!([
            ["x-b", "2"],
            ["host", "y"],
            ["x-a", "3"],
            ["content-length", "0"]
        ])
    );
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

/// A burst of keep-alive clients released at once, each sending several requests whose
/// answers are over 1 KiB (the echoed headers): every request must be answered, quickly.
/// Like Envoy's upstream pool, every client keeps its connection open (idle) until all are
/// done, so a server whose thread pool can leave a new connection queued behind busy
/// keep-alive connections (tiny_http 0.12's lost wake-up) never answers some of them.
#[test]
fn burst_of_keep_alive_clients_is_fully_answered() {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 8;
    let addr = start(Some("k"));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let done = Arc::new(AtomicUsize::new(0));
    let filler = "x".repeat(1500);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (barrier, done) = (barrier.clone(), done.clone());
            let filler = filler.clone();
            std::thread::spawn(move || -> Duration {
                let stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                stream.set_nodelay(true).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                barrier.wait();
                let mut slowest = Duration::ZERO;
                for i in 0..REQUESTS {
                    let body = format!(r#"{{"data": [[{c}, {i}]]}}"#);
                    let req = format!(
                        "POST /score HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer k\r\n\
                         X-Filler: {filler}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let t = Instant::now();
                    writer.write_all(req.as_bytes()).expect("write");
                    let (status, body) = read_response(&mut reader);
                    slowest = slowest.max(t.elapsed());
                    assert_eq!(status, 200, "client {c} request {i}");
                    assert!(body.len() > 1024);
                    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(j["predictions"], json!([(c + i) as f64]));
                }
                // Hold the idle keep-alive connection until every client is done (or a
                // client failed and the deadline passes).
                done.fetch_add(1, Ordering::SeqCst);
                let hold = Instant::now();
                while done.load(Ordering::SeqCst) < CLIENTS && hold.elapsed().as_secs() < 15 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                drop(writer);
                slowest
            })
        })
        .collect();
    let slowest = clients
        .into_iter()
        .map(|h| h.join().expect("client failed"))
        .max()
        .unwrap();
    let total = started.elapsed();
    println!("burst: {CLIENTS}x{REQUESTS} in {total:?}, slowest request {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "slowest {slowest:?}");
    assert!(total < Duration::from_secs(20), "total {total:?}");
}

/// Pipelined requests, a chunked body, `Expect: 100-continue` and HEAD on one connection.
#[test]
fn keep_alive_pipelining_chunked_and_continue() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let addr = start(None);
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    // Two pipelined requests in one write.
    let a = r#"{"data": [[1, 2]]}"#;
    let pipelined = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{a}GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        a.len()
    );
    w.write_all(pipelined.as_bytes()).unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["predictions"],
        json!([3.0])
    );
    let (status, body) = read_response(&mut r);
    assert_eq!((status, body.as_slice()), (200, &br#"{"status":"ok"}"#[..]));
    // Chunked request body.
    w.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\n{\"dat\r\nf;ext=1\r\na\": [[4, 5.5]]}\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["predictions"],
        json!([9.5])
    );
    // Expect: 100-continue: the interim answer comes before the body is sent.
    let c = r#"{"data": [[7]]}"#;
    w.write_all(
        format!(
            "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            c.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "\r\n");
    w.write_all(c.as_bytes()).unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["predictions"],
        json!([7.0])
    );
    // HEAD: headers with the length, no body; then close on request.
    w.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 15\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
}

const ML: &str = "https://ml.azure.com";

/// A mock IdP and a mock-aml in `aad_token` mode against its JWKS.
fn start_aad(app_id: Option<&str>) -> (SocketAddr, SocketAddr) {
    let (idp_addr, _) = idp::spawn(idp::Config::default(), "127.0.0.1:0").expect("mock-idp");
    let config = Config {
        aad: Some(AadConfig {
            jwks_url: format!("http://{idp_addr}/common/discovery/v2.0/keys"),
            audience: ML.into(),
            app_id: app_id.map(str::to_string),
        }),
        ..Config::default()
    };
    (
        idp_addr,
        aml::spawn(config, "127.0.0.1:0").expect("mock-aml"),
    )
}

fn imds_token(idp_addr: SocketAddr, extra: &str) -> String {
    let target =
        format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ML}{extra}");
    let r = request(idp_addr, "GET", &target, &[("Metadata", "true")], b"").unwrap();
    assert_eq!(r.status, 200);
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn control_token(idp_addr: SocketAddr, spec: serde_json::Value) -> String {
    let body = spec.to_string();
    let r = request(idp_addr, "POST", "/_control/token", &[], body.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn score(addr: SocketAddr, token: &str) -> common::Resp {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "POST",
        "/score",
        &[("Authorization", &auth)],
        br#"{"data": [[1, 2]]}"#,
    )
    .unwrap()
}

#[test]
fn aad_mode_accepts_the_managed_identity_token() {
    let mi = idp::MANAGED_IDENTITY_CLIENT_ID;
    let (idp_addr, addr) = start_aad(Some(mi));
    let token = imds_token(idp_addr, "");
    let r = score(addr, &token);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["caller_appid"], mi);
    assert_eq!(j["predictions"], json!([3.0]));
    // A v2 token of the same app (azp) from the client-credentials endpoint also passes.
    let form =
        format!("grant_type=client_credentials&client_id={mi}&client_secret=x&scope={ML}/.default");
    let r = request(
        idp_addr,
        "POST",
        "/common/oauth2/v2.0/token",
        &[],
        form.as_bytes(),
    )
    .unwrap();
    let v2 = r.json()["access_token"].as_str().unwrap().to_string();
    let r = score(addr, &v2);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["caller_appid"], mi);
    // Health needs no token.
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn aad_mode_refuses_anything_else_without_echoing_the_token() {
    let mi = idp::MANAGED_IDENTITY_CLIENT_ID;
    let (idp_addr, addr) = start_aad(Some(mi));
    let v1 = |claims: serde_json::Value| json!({"ver": 1, "client_id": mi, "claims": claims});
    let cases = [
        (
            "caller token (other audience)",
            control_token(idp_addr, json!({"client_id": mi})),
        ),
        (
            "expired",
            control_token(
                idp_addr,
                json!({"ver": 1, "client_id": mi, "claims": {"aud": ML}, "expires_in": -30}),
            ),
        ),
        (
            "forged signature",
            control_token(
                idp_addr,
                json!({"ver": 1, "client_id": mi, "claims": {"aud": ML}, "sign_with": "forged"}),
            ),
        ),
        (
            "unpublished key",
            control_token(
                idp_addr,
                json!({"ver": 1, "client_id": mi, "claims": {"aud": ML}, "sign_with": "unpublished"}),
            ),
        ),
        (
            "ES256",
            control_token(
                idp_addr,
                json!({"ver": 1, "client_id": mi, "claims": {"aud": ML}, "alg": "ES256"}),
            ),
        ),
        ("other app", imds_token(idp_addr, "&client_id=someone-else")),
        (
            "no appid",
            control_token(idp_addr, v1(json!({"aud": ML, "appid": null}))),
        ),
        ("not a JWT", "not-a-jwt".to_string()),
    ];
    for (what, token) in &cases {
        let r = score(addr, token);
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let j = r.json();
        assert_eq!(j["error"], "unauthorized", "{what}");
        assert!(j["message"].is_string(), "{what}");
        assert!(j.get("received").is_none(), "{what}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains(token.as_str()),
            "{what}: token echoed: {body}"
        );
    }
    for headers in [
        vec![],
        vec![("Authorization", "Basic dXNlcjpwYXNz")],
        vec![("Authorization", "Bearer")],
    ] {
        let r = request(addr, "POST", "/score", &headers, b"{}").unwrap();
        assert_eq!(r.status, 401, "{headers:?}");
    }
    // Sanity: the right token passes on the same server.
    assert_eq!(score(addr, &imds_token(idp_addr, "")).status, 200);
}

#[test]
fn aad_mode_without_app_id_admits_any_app_and_follows_key_rotation() {
    let (idp_addr, addr) = start_aad(None);
    let r = score(addr, &imds_token(idp_addr, "&client_id=uami-7"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["caller_appid"], "uami-7");
    // A new signing key shows after the JWKS copy (1 s) is stale.
    let r = request(idp_addr, "POST", "/_control/rotate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let token = imds_token(idp_addr, "");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(score(addr, &token).status, 200);
}

#[test]
fn aad_mode_with_the_idp_down_is_401() {
    let config = Config {
        aad: Some(AadConfig {
            jwks_url: "http://127.0.0.1:9/keys".into(),
            audience: ML.into(),
            app_id: None,
        }),
        ..Config::default()
    };
    let addr = aml::spawn(config, "127.0.0.1:0").expect("mock-aml");
    // A well-formed RS256 token: the verdict needs the (unreachable) key set.
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let token = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256", "kid": "k1"})),
        b64(json!({"aud": ML, "exp": 4102444800u64}))
    );
    let auth = format!("Bearer {token}");
    let r = request(addr, "POST", "/score", &[("Authorization", &auth)], b"{}").unwrap();
    assert_eq!(r.status, 401);
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("cannot fetch the JWKS"), "{message}");
    assert!(!message.contains(&token));
}

#[test]
fn binary_refuses_incomplete_or_mixed_auth_flags() {
    use std::process::{Command, Stdio};
    for args in [
        &["--aad-app-id", "x"][..],
        &["--aad-jwks", "http://127.0.0.1:9/keys"][..],
        &["--aad-audience", "a"][..],
        &[
            "--key",
            "k",
            "--aad-jwks",
            "http://127.0.0.1:9/keys",
            "--aad-audience",
            "a",
        ][..],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_mock-aml"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
