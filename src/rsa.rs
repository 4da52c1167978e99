//! RSA signature verification for RS256/384/512 (RSASSA-PKCS1-v1_5) and PS256/384/512
//! (RSASSA-PSS, MGF1 with the same hash, salt length = hash length as RFC 7518 §3.5 says),
//! RFC 8017 §8.
//!
//! Verification is only `s^e mod n` with the public `e = 65537` (16 Montgomery squarings
//! and one multiplication), then a padding check. The arithmetic is crypto-bigint's
//! fixed-width Montgomery form at 2048 bits, or 4096 bits for a longer `n`: measured inside
//! the hosts it is several times faster than the general-purpose bigint RSA jwt-simple uses,
//! and crypto-bigint is already in the build for P-256/P-384. Each width is its own copy of
//! the arithmetic (about 19 KB of module), so 3072-bit keys, rare in JWKS, share the 4096-bit
//! one at about 1.8x the cost of a 3072-bit width.
//!
//! Everything here handles public data (key, message, signature), so variable-time
//! arithmetic is fine; the final comparisons still look at every byte.

use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, Uint, U2048, U4096};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Smallest and largest accepted modulus, in bits.
pub const MIN_BITS: usize = 2048;
pub const MAX_BITS: usize = 4096;

/// The hash of an RS*/PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// A signature scheme: padding plus hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pkcs1v15(Hash),
    Pss(Hash),
}

#[derive(Clone)]
enum Params {
    W2048(Box<FixedMontyParams<{ U2048::LIMBS }>>),
    W4096(Box<FixedMontyParams<{ U4096::LIMBS }>>),
}

/// An RSA public key with `e = 65537` and a 2048–4096-bit modulus.
#[derive(Clone)]
pub struct PublicKey {
    params: Params,
    /// Modulus length in bytes (`k` in RFC 8017).
    len: usize,
    /// Modulus length in bits.
    bits: usize,
}

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Modulus shorter than [`MIN_BITS`] (the number of bits).
    TooShort(usize),
    /// Modulus longer than [`MAX_BITS`].
    TooLong(usize),
    /// Even modulus: not an RSA modulus.
    Even(usize),
    /// Public exponent other than 65537.
    Exponent(usize),
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KeyError::TooShort(bits) => write!(f, "RSA modulus of {bits} bits is below 2048"),
            KeyError::TooLong(bits) | KeyError::Even(bits) | KeyError::Exponent(bits) => write!(
                f,
                "RSA key rejected ({bits}-bit modulus; 2048-4096 bits and e=65537 required)"
            ),
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

/// `n` big-endian in a buffer of exactly `Uint<L>`'s width (`n.len() <= width` checked).
fn uint<const L: usize>(n: &[u8]) -> Option<Uint<L>> {
    let width = L * crypto_bigint::Limb::BYTES;
    let pad = width.checked_sub(n.len())?;
    let mut buf = vec![0u8; width];
    buf.get_mut(pad..)?.copy_from_slice(n);
    Some(Uint::from_be_slice(&buf))
}

fn params<const L: usize>(n: &[u8]) -> Option<FixedMontyParams<L>> {
    let n = Option::<Odd<Uint<L>>>::from(Odd::new(uint::<L>(n)?))?;
    Some(FixedMontyParams::new_vartime(n))
}

/// RSAVP1 with e = 65537: `sig^e mod n` as `k` big-endian bytes, or `None` when the
/// signature representative is not below `n`.
fn rsavp1<const L: usize>(p: &FixedMontyParams<L>, sig: &[u8], k: usize) -> Option<Vec<u8>> {
    let s = uint::<L>(sig)?;
    if s >= *p.modulus().as_ref() {
        return None;
    }
    let s = FixedMontyForm::new(&s, p);
    let m = s.square_repeat_vartime(16).mul(&s).retrieve();
    let bytes = m.to_be_bytes();
    let bytes: &[u8] = bytes.as_ref();
    let skip = bytes.len().checked_sub(k)?;
    bytes.get(skip..).map(<[u8]>::to_vec)
}

impl PublicKey {
    /// From the JWK's big-endian `n` and `e` (leading zero bytes allowed).
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<PublicKey, KeyError> {
        let n = strip_zeros(n);
        let bits = match n.first() {
            None => 0,
            Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        };
        if bits < MIN_BITS {
            return Err(KeyError::TooShort(bits));
        }
        if bits > MAX_BITS {
            return Err(KeyError::TooLong(bits));
        }
        if strip_zeros(e) != [1, 0, 1] {
            return Err(KeyError::Exponent(bits));
        }
        let p = if bits <= 2048 {
            params(n).map(|p| Params::W2048(Box::new(p)))
        } else {
            params(n).map(|p| Params::W4096(Box::new(p)))
        };
        let params = p.ok_or(KeyError::Even(bits))?;
        Ok(PublicKey {
            params,
            len: n.len(),
            bits,
        })
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Does `sig` sign `msg` under `scheme`? The signature must be exactly as long as
    /// the modulus (RFC 8017 §8.2.2 step 1, §8.1.2 step 1).
    pub fn verify(&self, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != self.len {
            return false;
        }
        let em = match &self.params {
            Params::W2048(p) => rsavp1(p, sig, self.len),
            Params::W4096(p) => rsavp1(p, sig, self.len),
        };
        let Some(em) = em else {
            return false;
        };
        match scheme {
            Scheme::Pkcs1v15(h) => pkcs1v15_matches(h, msg, &em),
            Scheme::Pss(Hash::Sha256) => pss_matches::<Sha256>(msg, &em, self.bits - 1),
            Scheme::Pss(Hash::Sha384) => pss_matches::<Sha384>(msg, &em, self.bits - 1),
            Scheme::Pss(Hash::Sha512) => pss_matches::<Sha512>(msg, &em, self.bits - 1),
        }
    }
}

/// DER of `DigestInfo` up to the digest (RFC 8017 §9.2 note 1).
fn digest_info_prefix(h: Hash) -> &'static [u8] {
    match h {
        Hash::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        Hash::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        Hash::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

fn hash(h: Hash, msg: &[u8]) -> Vec<u8> {
    match h {
        Hash::Sha256 => Sha256::digest(msg).to_vec(),
        Hash::Sha384 => Sha384::digest(msg).to_vec(),
        Hash::Sha512 => Sha512::digest(msg).to_vec(),
    }
}

/// Every byte of `a` and `b` looked at, whatever differs first.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): the expected encoding is built in full and compared
/// with the recovered one, so no parser sees attacker-shaped ASN.1.
fn pkcs1v15_matches(h: Hash, msg: &[u8], em: &[u8]) -> bool {
    let prefix = digest_info_prefix(h);
    let digest = hash(h, msg);
    let t_len = prefix.len() + digest.len();
    let Some(ps_len) = em.len().checked_sub(t_len + 3).filter(|n| *n >= 8) else {
        return false;
    };
    let mut want = Vec::with_capacity(em.len());
    want.extend_from_slice(&[0x00, 0x01]);
    want.resize(2 + ps_len, 0xff);
    want.push(0x00);
    want.extend_from_slice(prefix);
    want.extend_from_slice(&digest);
    same(&want, em)
}

/// MGF1 (RFC 8017 §B.2.1) with `D`, XORed into `out`.
fn mgf1_xor<D: Digest>(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(<D as Digest>::output_size()).enumerate() {
        let mut d = D::new();
        d.update(seed);
        d.update((counter as u32).to_be_bytes());
        for (o, m) in chunk.iter_mut().zip(d.finalize().iter()) {
            *o ^= m;
        }
    }
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with MGF1-`D` and a salt as long as the hash.
/// `em` is the `k`-byte RSAVP1 output; `em_bits` = modulus bits − 1.
fn pss_matches<D: Digest>(msg: &[u8], em: &[u8], em_bits: usize) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // I2OSP(m, emLen) (§8.1.2 step 2c): the bytes above emLen must be zero.
    let Some(extra) = em.len().checked_sub(em_len) else {
        return false;
    };
    let (high, em) = em.split_at(extra);
    if high.iter().any(|b| *b != 0) {
        return false;
    }
    if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let db_len = em_len - h_len - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let Some(h) = rest.get(..h_len) else {
        return false;
    };
    let top_mask = 0xffu8 >> (8 * em_len - em_bits);
    if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
        return false;
    }
    let mut db = masked_db.to_vec();
    mgf1_xor::<D>(h, &mut db);
    if let Some(b) = db.first_mut() {
        *b &= top_mask;
    }
    let ps_len = db_len - s_len - 1;
    let (ps, tail) = db.split_at(ps_len);
    if ps.iter().any(|b| *b != 0) || tail.first() != Some(&0x01) {
        return false;
    }
    let Some(salt) = tail.get(1..) else {
        return false;
    };
    let mut d = D::new();
    d.update([0u8; 8]);
    d.update(D::digest(msg));
    d.update(salt);
    same(&d.finalize(), h)
}

#[cfg(test)]
mod tests;
