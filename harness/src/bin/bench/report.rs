//! The bench report: ratios between scenarios, the table on stdout, the JSON file.

use aml_harness::Artifacts;
use serde_json::{json, Value};

use super::machine::{cpu_model, envoy_version, git_commit};
use super::{Measured, Settings, BODY, METHOD, PATH};

/// (name, numerator id, denominator id, value) for every pair both measured.
pub fn ratios(results: &[Measured]) -> Vec<(String, f64)> {
    let rps = |id: &str| results.iter().find(|m| m.id == id).map(Measured::rps);
    let pairs = [
        ("B", "A"),
        ("B2", "A"),
        ("C", "A"),
        ("D", "A"),
        ("E", "A"),
        ("C", "B"),
        ("C", "B2"),
        ("D", "B"),
        ("D", "C"),
    ];
    pairs
        .iter()
        .filter_map(|(n, d)| {
            let (x, y) = (rps(n)?, rps(d)?);
            (y > 0.0).then(|| (format!("{n}/{d}"), x / y))
        })
        .collect()
}

pub fn print_table(s: &Settings, results: &[Measured], ratios: &[(String, f64)]) {
    println!();
    println!(
        "{:<3} {:<32} {:>9} {:>15} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>5}",
        "id",
        "scenario",
        "req/s",
        "rounds min-max",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "reconn",
        "other"
    );
    println!("{}", "-".repeat(120));
    for m in results {
        let (lo, hi) = m.rps_range();
        println!(
            "{:<3} {:<32} {:>9.0} {:>15} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>6} {:>5}",
            m.id,
            m.title,
            m.rps(),
            format!("{lo:.0}-{hi:.0}"),
            m.pct_ms(0.5),
            m.pct_ms(0.9),
            m.pct_ms(0.99),
            m.out.hist.max() as f64 / 1000.0,
            m.out.errors(),
            m.out.reconnects,
            m.max_foreign().map_or("?".into(), |l| format!("{l:.2}"))
        );
    }
    println!(
        "\nreq/s = responses with the expected status / measured time, over {} round(s) of {}s;\n\
         {} closed-loop keep-alive connections; latency percentiles over all rounds;\n\
         other = most cores' worth of CPU that processes outside the bench used in a round\n\
         (the machine has {} cores; anything well above 0 means the numbers are disturbed)",
        s.rounds,
        s.seconds,
        s.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("throughput ratios (req/s):");
    for (name, r) in ratios {
        println!("  {name:<6} {r:.3}");
    }
}

pub fn to_json(
    s: &Settings,
    a: &Artifacts,
    cores: usize,
    results: &[Measured],
    ratios: &[(String, f64)],
) -> Value {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let scen: Vec<Value> = results
        .iter()
        .map(|m| {
            let q = |x: f64| m.out.hist.value_at_quantile(x);
            json!({
                "id": m.id,
                "title": m.title,
                "detail": m.detail,
                "expected_status": m.expected_status,
                "requests_per_second": m.rps(),
                "ok": m.out.ok,
                "completed": m.out.completed(),
                "errors": m.out.errors(),
                "wrong_status": m.out.wrong_status.iter()
                    .map(|(st, n)| json!({"status": st, "count": n})).collect::<Vec<_>>(),
                "io_errors": m.out.io_errors,
                "reconnects": m.out.reconnects,
                "first_error": m.out.first_error,
                "elapsed_seconds": m.out.elapsed.as_secs_f64(),
                "latency_us": {
                    "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                    "min": m.out.hist.min(), "max": m.out.hist.max(), "mean": m.out.hist.mean()
                },
                "warmup": {"ok": m.warmup.ok, "errors": m.warmup.errors(),
                           "first_error": m.warmup.first_error},
                "rounds": m.rounds.iter().map(|r| json!({
                    "requests_per_second": r.rps,
                    "errors": r.errors,
                    "other_processes_cores": r.foreign_cores,
                    "loadavg_1m_after": r.loadavg
                })).collect::<Vec<_>>()
            })
        })
        .collect();
    json!({
        "generated_unix": unix,
        "git_commit": git_commit(),
        "machine": {
            "cores": cores,
            "cpu": cpu_model(),
            "note": "load generator, Envoy, mock IdP and mock Azure ML all on this machine"
        },
        "envoy": envoy_version(a),
        "settings": {
            "seconds": s.seconds,
            "rounds": s.rounds,
            "warmup_seconds": s.warmup_seconds,
            "connections": s.connections,
            "envoy_concurrency": s.concurrency,
            "token_pool": s.tokens,
            "envoy_log_level": s.envoy_log_level,
            "max_error_rate": s.max_error_rate,
            "request": {"method": METHOD, "path": PATH, "body_bytes": BODY.len()}
        },
        "scenarios": scen,
        "ratios_rps": ratios.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()
    })
}
