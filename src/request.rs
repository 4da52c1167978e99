//! A read-only view of the request the filter decides on, built by the adapter from
//! host headers. Plain data so every decision can be unit-tested natively.

/// Request facts the core needs. Header names are lower-case (both hosts deliver them so).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The raw `:path`, including any query string.
    pub path: &'a str,
    /// `:authority` (Host), possibly with a port.
    pub authority: &'a str,
    /// All request headers as the host gives them, pseudo-headers included.
    pub headers: &'a [(String, String)],
}

impl<'a> RequestView<'a> {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many copies of a header the client sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &'a str {
        match self.path.find('?') {
            Some(i) => &self.path[..i],
            None => self.path,
        }
    }

    /// The raw query string (after `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.path.find('?').map(|i| &self.path[i + 1..])
    }
}

/// Where the caller's token was found; annotation uses it to strip the token before
/// forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// Request header (lower-case name).
    Header(String),
    /// Query parameter name.
    Query(String),
    /// Cookie name.
    Cookie(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive() {
        let h = vec![
            ("authorization".to_string(), "Bearer x".to_string()),
            ("X-Caller-Oid".to_string(), "a".to_string()),
            ("x-caller-oid".to_string(), "b".to_string()),
        ];
        let r = RequestView {
            method: "GET",
            path: "/a/b?c=d",
            authority: "h",
            headers: &h,
        };
        assert_eq!(r.header("Authorization"), Some("Bearer x"));
        assert_eq!(r.header_count("x-caller-oid"), 2);
        assert_eq!(r.path_only(), "/a/b");
        assert_eq!(r.query(), Some("c=d"));
    }
}
