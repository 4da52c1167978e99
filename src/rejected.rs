//! Tokens that recently failed verification, per worker, so a repeated forged token is
//! refused again without signature work: a flood that repeats up to [`REJECTED_MAX`]
//! distinct bad tokens costs each worker one verification per token. Only outcomes that
//! cannot change for the same token, provider and key set are kept ([`is_lasting`]), for
//! [`TTL_SECS`] at most, and the answer is the reason the fresh check gave.
//!
//! Per worker, not in shared data: the lookup is free (no host call on any request), and
//! a node-wide record per forged token would let a flood of distinct forged tokens evict
//! valid callers' shared verifications and grow writes into the zone they share.

use crate::fifo::FifoMap;
use crate::reason::Reason;

/// Entries per worker (at most `cache.max_entries`): an entry of at most 64 bytes plus its
/// key and the table's slack, under 100 bytes each, so under 400 KiB of a worker's memory
/// when full. Lookups are O(1), so the bound is set by memory, not by the cost of a miss.
pub const REJECTED_MAX: usize = 4096;

/// How long a failure is remembered.
pub const TTL_SECS: u64 = 300;

struct Entry {
    hash: [u8; 32],
    provider: usize,
    scope: u64,
    reason: Reason,
    until: u64,
}

/// Recently failed token hashes (FIFO, bounded), indexed by the first eight bytes of the
/// SHA-256 (uniform; an entry still answers only for its whole hash).
pub struct Rejected {
    entries: FifoMap<u64, Entry>,
}

fn index(hash: &[u8; 32]) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = *hash;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
}

/// A verification outcome that holds for as long as the token, its provider and the key
/// set do: the signature, the key type, the audience, the key's tenant, expiry, shape.
/// Not `nbf`/`iat`/lifetime (time can cure them) nor an unknown `kid` (a refetch can).
pub fn is_lasting(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::SignatureInvalid
            | Reason::KeyTypeMismatch
            | Reason::AlgNotAllowed
            | Reason::AudienceMismatch
            | Reason::TenantNotAllowed
            | Reason::TokenExpired
            | Reason::TokenMalformed
            | Reason::GraphTokenUnverifiable
    )
}

impl Rejected {
    /// `max == 0`: nothing is remembered.
    pub fn new(max: usize) -> Rejected {
        Rejected {
            entries: FifoMap::new(max),
        }
    }

    /// The reason `hash` was refused for `provider` under `scope`, while remembered.
    pub fn get(&self, hash: &[u8; 32], provider: usize, scope: u64, now: u64) -> Option<Reason> {
        self.entries
            .get(&index(hash))
            .filter(|e| e.hash == *hash && e.provider == provider && e.scope == scope)
            .filter(|e| now < e.until)
            .map(|e| e.reason)
    }

    /// Remember a lasting failure (others are ignored). A token already remembered (or one
    /// sharing its index) is replaced in place and keeps its place in the eviction order.
    pub fn insert(
        &mut self,
        hash: &[u8; 32],
        provider: usize,
        scope: u64,
        reason: Reason,
        now: u64,
    ) {
        if !is_lasting(reason) {
            return;
        }
        let entry = Entry {
            hash: *hash,
            provider,
            scope,
            reason,
            until: now.saturating_add(TTL_SECS),
        };
        self.entries.insert(index(hash), entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_failures_are_remembered_bounded_and_expire() {
        let mut r = Rejected::new(2);
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        r.insert(&a, 0, 5, Reason::SignatureInvalid, 100);
        assert_eq!(r.get(&a, 0, 5, 100), Some(Reason::SignatureInvalid));
        // Other provider or key set: not this entry.
        assert_eq!(r.get(&a, 1, 5, 100), None);
        assert_eq!(r.get(&a, 0, 6, 100), None);
        assert_eq!(r.get(&a, 0, 5, 100 + TTL_SECS), None);
        // Time or a refetch can cure these: never remembered.
        for reason in [
            Reason::TokenNotYetValid,
            Reason::IssuedInFuture,
            Reason::LifetimeTooLong,
            Reason::KidUnknown,
            Reason::JwksUnavailable,
        ] {
            r.insert(&b, 0, 5, reason, 100);
            assert_eq!(r.get(&b, 0, 5, 100), None, "{reason:?}");
        }
        r.insert(&b, 0, 5, Reason::AudienceMismatch, 100);
        r.insert(&c, 0, 5, Reason::TokenExpired, 100);
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(&a, 0, 5, 100), None, "oldest evicted");
        assert_eq!(r.get(&c, 0, 5, 100), Some(Reason::TokenExpired));
        let mut off = Rejected::new(0);
        off.insert(&a, 0, 5, Reason::SignatureInvalid, 100);
        assert!(off.is_empty());
    }

    #[test]
    fn a_flood_of_many_distinct_bad_tokens_is_remembered_up_to_the_bound() {
        let mut r = Rejected::new(REJECTED_MAX);
        let hash = |n: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(n as u64).to_le_bytes());
            h[31] = 7;
            h
        };
        for n in 0..REJECTED_MAX + 10 {
            r.insert(&hash(n), 0, 1, Reason::SignatureInvalid, 100);
        }
        assert_eq!(r.len(), REJECTED_MAX);
        assert_eq!(r.get(&hash(9), 0, 1, 100), None, "the oldest are evicted");
        let last = REJECTED_MAX + 9;
        assert_eq!(r.get(&hash(10), 0, 1, 100), Some(Reason::SignatureInvalid));
        assert_eq!(
            r.get(&hash(last), 0, 1, 100),
            Some(Reason::SignatureInvalid)
        );
        // Same index, another hash: not this entry's answer.
        let mut other = hash(last);
        other[31] = 8;
        assert_eq!(r.get(&other, 0, 1, 100), None);
        // Re-inserted: replaced in place, the bound holds.
        r.insert(&hash(last), 0, 2, Reason::TokenExpired, 200);
        assert_eq!(r.len(), REJECTED_MAX);
        assert_eq!(r.get(&hash(last), 0, 2, 200), Some(Reason::TokenExpired));
        r.clear();
        assert!(r.is_empty());
    }
}
