//! Request-path normalization and path templates.
//!
//! Routes match on a *normalized* path so that `/teams/a/../b/score`, `//teams/b/score`
//! or `/teams/%62/score` cannot dodge a rule written for `/teams/b/score`:
//!
//! 1. the query (`?…`) and any fragment (`#…`) are dropped;
//! 2. percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!    escapes are kept with upper-case hex (`%2f` → `%2F`, `%20` stays `%20`);
//! 3. empty segments (`//`) and `.` segments are removed, `..` removes the previous
//!    segment (never above the root), as in RFC 3986 `remove_dot_segments`;
//! 4. a trailing `/` is kept in the normalized string but ignored by templates and
//!    prefixes (`/health/` matches `/health`).
//!
//! **Unroutable paths.** A path that contains an encoded slash or backslash (`%2F`,
//! `%5C`), a raw backslash, an encoded or raw NUL/control character, a malformed escape
//! (`%zz`, `%4`), or does not start with `/` is rejected: it matches *no* route at all,
//! not even a route without a path condition. Backends and proxies disagree on whether
//! `%2F` is a segment boundary (and on `\`), so such a path could be routed upstream to a
//! place its normalized form does not describe; refusing it is the only reading that is
//! correct whatever the backend does.
//!
//! Paths are compared case-sensitively. Path parameters are bound to the fully
//! percent-decoded segment (`a%20b` → `a b`); a segment whose decoding is not UTF-8
//! does not match a parameter.

use crate::config::ConfigError;

/// Why a request path cannot be routed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejected {
    NotAbsolute,
    EncodedSeparator,
    ControlCharacter,
    MalformedEscape,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_upper(n: u8) -> char {
    char::from_digit(u32::from(n & 0xf), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// Decode unreserved escapes of one raw segment into `out`.
fn push_segment(raw: &str, out: &mut String) -> Result<(), PathRejected> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathRejected::MalformedEscape);
            };
            let v = (hi << 4) | lo;
            if v == b'/' || v == b'\\' {
                return Err(PathRejected::EncodedSeparator);
            }
            if v < 0x20 || v == 0x7f {
                return Err(PathRejected::ControlCharacter);
            }
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(hex_upper(hi));
                out.push(hex_upper(lo));
            }
            i += 3;
        } else {
            if b == b'\\' {
                return Err(PathRejected::EncodedSeparator);
            }
            if b < 0x20 || b == 0x7f {
                return Err(PathRejected::ControlCharacter);
            }
            // Copy the run of ordinary bytes up to the next '%' (keeps UTF-8 intact).
            let end = bytes
                .iter()
                .skip(i)
                .position(|&c| c == b'%' || c == b'\\' || c < 0x20 || c == 0x7f)
                .map_or(bytes.len(), |p| i + p);
            if let Some(run) = raw.get(i..end) {
                out.push_str(run);
            }
            i = end.max(i + 1);
        }
    }
    Ok(())
}

/// Normalize a raw `:path` (query allowed) as described in the module docs.
pub fn normalize_path(raw: &str) -> Result<String, PathRejected> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRejected::NotAbsolute);
    };
    let mut out = String::with_capacity(path.len());
    // Byte offsets in `out` where each kept segment's leading '/' starts.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing = false;
    for raw_seg in rest.split('/') {
        let start = out.len();
        out.push('/');
        push_segment(raw_seg, &mut out)?;
        let seg = out.get(start + 1..).unwrap_or("");
        match seg {
            "" | "." => {
                out.truncate(start);
                trailing = true;
            }
            ".." => {
                out.truncate(start);
                if let Some(prev) = starts.pop() {
                    out.truncate(prev);
                }
                trailing = true;
            }
            _ => {
                starts.push(start);
                trailing = false;
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Fully percent-decode a normalized segment (for path parameter values).
fn decode_param(seg: &str) -> Option<String> {
    if !seg.contains('%') {
        return Some(seg.to_string());
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_val)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The segments of a normalized path, ignoring the leading and a trailing `/`.
fn segments(norm: &str) -> impl Iterator<Item = &str> {
    norm.split('/').filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
}

/// A compiled `match.path` template such as `/teams/{team}/endpoints/{endpoint}/score`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

fn is_param_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Characters allowed in literal template segments and prefixes: RFC 3986 `pchar`
/// without `%` (write the character itself, the request is decoded the same way).
fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
                | ':'
                | '@'
        )
        || (!c.is_ascii() && !c.is_control())
}

fn check_literal(path: &str, seg: &str) -> Result<(), ConfigError> {
    if seg == "." || seg == ".." {
        return Err(ConfigError::new(
            path,
            "`.` and `..` segments never match a normalized path",
        ));
    }
    if let Some(c) = seg.chars().find(|c| !is_literal_char(*c)) {
        return Err(ConfigError::new(
            path,
            format!(
                "character {c:?} is not allowed in a path (no query, fragment, percent-escapes or `{{`/`}}` outside a whole-segment parameter)"
            ),
        ));
    }
    Ok(())
}

/// Split a configured path into segments, checking the common rules.
fn config_segments<'a>(path: &str, value: &'a str) -> Result<Vec<&'a str>, ConfigError> {
    let Some(rest) = value.strip_prefix('/') else {
        return Err(ConfigError::new(path, "expected a path starting with `/`"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::new(
            path,
            "empty segment (`//`) never matches a normalized path",
        ));
    }
    Ok(segs)
}

impl Template {
    /// Compile `value` (found at field `path`): segments in `{}` bind parameters; a
    /// parameter must be a whole segment and its name unique.
    pub fn parse(path: &str, value: &str) -> Result<Template, ConfigError> {
        let mut segs = Vec::new();
        for s in config_segments(path, value)? {
            if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                if !is_param_name(inner) {
                    return Err(ConfigError::new(
                        path,
                        format!("path parameter {{{inner}}}: expected a name of letters, digits, `_` or `-`"),
                    ));
                }
                if segs
                    .iter()
                    .any(|x| matches!(x, Seg::Param(n) if n == inner))
                {
                    return Err(ConfigError::new(
                        path,
                        format!("path parameter {{{inner}}} appears twice"),
                    ));
                }
                segs.push(Seg::Param(inner.to_string()));
            } else {
                check_literal(path, s)?;
                segs.push(Seg::Lit(s.to_string()));
            }
        }
        Ok(Template { segs })
    }

    /// Names of the parameters this template binds.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Param(n) => Some(n.as_str()),
            Seg::Lit(_) => None,
        })
    }

    /// Match a normalized path; parameters are pushed onto `params` only on success.
    pub fn matches(&self, norm: &str, params: &mut Vec<(String, String)>) -> bool {
        let mut it = segments(norm);
        let mark = params.len();
        for seg in &self.segs {
            let Some(got) = it.next() else {
                params.truncate(mark);
                return false;
            };
            let ok = match seg {
                Seg::Lit(l) => l == got,
                Seg::Param(name) => match decode_param(got) {
                    Some(v) => {
                        params.push((name.clone(), v));
                        true
                    }
                    None => false,
                },
            };
            if !ok {
                params.truncate(mark);
                return false;
            }
        }
        if it.next().is_some() {
            params.truncate(mark);
            return false;
        }
        true
    }
}

/// A compiled `match.path_prefix`: matches the prefix itself and anything below it,
/// at segment boundaries (`/fraud` and `/fraud/` both match `/fraud`, `/fraud/x`, not
/// `/fraudster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// Without trailing `/`; empty for `/` (everything).
    base: String,
}

impl Prefix {
    pub fn parse(path: &str, value: &str) -> Result<Prefix, ConfigError> {
        let segs = config_segments(path, value)?;
        let mut base = String::new();
        for s in segs {
            check_literal(path, s)?;
            base.push('/');
            base.push_str(s);
        }
        Ok(Prefix { base })
    }

    pub fn matches(&self, norm: &str) -> bool {
        match norm.strip_prefix(self.base.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        let n = |p: &str| normalize_path(p);
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
        assert_eq!(n("//a///b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/../b").unwrap(), "/b");
        assert_eq!(n("/../../b").unwrap(), "/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(n("/a/%2e/b").unwrap(), "/a/b");
        assert_eq!(n("/%61%7e").unwrap(), "/a~");
        assert_eq!(n("/a%20b%3a").unwrap(), "/a%20b%3A");
        assert_eq!(n("/a?x=/../b").unwrap(), "/a");
        assert_eq!(n("/a#frag").unwrap(), "/a");
        assert_eq!(n("/caf\u{e9}").unwrap(), "/caf\u{e9}");
        assert_eq!(n("/a/%252e%252e/b").unwrap(), "/a/%252e%252e/b");
    }

    #[test]
    fn unroutable_paths() {
        assert_eq!(
            normalize_path("/a%2Fb"),
            Err(PathRejected::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/a%2fb"),
            Err(PathRejected::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/a%5Cb"),
            Err(PathRejected::EncodedSeparator)
        );
        assert_eq!(normalize_path("/a\\b"), Err(PathRejected::EncodedSeparator));
        assert_eq!(normalize_path("/a%00"), Err(PathRejected::ControlCharacter));
        assert_eq!(normalize_path("/a\tb"), Err(PathRejected::ControlCharacter));
        assert_eq!(normalize_path("/a%zz"), Err(PathRejected::MalformedEscape));
        assert_eq!(normalize_path("/a%4"), Err(PathRejected::MalformedEscape));
        assert_eq!(normalize_path("a/b"), Err(PathRejected::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathRejected::NotAbsolute));
        assert_eq!(normalize_path(""), Err(PathRejected::NotAbsolute));
    }

    #[test]
    fn templates() {
        let t = Template::parse("p", "/teams/{team}/score").unwrap();
        let mut p = Vec::new();
        assert!(t.matches("/teams/a/score", &mut p));
        assert_eq!(p, vec![("team".to_string(), "a".to_string())]);
        p.clear();
        assert!(t.matches("/teams/a%20b/score/", &mut p));
        assert_eq!(p[0].1, "a b");
        p.clear();
        assert!(!t.matches("/teams/a/score/x", &mut p));
        assert!(!t.matches("/teams/score", &mut p));
        assert!(!t.matches("/teams/%FF/score", &mut p));
        assert!(p.is_empty());
        assert!(Template::parse("p", "/").unwrap().matches("/", &mut p));
    }

    #[test]
    fn template_errors() {
        for bad in [
            "teams",
            "/a/{x}{y}",
            "/a/x{y}",
            "/a/{}",
            "/a/{x}/{x}",
            "/a//b",
            "/a/../b",
            "/a?b",
            "/a%20",
            "/a/{x.y}",
        ] {
            assert!(Template::parse("p", bad).is_err(), "{bad}");
        }
        assert!(Template::parse("p", "/a/{x}/").is_ok());
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("p", "/fraud/").unwrap();
        assert!(p.matches("/fraud"));
        assert!(p.matches("/fraud/"));
        assert!(p.matches("/fraud/x/y"));
        assert!(!p.matches("/fraudster"));
        assert!(!p.matches("/"));
        let root = Prefix::parse("p", "/").unwrap();
        assert!(root.matches("/"));
        assert!(root.matches("/x"));
    }
}
