//! Per-route, per-caller rate limiting: sans-IO counting over shared data.
//!
//! Algorithm: the *sliding window approximation* (two fixed windows weighted by how far
//! into the current one we are): `estimate = previous × (window − elapsed) / window +
//! current`. A request is allowed while `estimate < limit`, and only allowed requests are
//! counted. This avoids the 2× burst a plain fixed window allows at a boundary, with the
//! state of a fixed window: 17 bytes per bucket in shared data.
//!
//! [`Limiter::count`] reads the bucket's [`Window`], [`check`]s the request and writes the
//! window back through the one CAS sequence ([`crate::store::cas_update`]); undecodable
//! bytes are a fresh bucket. Without shared data (switched off, unavailable, or contended
//! beyond its retries) it counts in per-worker windows rather than fail open or closed.
//!
//! Keys: [`bucket_key`] is `aml-rl:` + 32 hex digits of SHA-256 over the route name and
//! the caller's key-claim value. Hashing keeps identifiers out of shared memory, bounds the
//! key size, and keeps `/` (a zone separator in Kong's shm_kv) out of keys. The key claim
//! accepts `a|b` alternatives (first present wins). **A verified token without the key
//! claim counts in one shared `anonymous` bucket per route**, so it cannot escape the limit
//! by omitting the claim. Requests without a verified token (`auth: none`/`optional`
//! routes) count under their client address (`crate::limits`).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::claims::{lookup, Claims};
use crate::store::{self, CasOutcome, SharedStore};

/// The bucket used when the key claim is absent.
pub const ANONYMOUS: &str = "anonymous";

/// A route's compiled `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u64,
    pub window_seconds: u64,
    /// Claim path alternatives (`azp|appid` → `["azp", "appid"]`).
    pub key: Vec<String>,
}

impl RateLimit {
    /// `key` as configured: claim paths separated by `|`.
    pub fn new(requests: u64, window_seconds: u64, key: &str) -> RateLimit {
        RateLimit {
            requests,
            window_seconds,
            key: key.split('|').map(|s| s.trim().to_string()).collect(),
        }
    }
}

/// The caller's value of the first present key claim alternative (a non-empty string,
/// or a number), or [`ANONYMOUS`].
pub fn caller_key<'c>(key: &[String], claims: Option<&'c Claims>) -> Cow<'c, str> {
    if let Some(c) = claims {
        for alt in key {
            match lookup(c, alt) {
                Some(Value::String(s)) if !s.is_empty() => return Cow::Borrowed(s.as_str()),
                Some(Value::Number(n)) => return Cow::Owned(n.to_string()),
                _ => {}
            }
        }
    }
    Cow::Borrowed(ANONYMOUS)
}

/// The shared-data key for `route_name` and the caller identified by the `key` claim
/// alternatives in `claims` (see the module docs).
pub fn bucket_key(route_name: &str, key: &[String], claims: &Claims) -> String {
    bucket_key_for_value(route_name, &caller_key(key, Some(claims)))
}

/// `aml-rl:` + hex(SHA-256(route ‖ 0 ‖ value))[..32].
pub fn bucket_key_for_value(route_name: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(route_name.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    let d = h.finalize();
    let mut out = String::with_capacity(7 + 32);
    out.push_str("aml-rl:");
    for b in d.iter().take(16) {
        out.push(hex_lower(b >> 4));
        out.push(hex_lower(b & 0xf));
    }
    out
}

fn hex_lower(n: u8) -> char {
    char::from_digit(u32::from(n & 0xf), 16).unwrap_or('0')
}

/// The counter state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start of the current fixed window, unix seconds (a multiple of the window length).
    pub start: u64,
    /// Allowed requests counted in the current window.
    pub count: u32,
    /// Allowed requests counted in the window before it.
    pub prev_count: u32,
}

const VERSION: u8 = 1;
/// Encoded size: version, start (u64 LE), count (u32 LE), prev_count (u32 LE).
pub const ENCODED_LEN: usize = 17;

impl Window {
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let parts = [VERSION]
            .into_iter()
            .chain(self.start.to_le_bytes())
            .chain(self.count.to_le_bytes())
            .chain(self.prev_count.to_le_bytes());
        for (o, b) in out.iter_mut().zip(parts) {
            *o = b;
        }
        out
    }

    /// `None` for anything that is not exactly an encoded window of this version.
    pub fn decode(bytes: &[u8]) -> Option<Window> {
        let b: &[u8; ENCODED_LEN] = bytes.try_into().ok()?;
        let [v, s0, s1, s2, s3, s4, s5, s6, s7, c0, c1, c2, c3, p0, p1, p2, p3] = *b;
        if v != VERSION {
            return None;
        }
        Some(Window {
            start: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            count: u32::from_le_bytes([c0, c1, c2, c3]),
            prev_count: u32::from_le_bytes([p0, p1, p2, p3]),
        })
    }
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// When denied: seconds until a request would be allowed (≥ 1). 0 when allowed.
    pub retry_after_secs: u64,
    /// Requests left after this one (the `r` of the `RateLimit` header); 0 when denied.
    pub remaining: u64,
    /// Seconds until the quota frees up: the end of the current window when allowed,
    /// `retry_after_secs` when denied (the `t` of the `RateLimit` header).
    pub reset_secs: u64,
}

/// Smallest elapsed time `t` (seconds into a window) at which
/// `prev × (w − t) + count × w < limit × w`, or `None` if not within `[0, w)`.
fn first_allowed(prev: u128, count: u128, limit: u128, w: u128) -> Option<u128> {
    if count >= limit {
        return None;
    }
    if prev == 0 {
        return Some(0);
    }
    // prev × (w − t) < x  ⇔  w − t ≤ ceil(x / prev) − 1
    let x = (limit - count) * w;
    let c = x.div_ceil(prev);
    let t = (w + 1).saturating_sub(c);
    (t < w).then_some(t)
}

/// Count one request against `limit` per `window_secs` at time `now_secs`.
/// Returns the verdict and the state to store (unchanged counts when denied).
/// A `window_secs` or `limit` of 0 is treated as 1 (config validation rejects both).
pub fn check(
    prev: Option<Window>,
    now_secs: u64,
    limit: u64,
    window_secs: u64,
) -> (Verdict, Window) {
    let w = window_secs.max(1);
    let limit = limit.max(1);
    let cur_start = now_secs - now_secs % w;
    let mut win = match prev {
        // Same window, or a worker whose clock is slightly behind: keep counting there.
        Some(p) if p.start >= cur_start => p,
        Some(p) if p.start.checked_add(w) == Some(cur_start) => Window {
            start: cur_start,
            count: 0,
            prev_count: p.count,
        },
        _ => Window {
            start: cur_start,
            count: 0,
            prev_count: 0,
        },
    };
    let elapsed = u128::from(now_secs.saturating_sub(win.start).min(w - 1));
    let (wl, ll) = (u128::from(w), u128::from(limit));
    let (prev_c, cur_c) = (u128::from(win.prev_count), u128::from(win.count));
    let estimate_w = prev_c * (wl - elapsed) + cur_c * wl;
    if estimate_w < ll * wl {
        win.count = win.count.saturating_add(1);
        let left = (ll * wl).saturating_sub(estimate_w + wl) / wl;
        return (
            Verdict {
                allowed: true,
                retry_after_secs: 0,
                remaining: u64::try_from(left).unwrap_or(u64::MAX),
                reset_secs: u64::try_from(wl - elapsed).unwrap_or(w),
            },
            win,
        );
    }
    let retry = match first_allowed(prev_c, cur_c, ll, wl) {
        Some(t) if t > elapsed => t - elapsed,
        _ => {
            // Next window: previous = this window's count, current = 0.
            let to_next = wl - elapsed;
            to_next + first_allowed(cur_c, 0, ll, wl).unwrap_or(wl)
        }
    };
    let retry = u64::try_from(retry).unwrap_or(u64::MAX).max(1);
    (
        Verdict {
            allowed: false,
            retry_after_secs: retry,
            remaining: 0,
            reset_secs: retry,
        },
        win,
    )
}

/// The `RateLimit-Policy` and `RateLimit` response headers
/// (draft-ietf-httpapi-ratelimit-headers: `"name";q=Q;w=W` and `"name";r=R;t=T`), the
/// policy named after the route.
pub fn limit_headers(route: &str, rl: &RateLimit, v: &Verdict) -> [(String, String); 2] {
    let name: String = route
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(64)
        .collect();
    [
        (
            "ratelimit-policy".into(),
            format!("\"{name}\";q={};w={}", rl.requests, rl.window_seconds),
        ),
        (
            "ratelimit".into(),
            format!("\"{name}\";r={};t={}", v.remaining, v.reset_secs),
        ),
    ]
}

/// Where a request was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountedIn {
    /// Node-wide, in shared data.
    Shared,
    /// In this worker's windows: shared data is switched off or unavailable.
    Worker,
    /// In this worker's windows: other workers won the CAS race every time.
    WorkerContended,
}

/// Buckets one worker remembers (the last window it read or wrote in each), for finding
/// windows lost to a full zone and for removing expired ones.
pub const SEEN_CAP: usize = 8_192;
/// How often a worker removes the expired windows it knows of.
pub const SWEEP_EVERY_SECS: u64 = 10;

/// Counts requests per bucket (one per worker; see the module docs).
#[derive(Debug, Default)]
pub struct Limiter {
    /// Per-worker windows, used only when shared data cannot be.
    local: HashMap<String, Window>,
    /// The last shared window this worker saw per bucket, and the bucket's window length.
    seen: HashMap<String, (Window, u64)>,
    /// Windows found gone while still counting (evicted), since the last [`Limiter::take_lost`].
    lost: u64,
    last_sweep_secs: u64,
}

/// Whether `w` (of `window_secs`) still counts at `now`: as the current or previous window.
fn live(w: &Window, window_secs: u64, now: u64) -> bool {
    w.start.saturating_add(window_secs.max(1).saturating_mul(2)) > now
}

impl Limiter {
    /// Count one request against `limit` per `window_secs` in `bucket` at `now_ms`.
    pub fn count(
        &mut self,
        store: &mut dyn SharedStore,
        bucket: &str,
        now_ms: u64,
        limit: u64,
        window_secs: u64,
    ) -> (Verdict, CountedIn) {
        let now = now_ms / 1000;
        // A window this worker saw that should still be there: if the key is gone, the zone
        // evicted it, and counting goes on from this view rather than from zero.
        let remembered = self
            .seen
            .get(bucket)
            .map(|(w, _)| *w)
            .filter(|w| live(w, window_secs, now));
        let mut lost = false;
        let shared = store::cas_update(store, bucket, |cur| {
            lost = cur.is_none() && remembered.is_some();
            let prev = match cur {
                None => remembered,
                Some(b) => Window::decode(b),
            };
            let (verdict, window) = check(prev, now, limit, window_secs);
            // Denied requests are not counted: nothing to write.
            (
                verdict.allowed.then(|| window.encode().to_vec()),
                (verdict, window),
            )
        });
        let counted_in = match shared {
            CasOutcome::Written((v, w)) | CasOutcome::Declined((v, w)) => {
                if lost {
                    self.lost += 1;
                }
                self.remember(bucket, w, window_secs, now);
                return (v, CountedIn::Shared);
            }
            CasOutcome::Contended => CountedIn::WorkerContended,
            CasOutcome::Unavailable => CountedIn::Worker,
        };
        let prev = self.local.get(bucket).copied();
        let (verdict, window) = check(prev, now, limit, window_secs);
        if verdict.allowed {
            self.local.insert(bucket.to_string(), window);
        }
        (verdict, counted_in)
    }

    fn remember(&mut self, bucket: &str, w: Window, window_secs: u64, now: u64) {
        if let Some(seen) = self.seen.get_mut(bucket) {
            *seen = (w, window_secs);
            return;
        }
        if self.seen.len() >= SEEN_CAP {
            self.seen.retain(|_, (w, len)| live(w, *len, now));
            if self.seen.len() >= SEEN_CAP {
                // Beyond the cap a bucket is neither watched nor swept by this worker.
                return;
            }
        }
        self.seen.insert(bucket.to_string(), (w, window_secs));
    }

    /// Windows lost to eviction since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// From the tick, every [`SWEEP_EVERY_SECS`]: remove the expired windows this worker
    /// knows of (unless another worker counted in them since), so shared data holds only
    /// callers active within their last two windows. Returns how many keys went.
    pub fn sweep(&mut self, store: &mut dyn SharedStore, now_ms: u64) -> usize {
        let now = now_ms / 1000;
        if now.saturating_sub(self.last_sweep_secs) < SWEEP_EVERY_SECS {
            return 0;
        }
        self.last_sweep_secs = now;
        let expired: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(_, (w, len))| !live(w, *len, now))
            .map(|(k, (_, len))| (k.clone(), *len))
            .collect();
        let mut removed = 0;
        for (bucket, len) in expired {
            let gone = store::delete_if(store, &bucket, |v| {
                Window::decode(v).is_none_or(|w| !live(&w, len, now))
            });
            if gone {
                removed += 1;
                self.seen.remove(&bucket);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::KongStore;
    use crate::store::NoSharedStore;

    #[test]
    fn encode_roundtrip_and_garbage() {
        let w = Window {
            start: 1_700_000_040,
            count: 7,
            prev_count: u32::MAX,
        };
        let b = w.encode();
        assert_eq!(b.len(), ENCODED_LEN);
        assert_eq!(Window::decode(&b), Some(w));
        assert_eq!(Window::decode(&b[..16]), None);
        assert_eq!(Window::decode(b""), None);
        let mut bad = b;
        bad[0] = 9;
        assert_eq!(Window::decode(&bad), None);
    }

    fn run(state: &mut Option<Window>, now: u64, limit: u64, w: u64) -> Verdict {
        let (v, s) = check(*state, now, limit, w);
        *state = Some(s);
        v
    }

    #[test]
    fn fixed_limit_within_a_window() {
        let mut s = None;
        for _ in 0..3 {
            assert!(run(&mut s, 1000, 3, 60).allowed);
        }
        let v = run(&mut s, 1000, 3, 60);
        assert!(!v.allowed);
        // 1000 is 40 s into the window starting at 960: next window in 20 s, and there
        // the previous 3 must have decayed below 3 → t > 0 → 1 s in.
        assert_eq!(v.retry_after_secs, 21);
        assert_eq!(s.unwrap().count, 3, "denied requests are not counted");
        // Retry at the announced time is allowed.
        assert!(run(&mut s, 1021, 3, 60).allowed);
    }

    #[test]
    fn sliding_weight_carries_over() {
        let mut s = None;
        for _ in 0..10 {
            assert!(run(&mut s, 59, 10, 60).allowed);
        }
        // Just after the boundary the previous 10 still weigh ~10: denied.
        let v = run(&mut s, 60, 10, 60);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_secs, 1);
        // Half-way through, 5 of the previous weigh in: 5 more are allowed.
        let mut allowed = 0;
        for _ in 0..10 {
            if run(&mut s, 90, 10, 60).allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5);
        // Two windows later everything is forgotten.
        let (v, w) = check(s, 200, 10, 60);
        assert!(v.allowed);
        assert_eq!((w.count, w.prev_count, w.start), (1, 0, 180));
    }

    #[test]
    fn retry_after_is_exact() {
        // Brute-force check of the closed form against a simulation.
        for (limit, w) in [(1u64, 1u64), (3, 10), (10, 60), (7, 13)] {
            for fill_at in [0u64, 3, w.saturating_sub(1)] {
                let base = 1000 * w;
                let mut s = None;
                while run(&mut s, base + fill_at, limit, w).allowed {}
                for probe in fill_at..(fill_at + w) {
                    let now = base + probe;
                    let (v, _) = check(s, now, limit, w);
                    if v.allowed {
                        continue;
                    }
                    let mut t = now;
                    while !check(s, t, limit, w).0.allowed {
                        t += 1;
                    }
                    assert_eq!(v.retry_after_secs, t - now, "limit {limit} w {w} at {now}");
                }
            }
        }
    }

    #[test]
    fn clock_behind_keeps_the_newer_window() {
        let (_, w) = check(None, 125, 5, 60);
        let (v, w2) = check(Some(w), 119, 5, 60);
        assert!(v.allowed);
        assert_eq!((w2.start, w2.count), (120, 2));
    }

    #[test]
    fn zero_limits_do_not_panic() {
        let (v, _) = check(None, 5, 0, 0);
        assert!(v.allowed);
        let (v, _) = check(None, u64::MAX, u64::MAX, u64::MAX);
        assert!(v.allowed);
    }

    #[test]
    fn keys() {
        let rl = RateLimit::new(1, 1, "azp|appid");
        let c: Claims = serde_json::from_str(r#"{"appid":"app-1"}"#).unwrap();
        assert_eq!(caller_key(&rl.key, Some(&c)), "app-1");
        assert_eq!(caller_key(&rl.key, None), ANONYMOUS);
        let empty = Claims::new();
        assert_eq!(caller_key(&rl.key, Some(&empty)), ANONYMOUS);
        let k = bucket_key("r", &rl.key, &c);
        assert!(k.starts_with("aml-rl:") && k.len() == 39, "{k}");
        assert!(!k.contains("app-1"));
        assert_ne!(k, bucket_key("r2", &rl.key, &c));
        assert_ne!(k, bucket_key("r", &rl.key, &empty));
        assert_eq!(k, bucket_key_for_value("r", "app-1"));
        assert_eq!(
            bucket_key("r", &rl.key, &empty),
            bucket_key_for_value("r", ANONYMOUS)
        );
    }

    #[test]
    fn limiter_counts_node_wide_in_shared_data() {
        let mut store = KongStore::default();
        let mut workers = [Limiter::default(), Limiter::default()];
        let now = 1_000_000;
        // Two workers share one bucket: 3 allowed in all, then denied without a write.
        for i in [0, 1, 0] {
            let (v, at) = workers[i].count(&mut store, "aml-rl:x", now, 3, 60);
            assert!(v.allowed);
            assert_eq!(at, CountedIn::Shared);
        }
        let sets = store.sets;
        let (v, at) = workers[1].count(&mut store, "aml-rl:x", now, 3, 60);
        assert!(!v.allowed && v.retry_after_secs >= 1);
        assert_eq!(at, CountedIn::Shared);
        assert_eq!(store.sets, sets, "a denied request is not written");
        let w = Window::decode(&store.map["aml-rl:x"].0).unwrap();
        assert_eq!(w.count, 3);
        // Junk in the bucket is a fresh window.
        store.map.insert("aml-rl:y".into(), (b"junk".to_vec(), 7));
        let (v, _) = workers[0].count(&mut store, "aml-rl:y", now, 1, 60);
        assert!(v.allowed);
        assert_eq!(Window::decode(&store.map["aml-rl:y"].0).unwrap().count, 1);
    }

    #[test]
    fn limiter_counts_per_worker_without_shared_data() {
        let mut l = Limiter::default();
        let now = 1_000_000;
        for left in [1, 0] {
            assert_eq!(
                l.count(&mut NoSharedStore, "b", now, 2, 60),
                (
                    Verdict {
                        allowed: true,
                        retry_after_secs: 0,
                        remaining: left,
                        reset_secs: 20,
                    },
                    CountedIn::Worker
                )
            );
        }
        let (v, at) = l.count(&mut NoSharedStore, "b", now, 2, 60);
        assert!(!v.allowed);
        assert_eq!(at, CountedIn::Worker);
        // Contended beyond the retries: counted in the same per-worker windows.
        let mut store = KongStore {
            interfere: 100,
            ..KongStore::default()
        };
        let (v, at) = l.count(&mut store, "b", now, 2, 60);
        assert!(!v.allowed, "the worker's own count still applies");
        assert_eq!(at, CountedIn::WorkerContended);
        let (v, at) = l.count(&mut store, "c", now, 2, 60);
        assert!(v.allowed);
        assert_eq!(at, CountedIn::WorkerContended);
    }

    #[test]
    fn limit_headers_follow_the_draft_syntax() {
        let rl = RateLimit::new(600, 60, "oid");
        let mut state = None;
        let first = run(&mut state, 1_000_040, 600, 60);
        assert_eq!((first.remaining, first.reset_secs), (599, 40));
        let [policy, current] = limit_headers("team-score", &rl, &first);
        assert_eq!(
            policy,
            (
                "ratelimit-policy".into(),
                "\"team-score\";q=600;w=60".into()
            )
        );
        assert_eq!(
            current,
            ("ratelimit".into(), "\"team-score\";r=599;t=40".into())
        );
        // Denied: nothing left, and `t` is when a request would be allowed again.
        let mut s1 = None;
        run(&mut s1, 1_000_020, 1, 60);
        let denied = run(&mut s1, 1_000_020, 1, 60);
        assert!(!denied.allowed);
        assert_eq!(
            (denied.remaining, denied.reset_secs),
            (0, denied.retry_after_secs)
        );
        let [_, current] = limit_headers("a\"b\\c", &rl, &denied);
        assert!(current.1.starts_with("\"abc\";r=0;t="), "{}", current.1);
    }

    #[test]
    fn an_evicted_window_is_found_counted_and_continued_from_this_workers_view() {
        let mut store = KongStore::default();
        let mut l = Limiter::default();
        let b = "aml-rl:b";
        for _ in 0..2 {
            assert!(l.count(&mut store, b, 1_000, 3, 60).0.allowed);
        }
        assert_eq!(l.take_lost(), 0);
        store.evict(b);
        let (v, at) = l.count(&mut store, b, 2_000, 3, 60);
        assert!(v.allowed);
        assert_eq!(at, CountedIn::Shared);
        assert_eq!(l.take_lost(), 1);
        assert_eq!(l.take_lost(), 0, "taken once");
        // The count went on from 2: the limit still holds.
        assert_eq!(Window::decode(&store.map[b].0).map(|w| w.count), Some(3));
        assert!(!l.count(&mut store, b, 3_000, 3, 60).0.allowed);
        // Another worker, which never saw the window, cannot tell; it starts afresh.
        store.evict(b);
        let mut other = Limiter::default();
        assert!(other.count(&mut store, b, 3_000, 3, 60).0.allowed);
        assert_eq!(other.take_lost(), 0);
        // A window this worker saw that expired anyway is no loss.
        store.evict(b);
        assert!(l.count(&mut store, b, 200_000, 3, 60).0.allowed);
        assert_eq!(l.take_lost(), 0);
    }

    #[test]
    fn the_sweep_removes_expired_windows_only() {
        let mut store = KongStore::default();
        let (mut a, mut b) = (Limiter::default(), Limiter::default());
        let (old, busy) = ("aml-rl:old", "aml-rl:busy");
        assert!(a.count(&mut store, old, 0, 5, 60).0.allowed);
        assert!(a.count(&mut store, busy, 0, 5, 60).0.allowed);
        // Nothing has expired yet; a second sweep within the period does nothing either.
        assert_eq!(a.sweep(&mut store, 100_000), 0);
        // Worker b keeps `busy` going in the next window.
        assert!(b.count(&mut store, busy, 110_000, 5, 60).0.allowed);
        assert_eq!(a.sweep(&mut store, 105_000), 0, "within the sweep period");
        assert_eq!(a.sweep(&mut store, 130_000), 1);
        assert!(!store.map.contains_key(old));
        assert!(store.map.contains_key(busy), "counted in by another worker");
        // Removed by a sweep is not lost: the window had expired.
        assert!(a.count(&mut store, old, 131_000, 5, 60).0.allowed);
        assert_eq!(a.take_lost(), 0);
        // Envoy keeps the key with an empty value: a fresh window, and no loss.
        store.map.insert(old.into(), (Vec::new(), 9));
        assert!(a.count(&mut store, old, 132_000, 5, 60).0.allowed);
        assert_eq!(a.take_lost(), 0);
        assert_eq!(Window::decode(&store.map[old].0).map(|w| w.count), Some(1));
        // Without shared data the sweep is harmless.
        a.sweep(&mut NoSharedStore, 1_000_000);
    }
}
