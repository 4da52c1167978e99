//! One decision told step by step, for the operator CLI (`azure-ml-kong explain`).
//!
//! The story walks the steps `engine::Filter::decide` takes, with the same pub step
//! functions (route matching, inbound header check, token extraction, JOSE decoding,
//! provider choice, verification, `require`), and records what each read. The decision
//! itself is not re-derived: [`explain`] runs `Filter::decide` on the same request with an
//! offline [`Env`] and reports its answer beside the story; [`Explanation::agrees`] says
//! whether the story ends where the filter does.
//!
//! Offline, there is no gateway state: rate limits are not counted (every request is
//! allowed by them), the gateway's own upstream token is a placeholder, and an unknown
//! `kid` cannot trigger a refetch.

use std::rc::Rc;

use serde::Serialize;
use serde_json::Value;

use crate::config::{AuthMode, CorsPreflight, MatchConfig, OnNoRoute};
use crate::engine::{CredentialState, Ctx, Decision, Env, Filter, KeyState};
use crate::jose;
use crate::jwks::KeySet;
use crate::policy::{self, Mismatch};
use crate::ratelimit;
use crate::reason::Reason;
use crate::request::{RequestView, TokenLocation};
use crate::verify::VerifiedCache;

/// What stands in for the gateway's own token upstream (`upstream_credential`) offline.
pub const GATEWAY_TOKEN_PLACEHOLDER: &str = "<the gateway's own token>";

/// The key set the signature is checked with.
pub enum Keys {
    /// A key set the operator gave: the signature is really checked.
    Real(Rc<KeySet>),
    /// The token was re-signed by the caller with a throwaway key (in this key set, or
    /// with the provider's `hmac_secret` when `None`): the filter runs every other check,
    /// and the story marks the signature and the key's own restrictions as skipped.
    Substitute(Option<Rc<KeySet>>),
    /// No key set: only HS* tokens (the provider's secret) can be verified.
    None,
}

impl Keys {
    fn set(&self) -> Option<Rc<KeySet>> {
        match self {
            Keys::Real(k) | Keys::Substitute(Some(k)) => Some(k.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    Pass,
    Fail,
    Skip,
    Info,
}

/// One line of the story.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `path`, `route`, `headers`, `auth`, `token`, `provider`, `verify`, `authorize`, ...
    pub stage: &'static str,
    pub mark: Mark,
    pub what: String,
    pub detail: String,
    /// Nesting (requirement trees).
    pub depth: usize,
}

/// Where the story ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Reason),
}

pub struct Explanation {
    pub steps: Vec<Step>,
    pub story: Verdict,
    /// What `Filter::decide` answered on the same request.
    pub decision: Decision,
    /// The signature was not checked (no key set): loudly so in every output.
    pub signature_skipped: bool,
    /// Rate-limit buckets the filter would count (route, requests, window seconds).
    pub rate_limits: Vec<(String, u64, u64)>,
}

impl Explanation {
    /// The filter's own verdict.
    pub fn verdict(&self) -> Option<Verdict> {
        match &self.decision {
            Decision::Allow { .. } => Some(Verdict::Allow),
            Decision::Deny { audit, .. } => audit.reason.map(Verdict::Deny),
            _ => None,
        }
    }

    /// The story ends where `Filter::decide` does, reason code for reason code.
    pub fn agrees(&self) -> bool {
        self.verdict() == Some(self.story)
    }
}

/// The gateway state `decide` sees offline.
struct OfflineEnv {
    keys: Option<Rc<KeySet>>,
    rate: Vec<(String, u64, u64)>,
}

impl Env for OfflineEnv {
    fn keys(&mut self, _provider: usize) -> KeyState {
        match &self.keys {
            Some(k) => KeyState::Ready {
                keys: k.clone(),
                generation: 1,
            },
            None => KeyState::Unavailable {
                retry_after_secs: 0,
            },
        }
    }
    fn refetch_for_unknown_kid(&mut self, _provider: usize) -> bool {
        false
    }
    fn rate_limit(&mut self, bucket: &str, limit: u64, window: u64) -> ratelimit::Verdict {
        self.rate.push((bucket.to_string(), limit, window));
        ratelimit::Verdict {
            allowed: true,
            retry_after_secs: 0,
            remaining: limit.saturating_sub(1),
            reset_secs: window,
        }
    }
    fn upstream_token(&mut self, _credential: usize) -> CredentialState {
        CredentialState::Ready(GATEWAY_TOKEN_PLACEHOLDER.into())
    }
    /// Offline no request is in flight: a slot is always free.
    fn acquire_slot(&mut self, _bucket: &str, _max_in_flight: u64) -> bool {
        true
    }
    fn client_address(&mut self) -> Option<String> {
        None
    }
}

/// Tell the decision on `req` at `now_ms` step by step, and decide it with `Filter::decide`.
pub fn explain(filter: &Filter, req: &RequestView<'_>, now_ms: u64, keys: Keys) -> Explanation {
    let mut s = Story { steps: Vec::new() };
    let story = tell(filter, req, now_ms / 1000, &keys, &mut s);
    let mut env = OfflineEnv {
        keys: keys.set(),
        rate: Vec::new(),
    };
    let ctx = Ctx {
        now_ms,
        random: 0,
        host_route: None,
    };
    let decision = filter.decide(req, ctx, &mut env, &mut VerifiedCache::new(1));
    Explanation {
        steps: s.steps,
        story,
        decision,
        signature_skipped: matches!(keys, Keys::Substitute(_)),
        rate_limits: env.rate,
    }
}

pub(crate) struct Story {
    steps: Vec<Step>,
}

impl Story {
    fn add(
        &mut self,
        stage: &'static str,
        mark: Mark,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.add_at(0, stage, mark, what, detail);
    }
    pub(crate) fn add_at(
        &mut self,
        depth: usize,
        stage: &'static str,
        mark: Mark,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.steps.push(Step {
            stage,
            mark,
            what: what.into(),
            detail: detail.into(),
            depth,
        });
    }
    fn deny(&mut self, stage: &'static str, what: impl Into<String>, reason: Reason) -> Verdict {
        self.add(stage, Mark::Fail, what, reason.description());
        Verdict::Deny(reason)
    }
}

pub(crate) fn list(v: &[String]) -> String {
    format!("[{}]", v.join(", "))
}

fn describe_mismatch(m: Mismatch, cfg: Option<&MatchConfig>, req: &RequestView<'_>) -> String {
    let cfg = cfg.cloned().unwrap_or_default();
    match m {
        Mismatch::Method => format!(
            "method {} not in match.methods {}",
            req.method,
            list(cfg.methods.as_deref().unwrap_or(&[]))
        ),
        Mismatch::Host => format!(
            "host {} not in match.hosts {}",
            req.authority,
            list(cfg.hosts.as_deref().unwrap_or(&[]))
        ),
        Mismatch::Path => match (&cfg.path, &cfg.path_prefix) {
            (Some(p), _) => format!("path {} does not fit match.path {p}", req.path_only()),
            (_, Some(p)) => format!(
                "path {} is not under match.path_prefix {p}",
                req.path_only()
            ),
            _ => format!("path {} does not fit", req.path_only()),
        },
    }
}

fn location(l: &TokenLocation) -> String {
    match l {
        TokenLocation::Header(h) => format!("header {h}"),
        TokenLocation::Query(q) => format!("query parameter {q}"),
        TokenLocation::Cookie(c) => format!("cookie {c}"),
    }
}

/// A claim value for display (bounded).
pub fn show_value(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 200 {
                format!("{}…", s.chars().take(200).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn tell(f: &Filter, req: &RequestView<'_>, now: u64, keys: &Keys, s: &mut Story) -> Verdict {
    match policy::normalize_path(req.path) {
        Ok(norm) => s.add("path", Mark::Pass, norm, "in normal form"),
        Err(e) => {
            s.add("path", Mark::Fail, req.path_only(), format!("{e:?}"));
            return Verdict::Deny(Reason::PathNotNormalized);
        }
    }
    let found = f.routes.find_request(req);
    for (i, r) in f.routes.iter().enumerate() {
        let cfg = f.config.routes.get(i).map(|c| &c.matcher);
        if let Some(m) = found.as_ref().filter(|m| m.index == i) {
            let params: Vec<String> = m.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let detail = if params.is_empty() {
                "matches (first match wins)".to_string()
            } else {
                format!("matches; path parameters {}", params.join(", "))
            };
            s.add("route", Mark::Pass, &r.name, detail);
            break;
        }
        match r.mismatch(req) {
            Some(m) => s.add("route", Mark::Info, &r.name, describe_mismatch(m, cfg, req)),
            None => s.add(
                "route",
                Mark::Fail,
                &r.name,
                "fits, yet the router passed it by",
            ),
        }
    }
    let route = found.as_ref().map(|m| m.route);
    if let Err(reason) = f.annotator.check_inbound(req, route) {
        return s.deny("headers", "identity headers sent by the client", reason);
    }
    s.add("headers", Mark::Pass, "identity headers", "none sent twice");
    let (auth, params): (AuthMode, &[(String, String)]) = match &found {
        Some(m) => (m.route.auth, &m.params),
        None if f.config.on_no_route == OnNoRoute::AllowAuthenticated => {
            s.add(
                "route",
                Mark::Info,
                "no route matches",
                "on_no_route: allow_authenticated",
            );
            (AuthMode::Required, &[])
        }
        None => {
            return s.deny(
                "route",
                "no route matches (on_no_route: deny)",
                Reason::NoRoute,
            )
        }
    };
    if let Some(r) = route {
        if r.cors_preflight == CorsPreflight::Allow && policy::is_cors_preflight(req) {
            s.add(
                "auth",
                Mark::Pass,
                "CORS preflight",
                "cors_preflight: allow; no token needed",
            );
            return Verdict::Allow;
        }
    }
    if auth == AuthMode::None {
        s.add("auth", Mark::Pass, "auth: none", "no token needed");
        return Verdict::Allow;
    }
    let (token, loc) = match f.tokens.extract(req) {
        Ok(Some(t)) => t,
        Ok(None) if auth == AuthMode::Optional => {
            s.add(
                "token",
                Mark::Pass,
                "no token",
                "auth: optional; allowed without identity",
            );
            return Verdict::Allow;
        }
        Ok(None) => {
            return s.deny(
                "token",
                "no token in any token source",
                Reason::TokenMissing,
            )
        }
        Err(reason) => return s.deny("token", reason.code(), reason),
    };
    let detail = format!("{} bytes", token.len());
    s.add(
        "token",
        Mark::Pass,
        format!("found in {}", location(&loc)),
        detail,
    );
    let max = f.config.cache.max_token_bytes;
    if token.len() > max {
        return s.deny(
            "token",
            format!("longer than cache.max_token_bytes {max}"),
            Reason::TokenTooLarge,
        );
    }
    let jwt = match jose::decode(&token, max) {
        Ok(j) => j,
        Err(reason) => return s.deny("token", "decoding the JWS", reason),
    };
    let h = &jwt.header;
    let kid = h.kid.as_deref().unwrap_or("(none)");
    s.add(
        "token",
        Mark::Info,
        "JOSE header",
        format!("alg {} kid {kid}", h.alg),
    );
    let iss = show_value(jwt.claims.get("iss"));
    let allowed = route.and_then(|r| r.providers.as_deref());
    let pi = match f.providers.select(&jwt.claims, allowed) {
        Ok(pi) => pi,
        Err(reason) => {
            let names: Vec<String> = f
                .providers
                .iter()
                .enumerate()
                .filter(|(i, _)| allowed.is_none_or(|a| a.contains(i)))
                .map(|(_, p)| p.name.clone())
                .collect();
            let what = format!(
                "iss {iss}, tid {} (providers {})",
                show_value(jwt.claims.get("tid")),
                list(&names)
            );
            return s.deny("provider", what, reason);
        }
    };
    let Some(provider) = f.providers.get(pi) else {
        return s.deny("provider", "provider index", Reason::IssuerUnknown);
    };
    s.add(
        "provider",
        Mark::Pass,
        &provider.name,
        format!("iss {iss} fits its issuers and tenants"),
    );
    if let Err(reason) = checks::tell_verify(&jwt, pi, provider, keys, now, s) {
        return Verdict::Deny(reason);
    }
    let Some(r) = route else {
        s.add(
            "authorize",
            Mark::Info,
            "no route",
            "any verified token (on_no_route)",
        );
        if let Err(reason) = tell_caller(f, None, &jwt.claims, s) {
            return Verdict::Deny(reason);
        }
        return Verdict::Allow;
    };
    if let Err(reason) = checks::tell_authorize(
        f,
        found.as_ref().map_or(0, |m| m.index),
        r,
        &jwt.claims,
        params,
        s,
    ) {
        return Verdict::Deny(reason);
    }
    if let Err(reason) = tell_caller(f, found.as_ref().map(|m| m.index), &jwt.claims, s) {
        return Verdict::Deny(reason);
    }
    if let Some(c) = found
        .as_ref()
        .and_then(|m| f.credentials.for_route(m.index))
    {
        let name = f.credentials.specs.get(c).map_or("?", |c| c.name.as_str());
        let d = "the gateway's own token replaces the caller's upstream (offline: a placeholder)";
        s.add(
            "credential",
            Mark::Info,
            format!("upstream_credential {name}"),
            d,
        );
    }
    if let Some(rl) = &r.rate_limit {
        let what = format!(
            "{} per {}s by {}",
            rl.requests,
            rl.window_seconds,
            rl.key.join("|")
        );
        s.add(
            "rate_limit",
            Mark::Skip,
            what,
            "not counted offline: only the gateway knows the window's count",
        );
    }
    if let Some(cl) = found
        .as_ref()
        .and_then(|m| f.concurrency.get(m.index))
        .and_then(Option::as_ref)
    {
        let what = format!("{} in flight by {}", cl.max_in_flight, cl.key.join("|"));
        s.add(
            "concurrency_limit",
            Mark::Skip,
            what,
            "not counted offline: only the gateway knows what is in flight",
        );
    }
    Verdict::Allow
}

/// The caller registry's step: who the verified token's app is, and whether the route
/// (`route_index`) and `unknown_callers` admit it.
fn tell_caller(
    f: &Filter,
    route_index: Option<usize>,
    claims: &crate::claims::Claims,
    s: &mut Story,
) -> Result<(), Reason> {
    if !f.callers.is_active() {
        return Ok(());
    }
    let caller = f.callers.identify(claims);
    let app = crate::callers::APP_ID_CLAIMS
        .iter()
        .find_map(|c| {
            claims
                .get(*c)
                .map(|v| format!("{c} {}", show_value(Some(v))))
        })
        .unwrap_or_else(|| "no azp or appid".into());
    let name = f.callers.name_of(caller).to_string();
    match f.callers.admit(route_index, caller) {
        Ok(()) => {
            s.add("caller", Mark::Pass, name, format!("{app}; admitted"));
            Ok(())
        }
        Err(reason) => {
            s.add(
                "caller",
                Mark::Fail,
                name,
                format!("{app}; {}", reason.description()),
            );
            Err(reason)
        }
    }
}

mod checks;

pub use checks::span;

#[cfg(test)]
mod tests;
