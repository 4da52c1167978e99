//! Node-wide sharing through Proxy-Wasm shared data: the key-set record, the fetch
//! lease (which also carries the last failure), their binary encodings, and the
//! decisions built on them. Everything here is pure; reads and writes go through
//! [`crate::store`].

/// Record magic + format version. Bump the last byte when the layout changes; an old
/// or foreign value then decodes to `None` and is simply overwritten.
const RECORD_MAGIC: &[u8; 5] = b"AMLK\x01";
const LEASE_MAGIC: &[u8; 5] = b"AMLL\x01";
const STAMP_MAGIC: &[u8; 5] = b"AMLS\x01";

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

/// The record's stamp, stored under its own small key so that every worker can check on
/// every tick whether the node holds a newer key set without copying the whole record:
/// `AMLS 01 | fetched_at u64 | version u64` (LE).
pub fn encode_stamp(stamp: Stamp) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + 16);
    v.extend_from_slice(STAMP_MAGIC);
    v.extend_from_slice(&stamp.0.to_le_bytes());
    v.extend_from_slice(&stamp.1.to_le_bytes());
    v
}

/// `None` for anything that is not exactly a stamp of this format.
pub fn decode_stamp(mut buf: &[u8]) -> Option<Stamp> {
    if take(&mut buf, 5)? != STAMP_MAGIC {
        return None;
    }
    let fetched_at_ms = take_u64(&mut buf)?;
    let version = take_u64(&mut buf)?;
    buf.is_empty().then_some((fetched_at_ms, version))
}

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
