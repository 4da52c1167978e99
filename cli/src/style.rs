//! Colour only on a terminal, and never when `NO_COLOR` is set (https://no-color.org).

use std::io::IsTerminal;
use std::sync::OnceLock;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    })
}

fn paint(code: &str, s: &str) -> String {
    if enabled() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn ok(s: &str) -> String {
    paint("32", s)
}
pub fn bad(s: &str) -> String {
    paint("1;31", s)
}
pub fn warn(s: &str) -> String {
    paint("1;33", s)
}
pub fn dim(s: &str) -> String {
    paint("2", s)
}
pub fn bold(s: &str) -> String {
    paint("1", s)
}

/// A fixed-width, left-aligned cell: padding is computed on the plain text so colour codes
/// do not break alignment.
pub fn pad(plain: &str, width: usize, painted: String) -> String {
    let n = plain.chars().count();
    format!("{painted}{}", " ".repeat(width.saturating_sub(n)))
}
