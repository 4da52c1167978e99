//! The verification and authorization steps of the story: `verify::verify`'s checks in
//! its order, then the route's `audiences` and `require` tree with the claim values read.

use serde_json::Value;

use super::{list, show_value, Keys, Mark, Story};
use crate::claims::{lookup, Claims};
use crate::config::RequirementConfig;
use crate::engine::Filter;
use crate::jose::{numeric_date, DecodedJwt};
use crate::policy::{self, Requirement, Route};
use crate::providers::Provider;
use crate::reason::Reason;
use crate::verify;

/// The checks of `verify::verify`, in its order; its own answer settles what the story
/// cannot see offline (the signature itself, the key's `issuer` restriction).
pub(super) fn tell_verify(
    jwt: &DecodedJwt,
    pi: usize,
    provider: &Provider,
    keys: &Keys,
    now: u64,
    s: &mut Story,
) -> Result<(), Reason> {
    let alg = jwt.header.alg;
    let fail = |s: &mut Story, what: String, r: Reason| {
        s.add("verify", Mark::Fail, what, r.description());
        Err(r)
    };
    if jwt.header.has_nonce {
        return fail(
            s,
            "JOSE header has a nonce (Graph token)".into(),
            Reason::GraphTokenUnverifiable,
        );
    }
    let algs: Vec<String> = provider.algorithms.iter().map(|a| a.to_string()).collect();
    if !provider.allows(alg) {
        return fail(
            s,
            format!("alg {alg} not in algorithms {}", list(&algs)),
            Reason::AlgNotAllowed,
        );
    }
    s.add(
        "verify",
        Mark::Pass,
        format!("alg {alg}"),
        format!("in algorithms {}", list(&algs)),
    );
    let set = keys.set();
    let actual = verify::verify(jwt, pi, provider, set.as_deref(), now);
    let mut key_issuer = false;
    if alg.is_hmac() {
        if provider.hmac_secret().is_none() {
            return fail(
                s,
                "no hmac_secret for an HS* token".into(),
                Reason::AlgNotAllowed,
            );
        }
        s.add("verify", Mark::Pass, "key", "the provider's hmac_secret");
    } else {
        match keys {
            Keys::Substitute(_) => {
                let kid = jwt.header.kid.as_deref().unwrap_or("(none)");
                s.add(
                    "verify",
                    Mark::Skip,
                    format!("key lookup SKIPPED (kid {kid})"),
                    "no key set given (--jwks-file)",
                );
            }
            _ => {
                let Some(ks) = set.as_deref() else {
                    return fail(s, "no key set".into(), Reason::JwksUnavailable);
                };
                match ks.find(jwt.header.kid.as_deref(), alg) {
                    Ok(k) => {
                        key_issuer = k.issuer().is_some();
                        let what = format!("key kid {}", k.kid().unwrap_or("(none)"));
                        s.add("verify", Mark::Pass, what, format!("{:?}", k.kind()));
                    }
                    Err(r) => {
                        let kid = jwt.header.kid.as_deref().unwrap_or("(none)");
                        return fail(s, format!("key for kid {kid}, alg {alg}"), r);
                    }
                }
            }
        }
    }
    if matches!(keys, Keys::Substitute(_)) {
        s.add(
            "verify",
            Mark::Skip,
            "SIGNATURE NOT CHECKED",
            "no key set: the claims were re-signed with a throwaway key so the filter runs every other check",
        );
    } else {
        match actual {
            Err(r @ (Reason::SignatureInvalid | Reason::KeyTypeMismatch)) => {
                return fail(s, "signature".into(), r)
            }
            _ => s.add("verify", Mark::Pass, "signature", "valid"),
        }
    }
    tell_times(jwt, provider, now, s)?;
    let aud = show_value(jwt.claims.get("aud"));
    if !verify::audience_matches(jwt.claims.get("aud"), &provider.audiences) {
        return fail(
            s,
            format!("aud {aud} not in audiences {}", list(&provider.audiences)),
            Reason::AudienceMismatch,
        );
    }
    s.add(
        "verify",
        Mark::Pass,
        format!("aud {aud}"),
        format!("in audiences {}", list(&provider.audiences)),
    );
    if key_issuer {
        if actual == Err(Reason::TenantNotAllowed) {
            return fail(
                s,
                "the key's own issuer does not fit the token".into(),
                Reason::TenantNotAllowed,
            );
        }
        s.add(
            "verify",
            Mark::Pass,
            "the key's own issuer",
            "fits the token's iss/tid",
        );
    } else if matches!(keys, Keys::Substitute(_)) {
        s.add(
            "verify",
            Mark::Skip,
            "the key's own issuer (Entra)",
            "not checked without the key set",
        );
    }
    match actual {
        Err(r) if !matches!(keys, Keys::Substitute(_)) => fail(
            s,
            "verify::verify refused a token the steps above passed".into(),
            r,
        ),
        _ => Ok(()),
    }
}

fn date(t: u64, now: u64) -> String {
    let rel = if t >= now {
        format!("in {}", span(t - now))
    } else {
        format!("{} ago", span(now - t))
    };
    format!("{t} ({rel})")
}

/// `1h 2m 3s`-style span.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn no<T>(s: &mut Story, what: String, r: Reason) -> Result<T, Reason> {
    s.add("verify", Mark::Fail, what, r.description());
    Err(r)
}

fn tell_times(jwt: &DecodedJwt, p: &Provider, now: u64, s: &mut Story) -> Result<(), Reason> {
    let c = &jwt.claims;
    let skew = p.clock_skew;
    let Some(exp) = numeric_date(c, "exp").or_else(|r| no(s, "exp".into(), r))? else {
        return no(s, "exp missing".into(), Reason::TokenMalformed);
    };
    if now >= exp.saturating_add(skew) {
        return no(
            s,
            format!("exp {} (skew {skew}s)", date(exp, now)),
            Reason::TokenExpired,
        );
    }
    let nbf = numeric_date(c, "nbf").or_else(|r| no(s, "nbf".into(), r))?;
    if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        let n = nbf.unwrap_or(0);
        return no(
            s,
            format!("nbf {} (skew {skew}s)", date(n, now)),
            Reason::TokenNotYetValid,
        );
    }
    let iat = numeric_date(c, "iat").or_else(|r| no(s, "iat".into(), r))?;
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        let i = iat.unwrap_or(0);
        return no(
            s,
            format!("iat {} (skew {skew}s)", date(i, now)),
            Reason::IssuedInFuture,
        );
    }
    if let Some(max) = p.max_lifetime {
        let too_long = match iat {
            Some(iat) => exp.saturating_sub(iat) > max,
            None => exp.saturating_sub(now) > max.saturating_add(skew),
        };
        if too_long {
            return no(
                s,
                format!("lifetime over max_lifetime_seconds {max}"),
                Reason::LifetimeTooLong,
            );
        }
    }
    let mut times = format!("exp {}", date(exp, now));
    if let Some(n) = nbf {
        times.push_str(&format!(", nbf {}", date(n, now)));
    }
    if let Some(i) = iat {
        times.push_str(&format!(", iat {}", date(i, now)));
    }
    s.add(
        "verify",
        Mark::Pass,
        "token times",
        format!("{times}; clock skew {skew}s"),
    );
    Ok(())
}

pub(super) fn tell_authorize(
    f: &Filter,
    index: usize,
    r: &Route,
    claims: &Claims,
    params: &[(String, String)],
    s: &mut Story,
) -> Result<(), Reason> {
    if let Some(auds) = &r.audiences {
        let aud = show_value(claims.get("aud"));
        if !verify::audience_matches(claims.get("aud"), auds) {
            let what = format!("aud {aud} not in the route's audiences {}", list(auds));
            s.add(
                "authorize",
                Mark::Fail,
                what,
                Reason::RouteAudienceMismatch.description(),
            );
            return Err(Reason::RouteAudienceMismatch);
        }
        s.add(
            "authorize",
            Mark::Pass,
            format!("aud {aud}"),
            format!("in the route's audiences {}", list(auds)),
        );
    }
    let Some(req) = r.requirement() else {
        s.add(
            "authorize",
            Mark::Info,
            "no require block",
            "any verified token",
        );
        return Ok(());
    };
    let cfg = f.config.routes.get(index).and_then(|c| c.require.as_ref());
    let input = policy::require::EvalInput { claims, params };
    tell_requirement(req, cfg, &input, 0, s);
    if req.eval(&input) {
        return Ok(());
    }
    // The same test `Route::authorize` makes; its answer is the filter's.
    let reason = r
        .authorize(claims, params)
        .err()
        .unwrap_or(Reason::InsufficientScope);
    s.add("authorize", Mark::Fail, "require", reason.description());
    Err(reason)
}

fn tell_requirement(
    node: &Requirement,
    cfg: Option<&RequirementConfig>,
    input: &policy::require::EvalInput<'_>,
    depth: usize,
    s: &mut Story,
) {
    let mark = if node.eval(input) {
        Mark::Pass
    } else {
        Mark::Fail
    };
    match node {
        Requirement::All(l) | Requirement::Any(l) => {
            let all = matches!(node, Requirement::All(_));
            let what = if all { "all of" } else { "any of" };
            s.add_at(depth, "require", mark, what, "");
            let list = cfg.and_then(|c| if all { c.all.as_ref() } else { c.any.as_ref() });
            for (i, n) in l.iter().enumerate() {
                tell_requirement(n, list.and_then(|l| l.get(i)), input, depth + 1, s);
            }
        }
        Requirement::Not(n) => {
            s.add_at(depth, "require", mark, "not", "");
            tell_requirement(n, cfg.and_then(|c| c.not.as_deref()), input, depth + 1, s);
        }
        Requirement::Claim { claim, .. } => {
            let what = format!(
                "claim {claim} {}",
                cfg.map(|c| describe_op(c, input)).unwrap_or_default()
            );
            let read = show_value(lookup(input.claims, claim));
            s.add_at(depth, "require", mark, what, format!("token has {read}"));
        }
    }
}

/// The operator as configured, with `{path.NAME}` and `{claims.NAME}` shown resolved.
fn describe_op(c: &RequirementConfig, input: &policy::require::EvalInput<'_>) -> String {
    let texts = |l: &[String]| -> String {
        let v: Vec<String> = l.iter().map(|t| resolve(t, input)).collect();
        format!("[{}]", v.join(", "))
    };
    let scalar = |v: &Value| match v {
        Value::String(t) => resolve(t, input),
        other => other.to_string(),
    };
    if let Some(v) = &c.equals {
        format!("equals {}", scalar(v))
    } else if let Some(l) = &c.one_of {
        let v: Vec<String> = l.iter().map(scalar).collect();
        format!("one_of [{}]", v.join(", "))
    } else if let Some(l) = &c.contains_any {
        format!("contains_any {}", texts(l))
    } else if let Some(l) = &c.contains_all {
        format!("contains_all {}", texts(l))
    } else if let Some(b) = c.exists {
        format!("exists {b}")
    } else {
        String::new()
    }
}

fn resolve(t: &str, input: &policy::require::EvalInput<'_>) -> String {
    let mut out = format!("\"{t}\"");
    for (k, v) in input.params {
        out = out.replace(&format!("{{path.{k}}}"), v);
    }
    if out.contains("{claims.") || out.contains("{path.") {
        out.push_str(" (with substitutions)");
    }
    out
}
