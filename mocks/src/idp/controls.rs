//! `/_control/` endpoints that change or report the IdP's state: key rotation and
//! retirement, the JWKS behaviour, the current keys, request counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::jwks::{JwksBehaviour, JwksMode};
use super::{lock, make_kid, Idp, Inner, Key};
use crate::common::{param, Reply};
use crate::keys::{Family, KeyPair};

impl Idp {
    pub(super) fn control_rotate(&self, query: &[(String, String)]) -> Reply {
        let name = param(query, "family").unwrap_or("rsa");
        let Some(family) = Family::parse(name) else {
            return Reply::error(
                400,
                "bad_request",
                "family must be rsa, p256, p384 or ed25519",
            );
        };
        let pair = match KeyPair::generate(family) {
            Ok(p) => Arc::new(p),
            Err(e) => return Reply::error(500, "server_error", e),
        };
        let mut inner = lock(&self.inner);
        let fam = &mut inner.families[family.index()];
        fam.serial += 1;
        let new = Key {
            kid: make_kid(&self.config.kid_prefix, family, fam.serial),
            pair,
        };
        let old = std::mem::replace(&mut fam.current, new);
        let (kid, previous_kid) = (fam.current.kid.clone(), old.kid.clone());
        fam.previous.insert(0, old);
        let published = published_kids(&inner);
        Reply::json(
            200,
            &json!({"family": family.name(), "kid": kid, "previous_kid": previous_kid,
                    "published": published}),
        )
    }

    pub(super) fn control_retire(&self) -> Reply {
        let mut inner = lock(&self.inner);
        let mut retired = Vec::new();
        for fam in &mut inner.families {
            retired.extend(fam.previous.drain(..).map(|k| k.kid));
        }
        let published = published_kids(&inner);
        Reply::json(200, &json!({"retired": retired, "published": published}))
    }

    pub(super) fn control_jwks(&self, query: &[(String, String)]) -> Reply {
        let mode = param(query, "mode").unwrap_or("ok");
        let Some(mode) = JwksMode::parse(mode) else {
            return Reply::error(
                400,
                "bad_request",
                "mode must be ok, status500, garbage, empty, huge or hang",
            );
        };
        let number = |name: &str| -> Result<Option<u64>, Reply> {
            match param(query, name) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| {
                    Reply::error(
                        400,
                        "bad_request",
                        format!("{name} must be a non-negative integer"),
                    )
                }),
            }
        };
        let max_age = match number("max_age") {
            Ok(v) => v,
            Err(r) => return r,
        };
        let delay_ms = match number("delay_ms") {
            Ok(v) => v.unwrap_or(0),
            Err(r) => return r,
        };
        let issuer_field = matches!(param(query, "issuer_field"), Some("1" | "true"));
        let behaviour = JwksBehaviour {
            mode,
            max_age,
            delay_ms,
            issuer_field,
        };
        lock(&self.inner).jwks = behaviour;
        Reply::json(
            200,
            &json!({"mode": mode.name(), "max_age": max_age, "delay_ms": delay_ms,
                    "issuer_field": issuer_field}),
        )
    }

    pub(super) fn control_keys(&self) -> Reply {
        let inner = lock(&self.inner);
        let mut out = Map::new();
        for (family, fam) in Family::ALL.iter().zip(&inner.families) {
            out.insert(family.name().into(), json!(fam.current.kid));
        }
        out.insert("published".into(), json!(published_kids(&inner)));
        Reply::json(200, &Value::Object(out))
    }

    pub(super) fn stats(&self) -> Reply {
        Reply::json(
            200,
            &json!({
                "jwks_requests": self.jwks_requests.load(Ordering::Relaxed),
                "discovery_requests": self.discovery_requests.load(Ordering::Relaxed),
                "token_requests": self.token_requests.load(Ordering::Relaxed),
                "token_endpoint_requests": self.token_endpoint_requests.load(Ordering::Relaxed),
                "imds_requests": self.imds_requests.load(Ordering::Relaxed),
            }),
        )
    }
    /// Zeroes the counters and puts IMDS and the token endpoint back to `ok` (the JWKS
    /// behaviour stays).
    pub(super) fn control_reset(&self) -> Reply {
        for c in [
            &self.jwks_requests,
            &self.discovery_requests,
            &self.token_requests,
            &self.token_endpoint_requests,
            &self.imds_requests,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        {
            let mut inner = lock(&self.inner);
            inner.imds = Default::default();
            inner.token_endpoint = Default::default();
        }
        self.stats()
    }
}

fn published_kids(inner: &Inner) -> Vec<String> {
    inner
        .families
        .iter()
        .flat_map(|f| std::iter::once(&f.current).chain(&f.previous))
        .map(|k| k.kid.clone())
        .collect()
}
