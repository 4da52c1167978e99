//! The per-request decision, start to finish, as a pure function of the request, the
//! compiled configuration, the time, a random number and the key/limit state the host
//! adapter exposes through [`Env`]. This is where the separate pieces (token extraction,
//! JOSE decoding, provider selection, JWKS keys, verification, route policy, rate limits,
//! annotation, responses, audit) are put together; each piece stays ignorant of the others.

use std::rc::Rc;

use crate::annotate::{self, Annotator, HeaderOp};
use crate::audit::AuditRecord;
use crate::claims::Claims;
use crate::config::{self, AuthMode, ConfigError, CorsPreflight, LogLevel, OnNoRoute};
use crate::jose::{self, Alg};
use crate::jwks::KeySet;
use crate::keycache::JwksSource;
use crate::policy::{self, Route, Routes};
use crate::providers::Providers;
use crate::ratelimit;
use crate::reason::Reason;
use crate::request::{RequestView, TokenLocation};
use crate::respond::{self, LocalResponse};
use crate::token::TokenExtractor;
use crate::verify::{self, Verified, VerifiedCache};

/// The compiled configuration: everything derived once at load time.
pub struct Filter {
    pub config: config::FilterConfig,
    pub providers: Providers,
    pub tokens: TokenExtractor,
    pub routes: Routes,
    pub annotator: Annotator,
    /// Where each provider's keys come from (same order as `providers`).
    pub jwks_sources: Vec<Option<JwksSource>>,
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
    /// Parse, validate and compile a configuration document.
    pub fn from_json(bytes: &[u8]) -> Result<Filter, ConfigError> {
        let config = config::load(bytes)?;
        let providers = Providers::new(&config.providers)?;
        let tokens = TokenExtractor::new(&config.token_sources)?;
        let routes = Routes::new(&config, |name| providers.index_of(name))?;
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
        Ok(Filter {
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
            // A path no route could ever match (e.g. an encoded slash) is not "unrouted".
            None if self.config.on_no_route == OnNoRoute::AllowAuthenticated
                && Routes::path_is_routable(req.path) =>
            {
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
            return self.allow(route, None, None, req, &request_id, audit);
        }
        let (token, location) = match self.tokens.extract(req) {
            Ok(Some(t)) => t,
            Ok(None) if auth == AuthMode::Optional => {
                return self.allow(route, None, None, req, &request_id, audit)
            }
            Ok(None) => return self.deny(Reason::TokenMissing, &request_id, None, audit),
            Err(reason) => return self.deny(reason, &request_id, None, audit),
        };
        let verified = match self.authenticate(&token, route, ctx, env, cache, &mut audit) {
            Ok(v) => v,
            Err(Step::Wait(provider)) => return Decision::WaitForKeys { provider },
            Err(Step::Deny(reason, retry)) => return self.deny(reason, &request_id, retry, audit),
        };
        if let Some(r) = route {
            if let Err(reason) = r.authorize(&verified.claims, params) {
                return self.deny(reason, &request_id, None, audit);
            }
            if let Some(rl) = &r.rate_limit {
                let bucket = ratelimit::bucket_key(&r.name, &rl.key, &verified.claims);
                let verdict = env.rate_limit(&bucket, rl.requests, rl.window_seconds);
                if !verdict.allowed {
                    let retry = Some(verdict.retry_after_secs);
                    return self.deny(Reason::RateLimited, &request_id, retry, audit);
                }
            }
        }
        self.allow(
            route,
            Some(&verified.claims),
            Some(&location),
            req,
            &request_id,
            audit,
        )
    }

    /// Token → verified claims, or why not.
    fn authenticate(
        &self,
        token: &str,
        route: Option<&Route>,
        ctx: Ctx,
        env: &mut dyn Env,
        cache: &mut VerifiedCache,
        audit: &mut AuditRecord,
    ) -> Result<Verified, Step> {
        let now = ctx.now_ms / 1000;
        let jwt = jose::decode(token, self.config.cache.max_token_bytes).map_err(Step::deny)?;
        audit.kid = jwt.header.kid.clone();
        // Unverified until `verify` succeeds; recorded so a denial says who claimed to call.
        audit.note_claims(&jwt.claims);
        let allowed = route.and_then(|r| r.providers.as_deref());
        // Provider choice from `iss` comes before any key lookup or fetch: a foreign token
        // costs nothing and cannot trigger JWKS traffic.
        let pi = self
            .providers
            .select(&jwt.claims, allowed)
            .map_err(Step::deny)?;
        let provider = self
            .providers
            .get(pi)
            .ok_or(Step::Deny(Reason::IssuerUnknown, None))?;
        audit.provider = Some(provider.name.clone());
        let (keys, generation) = if is_hmac(jwt.header.alg) {
            (None, 0)
        } else {
            match env.keys(pi) {
                KeyState::Ready { keys, generation } => (Some(keys), generation),
                KeyState::Loading => return Err(Step::Wait(pi)),
                KeyState::Unavailable { retry_after_secs } => {
                    return Err(Step::Deny(Reason::JwksUnavailable, Some(retry_after_secs)))
                }
            }
        };
        if let Some(v) = cache.get(token, now, generation) {
            audit.note_claims(&v.claims);
            return Ok(v.clone());
        }
        match verify::verify(&jwt, pi, provider, keys.as_deref(), now) {
            Ok(v) => {
                audit.note_claims(&v.claims);
                cache.insert(token, v.clone(), generation);
                Ok(v)
            }
            Err(Reason::KidUnknown) if env.refetch_for_unknown_kid(pi) => Err(Step::Wait(pi)),
            Err(reason) => Err(Step::Deny(reason, None)),
        }
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
        let ops = self.annotator.plan(route, claims, token, req, request_id);
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
        let request_id = annotate::request_id(req, ctx.random);
        let mut audit = AuditRecord::new(ctx.now_ms, &request_id, req);
        audit.route = self
            .routes
            .find_request(req)
            .map(|m| m.route.name.clone())
            .or_else(|| ctx.host_route.map(str::to_string));
        self.deny(
            Reason::JwksUnavailable,
            &request_id,
            Some(retry_after_secs),
            audit,
        )
    }
}

/// Deny every request: the configuration could not be loaded (fail closed, never forward).
pub fn deny_config_invalid(realm: &str, req: &RequestView, ctx: Ctx) -> Decision {
    let request_id = annotate::request_id(req, ctx.random);
    let mut audit = AuditRecord::new(ctx.now_ms, &request_id, req);
    let response = respond::deny(Reason::ConfigInvalid, realm, &request_id, Some(30));
    audit.deny(Reason::ConfigInvalid, response.status);
    Decision::Deny { response, audit }
}

enum Step {
    Wait(usize),
    Deny(Reason, Option<u64>),
}

impl Step {
    fn deny(r: Reason) -> Step {
        Step::Deny(r, None)
    }
}

fn is_hmac(alg: Alg) -> bool {
    matches!(alg, Alg::HS256 | Alg::HS384 | Alg::HS512)
}
