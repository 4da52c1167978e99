//! Request heads as sent. hyper hands a service the target as a parsed URI and the
//! headers as a `HeaderMap` (names lower-cased, all values of one name together), but the
//! mock backend reports what it received: every header in wire order, duplicates where they
//! were sent, names as sent, and the raw target (`%2F` and all). So each connection's input
//! is recorded, and when hyper has parsed a head the same head is found in the record and
//! read again with `httparse`, the parser hyper itself uses.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use hyper::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One request header, name as received (case kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A request head as sent.
pub struct Head {
    pub target: String,
    pub headers: Vec<Header>,
}

/// A connection that records what it reads.
pub struct Tap {
    stream: TcpStream,
    received: Received,
    keep: usize,
}

/// What a connection received since the last head taken (at most the last `keep` bytes
/// and what the latest read added).
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<u8>>>);

impl Tap {
    pub fn new(stream: TcpStream, keep: usize) -> (Tap, Received) {
        let received = Received::default();
        let tap = Tap {
            stream,
            received: received.clone(),
            keep,
        };
        (tap, received)
    }
}

impl Received {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panicked holder leaves at worst a record that matches no head (the fallback).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The head hyper has just parsed as `req`, as sent, and forgets everything up to its
    /// end. `None` if it is not in the record (then the caller falls back to hyper's view).
    /// A body line that merely looks like a request line is passed over: the head must have
    /// the method and exactly the header values hyper parsed.
    pub fn take_head<B>(&self, req: &hyper::Request<B>) -> Option<Head> {
        let mut record = self.lock();
        let mut start = 0;
        loop {
            if let Some((head, len)) = parse_at(&record[start..], req) {
                record.drain(..start + len);
                return Some(head);
            }
            start += record[start..].iter().position(|&b| b == b'\n')? + 1;
        }
    }
}

fn parse_at<B>(bytes: &[u8], req: &hyper::Request<B>) -> Option<(Head, usize)> {
    let method = req.method().as_str();
    if !bytes.starts_with(method.as_bytes()) {
        return None;
    }
    // Exactly as many slots as hyper found headers: a head with more is another one.
    let mut slots = vec![httparse::EMPTY_HEADER; req.headers().len()];
    let mut parsed = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(bytes) else {
        return None;
    };
    let same = parsed.method == Some(method)
        && parsed.headers.len() == req.headers().len()
        && parsed.headers.iter().all(|h| {
            req.headers()
                .get_all(h.name)
                .iter()
                .any(|v| v.as_bytes() == h.value)
        });
    if !same {
        return None;
    }
    let head = Head {
        target: parsed.path?.to_string(),
        headers: parsed
            .headers
            .iter()
            .map(|h| Header {
                name: h.name.to_string(),
                value: String::from_utf8_lossy(h.value).into_owned(),
            })
            .collect(),
    };
    Some((head, len))
}

/// hyper's view of the headers (lower-cased names, grouped by name).
pub fn headers_of(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect()
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let mut record = this.received.lock();
            // Older bytes can't hold a head hyper has yet to parse (see `keep`).
            if record.len() > 2 * this.keep {
                let cut = record.len() - this.keep;
                record.drain(..cut);
            }
            record.extend_from_slice(new);
        }
        poll
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
