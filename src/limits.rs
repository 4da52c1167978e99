//! A route's limits for one request that is otherwise allowed: the rate limit, then the
//! concurrency limit. Both count under one key value per caller: for a verified token the
//! value its limit's `key` names (a claim, or the registered caller), for a request
//! without one (`auth: none`/`optional` routes) its client address, so unauthenticated
//! traffic is limited too and cannot share a verified caller's bucket.

use std::borrow::Cow;

use crate::concurrency::{self, ConcurrencyLimit};
use crate::policy::Route;
use crate::ratelimit::{self, Verdict};
use crate::reason::Reason;

/// The node-wide counters the limits use (the engine's `Env`).
pub trait Counters {
    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> Verdict;
    fn acquire_slot(&mut self, bucket: &str, max_in_flight: u64) -> bool;
}

/// What the limits say.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// Admitted; these headers go on the response (`RateLimit-Policy`, `RateLimit`).
    Pass(Vec<(String, String)>),
    /// Refused: the reason, `Retry-After`, and headers for the 429.
    Deny(Reason, u64, Vec<(String, String)>),
}

/// The key value of a request without a verified token.
pub fn anonymous_value(client_address: Option<&str>) -> String {
    format!("addr:{}", client_address.unwrap_or("unknown"))
}

/// The client's IP from a host's `source.address` (`ip:port`, `[v6]:port`, or a bare ip).
pub fn client_ip(source_address: &str) -> String {
    let s = source_address.trim();
    let ip = match s.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => s.to_string(),
    };
    // Bounded: it becomes part of a hashed key, never stored as it is.
    ip.chars().take(64).collect()
}

/// Count the request against `route`'s limits. `value_of(key)` is the key value under a
/// limit's `key`. The concurrency slot is taken last, so a request refused by the rate
/// limit never holds one.
pub fn check<'v>(
    route: &Route,
    concurrency_limit: Option<&ConcurrencyLimit>,
    mut value_of: impl FnMut(&[String]) -> Cow<'v, str>,
    env: &mut dyn Counters,
) -> Limited {
    let mut headers = Vec::new();
    if let Some(rl) = &route.rate_limit {
        let bucket = ratelimit::bucket_key_for_value(&route.name, &value_of(&rl.key));
        let verdict = env.rate_limit(&bucket, rl.requests, rl.window_seconds);
        let h = ratelimit::limit_headers(&route.name, rl, &verdict);
        if !verdict.allowed {
            return Limited::Deny(Reason::RateLimited, verdict.retry_after_secs, h.into());
        }
        headers.extend(h);
    }
    if let Some(cl) = concurrency_limit {
        let bucket = concurrency::bucket_key(&route.name, &value_of(&cl.key));
        if !env.acquire_slot(&bucket, cl.max_in_flight) {
            return Limited::Deny(
                Reason::ConcurrencyLimited,
                concurrency::RETRY_AFTER_SECS,
                Vec::new(),
            );
        }
    }
    Limited::Pass(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ips_from_source_addresses() {
        assert_eq!(client_ip("127.0.0.1:53214"), "127.0.0.1");
        assert_eq!(client_ip("[::1]:8000"), "::1");
        assert_eq!(client_ip("10.1.2.3"), "10.1.2.3");
        assert_eq!(client_ip(&"x".repeat(500)).len(), 64);
        assert_eq!(anonymous_value(Some("10.1.2.3")), "addr:10.1.2.3");
        assert_eq!(anonymous_value(None), "addr:unknown");
    }
}
