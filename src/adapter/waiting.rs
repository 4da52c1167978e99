//! How a request waits on each host, what the root context does for a parked one, and
//! what a cache call needs from the host.

use super::host::Host;
use super::metrics::Metrics;
use crate::keycache::{HttpResponse, WaiterId};
use crate::reason::Reason;

/// What the root context must do for a paused request.
pub enum Wake {
    Resume(WaiterId),
    Unavailable {
        waiter: WaiterId,
        retry_after_secs: u32,
        /// What it waited for in vain: keys, or the gateway's own token.
        reason: Reason,
    },
}

/// How a request that needs keys waits on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Envoy: parked with the root context, which finishes it when keys arrive.
    Park,
    /// Kong: the request fetches for itself (a ride; see `keycache`'s docs), or — when
    /// `allowed` is false, after its ride — takes what the cache holds.
    Ride { allowed: bool },
}

/// What a key-cache call needs besides its own arguments: the host, the time, fresh
/// randomness and the metrics to count in.
pub struct Cx<'a, H> {
    pub host: &'a H,
    pub now_ms: u64,
    pub random: u64,
    pub metrics: &'a mut Metrics,
}

/// A dispatched call's answer; the body only when within `cap`.
pub fn read_call_response(host: &impl Host, cap: usize, body_size: usize) -> HttpResponse {
    let headers = host.call_response_headers();
    let body = match body_size {
        0 => Some(Vec::new()),
        n if n <= cap => host.call_response_body(n),
        _ => None,
    };
    HttpResponse {
        headers,
        body_size,
        body,
    }
}
