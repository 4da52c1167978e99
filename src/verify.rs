//! Token verification against one provider: algorithm allow-list, key choice,
//! signature (RS*/PS*: [`crate::rsa`]; the others: jwt-simple), then every claim check done here with the caller's `now`.
//!
//! Order: Graph `nonce` header → `GraphTokenUnverifiable`; `alg` not in the provider's
//! `algorithms` → `AlgNotAllowed`; key (HS* → the provider's `hmac_secret`, never a
//! JWKS key; otherwise [`KeySet::find`]) → `KidUnknown` / `KeyTypeMismatch` /
//! `JwksUnavailable` (no key set yet); signature → `SignatureInvalid`; then `exp`
//! (required: missing → `TokenMalformed`; `now >= exp + skew` → `TokenExpired`), `nbf`
//! (`now + skew < nbf` → `TokenNotYetValid`), `iat` (`iat > now + skew` →
//! `IssuedInFuture`), `max_lifetime` (`exp - iat`, or `exp - now` beyond the skew when
//! there is no `iat` → `LifetimeTooLong`), `aud` (string or array; must contain one of
//! the provider's audiences → `AudienceMismatch`), and the JWK's own Entra `issuer`.
//!
//! The JWK `issuer` check: `{tenantid}` in it is replaced by the token's `tid`; the
//! result must equal the token's `iss`, or — for a v1 token
//! (`https://sts.windows.net/{tid}/`) — the v2 form `https://login.microsoftonline.com/{tid}/v2.0`
//! (Entra publishes v2 issuers on keys that also sign v1 tokens; this mirrors
//! Microsoft.IdentityModel's `ValidateIssuerSigningKey`). A mismatch is reported as
//! `TenantNotAllowed`: the key is restricted to other tenants, so this tenant may not
//! use it. Sovereign-cloud v1/v2 host pairs are not mapped.

use std::hash::Hash;
use std::rc::Rc;

use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde_json::Value;
use sha2::Digest as _;

use crate::claims::Claims;
use crate::fifo::FifoMap;
use crate::jose::{numeric_date, Alg, DecodedJwt};
use crate::jwks::{Jwk, KeyKind, KeySet};
use crate::providers::{is_guid, Provider, TENANT_PLACEHOLDER};
use crate::reason::Reason;
use crate::rejected::{Rejected, REJECTED_MAX};

/// A successfully verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Index of the provider (in `Providers`) that vouched for it.
    pub provider: usize,
    pub claims: Claims,
    pub kid: Option<String>,
    pub alg: Alg,
    /// The token's `exp`.
    pub exp: u64,
    /// First unix second at which this verification no longer holds (`exp + skew`).
    pub valid_until: u64,
}

/// jwt-simple options that leave every time/claim decision to us: its clock is `now`,
/// `iat`/`nbf` checks are off (`accept_future`), and its `exp` tolerance equals `now`
/// (so `now - tolerance = 0 <= exp` always holds). No issuer/audience/kid/typ
/// requirements, no length limits (we cap the size before decoding).
fn library_options(now: u64) -> VerificationOptions {
    VerificationOptions {
        accept_future: true,
        time_tolerance: Some(Duration::from_secs(now)),
        artificial_time: Some(UnixTimeStamp::from_secs(now)),
        max_token_length: None,
        max_header_length: Some(usize::MAX),
        ..VerificationOptions::default()
    }
}

fn library_error(e: &jwt_simple::Error) -> Reason {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
            Reason::SignatureInvalid
        }
        Some(JWTError::AlgorithmMismatch) => Reason::KeyTypeMismatch,
        // Shapes the library models more narrowly than we do.
        Some(_) => Reason::TokenMalformed,
        // A registered claim of a type the library cannot parse (e.g. a numeric `jti`).
        None if e.downcast_ref::<serde_json::Error>().is_some() => Reason::TokenMalformed,
        // The crypto backends' own errors: a signature of the wrong length/encoding.
        None => Reason::SignatureInvalid,
    }
}

/// jwt-simple types the registered claims (`iss`, `sub`, `aud`, `jti`, `nonce`, the
/// times) when it verifies a token; RSA signatures are checked in [`crate::rsa`] instead,
/// so the payload goes through the same typing here and every algorithm refuses the same
/// payloads. (`from_slice` is the instantiation jwt-simple already links: no extra code.)
fn registered_claims_typed(token: &str) -> Result<(), Reason> {
    let payload = token.split('.').nth(1).ok_or(Reason::TokenMalformed)?;
    let bytes = crate::jose::b64url(payload)?;
    serde_json::from_slice::<JWTClaims<NoCustomClaims>>(&bytes)
        .map(drop)
        .map_err(|_| Reason::TokenMalformed)
}

fn check_hmac(
    alg: Alg,
    secret: &[u8],
    token: &str,
    opts: VerificationOptions,
) -> Result<(), Reason> {
    let o = Some(opts);
    let r = match alg {
        Alg::HS256 => HS256Key::from_bytes(secret)
            .verify_token::<NoCustomClaims>(token, o)
            .map(drop),
        Alg::HS384 => HS384Key::from_bytes(secret)
            .verify_token::<NoCustomClaims>(token, o)
            .map(drop),
        Alg::HS512 => HS512Key::from_bytes(secret)
            .verify_token::<NoCustomClaims>(token, o)
            .map(drop),
        _ => return Err(Reason::KeyTypeMismatch),
    };
    r.map_err(|e| library_error(&e))
}

/// Verify a decoded token for `provider` (index `provider_index`, chosen beforehand by
/// `Providers::select`). `keys` may be `None` only when the token is HS* (the
/// provider's own secret); an asymmetric token without a key set → `JwksUnavailable`.
pub fn verify(
    jwt: &DecodedJwt,
    provider_index: usize,
    provider: &Provider,
    keys: Option<&KeySet>,
    now: u64,
) -> Result<Verified, Reason> {
    let alg = jwt.header.alg;
    if jwt.header.has_nonce {
        return Err(Reason::GraphTokenUnverifiable);
    }
    if !provider.allows(alg) {
        return Err(Reason::AlgNotAllowed);
    }
    let opts = library_options(now);
    let mut jwk: Option<&Jwk> = None;
    if alg.is_hmac() {
        let secret = provider.hmac_secret().ok_or(Reason::AlgNotAllowed)?;
        check_hmac(alg, secret, jwt.raw(), opts)?;
    } else {
        let ks = keys.ok_or(Reason::JwksUnavailable)?;
        let k = ks.find(jwt.header.kid.as_deref(), alg)?;
        k.verify_token(alg, jwt.raw(), opts)
            .map_err(|e| library_error(&e))?;
        if k.kind() == KeyKind::Rsa {
            registered_claims_typed(jwt.raw())?;
        }
        jwk = Some(k);
    }

    let c = &jwt.claims;
    let skew = provider.clock_skew;
    let exp = numeric_date(c, "exp")?.ok_or(Reason::TokenMalformed)?;
    let valid_until = exp.saturating_add(skew);
    if now >= valid_until {
        return Err(Reason::TokenExpired);
    }
    if let Some(nbf) = numeric_date(c, "nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(Reason::TokenNotYetValid);
        }
    }
    let iat = numeric_date(c, "iat")?;
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(Reason::IssuedInFuture);
        }
    }
    if let Some(max) = provider.max_lifetime {
        let too_long = match iat {
            Some(iat) => exp.saturating_sub(iat) > max,
            None => exp.saturating_sub(now) > max.saturating_add(skew),
        };
        if too_long {
            return Err(Reason::LifetimeTooLong);
        }
    }
    if !audience_matches(c.get("aud"), &provider.audiences) {
        return Err(Reason::AudienceMismatch);
    }
    if let Some(key_iss) = jwk.and_then(Jwk::issuer) {
        if !key_issuer_matches(key_iss, c) {
            return Err(Reason::TenantNotAllowed);
        }
    }
    Ok(Verified {
        provider: provider_index,
        claims: c.clone(),
        kid: jwt.header.kid.clone(),
        alg,
        exp,
        valid_until,
    })
}

/// `aud` (a string, or an array of strings) contains one of `accepted`.
pub fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    match aud {
        Some(Value::String(a)) => accepted.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| accepted.iter().any(|x| x == a)),
        _ => false,
    }
}

fn key_issuer_matches(key_iss: &str, claims: &Claims) -> bool {
    let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
        return false;
    };
    let tid = claims
        .get("tid")
        .and_then(Value::as_str)
        .filter(|t| is_guid(t));
    let effective = if key_iss.contains(TENANT_PLACEHOLDER) {
        match tid {
            Some(t) => key_iss.replace(TENANT_PLACEHOLDER, t),
            None => return false,
        }
    } else {
        key_iss.to_string()
    };
    if effective == iss {
        return true;
    }
    match tid {
        Some(t) => {
            iss == format!("https://sts.windows.net/{t}/")
                && effective == format!("https://login.microsoftonline.com/{t}/v2.0")
        }
        None => false,
    }
}

/// SHA-256 of a token: how records outside this worker name it (node-shared results and
/// the rejected-token cache), never the token itself.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TokenHash([u8; 32]);

fn token_hash(token: &str) -> TokenHash {
    TokenHash(sha2::Sha256::digest(token.as_bytes()).into())
}

/// The SHA-256 of one token, for records outside this worker's memory. Computed only when
/// the worker's own cache misses: hashing a ~1 KB token with SHA-256 was the largest single
/// cost of a hit (about 30% of the filter's time per request in Kong, under `perf`).
#[derive(Clone, Copy)]
pub struct TokenKey(TokenHash);

impl TokenKey {
    /// The SHA-256 itself (shared-data records name the token by it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &(self.0).0
    }

    /// Its first eight bytes as a number (already uniform: a slot or bucket index).
    pub fn prefix_u64(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(self.0 .0.get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(first)
    }
}

/// Where a token sits in this worker's cache: a fast 64-bit hash of its length and last
/// 64 bytes (the signature's tail: tokens that reach the cache differ there). Only a
/// bucket: a hit also needs the entry's token to be these very bytes, so the hash needs no
/// resistance to crafted collisions (a colliding token is a miss).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalKey(u64);

impl LocalKey {
    fn of(token: &str) -> LocalKey {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes = token.as_bytes();
        let tail = bytes.get(bytes.len().saturating_sub(64)..).unwrap_or(bytes);
        let mut h = (bytes.len() as u64).wrapping_mul(K);
        let mut words = tail.chunks_exact(8);
        for w in &mut words {
            h = (h.rotate_left(5) ^ word(w)).wrapping_mul(K);
        }
        let mut rest = [0u8; 8];
        for (to, from) in rest.iter_mut().zip(words.remainder()) {
            *to = *from;
        }
        h = (h.rotate_left(5) ^ u64::from_le_bytes(rest)).wrapping_mul(K);
        // murmur3's finaliser: every input bit reaches the top bits the table probes with.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        LocalKey(h ^ (h >> 33))
    }
}

/// Eight bytes as one number (`w` has eight; a single load, not a byte loop).
fn word(w: &[u8]) -> u64 {
    u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))
}

/// `a == b` eight bytes at a time (memcmp is a byte loop in this Wasm build, and a hit
/// compares a ~1 KB token).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && (&mut x).zip(&mut y).all(|(p, q)| word(p) == word(q))
        && x.remainder() == y.remainder()
}

struct CacheEntry {
    /// The token this entry is for: a hit compares bytes, not only hashes (as Envoy's
    /// `jwt_authn` cache does). Worker memory only, never shared data or logs.
    token: Box<str>,
    /// Shared, not copied: a hit hands out another `Rc` instead of cloning the claim map
    /// (a `serde_json::Map` with a dozen strings) on every request.
    verified: Rc<Verified>,
    generation: u64,
}

/// Recently verified tokens, so a repeated token skips signature work.
///
/// Keyed by a fast hash of the token ([`LocalKey`]); an entry holds the token and answers
/// only for the same bytes, only while `now < valid_until` and only for the key-set
/// `generation` it was verified under (bump the generation when keys change). Bounded: when
/// full, the oldest inserted entry is evicted (FIFO, O(1)); memory is at most `max_entries`
/// tokens (typically 1–2 KB each) plus their claims.
/// A hit says which provider verified the token: the caller must still check that the
/// route accepts that provider, and apply route-level audiences and policy.
pub struct VerifiedCache {
    entries: FifoMap<LocalKey, CacheEntry>,
    hits: u64,
    misses: u64,
    /// Tokens that recently failed verification (see [`crate::rejected`]).
    pub rejected: Rejected,
}

impl VerifiedCache {
    /// `max_entries == 0` disables the cache.
    pub fn new(max_entries: usize) -> Self {
        VerifiedCache {
            entries: FifoMap::new(max_entries),
            hits: 0,
            misses: 0,
            rejected: Rejected::new(max_entries.min(REJECTED_MAX)),
        }
    }

    /// The token's place in this cache, or `None` when the cache is disabled.
    pub fn local_key(&self, token: &str) -> Option<LocalKey> {
        (self.entries.max() != 0).then(|| LocalKey::of(token))
    }

    /// The token's SHA-256 for records outside this worker (node-shared results, rejected
    /// tokens), or `None` when the cache is disabled (no hashing then).
    pub fn key(&self, token: &str) -> Option<TokenKey> {
        (self.entries.max() != 0).then(|| TokenKey(token_hash(token)))
    }

    /// The entry for `token` (at `key`, from [`VerifiedCache::local_key`]) while it is
    /// still valid at `now`, with the key-set generation it was verified under, without
    /// counting a hit or miss: the caller learns which provider (hence which generation)
    /// applies only from the entry's claims, then calls [`VerifiedCache::count`] with the
    /// outcome.
    pub fn peek(&self, token: &str, key: LocalKey, now: u64) -> Option<(Rc<Verified>, u64)> {
        match self.entries.get(&key) {
            Some(e)
                if now < e.verified.valid_until
                    && same_bytes(e.token.as_bytes(), token.as_bytes()) =>
            {
                Some((e.verified.clone(), e.generation))
            }
            _ => None,
        }
    }

    /// Record the outcome of a [`VerifiedCache::peek`]-based lookup in [`VerifiedCache::stats`].
    pub fn count(&mut self, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
    }

    pub fn get(&mut self, token: &str, now: u64, generation: u64) -> Option<Rc<Verified>> {
        let key = self.local_key(token)?;
        let hit = self.peek(token, key, now).filter(|(_, g)| *g == generation);
        self.count(hit.is_some());
        hit.map(|(v, _)| v)
    }

    pub fn insert(&mut self, token: &str, verified: Verified, generation: u64) {
        if let Some(key) = self.local_key(token) {
            self.insert_key(token, key, Rc::new(verified), generation);
        }
    }

    /// [`VerifiedCache::insert`] with the key from [`VerifiedCache::local_key`]. A token
    /// whose hash collides with an entry's replaces it.
    pub fn insert_key(
        &mut self,
        token: &str,
        key: LocalKey,
        verified: Rc<Verified>,
        generation: u64,
    ) {
        if self.entries.max() == 0 {
            return;
        }
        let entry = CacheEntry {
            token: token.into(),
            verified,
            generation,
        };
        self.entries.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.rejected.clear();
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests;
