//! Small, panic-free wrappers over the host calls the adapter uses, and the parts of
//! executing a decision that are the same whether the request is in its own callback
//! or being resumed from the root context.

use std::time::Duration;

use super::abi;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::annotate::HeaderOp;
use crate::keycache::FetchRequest;
use crate::respond::LocalResponse;

/// Host time in milliseconds since the epoch (never `std::time::SystemTime::now`).
pub fn now_ms() -> u64 {
    abi::get_current_time_ms().unwrap_or(0)
}

pub fn request_headers() -> Vec<(String, String)> {
    abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Carry out header operations following the recipe that is correct on Kong and Envoy:
/// values are set in place; a header is cleared by setting it empty first (Kong still
/// forwards removed headers, but forwards the emptied value) and then removing it
/// (Envoy drops it).
///
/// Stops at the first failure: the request must then not be forwarded (the caller's
/// token or a spoofed identity header might still be in it).
pub fn apply_header_ops(ops: &[HeaderOp], is_kong: bool) -> Result<(), Status> {
    let map = MapType::HttpRequestHeaders;
    for op in ops {
        let r = match op {
            HeaderOp::Set { name, value } => abi::set_map_value(map, name, Some(value)),
            HeaderOp::Clear { name } => abi::set_map_value(map, name, Some(""))
                .and_then(|_| abi::set_map_value(map, name, None)),
            // Kong proxies `$upstream_uri` (Kong's router set it, query included), not
            // `:path`: the token must leave that.
            HeaderOp::SetPath { strip, .. } if is_kong => strip_upstream_uri(strip),
            HeaderOp::SetPath { path, .. } => abi::set_map_value(map, ":path", Some(path)),
        };
        if let Err(e) = r {
            log::error!(
                "azure_ml_kong: header operation on {:?} failed: {e:?}; the request is refused",
                op_target(op)
            );
            return Err(e);
        }
    }
    Ok(())
}

/// What a header operation changes, for logs (never its value: it may be a secret).
fn op_target(op: &HeaderOp) -> &str {
    match op {
        HeaderOp::Set { name, .. } | HeaderOp::Clear { name } => name,
        HeaderOp::SetPath { .. } => ":path (query token)",
    }
}

fn strip_upstream_uri(params: &[String]) -> Result<(), Status> {
    const UPSTREAM_URI: [&str; 2] = ["ngx", "upstream_uri"];
    // Kong sets `$upstream_uri`; a bare nginx without it forwards the original target.
    let uri = property(&UPSTREAM_URI).ok_or(Status::NotFound)?;
    let stripped = params
        .iter()
        .fold(uri.clone(), |u, p| crate::token::strip_query_param(&u, p));
    if stripped == uri {
        return Ok(());
    }
    set_property(&UPSTREAM_URI, Some(stripped.as_bytes()))
}

pub fn set_property(path: &[&str], value: Option<&[u8]>) -> Result<(), Status> {
    abi::set_property(path, value)
}

pub fn send_response(resp: &LocalResponse) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = resp
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    abi::send_http_response(resp.status, &headers, Some(resp.body.as_bytes()))
}

pub fn property(path: &[&str]) -> Option<String> {
    abi::get_property(path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Send a key-set (or discovery) request; the answer comes to the calling context.
pub fn dispatch(req: &FetchRequest) -> Result<u32, Status> {
    abi::dispatch_http_call(
        &req.upstream,
        &req.header_refs(),
        None,
        &[],
        Duration::from_millis(req.timeout_ms),
    )
}

pub fn call_response_headers() -> Vec<(String, String)> {
    abi::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default()
}

pub fn call_response_body(size: usize, cap: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    abi::get_buffer(BufferType::HttpCallResponseBody, 0, size.min(cap))
        .ok()
        .flatten()
}

/// A fast non-cryptographic generator for request ids and jitter (never for secrets).
pub struct Rng(u64);

impl Rng {
    /// `seed` mixed with per-VM entropy: std's `RandomState` draws its keys from WASI
    /// `random_get` (already imported for `HashMap`). The seed alone (time in ms, root
    /// context id) is the same in Envoy workers whose VMs start in the same millisecond,
    /// which gave them the same JWKS lease owner id: each took the other's lease for its
    /// own, so both fetched (and logged each failure streak twice).
    pub fn new(seed: u64) -> Rng {
        use std::hash::BuildHasher;
        let mixed = std::collections::hash_map::RandomState::new().hash_one(seed);
        Rng(mixed | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
