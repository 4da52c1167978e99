//! The per-request decision, start to finish, as a pure function of the request, the
//! compiled configuration, the time, a random number and the key/limit state the host
//! adapter exposes through [`Env`]. This is where the separate pieces (token extraction,
//! JOSE decoding, provider selection, JWKS keys, verification, route policy, rate limits,
//! annotation, responses, audit) are put together; each piece stays ignorant of the others.

use std::rc::Rc;

use crate::annotate::{self, Annotator, HeaderOp};
use crate::audit::AuditRecord;
use crate::callers::{self, Registry};
use crate::claims::Claims;
use crate::concurrency;
use crate::config::{
    self, AuthMode, ConfigError, CorsPreflight, FilterConfig, LogLevel, OnNoRoute,
};
use crate::credential;
use crate::jose::{self, Alg};
use crate::jwks::KeySet;
use crate::keycache::JwksSource;
use crate::limits::{self, Counters, Limited};
use crate::policy::{self, Route, Routes};
use crate::providers::{Provider, Providers};
use crate::ratelimit;
use crate::reason::Reason;
use crate::request::{RequestView, TokenLocation};
use crate::respond::{self, LocalResponse};
use crate::token::TokenExtractor;
use crate::validate;
use crate::verify::{self, TokenKey, Verified, VerifiedCache};

/// The compiled configuration: everything derived once at load time.
pub struct Filter {
    pub config: FilterConfig,
    pub providers: Providers,
    pub tokens: TokenExtractor,
    pub routes: Routes,
    pub annotator: Annotator,
    /// Where each provider's keys come from (same order as `providers`).
    pub jwks_sources: Vec<Option<JwksSource>>,
    /// The gateway's own credentials and which route uses which.
    pub credentials: credential::spec::Credentials,
    /// Registered callers and each route's allow-list.
    pub callers: Registry,
    /// Each route's `concurrency_limit` (by route index).
    pub concurrency: Vec<Option<concurrency::ConcurrencyLimit>>,
}

/// What the adapter must do with the request.
#[derive(Debug)]
pub enum Decision {
    /// Apply the header operations, then let the request continue.
    Allow {
        ops: Vec<HeaderOp>,
        audit: AuditRecord,
    },
    /// Answer locally; the request never reaches the upstream.
    Deny {
        response: LocalResponse,
        audit: AuditRecord,
    },
    /// Keys for `provider` are not usable yet (cold start or unknown `kid` refetch): pause
    /// the request and call [`Filter::decide`] again when the key state changes, or
    /// [`Filter::deny_unavailable`] when waiting must end.
    WaitForKeys { provider: usize },
    /// The route lends the gateway's own token (`upstream_credential`) and none is usable
    /// yet: pause and decide again when [`Env::upstream_token`] changes, or answer with
    /// [`Filter::deny_waited`] and [`Reason::UpstreamCredentialUnavailable`].
    WaitForCredential { credential: usize },
}

/// The gateway's own token for one credential, as the adapter's credential cache sees it.
pub enum CredentialState {
    Ready(Rc<str>),
    /// A token request is under way (or about to start): waiting is worthwhile.
    Loading,
    /// No usable token and the last request failed: 503 with this `Retry-After`.
    Unavailable {
        retry_after_secs: u64,
    },
}

/// Key availability for one provider, as the adapter's JWKS cache sees it.
pub enum KeyState {
    Ready {
        keys: Rc<KeySet>,
        generation: u64,
    },
    /// A fetch is under way (or about to start); waiting is worthwhile.
    Loading,
    /// No keys and fetching failed: answer 503 with this `Retry-After`.
    Unavailable {
        retry_after_secs: u64,
    },
}

/// The state the engine reads and nudges through the adapter (shared data, dispatches).
pub trait Env {
    fn keys(&mut self, provider: usize) -> KeyState;
    /// An unknown `kid` was seen: returns true when a refetch is under way (wait for it),
    /// false when one ran too recently (answer `kid_unknown`).
    fn refetch_for_unknown_kid(&mut self, provider: usize) -> bool;
    /// Count one request against `bucket`; returns the verdict.
    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> ratelimit::Verdict;
    /// The gateway's token for `credential` (an index into `Filter::credentials.specs`).
    /// Asked only for allowed requests on a route with `upstream_credential`.
    fn upstream_token(&mut self, credential: usize) -> CredentialState;
    /// Take one of `max_in_flight` slots of `bucket` for this request, held until the
    /// request ends (the adapter releases it). Asked last, only for a request that is
    /// otherwise allowed; false: all slots are taken.
    fn acquire_slot(&mut self, bucket: &str, max_in_flight: u64) -> bool;
    /// The client's IP address (the host's `source.address`), for limits on requests
    /// without a verified token. Asked only for those, on a limited route.
    fn client_address(&mut self) -> Option<String>;

    /// A verification of this token another worker shared under key-set `generation`,
    /// still valid at `now` (seconds). Asked only when the worker's own cache missed.
    fn shared_verified(
        &mut self,
        _key: &TokenKey,
        _generation: u64,
        _now: u64,
    ) -> Option<Verified> {
        None
    }

    /// Share a successful verification with the node's other workers.
    fn share_verified(&mut self, _key: &TokenKey, _generation: u64, _v: &Verified, _now: u64) {}

    /// Something happened on the verified-token path (for metrics).
    fn note(&mut self, _event: CacheEvent) {}
}

/// Events of the verified-token path that the adapter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// A token went through [`verify::verify`] (signature work, unless refused before it).
    Verified,
    /// Another worker's verification was taken from shared data.
    SharedHit,
    /// A token that recently failed was refused again without verification.
    RejectedHit,
}

/// The engine's [`Env`] as the counters `limits` uses.
struct EnvCounters<'e>(&'e mut dyn Env);

impl Counters for EnvCounters<'_> {
    fn rate_limit(&mut self, bucket: &str, limit: u64, window_secs: u64) -> ratelimit::Verdict {
        self.0.rate_limit(bucket, limit, window_secs)
    }
    fn acquire_slot(&mut self, bucket: &str, max_in_flight: u64) -> bool {
        self.0.acquire_slot(bucket, max_in_flight)
    }
}

/// Per-request inputs that are not part of the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now_ms: u64,
    pub random: u64,
    /// Host-provided route name (Kong's `kong.route_name`), for audit lines.
    pub host_route: Option<&'a str>,
}

impl Filter {
    /// Load a configuration document: parse, then [`Filter::compile`].
    pub fn from_json(bytes: &[u8]) -> Result<Filter, ConfigError> {
        Filter::compile(config::parse(bytes)?)
    }

    /// Compile parsed configuration, each part once by the module that owns it, then
    /// check the rules that span parts (`validate`). Errors name the field at fault.
    pub fn compile(config: FilterConfig) -> Result<Filter, ConfigError> {
        let providers = Providers::new(&config.providers)?;
        let tokens = TokenExtractor::new(&config.token_sources)?;
        let routes = Routes::new(&config.routes, |name| providers.index_of(name))?;
        let annotator = Annotator::new(&config)?;
        // Providers that only use a shared secret (HS*) have no key set to fetch.
        let jwks_sources = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| match providers.get(i).map(|pr| pr.needs_jwks()) {
                Some(true) => JwksSource::new(p, &format!("providers[{i}]")).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = credential::spec::compile_all(&config)?;
        let callers = Registry::compile(&config)?;
        let concurrency = concurrency::compile(&config)?;
        validate::check(&config)?;
        Ok(Filter {
            credentials,
            callers,
            concurrency,
            config,
            providers,
            tokens,
            routes,
            annotator,
            jwks_sources,
        })
    }

    pub fn audit_level(&self) -> LogLevel {
        self.config.audit.log_level
    }

    /// Kong: whether to touch Kong's Lua-backed `kong.*` properties at all (see
    /// `AuditConfig::kong_lua_properties`).
    pub fn kong_lua_properties(&self) -> bool {
        self.config.audit.kong_lua_properties
    }

    /// Decide on one request. Re-entrant: after `WaitForKeys`, call again with the same
    /// request once keys changed.
    pub fn decide(
        &self,
        req: &RequestView,
        ctx: Ctx,
        env: &mut dyn Env,
        cache: &mut VerifiedCache,
    ) -> Decision {
        let request_id = annotate::request_id(req, ctx.random);
        let mut audit = AuditRecord::new(ctx.now_ms, &request_id, req);
        // Before any route, `auth: none` ones included: the path authorized must be the
        // path routed and forwarded, whoever decodes it.
        if policy::normalize_path(req.path).is_err() {
            audit.route = ctx.host_route.map(str::to_string);
            return self.deny(Reason::PathNotNormalized, &request_id, None, audit);
        }
        let found = self.routes.find_request(req);
        let route = found.as_ref().map(|m| m.route);
        audit.route = route
            .map(|r| r.name.clone())
            .or_else(|| ctx.host_route.map(str::to_string));

        if let Err(reason) = self.annotator.check_inbound(req, route) {
            return self.deny(reason, &request_id, None, audit);
        }
        let (auth, params): (AuthMode, &[(String, String)]) = match &found {
            Some(m) => (m.route.auth, &m.params),
            None if self.config.on_no_route == OnNoRoute::AllowAuthenticated => {
                (AuthMode::Required, &[])
            }
            None => return self.deny(Reason::NoRoute, &request_id, None, audit),
        };
        if let Some(r) = route {
            if r.cors_preflight == CorsPreflight::Allow && policy::is_cors_preflight(req) {
                return self.allow(route, None, None, req, &request_id, audit);
            }
        }
        if auth == AuthMode::None {
            return self.allow_anonymous(found.as_ref(), req, &request_id, env, audit);
        }
        let (token, location) = match self.tokens.extract(req) {
            Ok(Some(t)) => t,
            Ok(None) if auth == AuthMode::Optional => {
                return self.allow_anonymous(found.as_ref(), req, &request_id, env, audit)
            }
            Ok(None) => return self.deny(Reason::TokenMissing, &request_id, None, audit),
            Err(reason) => return self.deny(reason, &request_id, None, audit),
        };
        let verified = match self.authenticate(&token, route, ctx, env, cache, &mut audit) {
            Ok(v) => {
                audit.note_verified(v.kid.as_deref(), &v.claims);
                v
            }
            Err(Unverified::Wait(provider)) => return Decision::WaitForKeys { provider },
            Err(Unverified::Deny(reason, retry)) => {
                return self.deny(reason, &request_id, retry, audit)
            }
        };
        let caller = self.callers.identify(&verified.claims);
        self.note_caller(&mut audit, caller);
        if let Some(r) = route {
            if let Err(reason) = r.authorize(&verified.claims, params) {
                return self.deny(reason, &request_id, None, audit);
            }
        }
        if let Err(reason) = self.callers.admit(found.as_ref().map(|m| m.index), caller) {
            return self.deny(reason, &request_id, None, audit);
        }
        // Before the rate limit, so a request that waits for the token and is decided
        // again is counted once.
        let mut response_headers = Vec::new();
        let credential = found
            .as_ref()
            .and_then(|m| self.credentials.for_route(m.index));
        let upstream_token = match credential.map(|c| (c, env.upstream_token(c))) {
            None => None,
            Some((_, CredentialState::Ready(t))) => Some(t),
            Some((credential, CredentialState::Loading)) => {
                return Decision::WaitForCredential { credential }
            }
            Some((_, CredentialState::Unavailable { retry_after_secs })) => {
                let (reason, retry) = (
                    Reason::UpstreamCredentialUnavailable,
                    Some(retry_after_secs),
                );
                return self.deny(reason, &request_id, retry, audit);
            }
        };
        if let Some(m) = &found {
            let cl = self.concurrency.get(m.index).and_then(Option::as_ref);
            let value_of = |key: &[String]| self.limit_key(key, &verified.claims, caller);
            match limits::check(m.route, cl, value_of, &mut EnvCounters(env)) {
                Limited::Pass(h) => response_headers = h,
                Limited::Deny(reason, retry, h) => {
                    return self.deny_with(reason, &request_id, retry, h, audit)
                }
            }
        }
        let mut decision = self.allow(
            route,
            Some(&verified.claims),
            Some(&location),
            req,
            &request_id,
            audit,
        );
        if let Decision::Allow { ops, .. } = &mut decision {
            ops.extend(
                response_headers
                    .into_iter()
                    .map(|(name, value)| HeaderOp::SetResponse { name, value }),
            );
        }
        if let (Decision::Allow { ops, audit }, Some(t)) = (&mut decision, upstream_token) {
            lend_credential(ops, &t);
            audit.credential = credential
                .and_then(|c| self.credentials.specs.get(c))
                .map(|spec| spec.name.clone());
        }
        decision
    }

    /// Token → verified claims, or why not.
    ///
    /// A token still valid in the verified-token cache is not decoded again: the entry
    /// holds exactly what decoding it gave (claims, `kid`, `alg`; decoding is
    /// deterministic, a token is cached only after it decoded and verified, and the cache
    /// is rebuilt with every configuration), so provider choice, key state and audit see
    /// the same values either way. Only the size cap is checked first, as `decode` does.
    fn authenticate(
        &self,
        token: &str,
        route: Option<&Route>,
        ctx: Ctx,
        env: &mut dyn Env,
        cache: &mut VerifiedCache,
        audit: &mut AuditRecord,
    ) -> Result<Rc<Verified>, Unverified> {
        let now = ctx.now_ms / 1000;
        let max_bytes = self.config.cache.max_token_bytes;
        if token.len() > max_bytes {
            return Err(Unverified::deny(Reason::TokenTooLarge));
        }
        let local = cache.local_key(token);
        let cached = local.and_then(|k| cache.peek(token, k, now));
        let decoded = match cached {
            Some(_) => None,
            None => Some(jose::decode(token, max_bytes).map_err(Unverified::deny)?),
        };
        let (kid, alg, claims) = match (&cached, &decoded) {
            (Some((v, _)), _) => (&v.kid, v.alg, &v.claims),
            (None, Some(jwt)) => (&jwt.header.kid, jwt.header.alg, &jwt.claims),
            (None, None) => return Err(Unverified::deny(Reason::TokenMalformed)), // unreachable
        };
        // Who claimed to call is recorded on every way out but a hit (which the caller
        // records as verified).
        let claimed = |audit: &mut AuditRecord, e: Unverified| {
            audit.note_claimed(kid.as_deref(), claims);
            e
        };
        let (pi, provider) = self
            .provider_for(claims, route)
            .map_err(|e| claimed(audit, e))?;
        audit.provider = Some(provider.name.clone());
        let (keys, generation) = self
            .keys_for(pi, provider, alg, env)
            .map_err(|e| claimed(audit, e))?;
        if local.is_some() {
            // Same key set and same provider (two providers may share an issuer but not
            // their audiences or other checks).
            let hit = matches!(&cached, Some((v, g)) if *g == generation && v.provider == pi);
            cache.count(hit);
            if let (true, Some((v, _))) = (hit, &cached) {
                return Ok(Rc::clone(v));
            }
        }
        audit.note_claimed(kid.as_deref(), claims);
        // A miss: a token that failed under these keys is refused again as it was; one
        // another worker verified under them is taken as it verified it. Both name the
        // token by its SHA-256, computed only now.
        let key = cache.key(token);
        if let (Some(k), Some(l)) = (&key, local) {
            if let Some(reason) = cache.rejected.get(k.as_bytes(), pi, generation, now) {
                env.note(CacheEvent::RejectedHit);
                return Err(Unverified::deny(reason));
            }
            let shared = env
                .shared_verified(k, generation, now)
                .filter(|v| v.provider == pi && now < v.valid_until);
            if let Some(v) = shared {
                env.note(CacheEvent::SharedHit);
                let v = Rc::new(v);
                cache.insert_key(token, l, v.clone(), generation);
                return Ok(v);
            }
        }
        // The token is decoded already unless its entry was for other keys.
        let jwt = match decoded {
            Some(jwt) => jwt,
            None => jose::decode(token, max_bytes).map_err(Unverified::deny)?,
        };
        env.note(CacheEvent::Verified);
        match verify::verify(&jwt, pi, provider, keys.as_deref(), now) {
            Ok(v) => {
                if let Some(k) = &key {
                    env.share_verified(k, generation, &v, now);
                }
                let v = Rc::new(v);
                if let Some(l) = local {
                    cache.insert_key(token, l, v.clone(), generation);
                }
                Ok(v)
            }
            Err(Reason::KidUnknown) if env.refetch_for_unknown_kid(pi) => Err(Unverified::Wait(pi)),
            Err(reason) => {
                if let Some(k) = &key {
                    cache
                        .rejected
                        .insert(k.as_bytes(), pi, generation, reason, now);
                }
                Err(Unverified::Deny(reason, None))
            }
        }
    }

    /// The provider for a token's `iss`, among those the route allows. It comes before
    /// any key lookup or fetch: a foreign token costs nothing and cannot trigger JWKS
    /// traffic.
    fn provider_for(
        &self,
        claims: &Claims,
        route: Option<&Route>,
    ) -> Result<(usize, &Provider), Unverified> {
        let allowed = route.and_then(|r| r.providers.as_deref());
        let pi = self
            .providers
            .select(claims, allowed)
            .map_err(Unverified::deny)?;
        let provider = self
            .providers
            .get(pi)
            .ok_or(Unverified::Deny(Reason::IssuerUnknown, None))?;
        Ok((pi, provider))
    }

    /// The key set (and its generation) a token of `alg` is checked against. HS* needs
    /// none; neither does an algorithm this provider does not allow (`verify` refuses
    /// it): such a token must not wait for keys, nor be answered 503 by a provider that
    /// has no JWKS at all.
    fn keys_for(
        &self,
        pi: usize,
        provider: &Provider,
        alg: Alg,
        env: &mut dyn Env,
    ) -> Result<(Option<Rc<KeySet>>, u64), Unverified> {
        if is_hmac(alg) || !provider.allows(alg) {
            return Ok((None, 0));
        }
        match env.keys(pi) {
            KeyState::Ready { keys, generation } => Ok((Some(keys), generation)),
            KeyState::Loading => Err(Unverified::Wait(pi)),
            KeyState::Unavailable { retry_after_secs } => Err(Unverified::Deny(
                Reason::JwksUnavailable,
                Some(retry_after_secs),
            )),
        }
    }

    /// Allow a request without a verified token, after its route's limits, which count it
    /// under its client address.
    fn allow_anonymous(
        &self,
        found: Option<&policy::RouteMatch>,
        req: &RequestView,
        request_id: &str,
        env: &mut dyn Env,
        audit: AuditRecord,
    ) -> Decision {
        let route = found.map(|m| m.route);
        let mut headers = Vec::new();
        if let Some(m) = found {
            let cl = self.concurrency.get(m.index).and_then(Option::as_ref);
            if m.route.rate_limit.is_some() || cl.is_some() {
                let value = limits::anonymous_value(env.client_address().as_deref());
                let value_of = |_: &[String]| std::borrow::Cow::Borrowed(value.as_str());
                match limits::check(m.route, cl, value_of, &mut EnvCounters(env)) {
                    Limited::Pass(h) => headers = h,
                    Limited::Deny(reason, retry, h) => {
                        return self.deny_with(reason, request_id, retry, h, audit)
                    }
                }
            }
        }
        let mut d = self.allow(route, None, None, req, request_id, audit);
        if let Decision::Allow { ops, .. } = &mut d {
            ops.extend(
                headers
                    .into_iter()
                    .map(|(name, value)| HeaderOp::SetResponse { name, value }),
            );
        }
        d
    }

    /// A denial whose response carries extra headers (a 429's `RateLimit`).
    fn deny_with(
        &self,
        reason: Reason,
        request_id: &str,
        retry_after_secs: u64,
        headers: Vec<(String, String)>,
        audit: AuditRecord,
    ) -> Decision {
        let mut d = self.deny(reason, request_id, Some(retry_after_secs), audit);
        if let Decision::Deny { response, .. } = &mut d {
            response.headers.extend(headers);
        }
        d
    }

    /// The audit record names the verified token's caller (registered or `unregistered`).
    fn note_caller(&self, audit: &mut AuditRecord, caller: Option<usize>) {
        let registered = caller.and_then(|c| self.callers.get(c));
        audit.caller = Some(self.callers.name_of(caller).to_string());
        audit.owner = registered.and_then(|c| c.owner.clone());
    }

    /// The value a limit counts under: the `caller` key is the registered name (else the
    /// client app id, so unregistered apps do not share one bucket); claim keys as before.
    fn limit_key<'c>(
        &self,
        key: &[String],
        claims: &'c Claims,
        caller: Option<usize>,
    ) -> std::borrow::Cow<'c, str> {
        if matches!(key, [k] if k == "caller") {
            if let Some(c) = caller.and_then(|c| self.callers.get(c)) {
                return std::borrow::Cow::Owned(format!("caller:{}", c.name));
            }
            let app: Vec<String> = callers::APP_ID_CLAIMS
                .iter()
                .map(|c| c.to_string())
                .collect();
            return match ratelimit::caller_key(&app, Some(claims)) {
                std::borrow::Cow::Borrowed(ratelimit::ANONYMOUS) => {
                    std::borrow::Cow::Borrowed(ratelimit::ANONYMOUS)
                }
                v => std::borrow::Cow::Owned(format!("app:{v}")),
            };
        }
        ratelimit::caller_key(key, Some(claims))
    }

    fn allow(
        &self,
        route: Option<&Route>,
        claims: Option<&Claims>,
        token: Option<&TokenLocation>,
        req: &RequestView,
        request_id: &str,
        mut audit: AuditRecord,
    ) -> Decision {
        let mut ops = self.annotator.plan(route, claims, token, req, request_id);
        if self.callers.is_active() {
            // Set in place on every allowed request, "" without a registered caller, so a
            // client's own copy never reaches the backend.
            let name = match audit.caller.as_deref() {
                Some(n) if n != callers::UNREGISTERED && claims.is_some() => n.to_string(),
                _ => String::new(),
            };
            ops.push(HeaderOp::Set {
                name: callers::X_CALLER_NAME.into(),
                value: name,
            });
        }
        audit.allow();
        Decision::Allow { ops, audit }
    }

    fn deny(
        &self,
        reason: Reason,
        request_id: &str,
        retry_after_secs: Option<u64>,
        mut audit: AuditRecord,
    ) -> Decision {
        let response = respond::deny(reason, &self.config.realm, request_id, retry_after_secs);
        audit.deny(reason, response.status);
        Decision::Deny { response, audit }
    }

    /// Answer a request that waited for keys that did not come.
    pub fn deny_unavailable(&self, req: &RequestView, ctx: Ctx, retry_after_secs: u64) -> Decision {
        self.deny_waited(req, ctx, Reason::JwksUnavailable, retry_after_secs)
    }

    /// Answer a request that waited (for keys, or for the gateway's token) in vain.
    pub fn deny_waited(
        &self,
        req: &RequestView,
        ctx: Ctx,
        reason: Reason,
        retry_after_secs: u64,
    ) -> Decision {
        let request_id = annotate::request_id(req, ctx.random);
        let mut audit = AuditRecord::new(ctx.now_ms, &request_id, req);
        audit.route = self
            .routes
            .find_request(req)
            .map(|m| m.route.name.clone())
            .or_else(|| ctx.host_route.map(str::to_string));
        self.deny(reason, &request_id, Some(retry_after_secs), audit)
    }
}

/// The caller's token never goes upstream on such a route: whatever the plan did with
/// `authorization` (clear it, or keep it for `forward_token`), the gateway's token is set
/// in its place (in place, the header recipe of both hosts).
fn lend_credential(ops: &mut Vec<HeaderOp>, token: &str) {
    ops.retain(|op| !matches!(op, HeaderOp::Set { name, .. } | HeaderOp::Clear { name } if name == "authorization"));
    ops.insert(
        0,
        HeaderOp::Set {
            name: "authorization".into(),
            value: format!("Bearer {token}"),
        },
    );
}

/// Deny every request: the configuration could not be loaded (fail closed, never forward).
pub fn deny_config_invalid(realm: &str, req: &RequestView, ctx: Ctx) -> Decision {
    let request_id = annotate::request_id(req, ctx.random);
    let mut audit = AuditRecord::new(ctx.now_ms, &request_id, req);
    let response = respond::deny(Reason::ConfigInvalid, realm, &request_id, Some(30));
    audit.deny(Reason::ConfigInvalid, response.status);
    Decision::Deny { response, audit }
}

/// Why [`Filter::authenticate`] gave no verified claims (yet).
enum Unverified {
    /// Keys for this provider are not usable yet: wait for them.
    Wait(usize),
    /// Deny, with the `Retry-After` seconds for a 503.
    Deny(Reason, Option<u64>),
}

impl Unverified {
    fn deny(r: Reason) -> Unverified {
        Unverified::Deny(r, None)
    }
}

fn is_hmac(alg: Alg) -> bool {
    matches!(alg, Alg::HS256 | Alg::HS384 | Alg::HS512)
}

#[cfg(test)]
mod tests {
    //! The orchestration itself, natively: a fake [`Env`] stands in for the adapter's
    //! JWKS cache and rate-limit store; tokens are signed with the fixed test keys.

    use super::*;
    use crate::jose::testutil::hs_token;
    use crate::jwks::testkeys::{jwks, rsa_jwk, RSA_A_PEM, RSA_B_PEM};
    use serde_json::{json, Value};

    const NOW: u64 = 1_700_000_000;
    const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const T2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const SECRET: &str = "0123456789abcdef0123456789abcdef-engine-test";
    const HS_ISS: &str = "https://hs.example/";
    const OID: &str = "11111111-2222-3333-4444-555555555555";

    mod sign {
        use jwt_simple::prelude::*;

        /// An RS256 token with exactly these claims, signed by `pem` under `kid`.
        pub fn rs256(pem: &str, kid: &str, payload: &serde_json::Value) -> String {
            let custom = payload.as_object().cloned().unwrap_or_default();
            let mut c = Claims::with_custom_claims(custom, Duration::from_secs(1));
            c.issued_at = None;
            c.expires_at = None;
            c.invalid_before = None;
            RS256KeyPair::from_pem(pem)
                .unwrap()
                .with_key_id(kid)
                .sign(c)
                .unwrap()
        }
    }

    fn iss(t: &str) -> String {
        format!("https://login.microsoftonline.com/{t}/v2.0")
    }

    fn claims() -> Value {
        json!({
            "iss": iss(T1), "tid": T1, "aud": "api://gw", "oid": OID, "sub": "s-1",
            "azp": "app-1", "team": "fraud", "roles": ["Endpoint.Score"],
            "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600, "ver": "2.0"
        })
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn token(c: &Value) -> String {
        sign::rs256(RSA_A_PEM, "k1", c)
    }

    fn good() -> String {
        token(&claims())
    }

    fn hs(c: &Value) -> String {
        hs_token(
            Alg::HS256,
            SECRET.as_bytes(),
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &c.to_string(),
        )
    }

    fn config(extra: &str) -> String {
        format!(
            r#"{{
            "providers": [
              {{"name": "entra", "issuers": ["https://login.microsoftonline.com/{{tenantid}}/v2.0"],
                "tenants": ["{T1}"],
                "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
                "audiences": ["api://gw"]}},
              {{"name": "hs", "issuers": ["{HS_ISS}"], "audiences": ["api://gw"],
                "algorithms": ["HS256"], "hmac_secret": "{SECRET}"}}
            ],
            "routes": [
              {{"name": "health", "match": {{"path": "/health"}}, "auth": "none"}},
              {{"name": "opt", "match": {{"path_prefix": "/optional/"}}, "auth": "optional"}},
              {{"name": "team", "match": {{"path": "/teams/{{team}}/score", "methods": ["POST"]}},
                "require": {{"claim": "team", "equals": "{{path.team}}"}},
                "set_request_headers": {{"authorization": "Bearer ml-key",
                                         "azureml-model-deployment": "blue"}},
                "rate_limit": {{"requests": 5, "window_seconds": 60, "key": "oid"}}}},
              {{"name": "cors", "match": {{"path_prefix": "/cors/"}}, "cors_preflight": "allow"}},
              {{"name": "hs-only", "match": {{"path_prefix": "/hs/"}}, "providers": ["hs"]}},
              {{"name": "any", "match": {{"path_prefix": "/any/"}}}}
            ]{extra}
        }}"#
        )
    }

    fn filter(extra: &str) -> Filter {
        Filter::from_json(config(extra).as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    enum Keys {
        Ready(Rc<KeySet>, u64),
        Loading,
        Unavailable(u64),
    }

    /// The adapter's state as the engine sees it, with counters.
    struct FakeEnv {
        keys: Keys,
        refetch_allowed: bool,
        limited: bool,
        key_lookups: usize,
        refetches: usize,
        rate_calls: Vec<(String, u64, u64)>,
        /// `None`: loading; `Some(Ok(t))`: ready; `Some(Err(s))`: unavailable, retry in s.
        credential: Option<Result<&'static str, u64>>,
        credential_asks: Vec<usize>,
        slot_asks: Vec<(String, u64)>,
        slots_full: bool,
        /// What "another worker" shared, and what this one shared or noted.
        shared: Option<([u8; 32], Verified)>,
        shared_puts: usize,
        notes: Vec<CacheEvent>,
    }

    impl FakeEnv {
        fn ready() -> FakeEnv {
            let ks = KeySet::parse(jwks(&[rsa_jwk(RSA_A_PEM, "k1", "")]).as_bytes()).unwrap();
            FakeEnv::with(Keys::Ready(Rc::new(ks), 1))
        }
        fn with(keys: Keys) -> FakeEnv {
            FakeEnv {
                keys,
                refetch_allowed: false,
                limited: false,
                key_lookups: 0,
                refetches: 0,
                rate_calls: Vec::new(),
                credential: Some(Ok("gw-token")),
                credential_asks: Vec::new(),
                slot_asks: Vec::new(),
                slots_full: false,
                shared: None,
                shared_puts: 0,
                notes: Vec::new(),
            }
        }
    }

    impl Env for FakeEnv {
        fn keys(&mut self, provider: usize) -> KeyState {
            assert_eq!(provider, 0, "only the JWKS provider has keys");
            self.key_lookups += 1;
            match &self.keys {
                Keys::Ready(k, g) => KeyState::Ready {
                    keys: Rc::clone(k),
                    generation: *g,
                },
                Keys::Loading => KeyState::Loading,
                Keys::Unavailable(s) => KeyState::Unavailable {
                    retry_after_secs: *s,
                },
            }
        }
        fn refetch_for_unknown_kid(&mut self, _provider: usize) -> bool {
            self.refetches += 1;
            self.refetch_allowed
        }
        fn rate_limit(&mut self, bucket: &str, limit: u64, window: u64) -> ratelimit::Verdict {
            self.rate_calls.push((bucket.to_string(), limit, window));
            ratelimit::Verdict {
                allowed: !self.limited,
                retry_after_secs: if self.limited { 17 } else { 0 },
                remaining: if self.limited { 0 } else { 3 },
                reset_secs: if self.limited { 17 } else { 40 },
            }
        }
        fn acquire_slot(&mut self, bucket: &str, max_in_flight: u64) -> bool {
            self.slot_asks.push((bucket.to_string(), max_in_flight));
            !self.slots_full
        }
        fn client_address(&mut self) -> Option<String> {
            Some("10.1.2.3".into())
        }
        fn shared_verified(&mut self, key: &TokenKey, _: u64, _: u64) -> Option<Verified> {
            let (k, v) = self.shared.as_ref()?;
            (k == key.as_bytes()).then(|| v.clone())
        }
        fn share_verified(&mut self, key: &TokenKey, _: u64, v: &Verified, _: u64) {
            self.shared_puts += 1;
            self.shared = Some((*key.as_bytes(), v.clone()));
        }
        fn note(&mut self, event: CacheEvent) {
            self.notes.push(event);
        }
        fn upstream_token(&mut self, credential: usize) -> CredentialState {
            self.credential_asks.push(credential);
            match self.credential {
                Some(Ok(t)) => CredentialState::Ready(t.into()),
                None => CredentialState::Loading,
                Some(Err(s)) => CredentialState::Unavailable {
                    retry_after_secs: s,
                },
            }
        }
    }

    fn ctx() -> Ctx<'static> {
        Ctx {
            now_ms: NOW * 1000,
            random: 0x1234,
            host_route: None,
        }
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct Run<'f> {
        filter: &'f Filter,
        env: FakeEnv,
        cache: VerifiedCache,
    }

    impl<'f> Run<'f> {
        fn new(filter: &'f Filter, env: FakeEnv) -> Run<'f> {
            Run {
                filter,
                env,
                cache: VerifiedCache::new(16),
            }
        }
        fn call(&mut self, method: &str, path: &str, h: &[(&str, &str)]) -> Decision {
            let h = headers(h);
            let req = RequestView {
                method,
                path,
                authority: "ml.example.com",
                headers: &h,
            };
            self.filter
                .decide(&req, ctx(), &mut self.env, &mut self.cache)
        }
        fn bearer(&mut self, method: &str, path: &str, token: &str) -> Decision {
            let auth = format!("Bearer {token}");
            self.call(method, path, &[("authorization", &auth)])
        }
    }

    #[track_caller]
    fn denied(d: &Decision) -> (u32, &'static str, &LocalResponse) {
        match d {
            Decision::Deny { response, audit } => {
                let reason = audit.reason.expect("a denial has a reason").code();
                assert_eq!(audit.status, response.status);
                let body: Value = serde_json::from_str(&response.body).unwrap();
                assert_eq!(body["error"], reason);
                (response.status, reason, response)
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_deny(d: &Decision, status: u32, reason: &str) {
        let (s, r, _) = denied(d);
        assert_eq!((s, r), (status, reason), "{d:?}");
    }

    #[track_caller]
    fn allowed(d: &Decision) -> &[HeaderOp] {
        match d {
            Decision::Allow { ops, audit } => {
                assert_eq!(audit.reason, None);
                ops
            }
            other => panic!("expected allow, got {other:?}"),
        }
    }

    fn set<'a>(ops: &'a [HeaderOp], name: &str) -> Option<&'a str> {
        ops.iter().find_map(|o| match o {
            HeaderOp::Set { name: n, value } if n == name => Some(value.as_str()),
            _ => None,
        })
    }

    fn cleared(ops: &[HeaderOp], name: &str) -> bool {
        ops.iter()
            .any(|o| matches!(o, HeaderOp::Clear { name: n } if n == name))
    }

    fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn auth_none_optional_required() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        // none: no token needed, no key lookup.
        allowed(&run.call("GET", "/health", &[]));
        // optional: without a token allowed (identity headers blanked), with one verified.
        let ops = allowed(&run.call("GET", "/optional/x", &[])).to_vec();
        assert_eq!(set(&ops, "x-caller-oid"), Some(""));
        assert_eq!(run.env.key_lookups, 0);
        let ops = allowed(&run.bearer("GET", "/optional/x", &good())).to_vec();
        assert_eq!(set(&ops, "x-caller-oid"), Some(OID));
        // optional with a bad token is still a bad token.
        let expired = token(&with(claims(), "exp", json!(NOW - 3600)));
        assert_deny(
            &run.bearer("GET", "/optional/x", &expired),
            401,
            "token_expired",
        );
        // required: missing token → 401 without an error code.
        let d = run.call("POST", "/teams/fraud/score", &[]);
        let (_, _, resp) = denied(&d);
        assert_deny(&d, 401, "token_missing");
        let www = header(resp, "www-authenticate").unwrap();
        assert!(
            www.starts_with("Bearer realm=") && !www.contains("error="),
            "{www}"
        );
        allowed(&run.bearer("POST", "/teams/fraud/score", &good()));
    }

    #[test]
    fn key_states_loading_unavailable_and_unknown_kid() {
        let f = filter("");
        let t = good();

        let mut run = Run::new(&f, FakeEnv::with(Keys::Loading));
        assert!(matches!(
            run.bearer("GET", "/any/x", &t),
            Decision::WaitForKeys { provider: 0 }
        ));

        let mut run = Run::new(&f, FakeEnv::with(Keys::Unavailable(42)));
        let d = run.bearer("GET", "/any/x", &t);
        let (_, _, resp) = denied(&d);
        assert_deny(&d, 503, "jwks_unavailable");
        assert_eq!(header(resp, "retry-after"), Some("42"));
        assert!(!resp.body.contains(&t));

        // A kid the key set does not have: wait for a refetch when one may run...
        let other = sign::rs256(RSA_B_PEM, "k2", &claims());
        let mut env = FakeEnv::ready();
        env.refetch_allowed = true;
        let mut run = Run::new(&f, env);
        assert!(matches!(
            run.bearer("GET", "/any/x", &other),
            Decision::WaitForKeys { provider: 0 }
        ));
        assert_eq!(run.env.refetches, 1);
        // ...and refuse it when one ran too recently.
        run.env.refetch_allowed = false;
        assert_deny(&run.bearer("GET", "/any/x", &other), 401, "kid_unknown");
        // Another key under a known kid is a bad signature, never a refetch.
        let forged = sign::rs256(RSA_B_PEM, "k1", &claims());
        let before = run.env.refetches;
        assert_deny(
            &run.bearer("GET", "/any/x", &forged),
            401,
            "signature_invalid",
        );
        assert_eq!(run.env.refetches, before);
    }

    #[test]
    fn tokens_that_cannot_verify_never_wait_for_keys() {
        let f = filter("");
        // Unknown issuer: no key lookup at all (no JWKS traffic for foreign tokens).
        let mut run = Run::new(&f, FakeEnv::with(Keys::Loading));
        let t = token(&with(claims(), "iss", json!("https://evil.example/")));
        assert_deny(&run.bearer("GET", "/any/x", &t), 401, "issuer_unknown");
        let t = token(&with(
            with(claims(), "tid", json!(T2)),
            "iss",
            json!(iss(T2)),
        ));
        assert_deny(&run.bearer("GET", "/any/x", &t), 401, "tenant_not_allowed");
        // A malformed token fails before anything else.
        assert_deny(&run.bearer("GET", "/any/x", "a.b"), 401, "token_malformed");
        // HS token with the JWKS provider's issuer: alg not allowed, without waiting.
        let t = hs(&claims());
        assert_deny(&run.bearer("GET", "/any/x", &t), 401, "alg_not_allowed");
        assert_eq!(run.env.key_lookups, 0);
        assert_eq!(run.env.refetches, 0);
    }

    #[test]
    fn asymmetric_token_for_an_hmac_only_provider_is_alg_not_allowed() {
        // Regression: an RS256 token naming the HS-only provider's issuer asked the
        // adapter for keys that provider never has, and was answered 503.
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::with(Keys::Unavailable(5)));
        let t = token(&with(claims(), "iss", json!(HS_ISS)));
        assert_deny(&run.bearer("GET", "/any/x", &t), 401, "alg_not_allowed");
        assert_eq!(run.env.key_lookups, 0);
        // The HS provider's own tokens verify without any key set.
        let t = hs(&with(claims(), "iss", json!(HS_ISS)));
        allowed(&run.bearer("GET", "/hs/x", &t));
        assert_eq!(run.env.key_lookups, 0);
        // The route restricted to the HS provider refuses the Entra token before keys.
        assert_deny(&run.bearer("GET", "/hs/x", &good()), 401, "issuer_unknown");
        assert_eq!(run.env.key_lookups, 0);
    }

    #[test]
    fn route_policy_rate_limit_and_no_route() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        // The team guard: a fraud token on the churn path.
        let d = run.bearer("POST", "/teams/churn/score", &good());
        assert_deny(&d, 403, "insufficient_scope");
        let (_, _, resp) = denied(&d);
        assert!(header(resp, "www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\""));
        // Allowed: counted against the caller's bucket.
        allowed(&run.bearer("POST", "/teams/fraud/score", &good()));
        assert_eq!(run.env.rate_calls.len(), 1);
        let (bucket, limit, window) = run.env.rate_calls[0].clone();
        let mine = claims().as_object().cloned().unwrap();
        assert_eq!(
            bucket,
            ratelimit::bucket_key("team", &["oid".into()], &mine)
        );
        assert_eq!((limit, window), (5, 60));
        let theirs = with(claims(), "oid", json!("another-caller"));
        allowed(&run.bearer("POST", "/teams/fraud/score", &token(&theirs)));
        assert_ne!(run.env.rate_calls[1].0, bucket, "one bucket per caller");
        // Limited: 429 with the store's Retry-After.
        run.env.limited = true;
        let d = run.bearer("POST", "/teams/fraud/score", &good());
        assert_deny(&d, 429, "rate_limited");
        assert_eq!(header(denied(&d).2, "retry-after"), Some("17"));
        // A policy failure is not counted against the limit.
        let calls = run.env.rate_calls.len();
        assert_deny(
            &run.bearer("POST", "/teams/churn/score", &good()),
            403,
            "insufficient_scope",
        );
        assert_eq!(run.env.rate_calls.len(), calls);

        // No route (GET is not the team route's method): deny by default, before any
        // token work.
        let mut run = Run::new(&f, FakeEnv::with(Keys::Loading));
        assert_deny(
            &run.bearer("GET", "/teams/fraud/score", &good()),
            403,
            "no_route",
        );
        assert_deny(&run.call("GET", "/elsewhere", &[]), 403, "no_route");
        assert_eq!(run.env.key_lookups, 0);
    }

    const CALLERS: &str = r#", "callers": [
        {"name": "fraud-scoring", "app_ids": ["app-1"], "owner": "fraud-team", "contact": "oncall@x"},
        {"name": "batch", "app_ids": ["app-2"]}]"#;

    #[track_caller]
    fn audit_of(d: &Decision) -> &AuditRecord {
        match d {
            Decision::Allow { audit, .. } | Decision::Deny { audit, .. } => audit,
            other => panic!("no audit record in {other:?}"),
        }
    }

    #[test]
    fn registered_callers_are_named_and_admitted_by_route() {
        let cfg = config(CALLERS).replace(
            r#"{"name": "any", "match": {"path_prefix": "/any/"}}"#,
            r#"{"name": "any", "match": {"path_prefix": "/any/"}, "callers": ["batch"]}"#,
        );
        let f = Filter::from_json(cfg.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut run = Run::new(&f, FakeEnv::ready());
        // azp app-1 is fraud-scoring: named in the audit line and upstream.
        let d = run.bearer("POST", "/teams/fraud/score", &good());
        let ops = allowed(&d);
        assert_eq!(set(ops, "x-caller-name"), Some("fraud-scoring"));
        let a = audit_of(&d);
        assert_eq!(
            (a.caller.as_deref(), a.owner.as_deref()),
            (Some("fraud-scoring"), Some("fraud-team"))
        );
        assert!(crate::metrics::decision_counter(a).contains("_caller=fraud-scoring_"));
        // A spoofed x-caller-name is overwritten in place; two copies are refused.
        let auth = format!("Bearer {}", good());
        let d = run.call(
            "POST",
            "/teams/fraud/score",
            &[("authorization", &auth), ("x-caller-name", "batch")],
        );
        assert_eq!(set(allowed(&d), "x-caller-name"), Some("fraud-scoring"));
        let d = run.call(
            "POST",
            "/teams/fraud/score",
            &[
                ("authorization", &auth),
                ("x-caller-name", "a"),
                ("x-caller-name", "b"),
            ],
        );
        assert_deny(&d, 400, "duplicate_identity_header");
        // The route admits only batch.
        let d = run.bearer("GET", "/any/x", &good());
        assert_deny(&d, 403, "caller_not_allowed");
        assert_eq!(audit_of(&d).caller.as_deref(), Some("fraud-scoring"));
        let batch = token(&with(claims(), "azp", json!("app-2")));
        allowed(&run.bearer("GET", "/any/x", &batch));
        // v1 tokens name the app in appid.
        let mut v1 = claims();
        v1.as_object_mut().unwrap().remove("azp");
        v1["appid"] = json!("app-2");
        allowed(&run.bearer("GET", "/any/x", &token(&v1)));
        // Unregistered: allowed by default, named so, header blank.
        let stranger = token(&with(claims(), "azp", json!("app-9")));
        let d = run.bearer("POST", "/teams/fraud/score", &stranger);
        assert_eq!(set(allowed(&d), "x-caller-name"), Some(""));
        assert_eq!(audit_of(&d).caller.as_deref(), Some("unregistered"));
        assert_eq!(audit_of(&d).owner, None);
        assert_deny(
            &run.bearer("GET", "/any/x", &stranger),
            403,
            "caller_not_allowed",
        );
        // Unauthenticated requests carry a blank x-caller-name too.
        let d = run.call("GET", "/health", &[("x-caller-name", "fraud-scoring")]);
        assert_eq!(set(allowed(&d), "x-caller-name"), Some(""));
        // A denial before verification names no caller.
        let d = run.bearer("POST", "/teams/fraud/score", "not.a.jwt");
        assert_eq!(audit_of(&d).caller, None);
    }

    #[test]
    fn unknown_callers_deny_refuses_unregistered_apps_everywhere() {
        let f = filter(&format!(r#"{CALLERS}, "unknown_callers": "deny""#));
        let mut run = Run::new(&f, FakeEnv::ready());
        allowed(&run.bearer("POST", "/teams/fraud/score", &good()));
        let stranger = token(&with(claims(), "azp", json!("app-9")));
        assert_deny(
            &run.bearer("POST", "/teams/fraud/score", &stranger),
            403,
            "caller_unknown",
        );
        assert_deny(
            &run.bearer("GET", "/optional/x", &stranger),
            403,
            "caller_unknown",
        );
        // Without a token there is no caller to refuse: auth none / optional stay open.
        allowed(&run.call("GET", "/optional/x", &[]));
        allowed(&run.call("GET", "/health", &[]));
        // Without a registry nothing changes: no header, every app admitted.
        let plain = filter("");
        let mut run = Run::new(&plain, FakeEnv::ready());
        let d = run.bearer("POST", "/teams/fraud/score", &stranger);
        assert_eq!(set(allowed(&d), "x-caller-name"), None);
    }

    #[test]
    fn rate_limits_by_caller_and_limit_headers() {
        let cfg = config(CALLERS).replace(r#""key": "oid""#, r#""key": "caller""#);
        let f = Filter::from_json(cfg.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut run = Run::new(&f, FakeEnv::ready());
        let d = run.bearer("POST", "/teams/fraud/score", &good());
        // Allowed on a limited route: the response carries the quota left.
        let for_response: Vec<(&str, &str)> = allowed(&d)
            .iter()
            .filter_map(|o| match o {
                HeaderOp::SetResponse { name, value } => Some((name.as_str(), value.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            for_response,
            [
                ("ratelimit-policy", r#""team";q=5;w=60"#),
                ("ratelimit", r#""team";r=3;t=40"#)
            ]
        );
        let other_user = token(&with(claims(), "oid", json!("another-user")));
        allowed(&run.bearer("POST", "/teams/fraud/score", &other_user));
        let stranger = token(&with(claims(), "azp", json!("app-9")));
        allowed(&run.bearer("POST", "/teams/fraud/score", &stranger));
        let b: Vec<&str> = run.env.rate_calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            b[0], b[1],
            "one bucket per registered caller, whoever the user"
        );
        assert_eq!(
            b[0],
            ratelimit::bucket_key_for_value("team", "caller:fraud-scoring")
        );
        assert_eq!(b[2], ratelimit::bucket_key_for_value("team", "app:app-9"));
        run.env.limited = true;
        let d = run.bearer("POST", "/teams/fraud/score", &good());
        assert_deny(&d, 429, "rate_limited");
        let r = denied(&d).2;
        assert_eq!(header(r, "retry-after"), Some("17"));
        assert_eq!(header(r, "ratelimit-policy"), Some(r#""team";q=5;w=60"#));
        assert_eq!(header(r, "ratelimit"), Some(r#""team";r=0;t=17"#));
    }

    #[test]
    fn concurrency_limits_ask_for_a_slot_last_and_answer_429_when_full() {
        let cfg = config(CALLERS).replace(
            r#""rate_limit": {"requests": 5, "window_seconds": 60, "key": "oid"}"#,
            r#""concurrency_limit": {"max_in_flight": 2, "key": "caller"}"#,
        );
        let f = Filter::from_json(cfg.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut run = Run::new(&f, FakeEnv::ready());
        allowed(&run.bearer("POST", "/teams/fraud/score", &good()));
        assert_eq!(
            run.env.slot_asks,
            [(concurrency::bucket_key("team", "caller:fraud-scoring"), 2)]
        );
        // A denied request never takes a slot.
        assert_deny(
            &run.bearer("POST", "/teams/churn/score", &good()),
            403,
            "insufficient_scope",
        );
        assert_eq!(run.env.slot_asks.len(), 1);
        run.env.slots_full = true;
        let d = run.bearer("POST", "/teams/fraud/score", &good());
        assert_deny(&d, 429, "concurrency_limited");
        assert_eq!(header(denied(&d).2, "retry-after"), Some("1"));
        // Load-time checks name the field.
        for (bad, field) in [
            (
                r#"{"max_in_flight": 0}"#,
                "routes[2].concurrency_limit.max_in_flight",
            ),
            (
                r#"{"max_in_flight": 1001}"#,
                "routes[2].concurrency_limit.max_in_flight",
            ),
            (
                r#"{"max_in_flight": 1, "key": "a..b"}"#,
                "routes[2].concurrency_limit.key",
            ),
            (
                r#"{"max_in_flight": 1, "per": "oid"}"#,
                "routes[2].concurrency_limit.per",
            ),
        ] {
            let cfg = config("").replace(
                r#""rate_limit": {"requests": 5, "window_seconds": 60, "key": "oid"}"#,
                &format!(r#""concurrency_limit": {bad}"#),
            );
            let e = Filter::from_json(cfg.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(e.path, field, "{bad}: {e}");
        }
    }

    #[test]
    fn requests_without_a_token_count_under_their_client_address() {
        let cfg = config("")
            .replace(
                r#"{"name": "health", "match": {"path": "/health"}, "auth": "none"}"#,
                r#"{"name": "health", "match": {"path": "/health"}, "auth": "none",
                    "rate_limit": {"requests": 100, "window_seconds": 60},
                    "concurrency_limit": {"max_in_flight": 3}}"#,
            )
            .replace(
                r#"{"name": "opt", "match": {"path_prefix": "/optional/"}, "auth": "optional"}"#,
                r#"{"name": "opt", "match": {"path_prefix": "/optional/"}, "auth": "optional",
                    "rate_limit": {"requests": 100, "window_seconds": 60}}"#,
            );
        let f = Filter::from_json(cfg.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut run = Run::new(&f, FakeEnv::ready());
        let d = run.call("GET", "/health", &[]);
        assert!(allowed(&d)
            .iter()
            .any(|o| matches!(o, HeaderOp::SetResponse { name, .. } if name == "ratelimit")));
        let anon = ratelimit::bucket_key_for_value("health", "addr:10.1.2.3");
        assert_eq!(run.env.rate_calls[0].0, anon);
        assert_eq!(
            run.env.slot_asks,
            [(concurrency::bucket_key("health", "addr:10.1.2.3"), 3)]
        );
        // optional: without a token by address; with one, by its key claim (oid).
        allowed(&run.call("GET", "/optional/x", &[]));
        allowed(&run.bearer("GET", "/optional/x", &good()));
        let mine = claims().as_object().cloned().unwrap();
        assert_eq!(
            run.env.rate_calls[1].0,
            ratelimit::bucket_key_for_value("opt", "addr:10.1.2.3")
        );
        assert_eq!(
            run.env.rate_calls[2].0,
            ratelimit::bucket_key("opt", &["oid".into()], &mine)
        );
        run.env.limited = true;
        let d = run.call("GET", "/health", &[]);
        assert_deny(&d, 429, "rate_limited");
        assert!(header(denied(&d).2, "ratelimit").is_some());
        run.env.limited = false;
        run.env.slots_full = true;
        assert_deny(&run.call("GET", "/health", &[]), 429, "concurrency_limited");
        // Unlimited routes ask for nothing.
        let calls = (run.env.rate_calls.len(), run.env.slot_asks.len());
        allowed(&run.bearer("GET", "/any/x", &good()));
        assert_eq!((run.env.rate_calls.len(), run.env.slot_asks.len()), calls);
    }

    #[test]
    fn on_no_route_allow_authenticated() {
        let f = filter(r#", "on_no_route": "allow_authenticated""#);
        let mut run = Run::new(&f, FakeEnv::ready());
        let ops = allowed(&run.bearer("GET", "/elsewhere", &good())).to_vec();
        assert_eq!(set(&ops, "x-caller-oid"), Some(OID));
        assert!(cleared(&ops, "authorization"));
        assert_deny(&run.call("GET", "/elsewhere", &[]), 401, "token_missing");
        let bad = sign::rs256(RSA_B_PEM, "k1", &claims());
        assert_deny(
            &run.bearer("GET", "/elsewhere", &bad),
            401,
            "signature_invalid",
        );
        // A target not in normal form is refused before any route.
        assert_deny(
            &run.bearer("GET", "/a%2Fb", &good()),
            400,
            "path_not_normalized",
        );
    }

    #[test]
    fn targets_not_in_normal_form_are_400_even_on_auth_none_routes() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        for p in [
            "/health/../score",
            "/score/../../health",
            "/score/%2e%2e/health",
            "//health",
            "/%68ealth",
            "/a/%252e%252e/health",
        ] {
            assert_deny(&run.call("GET", p, &[]), 400, "path_not_normalized");
            assert_deny(&run.bearer("GET", p, &good()), 400, "path_not_normalized");
        }
    }

    #[test]
    fn duplicate_identity_header_is_400() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let auth = format!("Bearer {}", good());
        let d = run.call(
            "POST",
            "/teams/fraud/score",
            &[
                ("authorization", &auth),
                ("x-caller-oid", "spoof-1"),
                ("x-caller-oid", "spoof-2"),
            ],
        );
        assert_deny(&d, 400, "duplicate_identity_header");
        assert_eq!(run.env.key_lookups, 0);
        // Two tokens (duplicate authorization) are refused too.
        let d = run.call(
            "POST",
            "/teams/fraud/score",
            &[("authorization", &auth), ("authorization", &auth)],
        );
        assert_eq!(denied(&d).0, 400, "{d:?}");
        // A single spoofed copy is overwritten, not refused.
        let d = run.call(
            "POST",
            "/teams/fraud/score",
            &[("authorization", &auth), ("x-caller-oid", "spoof")],
        );
        assert_eq!(set(allowed(&d), "x-caller-oid"), Some(OID));
    }

    #[test]
    fn cors_preflight_only_where_the_route_allows_it() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::with(Keys::Loading));
        let pre = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ];
        let ops = allowed(&run.call("OPTIONS", "/cors/x", &pre)).to_vec();
        assert_eq!(set(&ops, "x-caller-oid"), Some(""));
        assert_deny(&run.call("OPTIONS", "/any/x", &pre), 401, "token_missing");
        // Not a preflight (no Access-Control-Request-Method): a token is required.
        assert_deny(
            &run.call("OPTIONS", "/cors/x", &pre[..1]),
            401,
            "token_missing",
        );
        assert_eq!(run.env.key_lookups, 0);
    }

    #[test]
    fn verified_token_cache_is_used_on_the_second_call() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let t = good();
        allowed(&run.bearer("GET", "/any/x", &t));
        assert_eq!((run.cache.len(), run.cache.stats().0), (1, 0));
        allowed(&run.bearer("GET", "/any/x", &t));
        assert_eq!(run.cache.stats().0, 1, "second call is a cache hit");
        // A hit still goes through route policy.
        assert_deny(
            &run.bearer("POST", "/teams/churn/score", &t),
            403,
            "insufficient_scope",
        );
        assert_eq!(run.cache.stats().0, 2);
        // New key generation: the entry is not reused, the token is verified again.
        if let Keys::Ready(_, g) = &mut run.env.keys {
            *g = 2;
        }
        allowed(&run.bearer("GET", "/any/x", &t));
        assert_eq!(run.cache.stats().0, 2);
        // An expired token is not served from the cache.
        let short = token(&with(claims(), "exp", json!(NOW + 1)));
        allowed(&run.bearer("GET", "/any/x", &short));
        let later = Ctx {
            now_ms: (NOW + 120) * 1000,
            ..ctx()
        };
        let h = headers(&[("authorization", &format!("Bearer {short}"))]);
        let req = RequestView {
            method: "GET",
            path: "/any/x",
            authority: "ml.example.com",
            headers: &h,
        };
        let d = f.decide(&req, later, &mut run.env, &mut run.cache);
        assert_deny(&d, 401, "token_expired");
    }

    #[test]
    fn a_cached_token_is_written_as_verified_on_a_hit_and_as_claimed_when_denied() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let t = good();
        allowed(&run.bearer("GET", "/any/x", &t));
        let hit = run.bearer("GET", "/any/x", &t);
        assert_eq!(run.cache.stats().0, 1, "a hit");
        let a = audit_of(&hit);
        assert!(a.subject.is_some() && a.iss.is_some(), "{a:?}");
        assert!(
            a.claimed_subject.is_none() && a.claimed_iss.is_none(),
            "{a:?}"
        );
        // The cached token on a route that does not allow its provider: denied before
        // any cache lookup counts, and only claimed.
        let d = run.bearer("GET", "/hs/x", &t);
        let a = audit_of(&d);
        assert!(a.claimed_subject.is_some() && a.subject.is_none(), "{a:?}");
        // Keys unavailable: the provider is named, the caller only claimed.
        run.env.keys = Keys::Unavailable(30);
        let d = run.bearer("GET", "/any/x", &t);
        assert_deny(&d, 503, "jwks_unavailable");
        let a = audit_of(&d);
        assert_eq!(a.provider.as_deref(), Some("entra"));
        assert!(a.claimed_subject.is_some() && a.subject.is_none(), "{a:?}");
    }

    #[test]
    fn a_shared_verification_is_taken_only_for_the_same_provider() {
        let f = filter("");
        let t = good();
        // Worker A verifies and shares.
        let mut a = Run::new(&f, FakeEnv::ready());
        allowed(&a.bearer("GET", "/any/x", &t));
        assert_eq!(
            (a.env.notes.clone(), a.env.shared_puts),
            (vec![CacheEvent::Verified], 1)
        );
        // Worker B takes it: no verification of its own, and its own cache answers next.
        let mut b = Run::new(&f, FakeEnv::ready());
        b.env.shared = a.env.shared.clone();
        allowed(&b.bearer("GET", "/any/x", &t));
        allowed(&b.bearer("GET", "/any/x", &t));
        assert_eq!(b.env.notes, vec![CacheEvent::SharedHit]);
        assert_eq!(b.env.shared_puts, 0);
        // A record naming another provider is not this token's verification here.
        let mut c = Run::new(&f, FakeEnv::ready());
        c.env.shared = a
            .env
            .shared
            .clone()
            .map(|(k, v)| (k, Verified { provider: 1, ..v }));
        allowed(&c.bearer("GET", "/any/x", &t));
        assert_eq!(c.env.notes, vec![CacheEvent::Verified]);
    }

    #[test]
    fn a_repeated_bad_token_is_refused_with_its_reason_without_verifying_again() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let t = good();
        let (rest, sig) = t.rsplit_once('.').unwrap();
        let forged = format!(
            "{rest}.{}{}",
            if sig.starts_with('A') { "B" } else { "A" },
            &sig[1..]
        );
        let expired = token(&with(claims(), "exp", json!(NOW - 600)));
        for bad in [&forged, &expired] {
            let fresh = run.bearer("GET", "/any/x", bad);
            let again = run.bearer("GET", "/any/x", bad);
            assert_eq!(denied(&fresh).1, denied(&again).1);
        }
        assert_eq!(
            run.env.notes,
            [CacheEvent::Verified, CacheEvent::RejectedHit].repeat(2)
        );
        assert_eq!(run.env.shared_puts, 0, "a failure is never shared");
        // New keys: checked afresh.
        if let Keys::Ready(_, g) = &mut run.env.keys {
            *g = 9;
        }
        assert_deny(
            &run.bearer("GET", "/any/x", &forged),
            401,
            "signature_invalid",
        );
        assert_eq!(run.env.notes.last(), Some(&CacheEvent::Verified));
    }

    #[test]
    fn allow_plan_sets_identity_and_replaces_or_clears_the_token() {
        let f = filter("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let t = good();
        // The team route sets its own authorization (endpoint key) in place of the token.
        let d = run.bearer("POST", "/teams/fraud/score", &t);
        let ops = allowed(&d);
        assert_eq!(set(ops, "authorization"), Some("Bearer ml-key"));
        assert!(!cleared(ops, "authorization"));
        assert_eq!(set(ops, "azureml-model-deployment"), Some("blue"));
        assert_eq!(set(ops, "x-caller-oid"), Some(OID));
        assert_eq!(set(ops, "x-caller-tid"), Some(T1));
        assert_eq!(set(ops, "x-caller-app"), Some("app-1"));
        assert_eq!(set(ops, "x-caller-sub"), Some("s-1"));
        assert!(
            !format!("{ops:?}").contains(&t),
            "the token is never forwarded"
        );
        if let Decision::Allow { audit, .. } = &d {
            assert_eq!(audit.route.as_deref(), Some("team"));
            assert_eq!(audit.provider.as_deref(), Some("entra"));
            assert_eq!(audit.kid.as_deref(), Some("k1"));
        }
        // Elsewhere the token is cleared.
        let ops = allowed(&run.bearer("GET", "/any/x", &t)).to_vec();
        assert!(cleared(&ops, "authorization"), "{ops:?}");

        // forward_token keeps it.
        let f = filter(r#", "forward_token": true"#);
        let mut run = Run::new(&f, FakeEnv::ready());
        let ops = allowed(&run.bearer("GET", "/any/x", &t)).to_vec();
        assert!(!cleared(&ops, "authorization"), "{ops:?}");
        assert_eq!(set(&ops, "authorization"), None);
    }

    /// `config("")` plus a route `gw` (before `any`) that lends the credential `aml`.
    fn lending(extra: &str) -> Filter {
        let json = config(&format!(
            r#", "upstream_credentials": [{{"name": "aml", "managed_identity": {{}}}}]{extra}"#
        ))
        .replace(
            r#"{"name": "any""#,
            r#"{"name": "gw", "match": {"path_prefix": "/gw/"}, "upstream_credential": "aml",
                "require": {"claim": "team", "equals": "fraud"},
                "rate_limit": {"requests": 5, "window_seconds": 60, "key": "oid"}},
              {"name": "any""#,
        );
        Filter::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_lending_route_sends_the_gateway_token_and_never_the_callers() {
        for forward in ["", r#", "forward_token": true"#] {
            let f = lending(forward);
            let mut run = Run::new(&f, FakeEnv::ready());
            let t = good();
            let ops = allowed(&run.bearer("POST", "/gw/score", &t)).to_vec();
            assert_eq!(
                set(&ops, "authorization"),
                Some("Bearer gw-token"),
                "{forward}"
            );
            let auth_ops = ops
                .iter()
                .filter(|o| matches!(o, HeaderOp::Set { name, .. } | HeaderOp::Clear { name } if name == "authorization"))
                .count();
            assert_eq!(auth_ops, 1, "{ops:?}");
            assert!(!format!("{ops:?}").contains(&t));
            assert_eq!(set(&ops, "x-caller-oid"), Some(OID));
            assert_eq!(run.env.credential_asks, vec![0]);
            if let Decision::Allow { audit, .. } = run.bearer("POST", "/gw/score", &t) {
                assert_eq!(audit.credential.as_deref(), Some("aml"));
                let line = serde_json::to_string(&audit).unwrap();
                assert!(
                    line.contains(r#""credential":"aml""#) && !line.contains("gw-token"),
                    "{line}"
                );
            }
            // Other routes never touch it.
            let ops = allowed(&run.bearer("GET", "/any/x", &t)).to_vec();
            assert_ne!(set(&ops, "authorization"), Some("Bearer gw-token"));
            assert_eq!(run.env.credential_asks, vec![0, 0]);
        }
    }

    #[test]
    fn a_denied_request_never_asks_for_the_gateway_token() {
        let f = lending("");
        let mut run = Run::new(&f, FakeEnv::ready());
        let other_team = token(&with(claims(), "team", json!("churn")));
        assert_deny(
            &run.bearer("POST", "/gw/score", &other_team),
            403,
            "insufficient_scope",
        );
        assert_deny(&run.call("POST", "/gw/score", &[]), 401, "token_missing");
        assert!(run.env.credential_asks.is_empty());
    }

    #[test]
    fn no_token_yet_waits_then_counts_once_and_failing_is_503_with_retry_after() {
        let f = lending("");
        let mut env = FakeEnv::ready();
        env.credential = None;
        let mut run = Run::new(&f, env);
        let t = good();
        assert!(matches!(
            run.bearer("POST", "/gw/score", &t),
            Decision::WaitForCredential { credential: 0 }
        ));
        assert!(run.env.rate_calls.is_empty(), "not counted while waiting");
        run.env.credential = Some(Ok("gw-token"));
        allowed(&run.bearer("POST", "/gw/score", &t));
        assert_eq!(run.env.rate_calls.len(), 1);
        run.env.credential = Some(Err(7));
        let d = run.bearer("POST", "/gw/score", &t);
        let (status, reason, resp) = denied(&d);
        assert_eq!((status, reason), (503, "upstream_credential_unavailable"));
        assert_eq!(header(resp, "retry-after"), Some("7"));
        assert_eq!(run.env.rate_calls.len(), 1);
        let req_headers = headers(&[]);
        let req = RequestView {
            method: "POST",
            path: "/gw/score",
            authority: "ml.example.com",
            headers: &req_headers,
        };
        let d = f.deny_waited(&req, ctx(), Reason::UpstreamCredentialUnavailable, 3);
        let (status, reason, resp) = denied(&d);
        assert_eq!((status, reason), (503, "upstream_credential_unavailable"));
        assert_eq!(header(resp, "retry-after"), Some("3"));
    }

    #[test]
    fn credential_config_errors_name_the_field() {
        let base = config(r#", "upstream_credentials": [{"name": "aml", "managed_identity": {}}]"#);
        let gw = |attrs: &str| {
            base.replace(
                r#"{"name": "any""#,
                &format!(r#"{{"name": "gw", "match": {{"path_prefix": "/gw/"}}{attrs}}}, {{"name": "any""#),
            )
        };
        let cases = [
            (
                gw(r#", "upstream_credential": "nope""#),
                "routes[5].upstream_credential",
            ),
            (
                gw(r#", "upstream_credential": "aml", "auth": "optional""#),
                "routes[5].upstream_credential",
            ),
            (
                gw(
                    r#", "upstream_credential": "aml", "set_request_headers": {"authorization": "Bearer k"}"#,
                ),
                "routes[5].set_request_headers.authorization",
            ),
            (
                config(
                    r#", "upstream_credentials": [{"name": "a", "managed_identity": {}}, {"name": "a", "managed_identity": {}}]"#,
                ),
                "upstream_credentials[1].name",
            ),
            (
                config(
                    r#", "upstream_credentials": [{"name": "a", "managed_identity": {"endpoint": "nope"}}]"#,
                ),
                "upstream_credentials[0].managed_identity.endpoint",
            ),
            (
                config(r#", "upstream_credentials": [{"name": "a", "managed_identitty": {}}]"#),
                "upstream_credentials[0]",
            ),
        ];
        for (json, field) in cases {
            let Err(e) = Filter::from_json(json.as_bytes()) else {
                panic!("{field}: accepted")
            };
            assert!(e.path.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (config(r#", "on_no_route": "maybe""#), "on_no_route"),
            (
                config("").replace(r#""auth": "optional""#, r#""auth": "sometimes""#),
                "routes[1].auth",
            ),
            (
                config("").replace(r#""providers": ["hs"]"#, r#""providers": ["nobody"]"#),
                "routes[4].providers",
            ),
            (
                config("").replace(r#""algorithms": ["HS256"], "#, ""),
                "providers[1]",
            ),
            (
                config("").replace(
                    &format!(r#""hmac_secret": "{SECRET}""#),
                    r#""hmac_secret": "short""#,
                ),
                "providers[1].hmac_secret",
            ),
            (
                config(r#", "cache": {"max_token_bytes": 10}"#),
                "cache.max_token_bytes",
            ),
            (config(r#", "colour": "blue""#), "colour"),
        ];
        for (doc, field) in cases {
            let e = match Filter::from_json(doc.as_bytes()) {
                Ok(_) => panic!("{field}: accepted"),
                Err(e) => e,
            };
            assert!(
                e.to_string().contains(field),
                "{field}: error does not name it: {e}"
            );
        }
        assert!(Filter::from_json(b"").is_err());
        assert!(Filter::from_json(b"[]").is_err());
        assert!(Filter::from_json(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn hostile_requests_never_panic() {
        let f = filter("");
        let t = good();
        let (h, rest) = t.split_once('.').unwrap();
        let (p, _sig) = rest.split_once('.').unwrap();
        let hostile = [
            String::new(),
            " ".into(),
            "....".into(),
            "a.b.c.d.e".into(),
            format!("{h}.{p}"),
            format!("{t}."),
            format!("{h}.{p}.%%%"),
            "x".repeat(20_000),
            "é.ü.ß".into(),
            "\u{0}.\u{0}.\u{0}".into(),
        ];
        for keys in [Keys::Loading, Keys::Unavailable(1)] {
            let mut run = Run::new(&f, FakeEnv::with(keys));
            for tok in &hostile {
                for path in [
                    "/any/x",
                    "/teams/fraud/score",
                    "/",
                    "",
                    "%",
                    "/?access_token=x",
                ] {
                    let _ = run.bearer("POST", path, tok);
                }
            }
        }
        let mut run = Run::new(&f, FakeEnv::ready());
        for tok in &hostile {
            let d = run.bearer("POST", "/any/x", tok);
            let (status, _, resp) = denied(&d);
            assert_eq!(status, 401, "{d:?}");
            assert!(tok.len() < 4 || !resp.body.contains(tok.as_str()));
        }
        // deny_unavailable and deny_config_invalid answer 503 with Retry-After.
        let hs = headers(&[]);
        let req = RequestView {
            method: "GET",
            path: "/any/x",
            authority: "",
            headers: &hs,
        };
        for d in [
            f.deny_unavailable(&req, ctx(), 7),
            deny_config_invalid("azure-ml", &req, ctx()),
        ] {
            let (status, _, resp) = denied(&d);
            assert_eq!(status, 503);
            assert!(header(resp, "retry-after").is_some());
        }
    }
}
