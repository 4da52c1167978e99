//! `inspect-token`: a token decoded, never verified and never sent anywhere.

use std::io::Read as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::style;
use crate::Outcome;

const BANNER: &str =
    "NOT VERIFIED: decoded only; the signature was not checked. Do not trust these claims.";

/// `2026-12-01 14:48:13 UTC`.
pub fn utc(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A token from the argument or standard input (`-`), without a `Bearer ` prefix.
pub fn read_token(arg: &str) -> Result<String, String> {
    let raw = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        s
    } else {
        arg.to_string()
    };
    let t = raw.trim();
    let t = t
        .strip_prefix("Bearer ")
        .or_else(|| t.strip_prefix("bearer "))
        .unwrap_or(t);
    Ok(t.trim().to_string())
}

fn part(p: &str, what: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(p.trim_end_matches('='))
        .map_err(|_| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not JSON"))
}

fn relative(t: u64, now: u64) -> String {
    let span = azure_ml_kong::explain::span;
    if t >= now {
        format!("in {}", span(t - now))
    } else {
        format!("{} ago", span(now - t))
    }
}

pub fn inspect(arg: &str, now: Option<u64>, json_out: bool) -> Outcome {
    let token = read_token(arg)?;
    let now = now.unwrap_or_else(crate::now_secs);
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() == 5 {
        return Err("an encrypted token (JWE): its claims cannot be read without the key".into());
    }
    let [h, p, s] = parts.as_slice() else {
        return Err(format!(
            "not a JWT: {} dot-separated parts, expected 3",
            parts.len()
        ));
    };
    let header = part(h, "header")?;
    let claims = part(p, "payload")?;
    let sig_len = URL_SAFE_NO_PAD.decode(s).map(|b| b.len()).unwrap_or(0);
    let mut times = Vec::new();
    for name in ["iat", "nbf", "exp"] {
        if let Some(t) = claims.get(name).and_then(Value::as_u64) {
            times.push((name, t));
        }
    }
    let exp = claims.get("exp").and_then(Value::as_u64);
    let status = match exp {
        Some(e) if e > now => format!("expires in {}", azure_ml_kong::explain::span(e - now)),
        Some(e) => format!("EXPIRED {} ago", azure_ml_kong::explain::span(now - e)),
        None => "no exp: the filter refuses it (token_malformed)".into(),
    };
    if json_out {
        let t: serde_json::Map<String, Value> = times
            .iter()
            .map(|(n, t)| {
                (
                    n.to_string(),
                    json!({"unix": t, "utc": utc(*t), "relative": relative(*t, now)}),
                )
            })
            .collect();
        let doc = json!({
            "verified": false,
            "warning": BANNER,
            "header": header,
            "claims": claims,
            "signature": format!("<redacted: {sig_len} bytes>"),
            "times": t,
            "status": status,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(0);
    }
    println!("{}", style::warn(&format!("!!! {BANNER} !!!")));
    println!("{}", style::bold("header"));
    println!(
        "{}",
        serde_json::to_string_pretty(&header).unwrap_or_default()
    );
    println!("{}", style::bold("claims"));
    println!(
        "{}",
        serde_json::to_string_pretty(&claims).unwrap_or_default()
    );
    println!("{}", style::bold("times"));
    for (n, t) in &times {
        println!("  {n:<4} {t:<11} {}  ({})", utc(*t), relative(*t, now));
    }
    let painted = if exp.is_some_and(|e| e > now) {
        style::ok(&status)
    } else {
        style::bad(&status)
    };
    println!("  {painted}");
    println!("{} <redacted: {sig_len} bytes>", style::bold("signature"));
    println!("{}", style::warn(&format!("!!! {BANNER} !!!")));
    Ok(0)
}
