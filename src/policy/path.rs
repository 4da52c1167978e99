//! The request path the filter authorizes, and path templates.
//!
//! **One rule on both hosts: the path the filter authorizes is exactly the path that is
//! routed and forwarded.** The adapter passes the raw request target (Kong: the
//! `request.path` property, nginx's `$request_uri`; Envoy: `:path`). The filter does not
//! rewrite paths, so it refuses (400 `path_not_normalized`) every target whose meaning
//! depends on who decodes or normalizes it — routers and backends disagree there:
//!
//! * not starting with `/` (`*`, absolute-form targets, empty);
//! * dot segments (`.`, `..`), raw or encoded (`%2e`), and empty segments (`//`);
//!   a single trailing `/` is fine (`/health/` matches `/health`);
//! * an encoded `/` or `\` (`%2F`, `%5C`) or a raw `\`;
//! * an encoded `%` (`%25`: double encoding) or an encoded unreserved character
//!   (`A-Z a-z 0-9 - . _ ~`, e.g. `%61`): a target in normal form never has them;
//! * raw or encoded control characters, and malformed escapes (`%zz`, `%4`).
//!
//! Everything else is matched as it arrives, segment by segment: literal template
//! segments and prefixes compare with the raw segment (they cannot contain `%`), path
//! parameters bind the segment percent-decoded exactly once (`a%20b` → `a b`). Paths
//! compare case-sensitively. The query (`?…`) and a fragment (`#…`) are not part of it.

use crate::config::ConfigError;

/// Why a request target is refused (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejected {
    NotAbsolute,
    DotSegment,
    EmptySegment,
    EncodedSeparator,
    /// `%25` or an escape of a character that needs none.
    NeedlessEscape,
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

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Check one raw segment (between two `/`).
fn check_segment(seg: &str, last: bool) -> Result<(), PathRejected> {
    match seg {
        "." | ".." => return Err(PathRejected::DotSegment),
        "" if !last => return Err(PathRejected::EmptySegment),
        _ => {}
    }
    let bytes = seg.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathRejected::MalformedEscape);
                };
                let v = (hi << 4) | lo;
                if v == b'/' || v == b'\\' {
                    return Err(PathRejected::EncodedSeparator);
                }
                if is_control(v) {
                    return Err(PathRejected::ControlCharacter);
                }
                if v == b'.' {
                    // `%2e` anywhere: part of an encoded dot segment, or needless.
                    return Err(PathRejected::DotSegment);
                }
                if v == b'%' || is_unreserved(v) {
                    return Err(PathRejected::NeedlessEscape);
                }
                i += 3;
            }
            b'\\' => return Err(PathRejected::EncodedSeparator),
            b if is_control(b) => return Err(PathRejected::ControlCharacter),
            _ => i += 1,
        }
    }
    Ok(())
}

/// The path part of a raw request target, if it is in normal form (module docs).
pub fn normalize_path(raw: &str) -> Result<&str, PathRejected> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRejected::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(path);
    }
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        check_segment(seg, segs.peek().is_none())?;
    }
    Ok(path)
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
    fn normal_form_paths_pass_unchanged() {
        let n = normalize_path;
        assert_eq!(n("/a/b"), Ok("/a/b"));
        assert_eq!(n("/"), Ok("/"));
        assert_eq!(n("/a/b/"), Ok("/a/b/"));
        assert_eq!(n("/a%20b%3a"), Ok("/a%20b%3a"));
        assert_eq!(n("/a?x=/../b"), Ok("/a"));
        assert_eq!(n("/a?x=%2F"), Ok("/a"));
        assert_eq!(n("/a#frag"), Ok("/a"));
        assert_eq!(n("/caf\u{e9}"), Ok("/caf\u{e9}"));
        assert_eq!(n("/a.b/..c/c..d/.e"), Ok("/a.b/..c/c..d/.e"));
        assert_eq!(n("/%C3%A9"), Ok("/%C3%A9"));
    }

    #[test]
    fn targets_not_in_normal_form_are_refused() {
        use PathRejected::*;
        for (p, want) in [
            ("//a", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a/b//", EmptySegment),
            ("/a/./b", DotSegment),
            ("/a/../b", DotSegment),
            ("/teams/a/../../health", DotSegment),
            ("/a/b/..", DotSegment),
            ("/a/b/.", DotSegment),
            ("/a/%2e%2E/b", DotSegment),
            ("/a/%2e/b", DotSegment),
            ("/a/.%2e/b", DotSegment),
            ("/a/x%2ey", DotSegment),
            ("/%61", NeedlessEscape),
            ("/a%7e", NeedlessEscape),
            ("/a/%252e%252e/b", NeedlessEscape),
            ("/a%25", NeedlessEscape),
            ("/a%2Fb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a/..%2Fb/x", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a\\b", EncodedSeparator),
            ("/a%00", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%zz", MalformedEscape),
            ("/a%4", MalformedEscape),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("", NotAbsolute),
            ("http://h/a", NotAbsolute),
        ] {
            assert_eq!(normalize_path(p), Err(want), "{p}");
        }
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
