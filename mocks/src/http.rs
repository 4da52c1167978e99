//! A small synchronous HTTP/1.1 server for the mocks: one OS thread per connection
//! (no pool that a burst or long-lived keep-alive connections could starve), request
//! heads parsed with `httparse`, `Content-Length` and chunked request bodies read lazily
//! by the handler, keep-alive per HTTP/1.1 (`Connection: close` honoured, HTTP/1.0 only
//! with `Connection: keep-alive`), an idle read timeout, `TCP_NODELAY`, and every answer
//! written with a single write of a fully built buffer.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::common::Reply;

/// A connection with no request in progress is closed after this long without data
/// (and reads/writes inside a request give up after it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted; above it: 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most request headers accepted; above it: 431.
const MAX_HEADERS: usize = 256;
/// After answering, up to this much unread request body is read and discarded (so the
/// connection can be reused, or at least closed without a reset that would destroy the
/// answer on the client's side).
const DRAIN_MAX: u64 = 16 * 1024 * 1024;
/// How long a closing connection waits for the client's remaining data / close.
const LINGER: Duration = Duration::from_secs(2);

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request header, name as received (case kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A request whose head has been read; the body is read on demand from the connection.
pub struct Request<'c> {
    method: Method,
    url: String,
    headers: Vec<Header>,
    body: Body<'c>,
}

impl<'c> Request<'c> {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as received (path and query).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// All headers in the order received, duplicates kept.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The body length announced by `Content-Length` (`None` for a chunked body).
    pub fn body_length(&self) -> Option<usize> {
        match self.body.kind {
            BodyKind::Length(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => None,
        }
    }

    /// The body (sends `100 Continue` first when the client asked for it).
    pub fn as_reader(&mut self) -> &mut (impl Read + 'c) {
        &mut self.body
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// `Content-Length` bytes left.
    Length(u64),
    /// Chunked: the next thing on the wire is a chunk-size line.
    ChunkSize,
    /// Chunked: bytes left in the current chunk.
    Chunk(u64),
    Done,
}

struct Body<'c> {
    conn: &'c mut BufReader<TcpStream>,
    kind: BodyKind,
    /// `Expect: 100-continue` and the `100 Continue` not sent yet.
    expect_continue: bool,
}

impl Body<'_> {
    fn finished(&self) -> bool {
        matches!(self.kind, BodyKind::Done | BodyKind::Length(0))
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut *self.conn).take(4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad chunked encoding",
            ));
        }
        Ok(line)
    }

    fn read_data(&mut self, buf: &mut [u8], left: u64) -> io::Result<usize> {
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.conn.read(&mut buf[..max])?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the request body",
            ));
        }
        Ok(got)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.finished() {
            return Ok(0);
        }
        if self.expect_continue {
            self.expect_continue = false;
            let mut stream: &TcpStream = self.conn.get_ref();
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        loop {
            match self.kind {
                BodyKind::Done | BodyKind::Length(0) => return Ok(0),
                BodyKind::Length(n) => {
                    let got = self.read_data(buf, n)?;
                    self.kind = BodyKind::Length(n - got as u64);
                    return Ok(got);
                }
                BodyKind::ChunkSize => {
                    let line = self.read_line()?;
                    let text = std::str::from_utf8(&line).unwrap_or("");
                    let size = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if size == 0 {
                        // Trailer fields, up to the empty line.
                        while !self.read_line()?.trim_ascii().is_empty() {}
                        self.kind = BodyKind::Done;
                        return Ok(0);
                    }
                    self.kind = BodyKind::Chunk(size);
                }
                BodyKind::Chunk(n) => {
                    let got = self.read_data(buf, n)?;
                    let left = n - got as u64;
                    self.kind = BodyKind::Chunk(left);
                    if left == 0 {
                        if !self.read_line()?.trim_ascii().is_empty() {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "bad chunked encoding",
                            ));
                        }
                        self.kind = BodyKind::ChunkSize;
                    }
                    return Ok(got);
                }
            }
        }
    }
}

/// A bound listener; `serve` runs the accept loop.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr)?,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts forever, each connection on its own thread. `handler` answers one request;
    /// `None` drops the connection without an answer.
    pub fn serve<H>(self, handler: H)
    where
        H: Fn(&mut Request<'_>) -> Option<Reply> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let handler = handler.clone();
                    // If no thread can be made, the connection is dropped (closed).
                    let _ = thread::Builder::new()
                        .name("mock-http-conn".into())
                        .spawn(move || serve_connection(stream, &*handler));
                }
                // E.g. out of file descriptors: back off a little instead of spinning.
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// What became of reading a request head.
enum Head {
    Request(Vec<u8>),
    /// Clean end: EOF, idle timeout or a broken connection before a complete head.
    Closed,
    /// Answer this status and close.
    Reject(u16, &'static str),
}

fn read_head(conn: &mut BufReader<TcpStream>) -> Head {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let room = (MAX_HEAD + 1).saturating_sub(start) as u64;
        match (&mut *conn).take(room).read_until(b'\n', &mut head) {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
        if head.len() > MAX_HEAD {
            return Head::Reject(431, "request head is too large");
        }
        if !head.ends_with(b"\n") {
            return Head::Closed; // EOF inside a line
        }
        let blank = matches!(&head[start..], b"\r\n" | b"\n");
        if blank && start == 0 {
            head.clear(); // empty lines before a request line are allowed
            continue;
        }
        if blank {
            return Head::Request(head);
        }
    }
}

fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Serves requests on one connection until it closes, times out or asks to close.
fn serve_connection<H>(stream: TcpStream, handler: &H)
where
    H: Fn(&mut Request<'_>) -> Option<Reply>,
{
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let mut conn = BufReader::with_capacity(16 * 1024, stream);
    loop {
        let raw = match read_head(&mut conn) {
            Head::Request(raw) => raw,
            Head::Closed => return,
            Head::Reject(status, message) => {
                let reply = Reply::error(status, "bad_request", message);
                let _ = write_reply(conn.get_ref(), &reply, false, Some("close"));
                return linger_close(conn);
            }
        };
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots);
        let rejected = match parsed.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => None,
            Ok(httparse::Status::Partial) => Some((400, "incomplete request head".to_string())),
            Err(httparse::Error::TooManyHeaders) => {
                Some((431, "too many request headers".to_string()))
            }
            Err(e) => Some((400, format!("malformed request head: {e}"))),
        };
        if let Some((status, message)) = rejected {
            let reply = Reply::error(status, "bad_request", message);
            let _ = write_reply(conn.get_ref(), &reply, false, Some("close"));
            return linger_close(conn);
        }
        let method = Method::parse(parsed.method.unwrap_or(""));
        let url = parsed.path.unwrap_or("/").to_string();
        let http10 = parsed.version == Some(0);
        let headers: Vec<Header> = parsed
            .headers
            .iter()
            .map(|h| Header {
                name: h.name.to_string(),
                value: String::from_utf8_lossy(h.value).into_owned(),
            })
            .collect();
        let (kind, mut close) = match body_kind(&headers) {
            Ok(k) => k,
            Err(message) => {
                let reply = Reply::error(400, "bad_request", message);
                let _ = write_reply(conn.get_ref(), &reply, false, Some("close"));
                return linger_close(conn);
            }
        };
        let keep_alive_10 = http10 && has_token(&headers, "connection", "keep-alive");
        close |= has_token(&headers, "connection", "close") || (http10 && !keep_alive_10);
        // `Expect: 100-continue` only matters for HTTP/1.1 with a body.
        let expect_continue = !http10
            && kind != BodyKind::Length(0)
            && headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("expect")
                    && h.value.eq_ignore_ascii_case("100-continue")
            });
        let head_only = method == Method::Head;
        let mut req = Request {
            method,
            url,
            headers,
            body: Body {
                conn: &mut conn,
                kind,
                expect_continue,
            },
        };
        let Some(reply) = handler(&mut req) else {
            return; // the handler chose to drop the connection
        };
        // Answered before the client sent its body (it waits for `100 Continue`): the
        // body may or may not follow, so the connection can't be reused.
        let unread = !req.body.finished();
        close |= unread && req.body.expect_continue;
        let connection = if close {
            Some("close")
        } else if keep_alive_10 {
            Some("keep-alive")
        } else {
            None
        };
        if write_reply(req.body.conn.get_ref(), &reply, head_only, connection).is_err() {
            return;
        }
        if unread && !req.body.expect_continue {
            // Skip what the handler didn't read (e.g. a 413 or 401 answer).
            let _ = req.body.conn.get_ref().set_read_timeout(Some(LINGER));
            let drained = io::copy(&mut (&mut req.body).take(DRAIN_MAX), &mut io::sink());
            if drained.is_err() || !req.body.finished() {
                return linger_close(conn);
            }
            let _ = conn.get_ref().set_read_timeout(Some(IDLE_TIMEOUT));
        }
        if close {
            return linger_close(conn);
        }
    }
}

/// The body framing from the headers, and whether the connection must close after it.
fn body_kind(headers: &[Header]) -> Result<(BodyKind, bool), String> {
    let te: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let has_length = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"));
    if !te.is_empty() {
        if !te.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Err("unsupported Transfer-Encoding (only chunked)".into());
        }
        // Both framings at once: use chunked, then close (RFC 9112 §6.3).
        return Ok((BodyKind::ChunkSize, has_length));
    }
    let mut length: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(',').map(str::trim) {
            let n = v
                .parse::<u64>()
                .ok()
                .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("invalid Content-Length {v:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok((BodyKind::Length(length.unwrap_or(0)), false))
}

/// Closes a connection without discarding an answer still in flight: stop writing, then
/// read (and drop) what the client still sends until it closes, briefly.
fn linger_close(mut conn: BufReader<TcpStream>) {
    let _ = conn.get_ref().shutdown(Shutdown::Write);
    let _ = conn.get_ref().set_read_timeout(Some(LINGER));
    let _ = io::copy(&mut (&mut conn).take(DRAIN_MAX), &mut io::sink());
}

/// Writes the whole answer with one write.
fn write_reply(
    mut stream: &TcpStream,
    reply: &Reply,
    head_only: bool,
    connection: Option<&str>,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type
    );
    for (name, value) in &reply.headers {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f));
        let bad_name = name.is_empty() || name.contains(['\r', '\n', ':', ' ']);
        if framing || bad_name || value.contains(['\r', '\n']) {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", reply.body.len());
    if let Some(c) = connection {
        let _ = write!(out, "Connection: {c}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}
