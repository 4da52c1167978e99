//! Verified tokens shared by the node's workers through shared data ([`SharedStore`]), so
//! a token's signature is checked once per node instead of once per worker. It sits
//! behind each worker's own [`crate::verify::VerifiedCache`]: asked only on a local miss,
//! filled after a successful verification.
//!
//! Proxy-Wasm shared data has neither delete nor expiry, so the cache is a fixed set of
//! slots (`amlk:verified:<n>`, [`MAX_SLOTS`] at most): the token's SHA-256 picks the slot,
//! and the record names that full hash, the `scope` (configuration and key set) it was
//! verified under and the second its verification stops holding (`exp` + skew). Any other
//! hash, scope or a past `valid_until` is a miss, and the next verification landing there
//! overwrites the slot: node memory stays bounded by the slot count, and new keys or a
//! new configuration invalidate every record at once.
//!
//! A record holds what policy reads after verification — provider index, `kid`, `alg`,
//! `exp`, `valid_until` and the verified claims — never the token or its signature.

use crate::claims::Claims;
use crate::jose::Alg;
use crate::store::{cas_update, CasOutcome, SharedStore};
use crate::verify::{TokenKey, Verified};

/// Upper bound on slots (records of about a kilobyte each in a node-wide zone that also
/// holds key sets and rate-limit windows).
pub const MAX_SLOTS: usize = 1024;

const MAGIC: &[u8; 4] = b"amv1";

/// The slot layout and record format; `slots == 0` turns sharing off.
#[derive(Debug, Clone)]
pub struct SharedVerified {
    slots: usize,
}

impl SharedVerified {
    /// As many slots as the per-worker cache has entries, at most [`MAX_SLOTS`].
    pub fn new(max_entries: usize) -> SharedVerified {
        SharedVerified {
            slots: max_entries.min(MAX_SLOTS),
        }
    }

    pub fn enabled(&self) -> bool {
        self.slots != 0
    }

    fn slot_key(&self, key: &TokenKey) -> Option<String> {
        let slots = u64::try_from(self.slots).ok().filter(|s| *s != 0)?;
        Some(format!("amlk:verified:{}", key.prefix_u64() % slots))
    }

    /// The record for `key` verified under `scope` and still valid at `now` (seconds).
    pub fn get(
        &self,
        store: &mut dyn SharedStore,
        key: &TokenKey,
        scope: u64,
        now: u64,
    ) -> Option<Verified> {
        let slot = self.slot_key(key)?;
        let (bytes, _) = store.get(&slot).ok()??;
        decode(&bytes, key, scope, now)
    }

    /// Share a successful verification. Leaves the slot alone when it already holds a
    /// live record of the same token and scope; a lost race is not retried for long.
    pub fn put(
        &self,
        store: &mut dyn SharedStore,
        key: &TokenKey,
        scope: u64,
        verified: &Verified,
        now: u64,
    ) -> bool {
        let Some(slot) = self.slot_key(key) else {
            return false;
        };
        let Some(record) = encode(key, scope, verified) else {
            return false;
        };
        let out = cas_update(store, &slot, |cur| {
            let same = cur.is_some_and(|c| decode_head(c, key, scope, now).is_some());
            ((!same).then(|| record.clone()), ())
        });
        matches!(out, CasOutcome::Written(()))
    }
}

fn encode(key: &TokenKey, scope: u64, v: &Verified) -> Option<Vec<u8>> {
    let claims = serde_json::to_vec(&v.claims).ok()?;
    let alg = v.alg.as_str().as_bytes();
    let kid = v.kid.as_deref().map(str::as_bytes);
    let kid_len = u16::try_from(kid.map_or(0, <[u8]>::len)).ok()?;
    let mut out = Vec::with_capacity(80 + alg.len() + usize::from(kid_len) + claims.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&scope.to_le_bytes());
    out.extend_from_slice(&v.valid_until.to_le_bytes());
    out.extend_from_slice(&v.exp.to_le_bytes());
    out.extend_from_slice(&u32::try_from(v.provider).ok()?.to_le_bytes());
    out.push(u8::try_from(alg.len()).ok()?);
    out.extend_from_slice(alg);
    out.push(u8::from(kid.is_some()));
    out.extend_from_slice(&kid_len.to_le_bytes());
    out.extend_from_slice(kid.unwrap_or_default());
    out.extend_from_slice(&claims);
    Some(out)
}

/// Reads a record front to back; every read is bounds-checked (shared data is outside
/// input: another module version, or a corrupt zone, may have written the slot).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
}

/// The fixed head: this token, this scope, still valid. Returns the reader past it and
/// (valid_until, exp).
fn decode_head<'a>(
    bytes: &'a [u8],
    key: &TokenKey,
    scope: u64,
    now: u64,
) -> Option<(Reader<'a>, u64, u64)> {
    let mut r = Reader(bytes);
    (r.take(4)? == MAGIC).then_some(())?;
    (r.take(32)? == key.as_bytes()).then_some(())?;
    (r.u64()? == scope).then_some(())?;
    let valid_until = r.u64()?;
    (now < valid_until).then_some(())?;
    let exp = r.u64()?;
    Some((r, valid_until, exp))
}

fn decode(bytes: &[u8], key: &TokenKey, scope: u64, now: u64) -> Option<Verified> {
    let (mut r, valid_until, exp) = decode_head(bytes, key, scope, now)?;
    let provider = usize::try_from(r.u32()?).ok()?;
    let alg_len = usize::from(r.u8()?);
    let alg = Alg::parse(std::str::from_utf8(r.take(alg_len)?).ok()?)?;
    let has_kid = r.u8()? == 1;
    let kid_len = usize::from(r.u16()?);
    let kid = std::str::from_utf8(r.take(kid_len)?).ok()?.to_string();
    let claims: Claims = serde_json::from_slice(r.0).ok()?;
    Some(Verified {
        provider,
        claims,
        kid: has_kid.then_some(kid),
        alg,
        exp,
        valid_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::KongStore;
    use crate::store::NoSharedStore;
    use crate::verify::VerifiedCache;
    use serde_json::json;

    fn verified(valid_until: u64) -> Verified {
        let claims = json!({"iss": "https://i/", "oid": "o-1", "roles": ["a", "b"], "n": {"x": 1}});
        Verified {
            provider: 1,
            claims: claims.as_object().cloned().unwrap(),
            kid: Some("k1".into()),
            alg: Alg::RS256,
            exp: valid_until - 60,
            valid_until,
        }
    }

    fn key(token: &str) -> TokenKey {
        VerifiedCache::new(1).key(token).unwrap()
    }

    #[test]
    fn a_record_round_trips_for_its_token_scope_and_lifetime_only() {
        let sv = SharedVerified::new(16);
        let mut s = KongStore::default();
        let (k, v) = (key("tok-a"), verified(2000));
        assert!(sv.put(&mut s, &k, 7, &v, 1000));
        assert_eq!(sv.get(&mut s, &k, 7, 1000), Some(v.clone()));
        // Another scope (new keys or configuration), or past valid_until: a miss.
        assert_eq!(sv.get(&mut s, &k, 8, 1000), None);
        assert_eq!(sv.get(&mut s, &k, 7, 2000), None);
        // Same slot, another token: a miss, never the other token's claims.
        let sv1 = SharedVerified::new(1);
        assert!(sv1.put(&mut s, &k, 7, &v, 1000));
        assert_eq!(sv1.get(&mut s, &key("tok-b"), 7, 1000), None);
        // A live record of the same token is not rewritten.
        let sets = s.sets;
        assert!(!sv.put(&mut s, &k, 7, &v, 1000));
        assert_eq!(s.sets, sets);
        // Never the token itself.
        assert!(s
            .map
            .values()
            .all(|(b, _)| !b.windows(5).any(|w| w == b"tok-a")));
        let none = Verified { kid: None, ..v };
        assert!(sv.put(&mut s, &k, 9, &none, 1000));
        assert_eq!(sv.get(&mut s, &k, 9, 1000), Some(none));
    }

    #[test]
    fn the_slots_are_bounded_and_sharing_can_be_off() {
        let sv = SharedVerified::new(100_000);
        let mut s = KongStore::default();
        for i in 0..3000 {
            sv.put(&mut s, &key(&format!("t{i}")), 1, &verified(2000), 1000);
        }
        assert!(s.map.len() <= MAX_SLOTS, "{}", s.map.len());
        let off = SharedVerified::new(0);
        assert!(!off.enabled());
        assert!(!off.put(&mut s, &key("x"), 1, &verified(2000), 1000));
        assert_eq!(sv.get(&mut NoSharedStore, &key("t1"), 1, 1000), None);
    }

    #[test]
    fn corrupt_or_truncated_records_are_misses_and_never_panic() {
        let sv = SharedVerified::new(1);
        let mut s = KongStore::default();
        let k = key("tok");
        sv.put(&mut s, &k, 3, &verified(2000), 1000);
        let good = s.map.values().next().unwrap().0.clone();
        let slot = s.map.keys().next().unwrap().clone();
        for n in 0..good.len() {
            s.map.insert(slot.clone(), (good[..n].to_vec(), 9));
            assert_eq!(sv.get(&mut s, &k, 3, 1000), None, "{n}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            s.map.insert(slot.clone(), (b, 9));
            let _ = sv.get(&mut s, &k, 3, 1000);
        }
    }
}
