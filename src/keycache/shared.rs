//! Node-wide sharing through Proxy-Wasm shared data: the key-set record, the fetch
//! lease (which also carries the last failure), their binary encodings, and the
//! decisions built on them. Everything here is pure except [`SharedStore`], the
//! three-line trait the adapter implements over `get_shared_data`/`set_shared_data`.

/// Record magic + format version. Bump the last byte when the layout changes; an old
/// or foreign value then decodes to `None` and is simply overwritten.
const RECORD_MAGIC: &[u8; 5] = b"AMLK\x01";
const LEASE_MAGIC: &[u8; 5] = b"AMLL\x01";

/// A key set shared by every worker and root context of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRecord {
    /// Monotonic per key: each writer stores `previous.version + 1`.
    pub version: u64,
    pub fetched_at_ms: u64,
    pub expires_at_ms: u64,
    /// The raw JWKS body as fetched.
    pub body: Vec<u8>,
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Some(a)
}

fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    let b = take(buf, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    let b = take(buf, 4)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    Some(u32::from_le_bytes(a))
}

impl SharedRecord {
    /// `AMLK 01 | version u64 | fetched_at u64 | expires_at u64 | len u32 | body` (LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + 28 + self.body.len());
        v.extend_from_slice(RECORD_MAGIC);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.fetched_at_ms.to_le_bytes());
        v.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        let len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&self.body);
        v
    }

    /// `None` for anything that is not exactly a record of this format.
    pub fn decode(mut buf: &[u8]) -> Option<SharedRecord> {
        if take(&mut buf, 5)? != RECORD_MAGIC {
            return None;
        }
        let version = take_u64(&mut buf)?;
        let fetched_at_ms = take_u64(&mut buf)?;
        let expires_at_ms = take_u64(&mut buf)?;
        let len = usize::try_from(take_u32(&mut buf)?).ok()?;
        if buf.len() != len {
            return None;
        }
        Some(SharedRecord {
            version,
            fetched_at_ms,
            expires_at_ms,
            body: buf.to_vec(),
        })
    }
}

/// `(fetched_at_ms, version)` of the key set a cache holds, if any.
pub type Stamp = (u64, u64);

/// Rule (c): adopt a shared record when it is strictly newer than what I hold:
/// later `fetched_at_ms`, or the same `fetched_at_ms` and a higher `version`.
pub fn should_adopt(record: &SharedRecord, mine: Option<Stamp>) -> bool {
    match mine {
        None => true,
        Some(m) => (record.fetched_at_ms, record.version) > m,
    }
}

/// Rule for writers: store my freshly fetched keys unless the shared record already
/// holds something fetched later. Returns the record to write (with its version).
pub fn record_to_write(
    existing: Option<&SharedRecord>,
    fetched_at_ms: u64,
    expires_at_ms: u64,
    body: &[u8],
) -> Option<SharedRecord> {
    let version = match existing {
        Some(e) if e.fetched_at_ms > fetched_at_ms => return None,
        Some(e) => e.version.wrapping_add(1),
        None => 1,
    };
    Some(SharedRecord {
        version,
        fetched_at_ms,
        expires_at_ms,
        body: body.to_vec(),
    })
}

/// The last failed fetch of the node (d): lets other workers answer their waiting
/// requests 503 promptly and respect the node-wide backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFailure {
    pub at_ms: u64,
    /// Stable reason code, e.g. `jwks_http_500` (at most 255 bytes).
    pub reason: String,
    /// Consecutive failures of the node so far (continues the backoff sequence when
    /// another worker takes the next attempt).
    pub streak: u32,
}

/// Who may fetch: `owner_id` holds the lease until `until_ms`. After a failure the
/// owner keeps the lease until its backoff ends, so the whole node backs off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner_id: u64,
    pub until_ms: u64,
    pub failure: Option<SharedFailure>,
}

impl Lease {
    /// `AMLL 01 | owner u64 | until u64 | failed_at u64 (0 = none) | streak u32 |
    /// len u8 | reason` (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + 25 + 32);
        v.extend_from_slice(LEASE_MAGIC);
        v.extend_from_slice(&self.owner_id.to_le_bytes());
        v.extend_from_slice(&self.until_ms.to_le_bytes());
        match &self.failure {
            Some(f) => {
                let r = f.reason.as_bytes();
                let r = r.get(..r.len().min(255)).unwrap_or(&[]);
                v.extend_from_slice(&f.at_ms.max(1).to_le_bytes());
                v.extend_from_slice(&f.streak.to_le_bytes());
                v.push(u8::try_from(r.len()).unwrap_or(0));
                v.extend_from_slice(r);
            }
            None => {
                v.extend_from_slice(&0u64.to_le_bytes());
                v.extend_from_slice(&0u32.to_le_bytes());
                v.push(0);
            }
        }
        v
    }

    pub fn decode(mut buf: &[u8]) -> Option<Lease> {
        if take(&mut buf, 5)? != LEASE_MAGIC {
            return None;
        }
        let owner_id = take_u64(&mut buf)?;
        let until_ms = take_u64(&mut buf)?;
        let failed_at = take_u64(&mut buf)?;
        let streak = take_u32(&mut buf)?;
        let len = usize::from(*take(&mut buf, 1)?.first()?);
        let reason = take(&mut buf, len)?;
        if !buf.is_empty() {
            return None;
        }
        let reason = core::str::from_utf8(reason).ok()?.to_string();
        let failure = (failed_at != 0).then_some(SharedFailure {
            at_ms: failed_at,
            reason,
            streak,
        });
        Some(Lease {
            owner_id,
            until_ms,
            failure,
        })
    }

    /// Whether someone other than `me` holds the lease at `now_ms`.
    pub fn held_by_other(&self, me: u64, now_ms: u64) -> bool {
        self.owner_id != me && self.until_ms > now_ms
    }
}

/// Rule (b): may `me` take the lease now? Yes when there is none (or it is junk), it
/// is mine, or it has run out.
pub fn may_take_lease(current: Option<&Lease>, me: u64, now_ms: u64) -> bool {
    match current {
        None => true,
        Some(l) => !l.held_by_other(me, now_ms),
    }
}

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
/// The cache always does get → set(with the cas just read) → on `CasMismatch` re-read
/// and retry (at most [`CAS_RETRIES`] times), and sets with `cas = None` only when
/// the get found no value. Keys have no `zone/` prefix (Kong: the default `*` zone,
/// which needs `nginx_wasm_shm_kv`). A host where shared data would trap must use
/// [`NoSharedStore`] instead (per-worker fetching).
pub trait SharedStore {
    /// The value and its cas, `Ok(None)` when the key does not exist.
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError>;
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Per-worker mode: no shared data; every cache fetches for itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSharedStore;

impl SharedStore for NoSharedStore {
    fn get(&mut self, _key: &str) -> Result<Option<Versioned>, StoreError> {
        Err(StoreError::Unavailable)
    }
    fn set(&mut self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), StoreError> {
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
