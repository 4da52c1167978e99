//! `check-jwks`: every key of a key set as the filter reads it (`KeySet::parse`), with
//! weak, unusable and duplicate keys flagged.

use azure_ml_kong::jwks::KeySet;
use azure_ml_kong::keycache::source::DEFAULT_MAX_BODY_BYTES;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::style;
use crate::Outcome;

fn s<'a>(k: &'a Value, f: &str) -> Option<&'a str> {
    k.get(f).and_then(Value::as_str)
}

fn size(k: &Value) -> String {
    match s(k, "kty") {
        Some("RSA") => {
            let bits = s(k, "n")
                .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
                .map(|b| {
                    let lead = b.iter().take_while(|x| **x == 0).count();
                    b.len().saturating_sub(lead) * 8
                })
                .unwrap_or(0);
            format!("{bits} bits")
        }
        _ => s(k, "crv").unwrap_or("?").to_string(),
    }
}

pub fn run(source: &str, json_out: bool) -> Outcome {
    let body = if source.starts_with("http://") || source.starts_with("https://") {
        crate::check_config::fetch(source, 5000, DEFAULT_MAX_BODY_BYTES)?
    } else {
        std::fs::read(source).map_err(|e| format!("{source}: {e}"))?
    };
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| format!("{source}: not JSON: {e}"))?;
    let raw: Vec<Value> = doc
        .get("keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parsed = KeySet::parse(&body);
    let skipped: Vec<String> = match &parsed {
        Ok(k) => k.skipped().to_vec(),
        Err(azure_ml_kong::jwks::JwksError::NoUsableKeys(s)) => s.clone(),
        Err(_) => Vec::new(),
    };
    let mut rows = Vec::new();
    let mut bad = parsed.is_err();
    for (i, k) in raw.iter().enumerate() {
        let mut flags: Vec<String> = Vec::new();
        let label = format!("keys[{i}]");
        if let Some(why) = skipped
            .iter()
            .find(|w| w.starts_with(&format!("{label}:")) || w.starts_with(&format!("{label} (")))
        {
            flags.push(format!(
                "unusable: {}",
                why.split_once(": ").map_or(why.as_str(), |x| x.1)
            ));
        }
        if s(k, "kty") == Some("RSA") {
            let bits: usize = size(k).trim_end_matches(" bits").parse().unwrap_or(0);
            if bits < 2048 {
                flags.push(format!("weak: RSA {bits} bits (< 2048)"));
            }
        }
        if s(k, "use").is_some_and(|u| u != "sig") {
            flags.push("not a signing key (use is not sig)".into());
        }
        if k.get("d").is_some() {
            flags.push("PRIVATE key material (d) published".into());
        }
        let kid = s(k, "kid");
        if kid.is_some()
            && raw
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && s(o, "kid") == kid)
        {
            flags.push("duplicate kid".into());
        }
        let material = |o: &Value| {
            (
                s(o, "n").or(s(o, "x")).map(str::to_string),
                s(o, "y").map(str::to_string),
            )
        };
        if material(k).0.is_some()
            && raw
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && material(o) == material(k))
        {
            flags.push("same key published twice".into());
        }
        if kid.is_none() && raw.len() > 1 {
            flags.push("no kid: tokens cannot name it among several keys".into());
        }
        bad |= !flags.is_empty();
        rows.push(json!({
            "index": i, "kid": kid, "kty": s(k, "kty"), "alg": s(k, "alg"), "size": size(k),
            "use": s(k, "use"), "x5t": s(k, "x5t"), "issuer": s(k, "issuer"), "flags": flags,
        }));
    }
    let usable = parsed.as_ref().map(|k| k.len()).unwrap_or(0);
    if json_out {
        let err = parsed.as_ref().err().map(|e| e.to_string());
        let doc =
            json!({"source": source, "keys": rows, "usable": usable, "error": err, "ok": !bad});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(u8::from(bad));
    }
    println!(
        "{:<3} {:<28} {:<4} {:<6} {:<10} {:<4} {:<28} flags",
        "#", "kid", "kty", "alg", "size", "use", "x5t"
    );
    for r in &rows {
        let g = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("-").to_string();
        let flags: Vec<String> = r["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let f = if flags.is_empty() {
            style::ok("ok")
        } else {
            style::bad(&flags.join("; "))
        };
        println!(
            "{:<3} {:<28} {:<4} {:<6} {:<10} {:<4} {:<28} {f}",
            r["index"].as_u64().unwrap_or(0),
            g("kid"),
            g("kty"),
            g("alg"),
            g("size"),
            g("use"),
            g("x5t")
        );
    }
    match &parsed {
        Ok(_) => println!("{usable} of {} key(s) usable by the filter", raw.len()),
        Err(e) => println!("{} {e}", style::bad("the filter cannot use this key set:")),
    }
    Ok(u8::from(bad))
}
