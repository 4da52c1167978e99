//! Every outcome the filter can produce, and the one place where outcomes map to HTTP.
//!
//! Reason codes are a stable public interface: they appear in response bodies,
//! audit lines and metric names. Add new ones; never rename.

/// Why a request was denied (or, for `Allowed*`, why it was let through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // 401 without error code (RFC 6750 §3.1: no credentials → no error attribute)
    TokenMissing,
    // 401 invalid_token
    TokenAmbiguous,
    TokenTooLarge,
    TokenMalformed,
    TokenEncrypted,
    AlgNotAllowed,
    CritUnsupported,
    KidUnknown,
    KeyTypeMismatch,
    SignatureInvalid,
    TokenExpired,
    TokenNotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    IssuerUnknown,
    TenantInvalid,
    TenantNotAllowed,
    AudienceMismatch,
    GraphTokenUnverifiable,
    // 403 insufficient_scope
    InsufficientScope,
    RouteAudienceMismatch,
    GroupsOverage,
    NoRoute,
    // 400
    DuplicateIdentityHeader,
    // 429
    RateLimited,
    // 503
    JwksUnavailable,
    ConfigInvalid,
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
    /// Stable reason code used in bodies, audit lines and metrics.
    pub fn code(self) -> &'static str {
        use Reason::*;
        match self {
            TokenMissing => "token_missing",
            TokenAmbiguous => "token_ambiguous",
            TokenTooLarge => "token_too_large",
            TokenMalformed => "token_malformed",
            TokenEncrypted => "token_encrypted",
            AlgNotAllowed => "alg_not_allowed",
            CritUnsupported => "crit_unsupported",
            KidUnknown => "kid_unknown",
            KeyTypeMismatch => "key_type_mismatch",
            SignatureInvalid => "signature_invalid",
            TokenExpired => "token_expired",
            TokenNotYetValid => "token_not_yet_valid",
            IssuedInFuture => "issued_in_future",
            LifetimeTooLong => "lifetime_too_long",
            IssuerUnknown => "issuer_unknown",
            TenantInvalid => "tenant_invalid",
            TenantNotAllowed => "tenant_not_allowed",
            AudienceMismatch => "audience_mismatch",
            GraphTokenUnverifiable => "graph_token_unverifiable",
            InsufficientScope => "insufficient_scope",
            RouteAudienceMismatch => "route_audience_mismatch",
            GroupsOverage => "groups_overage",
            NoRoute => "no_route",
            DuplicateIdentityHeader => "duplicate_identity_header",
            RateLimited => "rate_limited",
            JwksUnavailable => "jwks_unavailable",
            ConfigInvalid => "config_invalid",
        }
    }

    /// HTTP status for a denial with this reason.
    pub fn status(self) -> u32 {
        use Reason::*;
        match self {
            TokenMissing
            | TokenAmbiguous
            | TokenTooLarge
            | TokenMalformed
            | TokenEncrypted
            | AlgNotAllowed
            | CritUnsupported
            | KidUnknown
            | KeyTypeMismatch
            | SignatureInvalid
            | TokenExpired
            | TokenNotYetValid
            | IssuedInFuture
            | LifetimeTooLong
            | IssuerUnknown
            | TenantInvalid
            | TenantNotAllowed
            | AudienceMismatch
            | GraphTokenUnverifiable => 401,
            InsufficientScope | RouteAudienceMismatch | GroupsOverage | NoRoute => 403,
            DuplicateIdentityHeader => 400,
            RateLimited => 429,
            JwksUnavailable | ConfigInvalid => 503,
        }
    }

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

    /// Short human text for `error_description`: fixed strings only, never input data.
    pub fn description(self) -> &'static str {
        use Reason::*;
        match self {
            TokenMissing => "a bearer token is required",
            TokenAmbiguous => "more than one token was presented",
            TokenTooLarge => "the token is larger than allowed",
            TokenMalformed => "the token is not a well-formed JWT",
            TokenEncrypted => "encrypted tokens (JWE) are not supported",
            AlgNotAllowed => "the token's signing algorithm is not allowed",
            CritUnsupported => "the token has unsupported critical header parameters",
            KidUnknown => "the token's signing key is unknown",
            KeyTypeMismatch => "the token's algorithm does not fit the signing key",
            SignatureInvalid => "the token's signature is invalid",
            TokenExpired => "the token has expired",
            TokenNotYetValid => "the token is not valid yet",
            IssuedInFuture => "the token was issued in the future",
            LifetimeTooLong => "the token's lifetime is longer than allowed",
            IssuerUnknown => "the token's issuer is not trusted",
            TenantInvalid => "the token's tenant id is not valid",
            TenantNotAllowed => "the token's tenant is not allowed",
            AudienceMismatch => "the token is not for this gateway",
            GraphTokenUnverifiable => {
                "the token is for another audience (Microsoft Graph) and cannot be verified"
            }
            InsufficientScope => "the token does not grant access to this route",
            RouteAudienceMismatch => "the token's audience is not accepted on this route",
            GroupsOverage => {
                "the token has too many groups to carry them (group overage); use app roles"
            }
            NoRoute => "no route matches this request",
            DuplicateIdentityHeader => "the request carries duplicate identity headers",
            RateLimited => "too many requests",
            JwksUnavailable => "signing keys are not available yet; retry later",
            ConfigInvalid => "the gateway's authentication filter is misconfigured",
        }
    }

    /// Every reason, for metrics definitions and exhaustive tests.
    pub const ALL: [Reason; 27] = {
        use Reason::*;
        [
            TokenMissing,
            TokenAmbiguous,
            TokenTooLarge,
            TokenMalformed,
            TokenEncrypted,
            AlgNotAllowed,
            CritUnsupported,
            KidUnknown,
            KeyTypeMismatch,
            SignatureInvalid,
            TokenExpired,
            TokenNotYetValid,
            IssuedInFuture,
            LifetimeTooLong,
            IssuerUnknown,
            TenantInvalid,
            TenantNotAllowed,
            AudienceMismatch,
            GraphTokenUnverifiable,
            InsufficientScope,
            RouteAudienceMismatch,
            GroupsOverage,
            NoRoute,
            DuplicateIdentityHeader,
            RateLimited,
            JwksUnavailable,
            ConfigInvalid,
        ]
    };
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
        for r in Reason::ALL {
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
