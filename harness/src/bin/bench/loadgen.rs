//! A lean closed-loop HTTP/1.1 load generator: one OS thread per keep-alive connection on a
//! plain `std::net::TcpStream`, prebuilt request bytes, just enough response parsing (status
//! line, `Content-Length` or chunked body, `Connection: close`) to find where a response
//! ends. Each thread records latencies (µs) in its own HDR histogram; they are merged at the
//! end. No async runtime, no per-request allocation on the hot path beyond buffer growth.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one load run should do.
pub struct Load {
    pub addr: SocketAddr,
    /// Prebuilt requests; connection `c` sends `requests[(c + k * connections) % len]` as its
    /// `k`-th request, so a pool is walked round-robin across all connections.
    pub requests: Arc<Vec<Vec<u8>>>,
    pub expected_status: u16,
    pub connections: usize,
    pub duration: Duration,
}

/// The merged outcome of a load run.
pub struct Outcome {
    pub elapsed: Duration,
    /// Responses with the expected status (their latencies are in `hist`).
    pub ok: u64,
    /// Complete responses with another status, as (status, count).
    pub wrong_status: Vec<(u16, u64)>,
    /// Connect/read/write/parse failures (each followed by a reconnect).
    pub io_errors: u64,
    /// Connections opened beyond the first per thread (server `Connection: close` or errors).
    pub reconnects: u64,
    pub hist: Histogram<u64>,
    pub first_error: Option<String>,
}

impl Outcome {
    /// Fold another run of the same scenario into this one (counts and times add up,
    /// histograms merge).
    pub fn merge(&mut self, other: Outcome) {
        self.elapsed += other.elapsed;
        self.ok += other.ok;
        self.io_errors += other.io_errors;
        self.reconnects += other.reconnects;
        self.hist.add(&other.hist).expect("same histogram bounds");
        for (s, n) in other.wrong_status {
            match self.wrong_status.iter_mut().find(|(t, _)| *t == s) {
                Some((_, m)) => *m += n,
                None => self.wrong_status.push((s, n)),
            }
        }
        self.wrong_status.sort_unstable();
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn errors(&self) -> u64 {
        self.io_errors + self.wrong_status.iter().map(|(_, n)| n).sum::<u64>()
    }
    pub fn completed(&self) -> u64 {
        self.ok + self.wrong_status.iter().map(|(_, n)| n).sum::<u64>()
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Worker {
    ok: u64,
    wrong: Vec<(u16, u64)>,
    io_errors: u64,
    reconnects: u64,
    hist: Histogram<u64>,
    first_error: Option<String>,
}

/// Run the load: all connections start together and stop at the deadline. A request in
/// flight at the deadline is completed but counted only if it failed; `elapsed` is the
/// window itself, so throughput = `ok / elapsed`.
pub fn run(load: &Load) -> Outcome {
    let deadline = Instant::now() + load.duration;
    let handles: Vec<_> = (0..load.connections)
        .map(|c| {
            let requests = Arc::clone(&load.requests);
            let addr = load.addr;
            let expected = load.expected_status;
            let stride = load.connections;
            std::thread::Builder::new()
                .name(format!("load-{c}"))
                .stack_size(256 * 1024)
                .spawn(move || worker(addr, &requests, c, stride, expected, deadline))
                .expect("spawn load thread")
        })
        .collect();
    let mut out = Outcome {
        elapsed: Duration::ZERO,
        ok: 0,
        wrong_status: Vec::new(),
        io_errors: 0,
        reconnects: 0,
        hist: new_hist(),
        first_error: None,
    };
    for h in handles {
        let w = h.join().expect("load thread panicked");
        out.ok += w.ok;
        out.io_errors += w.io_errors;
        out.reconnects += w.reconnects;
        out.hist.add(&w.hist).expect("same histogram bounds");
        for (s, n) in w.wrong {
            match out.wrong_status.iter_mut().find(|(t, _)| *t == s) {
                Some((_, m)) => *m += n,
                None => out.wrong_status.push((s, n)),
            }
        }
        if out.first_error.is_none() {
            out.first_error = w.first_error;
        }
    }
    out.elapsed = load.duration;
    out.wrong_status.sort_unstable();
    out
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn worker(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    first: usize,
    stride: usize,
    expected: u16,
    deadline: Instant,
) -> Worker {
    let mut w = Worker {
        ok: 0,
        wrong: Vec::new(),
        io_errors: 0,
        reconnects: 0,
        hist: new_hist(),
        first_error: None,
    };
    let mut conn: Option<TcpStream> = None;
    let mut opened = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut idx = first % requests.len();
    while Instant::now() < deadline {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(addr) {
                Ok(s) => {
                    opened += 1;
                    buf.clear();
                    conn.insert(s)
                }
                Err(e) => {
                    w.io_errors += 1;
                    w.first_error.get_or_insert_with(|| format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let res = stream
            .write_all(&requests[idx])
            .map_err(|e| format!("write: {e}"))
            .and_then(|_| read_response(stream, &mut buf));
        let micros = t0.elapsed().as_micros() as u64;
        idx = (idx + stride) % requests.len();
        // Responses that finish after the deadline are outside the measured window (they
        // still count as errors when wrong).
        let late = Instant::now() > deadline;
        match res {
            Ok(resp) => {
                if resp.status == expected {
                    if late {
                        continue;
                    }
                    w.ok += 1;
                    w.hist.saturating_record(micros.max(1));
                } else {
                    match w.wrong.iter_mut().find(|(s, _)| *s == resp.status) {
                        Some((_, n)) => *n += 1,
                        None => w.wrong.push((resp.status, 1)),
                    }
                    w.first_error.get_or_insert_with(|| {
                        format!("status {} (expected {expected})", resp.status)
                    });
                }
                if resp.close {
                    conn = None;
                }
            }
            Err(e) => {
                w.io_errors += 1;
                w.first_error.get_or_insert(e);
                conn = None;
            }
        }
    }
    w.reconnects = opened.saturating_sub(1);
    w
}

struct Resp {
    status: u16,
    close: bool,
}

/// Read one response from `s`; `buf` keeps any bytes past its end (none without pipelining).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Resp, String> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 head".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let end = if chunked {
        chunked_end(s, buf, head_end)?
    } else if let Some(n) = content_length {
        while buf.len() < head_end + n {
            fill(s, buf)?;
        }
        head_end + n
    } else if (100..200).contains(&status) || status == 204 || status == 304 {
        head_end
    } else {
        // Body delimited by the connection closing.
        while fill(s, buf).is_ok() {}
        close = true;
        buf.len()
    };
    buf.drain(..end);
    Ok(Resp { status, close })
}

/// Parse chunks starting at `from` until the last chunk and trailers; returns the end offset.
fn chunked_end(s: &mut TcpStream, buf: &mut Vec<u8>, from: usize) -> Result<usize, String> {
    let mut pos = from;
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            fill(s, buf)?;
        };
        let size_str = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| "bad chunk")?;
        let size_hex = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers (usually none), then an empty line.
            loop {
                let l = loop {
                    if let Some(i) = find(&buf[pos..], b"\r\n") {
                        break pos + i;
                    }
                    fill(s, buf)?;
                };
                let empty = l == pos;
                pos = l + 2;
                if empty {
                    return Ok(pos);
                }
            }
        }
        while buf.len() < pos + size + 2 {
            fill(s, buf)?;
        }
        pos += size + 2;
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed by server".into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Build one HTTP/1.1 keep-alive request.
pub fn request_bytes(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    if !body.is_empty() {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serve canned bytes once per request line seen, on one keep-alive connection.
    fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 4096];
            for r in responses {
                let _ = s.read(&mut req);
                // Write in two pieces to exercise partial reads.
                let (a, b) = r.split_at(r.len() / 2);
                s.write_all(a).unwrap();
                s.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                s.write_all(b).unwrap();
            }
        });
        addr
    }

    #[test]
    fn parses_content_length_and_chunked_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ]);
        let mut s = connect(addr).unwrap();
        let mut buf = Vec::new();
        let req = request_bytes("GET", "x", "/", &[], "");
        for (status, close) in [(200, false), (401, false), (200, true)] {
            s.write_all(&req).unwrap();
            let r = read_response(&mut s, &mut buf).unwrap();
            assert_eq!((r.status, r.close), (status, close));
            assert!(buf.is_empty());
        }
    }
}
