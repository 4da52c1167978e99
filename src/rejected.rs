//! Tokens that recently failed verification, per worker, so a repeated forged token is
//! refused again without signature work: a flood of one bad token costs each worker one
//! verification. Only outcomes that cannot change for the same token, provider and key
//! set are kept ([`is_lasting`]), for [`TTL_SECS`] at most, and the answer is the reason
//! the fresh check gave.
//!
//! Per worker, not in shared data: the lookup is free (no host call on any request), and
//! a node-wide record per forged token would let a flood of distinct forged tokens evict
//! valid callers' shared verifications and grow writes into the zone they share.

use std::collections::VecDeque;

use crate::reason::Reason;

/// Entries per worker (a linear scan on a local miss only: cheap at this size).
pub const REJECTED_MAX: usize = 256;

/// How long a failure is remembered.
pub const TTL_SECS: u64 = 300;

struct Entry {
    hash: [u8; 32],
    provider: usize,
    scope: u64,
    reason: Reason,
    until: u64,
}

/// Recently failed token hashes (FIFO, bounded).
pub struct Rejected {
    max: usize,
    entries: VecDeque<Entry>,
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
            max,
            entries: VecDeque::new(),
        }
    }

    /// The reason `hash` was refused for `provider` under `scope`, while remembered.
    pub fn get(&self, hash: &[u8; 32], provider: usize, scope: u64, now: u64) -> Option<Reason> {
        self.entries
            .iter()
            .find(|e| e.hash == *hash && e.provider == provider && e.scope == scope)
            .filter(|e| now < e.until)
            .map(|e| e.reason)
    }

    /// Remember a lasting failure (others are ignored).
    pub fn insert(
        &mut self,
        hash: &[u8; 32],
        provider: usize,
        scope: u64,
        reason: Reason,
        now: u64,
    ) {
        if self.max == 0 || !is_lasting(reason) {
            return;
        }
        self.entries.retain(|e| e.hash != *hash);
        while self.entries.len() >= self.max {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            hash: *hash,
            provider,
            scope,
            reason,
            until: now.saturating_add(TTL_SECS),
        });
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
}
