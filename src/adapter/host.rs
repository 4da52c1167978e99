//! Small, panic-free wrappers over the host calls the adapter uses, and the parts of
//! executing a decision that are the same whether the request is in its own callback
//! or being resumed from the root context.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::annotate::HeaderOp;
use crate::respond::LocalResponse;

/// Host time in milliseconds since the epoch (never `std::time::SystemTime::now`).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Carry out header operations following the recipe that is correct on Kong and Envoy:
/// values are set in place; a header is cleared by setting it empty first (Kong still
/// forwards removed headers, but forwards the emptied value) and then removing it
/// (Envoy drops it).
pub fn apply_header_ops(ops: &[HeaderOp]) {
    let map = MapType::HttpRequestHeaders;
    for op in ops {
        let r = match op {
            HeaderOp::Set { name, value } => hostcalls::set_map_value(map, name, Some(value)),
            HeaderOp::Clear { name } => hostcalls::set_map_value(map, name, Some(""))
                .and_then(|_| hostcalls::set_map_value(map, name, None)),
            HeaderOp::SetPath(p) => hostcalls::set_map_value(map, ":path", Some(p)),
        };
        if let Err(e) = r {
            log::error!("azure_ml_kong: header operation failed: {e:?}");
        }
    }
}

pub fn send_response(resp: &LocalResponse) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = resp
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    hostcalls::send_http_response(resp.status, headers, Some(resp.body.as_bytes()))
}

pub fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

pub fn dispatch(
    upstream: &str,
    headers: &[(String, String)],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    hostcalls::dispatch_http_call(
        upstream,
        headers,
        None,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

pub fn call_response_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default()
}

pub fn call_response_body(size: usize, cap: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size.min(cap))
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
