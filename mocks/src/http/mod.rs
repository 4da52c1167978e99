//! The mocks' HTTP/1.1 server: hyper on a small tokio runtime of its own per server.
//!
//! hyper does the protocol (keep-alive, pipelining, chunked bodies, `Expect: 100-continue`,
//! `Connection: close`, head limits, the idle timeout). Handlers stay plain synchronous
//! functions run on tokio's blocking pool, so a slow one (RSA key generation) never holds
//! up other connections, and a delayed or withheld answer is a timer, not a thread: a burst
//! of slow JWKS requests costs no thread each.

mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::runtime::{Handle, Runtime};

use crate::common::Reply;

pub use hyper::Method;
pub use wire::Header;

/// A connection is closed after this long waiting for (the rest of) a request head, and a
/// body read gives up after this long without data.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted; above it: 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most request headers accepted; above it: 431.
const MAX_HEADERS: usize = 256;
/// After a handler answered without reading the whole body, up to this much of it is read
/// and discarded, so the connection can be reused (or closed without a reset that would
/// destroy the answer on the client's side).
const DRAIN_MAX: usize = 16 * 1024 * 1024;
/// How long draining an unread body waits for each piece of it.
const LINGER: Duration = Duration::from_secs(2);

/// A request whose head has been read; the handler reads the body, if it wants it.
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<Header>,
    length: Option<u64>,
    /// The part of the body not read yet (`None`: read to its end).
    body: Option<Incoming>,
    /// Some of the body was asked for (a `100 Continue` was due, if expected).
    body_touched: bool,
    runtime: Handle,
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Io(io::Error),
}

impl Request {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target exactly as received (path and query).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// All headers in the order received, duplicates kept, names as sent.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The body length announced by `Content-Length` (`None` for a chunked body).
    pub fn body_length(&self) -> Option<usize> {
        self.length
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Reads the body (after `100 Continue` when the client asked for it), refusing more
    /// than `limit` bytes. Blocks: handlers run on the blocking pool.
    pub fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.body_length().is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge);
        }
        let mut out = Vec::with_capacity(self.body_length().unwrap_or(0));
        let Some(body) = self.body.as_mut() else {
            return Ok(Vec::new());
        };
        self.body_touched = true;
        self.runtime.block_on(async {
            loop {
                let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                    .await
                    .map_err(|_| BodyError::Io(io::ErrorKind::TimedOut.into()))?;
                let Some(frame) = frame else { return Ok(()) };
                let frame = frame.map_err(|e| BodyError::Io(io::Error::other(e)))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
        })?;
        self.body = None;
        Ok(out)
    }
}

/// What a handler decided: the answer (`None`: drop the connection without one), sent
/// after `delay`.
pub struct Outcome {
    pub reply: Option<Reply>,
    pub delay: Duration,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Outcome {
        Outcome {
            reply: Some(reply),
            delay: Duration::ZERO,
        }
    }
}

/// A bound listener, not serving yet.
pub struct Server {
    listener: std::net::TcpListener,
    log: Option<&'static str>,
}

/// Binds `listen` (e.g. `127.0.0.1:0`) and returns the server with its address.
pub fn bind(listen: &str) -> Result<(Server, SocketAddr), String> {
    let error = |e: io::Error| format!("cannot listen on {listen}: {e}");
    let listener = std::net::TcpListener::bind(listen).map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    Ok((
        Server {
            listener,
            log: None,
        },
        addr,
    ))
}

impl Server {
    /// Logs one line per request to stderr, `{name}: {method} {path} -> {status}`, when the
    /// answer is sent (tests read a logged request as answered) or the connection dropped.
    pub fn log_as(mut self, name: &'static str) -> Server {
        self.log = Some(name);
        self
    }

    /// Serves on a runtime of its own (one I/O thread and the blocking pool) until the
    /// returned handle is dropped.
    pub fn spawn<H>(self, handler: H) -> Result<Running, String>
    where
        H: Fn(&mut Request) -> Outcome + Send + Sync + 'static,
    {
        let addr = self
            .listener
            .local_addr()
            .map_err(|e| format!("cannot serve: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mock-http")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the server runtime: {e}"))?;
        runtime.spawn(accept_loop(self.listener, Arc::new((handler, self.log))));
        Ok(Running {
            addr,
            runtime: Some(runtime),
        })
    }
}

/// A running server. Dropping it stops the server: connections are closed and the port is
/// released.
pub struct Running {
    addr: SocketAddr,
    runtime: Option<Runtime>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the server run until the process exits.
    pub fn detach(mut self) {
        std::mem::forget(self.runtime.take());
    }

    /// Blocks this thread while the server runs (the binaries: until the process is ended).
    pub fn wait(self) -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(LINGER);
        }
    }
}

/// The handler and the name it logs under.
type Served<H> = Arc<(H, Option<&'static str>)>;

async fn accept_loop<H>(listener: std::net::TcpListener, handler: Served<H>)
where
    H: Fn(&mut Request) -> Outcome + Send + Sync + 'static,
{
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        // `Content-Length`, not `content-length`: what raw-socket clients of the mocks read.
        .title_case_headers(true);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(http.clone(), stream, handler.clone()));
            }
            // E.g. out of file descriptors: back off a little instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_connection<H>(
    http: http1::Builder,
    stream: tokio::net::TcpStream,
    handler: Served<H>,
) where
    H: Fn(&mut Request) -> Outcome + Send + Sync + 'static,
{
    // hyper's read buffer holds at most MAX_HEAD, so a head it has just parsed is among the
    // last 2 * MAX_HEAD bytes received; twice that is kept.
    let (tap, received) = wire::Tap::new(stream, 4 * MAX_HEAD);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        // Taken now: hyper parses no further head until this request is answered.
        let sent = received.take_head(&req);
        answer(handler.clone(), req, sent)
    });
    let _ = http.serve_connection(TokioIo::new(tap), service).await;
}

/// Runs the handler for one request; an error drops the connection without an answer.
async fn answer<H>(
    served: Served<H>,
    req: hyper::Request<Incoming>,
    sent: Option<wire::Head>,
) -> io::Result<Response<Full<Bytes>>>
where
    H: Fn(&mut Request) -> Outcome + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let expect_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (url, headers) = match sent {
        Some(head) => (head.target, head.headers),
        None => (parts.uri.to_string(), wire::headers_of(&parts.headers)),
    };
    let mut request = Request {
        method: parts.method,
        url,
        headers,
        length: body.size_hint().exact(),
        body: (!body.is_end_stream()).then_some(body),
        body_touched: false,
        runtime: Handle::current(),
    };
    let handler = served.clone();
    let (mut request, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = (handler.0)(&mut request);
        (request, outcome)
    })
    .await
    .map_err(io::Error::other)?;
    // A client still waiting for `100 Continue` may or may not send its body: hyper closes
    // such a connection after the answer. Any other unread body is skipped.
    let mut close = false;
    if let Some(body) = request.body.take() {
        if request.body_touched || !expect_continue {
            close = !drain(body).await;
        }
    }
    if !outcome.delay.is_zero() {
        tokio::time::sleep(outcome.delay).await;
    }
    if let Some(name) = served.1 {
        let path = request.url.split('?').next().unwrap_or("");
        match &outcome.reply {
            Some(reply) => eprintln!("{name}: {} {path} -> {}", request.method, reply.status),
            None => eprintln!("{name}: {} {path} -> (dropped)", request.method),
        }
    }
    match outcome.reply {
        Some(reply) => Ok(response(reply, close)),
        None => Err(io::Error::other("the handler dropped the connection")),
    }
}

/// Reads and discards the rest of a body; `false` if it is too long, too slow or broken.
async fn drain(mut body: Incoming) -> bool {
    let mut left = DRAIN_MAX;
    loop {
        match tokio::time::timeout(LINGER, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                match left.checked_sub(n) {
                    Some(l) => left = l,
                    None => return false,
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

fn response(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(reply.body)));
    *res.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(reply.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    for (name, value) in &reply.headers {
        // Framing is hyper's to write.
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(&name)
        {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(name, value);
        }
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
