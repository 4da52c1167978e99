//! Node-wide shared data (Proxy-Wasm `get_shared_data`/`set_shared_data`) as the core
//! sees it: a two-call trait the adapter implements, and the one compare-and-swap
//! sequence every writer uses — the key caches for their records and leases
//! (`keycache::shared`), rate limiting for its windows (`ratelimit`).

/// A stored value and its cas (`None` if the host gave none).
pub type Versioned = (Vec<u8>, Option<u32>);

/// Why a shared-data call did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since it was read (or Kong: `cas = None` on an existing key).
    CasMismatch,
    /// Shared data cannot be used (full zone, host error): fall back to per-worker.
    Unavailable,
}

/// The adapter's shared-data access. Kong adapter:
///
/// ```text
/// get: match get_shared_data(k) { Ok((Some(v), cas)) => Ok(Some((v, cas))),
///                                 Ok((None, _)) | Err(NotFound) => Ok(None),
///                                 Err(_) => Err(Unavailable) }
/// set: set_shared_data(k, Some(v), cas): Ok => Ok, Err(CasMismatch) => Err(CasMismatch),
///                                        Err(_) => Err(Unavailable)
/// ```
///
/// Writers always go through [`cas_update`]: get → set(with the cas just read) → on
/// `CasMismatch` re-read and retry (at most [`CAS_RETRIES`] times), setting with
/// `cas = None` only when the get found no value. Keys have no `zone/` prefix (Kong: the
/// default `*` zone, which needs `nginx_wasm_shm_kv`). A host where shared data would trap
/// must use [`NoSharedStore`] instead (per-worker keys and limits).
pub trait SharedStore {
    /// The value and its cas, `Ok(None)` when the key does not exist.
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError>;
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
    /// Remove `key` if its cas is still `cas`. Kong frees the entry; Envoy (no removal in
    /// its ABI) keeps the key with an empty value, which every reader takes as absent.
    fn delete(&mut self, key: &str, cas: Option<u32>) -> Result<(), StoreError>;
}

/// Per-worker mode: no shared data; every cache fetches and every worker counts for itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSharedStore;

impl SharedStore for NoSharedStore {
    fn get(&mut self, _key: &str) -> Result<Option<Versioned>, StoreError> {
        Err(StoreError::Unavailable)
    }
    fn set(&mut self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable)
    }
    fn delete(&mut self, _key: &str, _cas: Option<u32>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable)
    }
}

/// How many times a CAS update re-reads after a mismatch.
pub const CAS_RETRIES: usize = 4;

/// Outcome of [`cas_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome<T> {
    /// Written; carries what `decide` returned alongside the value.
    Written(T),
    /// `decide` declined to write, given the current value.
    Declined(T),
    /// Lost the race [`CAS_RETRIES`] times in a row.
    Contended,
    /// Shared data is unavailable.
    Unavailable,
}

/// The exact CAS sequence: get → `decide(current)` → set with the cas just read
/// (`None` only when absent) → on mismatch start over. `decide` returns
/// `(Some(value), info)` to write or `(None, info)` to leave the key alone.
pub fn cas_update<T>(
    store: &mut dyn SharedStore,
    key: &str,
    mut decide: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> CasOutcome<T> {
    for _ in 0..CAS_RETRIES {
        let cur = match store.get(key) {
            Ok(c) => c,
            Err(_) => return CasOutcome::Unavailable,
        };
        let (cur_val, cas) = match &cur {
            Some((v, cas)) => (Some(v.as_slice()), *cas),
            None => (None, None),
        };
        let (new, info) = decide(cur_val);
        let Some(new) = new else {
            return CasOutcome::Declined(info);
        };
        match store.set(key, &new, cas) {
            Ok(()) => return CasOutcome::Written(info),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Unavailable) => return CasOutcome::Unavailable,
        }
    }
    CasOutcome::Contended
}

/// [`cas_update`] where `decide` may also remove the key: `(Some(None), info)` deletes it
/// with the cas just read (one call, as a set would be).
pub fn cas_update_or_delete<T>(
    store: &mut dyn SharedStore,
    key: &str,
    mut decide: impl FnMut(Option<&[u8]>) -> (Option<Option<Vec<u8>>>, T),
) -> CasOutcome<T> {
    for _ in 0..CAS_RETRIES {
        let (cur_val, cas) = match store.get(key) {
            Ok(Some((v, cas))) => (Some(v), cas),
            Ok(None) => (None, None),
            Err(_) => return CasOutcome::Unavailable,
        };
        let (new, info) = decide(cur_val.as_deref());
        let done = match new {
            None => return CasOutcome::Declined(info),
            Some(Some(v)) => store.set(key, &v, cas),
            Some(None) => store.delete(key, cas),
        };
        match done {
            Ok(()) => return CasOutcome::Written(info),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Unavailable) => return CasOutcome::Unavailable,
        }
    }
    CasOutcome::Contended
}

/// Remove `key` if `stale(value)` holds for the value it has now (an absent or empty value
/// counts as gone). Returns whether the key is gone; a key rewritten in between is kept.
pub fn delete_if(store: &mut dyn SharedStore, key: &str, stale: impl Fn(&[u8]) -> bool) -> bool {
    match store.get(key) {
        Ok(None) => true,
        Ok(Some((v, _))) if v.is_empty() => true,
        Ok(Some((v, cas))) if stale(&v) => store.delete(key, cas).is_ok(),
        _ => false,
    }
}

/// In-memory shared data with Kong's CAS rules, for native tests of the store's users.
#[cfg(test)]
pub mod testing {
    use super::{SharedStore, StoreError, Versioned};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct KongStore {
        pub map: HashMap<String, (Vec<u8>, u32)>,
        /// Simulate another worker writing just before our next `set` (this many times).
        pub interfere: usize,
        pub sets: usize,
    }

    impl SharedStore for KongStore {
        fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
            Ok(self.map.get(key).map(|(v, c)| (v.clone(), Some(*c))))
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.interfere > 0 {
                self.interfere -= 1;
                if let Some(e) = self.map.get_mut(key) {
                    e.1 += 1;
                } else {
                    self.map.insert(key.to_string(), (b"junk".to_vec(), 1));
                }
            }
            let cur = self.map.get(key).map(|(_, c)| *c);
            match (cur, cas) {
                (Some(_), None) => return Err(StoreError::CasMismatch),
                (Some(c), Some(x)) if c != x => return Err(StoreError::CasMismatch),
                _ => {}
            }
            let next = cur.unwrap_or(0) + 1;
            self.map.insert(key.to_string(), (value.to_vec(), next));
            self.sets += 1;
            Ok(())
        }
        fn delete(&mut self, key: &str, cas: Option<u32>) -> Result<(), StoreError> {
            match (self.map.get(key).map(|(_, c)| *c), cas) {
                (Some(c), Some(x)) if c == x => {
                    self.map.remove(key);
                    Ok(())
                }
                (None, _) => Ok(()),
                _ => Err(StoreError::CasMismatch),
            }
        }
    }

    impl KongStore {
        /// What a full zone does to `key`: the entry is gone (least recently used).
        pub fn evict(&mut self, key: &str) {
            self.map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::KongStore;
    use super::*;

    #[test]
    fn cas_update_follows_kong_rules_and_retries() {
        let mut s = KongStore::default();
        // Absent key: set with None.
        assert_eq!(
            cas_update(&mut s, "k", |c| (c.is_none().then(|| b"v1".to_vec()), ())),
            CasOutcome::Written(())
        );
        // Existing key: set must carry the cas (Kong rejects None).
        assert_eq!(s.set("k", b"x", None), Err(StoreError::CasMismatch));
        assert_eq!(
            cas_update(&mut s, "k", |_| (Some(b"v2".to_vec()), ())),
            CasOutcome::Written(())
        );
        assert_eq!(s.map["k"], (b"v2".to_vec(), 2));
        // Someone writes between our get and set: we re-read and retry.
        s.interfere = 2;
        let mut reads = 0;
        assert_eq!(
            cas_update(&mut s, "k", |_| {
                reads += 1;
                (Some(b"v3".to_vec()), ())
            }),
            CasOutcome::Written(())
        );
        assert_eq!(reads, 3);
        s.interfere = 100;
        assert_eq!(
            cas_update(&mut s, "k", |_| (Some(b"v".to_vec()), ())),
            CasOutcome::Contended
        );
        s.interfere = 0;
        assert_eq!(
            cas_update(&mut s, "k", |_| (None, 5)),
            CasOutcome::Declined(5)
        );
        assert_eq!(
            cas_update(&mut NoSharedStore, "k", |_| (Some(vec![]), ())),
            CasOutcome::<()>::Unavailable
        );
    }

    #[test]
    fn cas_update_or_delete_removes_with_the_cas_just_read() {
        let mut s = KongStore::default();
        s.map.insert("k".into(), (b"v".to_vec(), 3));
        // A delete with an older cas is refused: the key was rewritten since.
        assert_eq!(s.delete("k", Some(2)), Err(StoreError::CasMismatch));
        let out = cas_update_or_delete(&mut s, "k", |_| (Some(None), ()));
        assert_eq!(out, CasOutcome::Written(()));
        assert!(!s.map.contains_key("k"));
        assert_eq!(
            cas_update_or_delete(&mut s, "k", |c| (
                c.is_none().then(|| Some(b"n".to_vec())),
                ()
            )),
            CasOutcome::Written(())
        );
        assert_eq!(s.map["k"].0, b"n");
        assert!(delete_if(&mut s, "k", |v| v == b"n"));
        assert!(delete_if(&mut s, "absent", |_| false));
        assert_eq!(
            cas_update_or_delete(&mut NoSharedStore, "k", |_| (Some(None), ())),
            CasOutcome::Unavailable
        );
    }
}
