//! Header-name rules, one copy for the configuration checks (which names may be set) and
//! the request plan (which names the filter manages itself).

use crate::config::ConfigError;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_MS_CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";

/// The identity namespace: an inbound header under this prefix (in any spelling a
/// backend folds onto it) reaches the upstream only as the filter set it.
pub const IDENTITY_PREFIX: &str = "x-caller-";

/// Request-id headers: the filter keeps or replaces them itself (see `annotate`).
pub const REQUEST_ID_HEADERS: &[&str] = &[X_REQUEST_ID, X_MS_CLIENT_REQUEST_ID];

/// Headers the filter never sets: pseudo-headers, hop-by-hop headers, and those that
/// change how the request is framed or routed.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// The name as CGI/WSGI backends read it: lower case, `_` read as `-`.
pub fn folded(name: &str) -> String {
    name.bytes()
        .map(|c| {
            if c == b'_' {
                '-'
            } else {
                char::from(c.to_ascii_lowercase())
            }
        })
        .collect()
}

/// `name`, in any spelling, lies in the identity namespace (`x-caller-*`).
pub fn in_identity_namespace(name: &str) -> bool {
    name.get(..IDENTITY_PREFIX.len())
        .is_some_and(|head| folded(head) == IDENTITY_PREFIX)
}

/// An RFC 9110 token (header names, methods).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header the filter may set: a lower-case RFC 9110 token, not a pseudo-header,
/// hop-by-hop, `host` or a framing header. `path` names the field in the error.
pub fn check_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.starts_with(':') {
        return Err(ConfigError::new(path, "pseudo-headers cannot be set"));
    }
    if !is_token(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            path,
            "expected a lower-case header name (letters, digits, `-`, ...)",
        ));
    }
    if FORBIDDEN_HEADERS.contains(&name) {
        return Err(ConfigError::new(
            path,
            format!("`{name}` is a hop-by-hop, framing or host header and cannot be set"),
        ));
    }
    Ok(())
}

/// A header the configuration may not set because the filter writes it itself: the
/// request-id headers, and `cookie` (token cookies are cut out of it).
pub fn check_not_managed(path: &str, name: &str) -> Result<(), ConfigError> {
    if name == "cookie" || REQUEST_ID_HEADERS.contains(&name) {
        return Err(ConfigError::new(
            path,
            "this header is managed by the filter",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_filter_may_set() {
        for ok in [
            "x-caller-oid",
            "authorization",
            "azureml-model-deployment",
            "a!b",
        ] {
            check_header_name("h", ok).unwrap();
            check_not_managed("h", ok).unwrap();
        }
        for bad in [
            ":path",
            "X-Caller",
            "x caller",
            "",
            "host",
            "te",
            "content-length",
        ] {
            assert_eq!(check_header_name("h", bad).unwrap_err().path, "h", "{bad}");
        }
        for managed in ["cookie", X_REQUEST_ID, X_MS_CLIENT_REQUEST_ID] {
            check_header_name("h", managed).unwrap();
            assert!(check_not_managed("h", managed).is_err(), "{managed}");
        }
    }

    #[test]
    fn identity_namespace_in_any_spelling() {
        for h in [
            "x-caller-oid",
            "X-Caller-X",
            "x_caller_oid",
            "X_CALLER-z",
            "x-caller-",
        ] {
            assert!(in_identity_namespace(h), "{h}");
        }
        for h in [
            "x-callers",
            "x-call",
            "",
            "y-caller-oid",
            "x-caller",
            "é-caller-aaa",
        ] {
            assert!(!in_identity_namespace(h), "{h}");
        }
        assert_eq!(folded("X_Caller-OID"), "x-caller-oid");
    }

    #[test]
    fn tokens() {
        assert!(is_token("GET") && is_token("x-a_b.c~"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a:b") && !is_token("é"));
    }
}
