//! Every outcome the filter can produce, and the one place where outcomes map to HTTP.
//!
//! Reason codes are a stable public interface: they appear in response bodies,
//! audit lines and metric names. Add new ones; never rename.

/// One table for every reason: variant, stable code, HTTP status, fixed description.
/// The enum, its lookups and `Reason::ALL` are generated from it, so they cannot drift.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $code:literal, $status:literal, $text:literal;)+) => {
        /// Why a request was denied.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, for metrics definitions and exhaustive tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// Stable reason code used in bodies, audit lines and metrics.
            pub fn code(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)+
                }
            }

            /// HTTP status for a denial with this reason.
            pub fn status(self) -> u32 {
                match self {
                    $(Reason::$variant => $status,)+
                }
            }

            /// Short human text for `error_description`: fixed strings only, never input data.
            pub fn description(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)+
                }
            }
        }
    };
}

reasons! {
    /// 401 without error code (RFC 6750 §3.1: no credentials, no error attribute).
    TokenMissing => "token_missing", 401, "a bearer token is required";
    TokenAmbiguous => "token_ambiguous", 401, "more than one token was presented";
    TokenTooLarge => "token_too_large", 401, "the token is larger than allowed";
    TokenMalformed => "token_malformed", 401, "the token is not a well-formed JWT";
    TokenEncrypted => "token_encrypted", 401, "encrypted tokens (JWE) are not supported";
    AlgNotAllowed => "alg_not_allowed", 401, "the token's signing algorithm is not allowed";
    CritUnsupported => "crit_unsupported", 401,
        "the token has unsupported critical header parameters";
    KidUnknown => "kid_unknown", 401, "the token's signing key is unknown";
    KeyTypeMismatch => "key_type_mismatch", 401,
        "the token's algorithm does not fit the signing key";
    SignatureInvalid => "signature_invalid", 401, "the token's signature is invalid";
    TokenExpired => "token_expired", 401, "the token has expired";
    TokenNotYetValid => "token_not_yet_valid", 401, "the token is not valid yet";
    IssuedInFuture => "issued_in_future", 401, "the token was issued in the future";
    LifetimeTooLong => "lifetime_too_long", 401, "the token's lifetime is longer than allowed";
    IssuerUnknown => "issuer_unknown", 401, "the token's issuer is not trusted";
    TenantInvalid => "tenant_invalid", 401, "the token's tenant id is not valid";
    TenantNotAllowed => "tenant_not_allowed", 401, "the token's tenant is not allowed";
    AudienceMismatch => "audience_mismatch", 401, "the token is not for this gateway";
    GraphTokenUnverifiable => "graph_token_unverifiable", 401,
        "the token is for another audience (Microsoft Graph) and cannot be verified";
    InsufficientScope => "insufficient_scope", 403,
        "the token does not grant access to this route";
    RouteAudienceMismatch => "route_audience_mismatch", 403,
        "the token's audience is not accepted on this route";
    GroupsOverage => "groups_overage", 403,
        "the token has too many groups to carry them (group overage); use app roles";
    NoRoute => "no_route", 403, "no route matches this request";
    /// The route's `callers` list does not name the token's registered caller.
    CallerNotAllowed => "caller_not_allowed", 403,
        "the calling application is not allowed on this route";
    /// `unknown_callers: deny` and the token's client app is not in `callers`.
    CallerUnknown => "caller_unknown", 403, "the calling application is not registered";
    /// The raw request target is not in normal form (`policy::path`): routers and
    /// backends could read it as another path than the one the filter would authorize.
    PathNotNormalized => "path_not_normalized", 400,
        "the request path must be in normal form (no dot or empty segments, no needless or encoded-separator escapes)";
    DuplicateIdentityHeader => "duplicate_identity_header", 400,
        "the request carries duplicate identity headers";
    RateLimited => "rate_limited", 429, "too many requests";
    /// `concurrency_limit`: this key already has `max_in_flight` requests upstream.
    ConcurrencyLimited => "concurrency_limited", 429, "too many requests in flight";
    JwksUnavailable => "jwks_unavailable", 503,
        "signing keys are not available yet; retry later";
    /// A route with `upstream_credential`: the gateway holds no usable token of its own.
    UpstreamCredentialUnavailable => "upstream_credential_unavailable", 503,
        "the gateway's own credential for the upstream is not available yet; retry later";
    ConfigInvalid => "config_invalid", 503,
        "the gateway's authentication filter is misconfigured";
    /// The host refused an operation the decision needs (e.g. clearing the caller's
    /// token): the request is not forwarded.
    Internal => "internal_error", 503,
        "the authentication filter could not process the request";
}

impl Reason {
    /// Reasons a request can be denied for once its token is verified and its caller known
    /// (`Filter::decide` after `note_caller`, and the adapter's `internal_error`): the only
    /// ones a registered caller's decision counter can carry.
    pub fn after_identity(self) -> bool {
        matches!(
            self,
            Reason::InsufficientScope
                | Reason::RouteAudienceMismatch
                | Reason::GroupsOverage
                | Reason::CallerNotAllowed
                | Reason::UpstreamCredentialUnavailable
                | Reason::RateLimited
                | Reason::ConcurrencyLimited
                | Reason::Internal
        )
    }
}

/// The RFC 6750 `error` attribute, when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
}

impl OAuthError {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidToken => "invalid_token",
            OAuthError::InsufficientScope => "insufficient_scope",
        }
    }
}

impl Reason {
    /// RFC 6750 error attribute; `None` for a missing token and for non-auth failures.
    pub fn oauth_error(self) -> Option<OAuthError> {
        match self.status() {
            401 if self == Reason::TokenMissing => None,
            401 => Some(OAuthError::InvalidToken),
            403 => Some(OAuthError::InsufficientScope),
            400 => Some(OAuthError::InvalidRequest),
            _ => None,
        }
    }
}

/// As its code: audit lines carry the same string as response bodies and metrics.
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for &r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert!(r.code().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn missing_token_has_no_error_code() {
        assert_eq!(Reason::TokenMissing.status(), 401);
        assert_eq!(Reason::TokenMissing.oauth_error(), None);
        assert_eq!(
            Reason::SignatureInvalid.oauth_error(),
            Some(OAuthError::InvalidToken)
        );
        assert_eq!(
            Reason::InsufficientScope.oauth_error(),
            Some(OAuthError::InsufficientScope)
        );
    }
}
