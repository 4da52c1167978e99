//! A provider's signing keys, parsed once from a JWKS document (RFC 7517).
//!
//! Supported: RSA (`n`/`e`, 2048–4096-bit modulus, e = 65537) for RS*/PS*, EC P-256 and
//! P-384 (`x`/`y`, checked to be on the curve) for ES256/ES384, OKP Ed25519 (`x`) for
//! EdDSA. Other keys (encryption keys, `oct`, other curves, bad parameters) are skipped
//! and described in [`KeySet::skipped`] for one log line. A JWK's `alg` is optional
//! (Entra omits it); when present it pins the key to that algorithm. Entra's optional
//! per-key `issuer` is kept for `verify` to check.
//!
//! Keys are chosen by `kid` plus a key type that fits the token's `alg`; symmetric
//! algorithms never use a JWKS key (that is the classic algorithm-confusion attack).

use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde_json::Value;

use crate::jose::{b64url, Alg};
use crate::reason::Reason;
use crate::rsa::{Hash, Scheme};

/// Most keys kept from one document: Entra publishes about 10, Okta, Auth0, Google a
/// handful; more are cut (counted in [`KeySet::cut`], logged and counted by the adapter).
/// The body itself is capped before parsing (`keycache::source::DEFAULT_MAX_BODY_BYTES`).
pub const MAX_KEYS: usize = 100;
/// Most entries examined in one document (usable or not): parsing stops after them.
pub const MAX_ENTRIES: usize = 2 * MAX_KEYS;
/// Most skip descriptions kept for the log line.
pub const MAX_SKIPPED_NOTES: usize = 16;

/// Why a JWKS document is unusable as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not a JSON object.
    NotJson,
    /// No `keys` array.
    NoKeys,
    /// No key could be used; the skip reasons are included.
    NoUsableKeys(Vec<String>),
}

impl core::fmt::Display for JwksError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            JwksError::NotJson => f.write_str("JWKS is not a JSON object"),
            JwksError::NoKeys => f.write_str("JWKS has no \"keys\" array"),
            JwksError::NoUsableKeys(s) if s.is_empty() => f.write_str("JWKS has no keys"),
            JwksError::NoUsableKeys(s) => write!(f, "JWKS has no usable keys ({})", s.join("; ")),
        }
    }
}

/// The kind of public key a JWK holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Does an `alg` use this kind of key? (HS* never does.)
    pub fn fits(self, alg: Alg) -> bool {
        use Alg::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

#[derive(Clone)]
enum Material {
    Rsa(crate::rsa::PublicKey),
    P256(ES256PublicKey),
    P384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
}

/// One usable verification key.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    kind: KeyKind,
    alg: Option<Alg>,
    issuer: Option<String>,
    material: Material,
}

impl core::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Jwk {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    /// The JWK's own `alg`, when it has one.
    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }
    /// Entra's per-key `issuer` (may contain `{tenantid}`).
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }
    /// Can this key verify a token signed with `alg`?
    pub fn fits(&self, alg: Alg) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Check the token's signature: RS*/PS* with [`crate::rsa`], the others with
    /// jwt-simple. Claims checks are the caller's: the options must neutralise
    /// jwt-simple's own.
    pub(crate) fn verify_token(
        &self,
        alg: Alg,
        token: &str,
        opts: VerificationOptions,
    ) -> Result<(), jwt_simple::Error> {
        let o = Some(opts);
        let mismatch = || jwt_simple::Error::from(JWTError::AlgorithmMismatch);
        let invalid = || jwt_simple::Error::from(JWTError::InvalidSignature);
        match (&self.material, alg) {
            (Material::Rsa(k), _) => {
                let scheme = rsa_scheme(alg).ok_or_else(mismatch)?;
                let (input, sig) = token.rsplit_once('.').ok_or_else(invalid)?;
                let sig = b64url(sig).map_err(|_| invalid())?;
                if k.verify(scheme, input.as_bytes(), &sig) {
                    Ok(())
                } else {
                    Err(invalid())
                }
            }
            (Material::P256(k), Alg::ES256) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            (Material::P384(k), Alg::ES384) => k.verify_token::<NoCustomClaims>(token, o).map(drop),
            (Material::Ed25519(k), Alg::EdDSA) => {
                k.verify_token::<NoCustomClaims>(token, o).map(drop)
            }
            _ => Err(mismatch()),
        }
    }
}

/// The usable keys of one JWKS document.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    skipped: Vec<String>,
    /// Entries not kept because of [`MAX_KEYS`] or [`MAX_ENTRIES`].
    cut: usize,
    /// Skipped entries whose description was not kept ([`MAX_SKIPPED_NOTES`]).
    unnoted: usize,
}

impl KeySet {
    /// Parse a JWKS document. Fails only when the document as a whole is unusable.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        let v: Value = serde_json::from_slice(json).map_err(|_| JwksError::NotJson)?;
        let Value::Object(doc) = v else {
            return Err(JwksError::NotJson);
        };
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeys);
        };
        let mut set = KeySet::default();
        for (i, e) in entries.iter().enumerate() {
            if set.keys.len() >= MAX_KEYS || i >= MAX_ENTRIES {
                set.cut = entries.len() - i;
                break;
            }
            match parse_jwk(e) {
                Ok(k) => set.keys.push(k),
                Err(_) if set.skipped.len() >= MAX_SKIPPED_NOTES => set.unnoted += 1,
                Err(why) => {
                    let label = match e.get("kid").and_then(Value::as_str) {
                        Some(k) => format!("keys[{i}] (kid {})", printable(k)),
                        None => format!("keys[{i}]"),
                    };
                    set.skipped.push(format!("{label}: {why}"));
                }
            }
        }
        if set.unnoted > 0 {
            set.skipped
                .push(format!("{} more keys skipped", set.unnoted));
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys(set.skipped));
        }
        Ok(set)
    }

    /// Short descriptions of the keys that were skipped (at most
    /// [`MAX_SKIPPED_NOTES`] + 1 lines), for logging once.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// How many entries were cut by the caps ([`MAX_KEYS`], [`MAX_ENTRIES`]).
    pub fn cut(&self) -> usize {
        self.cut
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Jwk> {
        self.keys.iter()
    }

    /// Is there a usable key with this `kid`? (For the unknown-kid refetch decision.)
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key for a token's `kid` and `alg`.
    ///
    /// * HS* → `KeyTypeMismatch` (a JWKS key is never an HMAC secret);
    /// * `kid` given: no key with it → `KidUnknown`; keys with it but none of a type
    ///   fitting `alg` (or pinned to another `alg`) → `KeyTypeMismatch`;
    /// * no `kid`: the one key fitting `alg`; none → `KeyTypeMismatch`; several →
    ///   `KidUnknown` (the signing key cannot be identified).
    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Result<&Jwk, Reason> {
        if alg.is_hmac() {
            return Err(Reason::KeyTypeMismatch);
        }
        match kid {
            Some(kid) => {
                let mut with_kid = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if with_kid.peek().is_none() {
                    return Err(Reason::KidUnknown);
                }
                with_kid
                    .find(|k| k.fits(alg))
                    .ok_or(Reason::KeyTypeMismatch)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(Reason::KeyTypeMismatch),
                    (Some(_), Some(_)) => Err(Reason::KidUnknown),
                }
            }
        }
    }
}

/// A kid for a log line: bounded, printable ASCII only.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn field<'v>(e: &'v Value, name: &str) -> Result<Option<&'v str>, String> {
    match e.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

fn bytes(e: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = field(e, name)?.ok_or_else(|| format!("no \"{name}\""))?;
    // Some publishers pad; tolerate it here (key material is not attacker-controlled).
    b64url(s.trim_end_matches('=')).map_err(|_| format!("\"{name}\" is not base64url"))
}

fn parse_jwk(e: &Value) -> Result<Jwk, String> {
    if !e.is_object() {
        return Err("not an object".into());
    }
    if let Some(u) = field(e, "use")? {
        if u != "sig" {
            return Err(format!("use {:?} is not \"sig\"", printable(u)));
        }
    }
    if let Some(ops) = e.get("key_ops") {
        let ok = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !ok {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let alg = match field(e, "alg")? {
        None => None,
        Some(a) => {
            Some(Alg::parse(a).ok_or_else(|| format!("unsupported alg {:?}", printable(a)))?)
        }
    };
    let kid = field(e, "kid")?.map(str::to_string);
    let issuer = field(e, "issuer")?.map(str::to_string);
    let kty = field(e, "kty")?.ok_or("no \"kty\"")?;
    let (kind, material) = match kty {
        "RSA" => (KeyKind::Rsa, rsa(e)?),
        "EC" => match field(e, "crv")?.ok_or("EC key without \"crv\"")? {
            "P-256" => {
                let pt = ec_point(e, 32)?;
                let k = ES256PublicKey::from_bytes(&pt).map_err(|_| "invalid P-256 point")?;
                (KeyKind::P256, Material::P256(k))
            }
            "P-384" => {
                let pt = ec_point(e, 48)?;
                let k = ES384PublicKey::from_bytes(&pt).map_err(|_| "invalid P-384 point")?;
                (KeyKind::P384, Material::P384(k))
            }
            c => return Err(format!("unsupported curve {:?}", printable(c))),
        },
        "OKP" => match field(e, "crv")?.ok_or("OKP key without \"crv\"")? {
            "Ed25519" => {
                let x = bytes(e, "x")?;
                if x.len() != 32 {
                    return Err("Ed25519 \"x\" is not 32 bytes".into());
                }
                let k = Ed25519PublicKey::from_bytes(&x).map_err(|_| "invalid Ed25519 key")?;
                (KeyKind::Ed25519, Material::Ed25519(k))
            }
            c => return Err(format!("unsupported curve {:?}", printable(c))),
        },
        "oct" => return Err("symmetric keys are never taken from a JWKS".into()),
        k => return Err(format!("unsupported kty {:?}", printable(k))),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(format!("alg {a} does not fit kty {kty}"));
        }
    }
    Ok(Jwk {
        kid,
        kind,
        alg,
        issuer,
        material,
    })
}

/// SEC1 uncompressed point from `x`/`y` of exactly `len` bytes each.
fn ec_point(e: &Value, len: usize) -> Result<Vec<u8>, String> {
    let x = bytes(e, "x")?;
    let y = bytes(e, "y")?;
    if x.len() != len || y.len() != len {
        return Err(format!("\"x\"/\"y\" are not {len} bytes"));
    }
    let mut pt = Vec::with_capacity(1 + 2 * len);
    pt.push(4);
    pt.extend_from_slice(&x);
    pt.extend_from_slice(&y);
    Ok(pt)
}

/// The RSA scheme of an RS*/PS* `alg`.
fn rsa_scheme(alg: Alg) -> Option<Scheme> {
    Some(match alg {
        Alg::RS256 => Scheme::Pkcs1v15(Hash::Sha256),
        Alg::RS384 => Scheme::Pkcs1v15(Hash::Sha384),
        Alg::RS512 => Scheme::Pkcs1v15(Hash::Sha512),
        Alg::PS256 => Scheme::Pss(Hash::Sha256),
        Alg::PS384 => Scheme::Pss(Hash::Sha384),
        Alg::PS512 => Scheme::Pss(Hash::Sha512),
        _ => return None,
    })
}

fn rsa(e: &Value) -> Result<Material, String> {
    let n = bytes(e, "n")?;
    let ex = bytes(e, "e")?;
    let key = crate::rsa::PublicKey::from_components(&n, &ex).map_err(|e| e.to_string())?;
    Ok(Material::Rsa(key))
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! Fixed test-only keys (RSA keygen is slow in debug builds) and JWK builders.
    use super::*;
    use crate::jose::testutil::b64;

    /// 2048-bit test RSA keys, generated for these tests only. Never use elsewhere.
    pub const RSA_A_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAq/Tss2m16c/X3oMnKlZ2VBobjzb+KwMbAY4SZKuqbaNhYdcd
va+Xmno4tqRp0WgyJHc2YfOvFStSDOta4+zqiZXPmJuztLCz+gOqmFe34Trtzf4S
2bZ6+ZIZVQ61yV4aNjRwb5glymtYoxvRmt4MZTw4JoeNwbVMNiMnI3fDjErxo+sn
uH9IjyKsqr5Y1pHMo+jOeKt9tav9uhuLsDtROwN3p2tHaJrvxICUB2Sc1oLXrUyW
XA68fKnRrjh3YaFEPWtrGMPpjSSkv0gL0ExNpFwsoY95bDRkg+ih+55t9ektnbAb
yB6KYrKK3x3b7THR52eU6RkNyfIuEtp6DDhRFQIDAQABAoIBAAPiyAqR4/uBp+Yu
Xo81Xv0tjdvhqUK9kjmpxT6jJnnNzGCSpOhpdGqYQnnWI1IJIcDzNLZn9FftH7CN
DQPDkdVEHmnbcuctaxPGS2+f49biJweVq0ViO0sygwIKEA+Z4cvByZyr+oalgF5H
PahbRjpvbvFn9Msg1rUOfE7v4Oplqa5IzCrREYg8Te81666JDHKcMi9YUgQvo2Eo
+Hz0GuQlcHRtOwMSyZ3qtYcqU7IbLp74PopmOtS8udRVpfKWky7qQMH59wE5B2nC
Z/6UgdV7HfwvnPSwKUgi/Db/czIuIJCGjX2OEnWM7ZHfcfKQ7UeJ8UMpMoiEvCVg
t6Ok3G0CgYEA1Z+fZlK3pxo+Lin5TlVOO56B4G683T0jL/eH/RnAuYsiDS0fwn/8
I7oKOiQVENYI5uSavZkhongwyvjuUZEioYZ2ABUTyRhcH3qN07hTh5Zog94X5eT9
rSrZmz57uC3InSG2VZPfQDxlSkXk7iZSqsfEEf5Hi3RxMCt5ZBakosMCgYEAzhFZ
rcI3lMkaDNjzjtV90mty5HAs9yg3SmybOTW/70gcFUhk2muBz4yRESMepxC+9RRB
kyl4NgafpeXz1/0AUTb4PYN6BqsN5hrBLQiAOKkDIr9jU91y4Bcngto7vZ/LvHMj
xof8OBCguJhbAzWFd5gUxD0w+oSlsgAfDUEHT0cCgYEAj6PkR6ZJDRhtRRc+Jnjf
wODlDacIYW7xkRhNHVfKqjgurlNwLpVmUhOPOub2LzrsA20ly2UDI77TeDeH79q6
QYgrIgUKJ8a0cwoyAXHI4Lu3DSwyP4gJNv5AEc4i3IYUheucMdDbZdL2fMmglK26
GlF2um6TZubmEPC6kB1VmIcCgYEAg0VwQI2pxKF7c9W9Ci+ccLA8R6PiMSywVDvt
gjtoYrEoGrK8dJvp3OKqAyXBQCId05gs0eeoCZqclx1vAhfM3O/MobsgwCC1wPEo
QFza+b1JHxiW2PUIWhLF+8i0J+8k5Y7fqng0Ry7og8+iot+0f2QlToHAssZPm54S
KepUEr8CgYAVQs18xlULQQiJo4nqOzeEqxISIfiXtDn1PxYFRCSF6cTmwYrbBxZY
qLow8DGcfhG/UImzVrGBTTReFcky+YoZbc2qziREZKlI5n5aZuQNqCLXYeR3Rb/3
KE9VWv0Jc9kqQ6f/7ZDToNFPAMJX/hs4nNbhY2vHNWt12DDJrvhNFQ==
-----END RSA PRIVATE KEY-----";
    pub const RSA_B_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpQIBAAKCAQEAtuwAKYSsDtbcbA0iqwwzea02fp8ptGASXzc5XQ6+4XHT3UQ2
oRmpVdfhhyaWm3aDdPQ7CTBqmVkeVRpMgMqZ7y5JZVN8LaXrMD1ekYzeV+FFIuGz
h8Ltt+nuZtxuCaddsyWUfCphzglWHVyGUIYvR+zvhdV2bEqe10JtTwYAdZVxLgnK
uAUSkA/HvpbCmgcF+WHiLbaGG3wsj2I23IvhYCsMq/sap0FJLiCPqLsLXzEOJXay
m0Uxp50MYN3s7N2x1lzsFjluNH8AYhZmKCF91YSO8Ql0c/Zee7TZTD64qLxQzOal
ukVRGcFL6HoN5KhAew4SiFLPY3XcMkRvssiLgQIDAQABAoIBAAbHOwBO2sNYAeX9
HJ5C/vtQyFar1jNJZhTiKn2AyOD4w1WNLAsPNN+p9sD31JfhLeDdFfzyrtiM3Vtg
9JnHKCodSHn5PH5CijMI6yKwmiKehd3TiEANIJryj7N/EpLIAWhciaKKPYKRhP/k
iFOejUz4gi2u6cr8fuNSIlPN0KGKvmgyYst2f/cU4NMmafsj0QK/M0Oj5XWLLyok
feUUu8do+uP/ZAtKQCBDZIj4j342vWbJTcaXSaOll2TW3aSUJj9V85sxiJzwf1fe
MUgkMxt56ZBjT9tIRXgm/osTPaZp7vLkvlrSHZwPFzPs5Fhr7HDGfeW/iW7+hd8C
mrdsSNsCgYEA+k7YsQ+2qSzYxv4E2p8ecge1Gz5I3AOgTw2zEL6/4PUjuRxomvmN
kVybhmcGz+SNZe8REt+vyu/7cOsTinVKLQUYRftaUJlr5G+9yuewzvLfyC/BveTo
yn6YP/qwZnA9koOPgRhbki52rFrKWWpUkG04Xpt7W7jVlwJBpuFW3+sCgYEAuxTe
qqvpfAmTdi5wlM1Wgn2/wCcfiqIYZ3XO+vD7Zn9LLpAEV6eOkXIrgesYfFU+w00l
Gn/cAUMtHpqAEawlv2CBiDReALmUol1kIjND6IdaMO3HPUThVHv7el863I+3k48a
0dKDLzhhoPmRhx3MCIdin9F+Tey5y3uLD91ok0MCgYEAihGv6YsXYJ4CPVGk78rR
imjB93MV0XaWmMSfv17YjIfr2pHXCZUaB9KjXzG5Sjdx34ZNTrHgT/qsIY8pyjgE
YGztBL0vBkJ6hxk0AZZnqt/BnLTrE4oO9pN5++CWKQtEi2rSX41GBY5nm47BCy1h
1ADLFTSCiQedmZx/BkRKHV0CgYEAg913/bDjCEzvpdOiAyChI6VjLRvmfZ83uGUv
mW2Wpm5/Hbjhdq9iLF7fD9oYDjs/3AVaa81H05P4D6QzNUGz8asiYlEXGUe13qQZ
WonsCdCt3+MaFrOgaB5j6aOKJ8EdUmMCMndBhF0nY4HF9AkqsbBL8f6GGoMLisPw
ByS2+2UCgYEAqYhj46nWaRT2DsRodfdVqOO1G9ni09APBk8XGwRiOR7J3xI30JBR
Yto49XsyFN8PfUVwYeIgxjcJrd1Q3X1gmfQ7oohgTFpS8CrsXuQfqluDQ/OBIxeb
971n6nRsjajLWj5UScx2wtsx+iPzFR/61QXDAQvh4/+GQEIwXRoUuD4=
-----END RSA PRIVATE KEY-----";
    /// 1024-bit modulus (to check the size floor).
    pub const RSA_WEAK_N: &str = "5oMCgR0XBbwN6AM_j9sUBibQdhzCHeQZnbsy3WWwV53DEGZcVCuE_cKKCdJKXBnhE0ucAr7dFWYLEMkqbpOE5I6-VPYFh1p8VlSVAzVboMhqlhz_pv2xsU6-AJmSdxrHBB7oK6l8r2N2pb8NNR2c--vUB3RtbsP-cbtaHUpVVFk";

    pub fn rsa_jwk(pem: &str, kid: &str, extra: &str) -> String {
        let kp = RS256KeyPair::from_pem(pem).unwrap();
        let c = kp.public_key().to_components();
        format!(
            r#"{{"kty":"RSA","kid":"{kid}","n":"{}","e":"{}"{extra}}}"#,
            b64(&c.n),
            b64(&c.e)
        )
    }

    pub fn p256_jwk(kp: &ES256KeyPair, kid: &str, extra: &str) -> String {
        let raw = kp.public_key().public_key().to_bytes_uncompressed();
        format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{}","y":"{}"{extra}}}"#,
            b64(raw.get(1..33).unwrap()),
            b64(raw.get(33..65).unwrap())
        )
    }

    pub fn p384_jwk(kp: &ES384KeyPair, kid: &str, extra: &str) -> String {
        let raw = kp.public_key().public_key().to_bytes_uncompressed();
        format!(
            r#"{{"kty":"EC","crv":"P-384","kid":"{kid}","x":"{}","y":"{}"{extra}}}"#,
            b64(raw.get(1..49).unwrap()),
            b64(raw.get(49..97).unwrap())
        )
    }

    pub fn ed_jwk(kp: &Ed25519KeyPair, kid: &str, extra: &str) -> String {
        let raw = kp.public_key().to_bytes();
        format!(
            r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{}"{extra}}}"#,
            b64(&raw)
        )
    }

    pub fn jwks(keys: &[String]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::*;
    use super::*;
    use crate::jose::testutil::b64;

    #[test]
    fn document_level_errors() {
        assert_eq!(KeySet::parse(b"nope").unwrap_err(), JwksError::NotJson);
        assert_eq!(KeySet::parse(b"[]").unwrap_err(), JwksError::NotJson);
        assert_eq!(KeySet::parse(b"{}").unwrap_err(), JwksError::NoKeys);
        assert_eq!(
            KeySet::parse(br#"{"keys":{}}"#).unwrap_err(),
            JwksError::NoKeys
        );
        assert_eq!(
            KeySet::parse(br#"{"keys":[]}"#).unwrap_err(),
            JwksError::NoUsableKeys(vec![])
        );
        let e = KeySet::parse(br#"{"keys":[{"kty":"oct","k":"AAAA","kid":"s"}]}"#).unwrap_err();
        assert!(e.to_string().contains("symmetric"), "{e}");
    }

    #[test]
    fn key_set_caps_cut_and_say_so() {
        let ed = Ed25519KeyPair::generate();
        let many: Vec<String> = (0..MAX_KEYS + 50)
            .map(|i| ed_jwk(&ed, &format!("k{i}"), ""))
            .collect();
        let ks = KeySet::parse(jwks(&many).as_bytes()).unwrap();
        assert_eq!((ks.len(), ks.cut()), (MAX_KEYS, 50));
        assert!(ks.has_kid("k99") && !ks.has_kid("k100"));
        // 10,000 bad keys then a good one: bounded work, bounded notes, nothing usable.
        let mut bad: Vec<String> = (0..10_000)
            .map(|i| format!(r#"{{"kty":"oct","k":"AAAA","kid":"s{i}"}}"#))
            .collect();
        bad.push(ed_jwk(&ed, "late", ""));
        let Err(JwksError::NoUsableKeys(notes)) = KeySet::parse(jwks(&bad).as_bytes()) else {
            panic!("a usable key beyond the entry cap was used");
        };
        assert_eq!(notes.len(), MAX_SKIPPED_NOTES + 1, "{notes:?}");
        assert!(notes.last().unwrap().contains("more keys skipped"));
        // Within the caps nothing is cut.
        let ks = KeySet::parse(jwks(&many[..10]).as_bytes()).unwrap();
        assert_eq!((ks.len(), ks.cut()), (10, 0));
    }

    #[test]
    fn parses_all_key_types_and_skips_bad_ones() {
        let es = ES256KeyPair::generate();
        let es3 = ES384KeyPair::generate();
        let ed = Ed25519KeyPair::generate();
        let weak = format!(
            r#"{{"kty":"RSA","kid":"weak","n":"{}","e":"AQAB"}}"#,
            RSA_WEAK_N.trim()
        );
        let doc = jwks(&[
            rsa_jwk(
                RSA_A_PEM,
                "rsa",
                r#","use":"sig","x5t":"abc","x5c":["MIIB"],"issuer":"https://login.microsoftonline.com/{tenantid}/v2.0""#,
            ),
            p256_jwk(&es, "p256", r#","alg":"ES256""#),
            p384_jwk(&es3, "p384", ""),
            ed_jwk(&ed, "ed", ""),
            rsa_jwk(RSA_B_PEM, "enc", r#","use":"enc""#),
            weak,
            r#"{"kty":"EC","crv":"P-521","kid":"p521","x":"AA","y":"AA"}"#.into(),
            r#"{"kty":"EC","crv":"secp256k1","kid":"k1","x":"AA","y":"AA"}"#.into(),
            r#"{"kty":"OKP","crv":"X25519","kid":"x","x":"AA"}"#.into(),
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"offcurve","x":"{}","y":"{}"}}"#,
                b64(&[1u8; 32]),
                b64(&[2u8; 32])
            ),
            p256_jwk(&es, "p256-as-rs", r#","alg":"RS256""#),
            p256_jwk(&es, "p256-bad-alg", r#","alg":"ES512""#),
            rsa_jwk(RSA_B_PEM, "ops", r#","key_ops":["encrypt"]"#),
            r#"{"kty":"RSA","kid":"junk","n":"!!","e":"AQAB"}"#.into(),
            r#"{"kid":"nokty"}"#.into(),
            "5".into(),
        ]);
        let ks = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(ks.len(), 4, "{:?}", ks.skipped());
        assert_eq!(ks.skipped().len(), 12, "{:?}", ks.skipped());
        let joined = ks.skipped().join("\n");
        for want in [
            "kid enc",
            "\"sig\"",
            "below 2048",
            "P-521",
            "secp256k1",
            "X25519",
            "P-256 point",
            "does not fit",
            "unsupported alg",
            "key_ops",
            "base64url",
            "no \"kty\"",
            "not an object",
        ] {
            assert!(joined.contains(want), "missing {want}: {joined}");
        }
        let rsa = ks.find(Some("rsa"), Alg::RS256).unwrap();
        assert_eq!(rsa.kind(), KeyKind::Rsa);
        assert_eq!(rsa.alg(), None);
        assert_eq!(
            rsa.issuer(),
            Some("https://login.microsoftonline.com/{tenantid}/v2.0")
        );
        assert!(ks.has_kid("ed") && !ks.has_kid("enc"));
        assert!(format!("{rsa:?}").contains("rsa"));
    }

    #[test]
    fn find_rules() {
        let es = ES256KeyPair::generate();
        let ks = KeySet::parse(
            jwks(&[
                rsa_jwk(RSA_A_PEM, "a", ""),
                rsa_jwk(RSA_B_PEM, "b", r#","alg":"PS256""#),
                p256_jwk(&es, "e", ""),
            ])
            .as_bytes(),
        )
        .unwrap();
        use Alg::*;
        let cases: Vec<(Option<&str>, Alg, Result<&str, Reason>)> = vec![
            (Some("a"), RS256, Ok("a")),
            (Some("a"), PS512, Ok("a")),
            (Some("b"), PS256, Ok("b")),
            (Some("b"), RS256, Err(Reason::KeyTypeMismatch)), // pinned by its alg
            (Some("a"), ES256, Err(Reason::KeyTypeMismatch)),
            (Some("e"), RS256, Err(Reason::KeyTypeMismatch)),
            (Some("a"), HS256, Err(Reason::KeyTypeMismatch)), // algorithm confusion
            (None, HS512, Err(Reason::KeyTypeMismatch)),
            (Some("zz"), RS256, Err(Reason::KidUnknown)),
            (None, ES256, Ok("e")),                 // exactly one fitting key
            (None, RS384, Ok("a")),                 // b is pinned to PS256, so only a fits
            (None, PS256, Err(Reason::KidUnknown)), // a and b both fit
            (None, EdDSA, Err(Reason::KeyTypeMismatch)),
        ];
        for (kid, alg, want) in cases {
            let got = ks.find(kid, alg).map(|k| k.kid().unwrap());
            assert_eq!(got, want, "{kid:?} {alg}");
        }
    }

    #[test]
    fn rsa_exponent_and_size_policy() {
        let kp = RS256KeyPair::from_pem(RSA_A_PEM).unwrap();
        let c = kp.public_key().to_components();
        let e3 = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"x","n":"{}","e":"Aw"}}]}}"#,
            b64(&c.n)
        );
        let err = KeySet::parse(e3.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("e=65537"), "{err}");
        // leading zero bytes in n are tolerated
        let mut n = vec![0u8];
        n.extend_from_slice(&c.n);
        let z = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"x","n":"{}","e":"AQAB"}}]}}"#,
            b64(&n)
        );
        assert_eq!(KeySet::parse(z.as_bytes()).unwrap().len(), 1);
    }
}
