//! The bench report: medians over rounds, µs added per request, ratios, the table on stdout,
//! `target/bench/results.json`, and the checks that decide the exit code.

use aml_harness::{Artifacts, Host};
use serde_json::{json, Value};

use super::machine::{cpu_model, envoy_version, git_commit, kong_version, wrk_version};
use super::{Measured, Sample, Settings};

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    })
}

impl Measured {
    fn med(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        median(self.samples.iter().filter_map(f).collect())
    }
    fn rps(&self) -> Option<f64> {
        self.med(|s| Some(s.load.ok_per_second()))
    }
    fn rps_range(&self) -> (f64, f64) {
        self.samples
            .iter()
            .map(|s| s.load.ok_per_second())
            .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)))
    }
    fn errors(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.load.status_errors + s.load.io_errors)
            .sum()
    }
    fn forged_accepted(&self) -> u64 {
        self.samples
            .iter()
            .filter_map(|s| s.forged.as_ref())
            .map(|f| f.ok())
            .sum()
    }
    fn max_other(&self) -> Option<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.other_cores)
            .reduce(f64::max)
    }
    /// Module load per worker: Kong's own log line; Envoy has none, so its start-to-ready time
    /// less that of the same host without a filter.
    fn module_load_ms(&self, none: Option<&Measured>) -> Option<f64> {
        match self.host {
            Host::Kong => self.med(|s| median(s.module_load_ms.clone())),
            Host::Envoy => {
                let base = none?.med(|s| Some(s.start_ms))?;
                matches!(
                    self.id,
                    "minimal" | "ours_warm" | "ours_distinct" | "ours_cache1" | "ours_flood"
                )
                .then(|| self.med(|s| Some(s.start_ms)).map(|m| m - base))?
            }
        }
    }
}

fn find<'a>(results: &'a [Measured], host: Host, id: &str) -> Option<&'a Measured> {
    results.iter().find(|m| m.host == host && m.id == id)
}

/// 1e6/rps − 1e6/rps(no filter): the CPU time the variant adds per request on the one worker.
fn us_added(results: &[Measured], m: &Measured) -> Option<f64> {
    let none = find(results, m.host, "none")?.rps()?;
    let rps = m.rps()?;
    (rps > 0.0 && none > 0.0).then(|| 1e6 / rps - 1e6 / none)
}

/// (host, name, what it says, value).
fn ratios(results: &[Measured]) -> Vec<(Host, String, &'static str, f64)> {
    let pairs: [(Host, &str, &str, &str); 11] = [
        (
            Host::Envoy,
            "ours_warm",
            "minimal",
            "warm vs the Wasm floor",
        ),
        (
            Host::Envoy,
            "ours_warm",
            "native_cache",
            "warm vs jwt_authn+cache (target >= 0.70)",
        ),
        (
            Host::Envoy,
            "minimal",
            "native_cache",
            "the floor vs jwt_authn+cache: this host's ceiling",
        ),
        (
            Host::Envoy,
            "ours_cache1",
            "native",
            "cold vs jwt_authn (target >= 0.25)",
        ),
        (
            Host::Envoy,
            "ours_distinct",
            "ours_warm",
            "3000 distinct tokens vs one",
        ),
        (
            Host::Envoy,
            "native",
            "native_cache",
            "jwt_authn without vs with its cache",
        ),
        (
            Host::Kong,
            "ours_warm",
            "minimal",
            "warm vs the Wasm floor (target >= 0.80)",
        ),
        (
            Host::Kong,
            "ours_warm",
            "native",
            "warm vs Kong's Lua jwt plugin",
        ),
        (
            Host::Kong,
            "ours_cache1",
            "native",
            "cold vs Kong's Lua jwt plugin",
        ),
        (
            Host::Kong,
            "ours_distinct",
            "ours_warm",
            "3000 distinct tokens vs one",
        ),
        (Host::Kong, "minimal", "none", "the floor vs no filter"),
    ];
    let mut out: Vec<_> = pairs
        .iter()
        .filter_map(|(h, n, d, what)| {
            let (x, y) = (find(results, *h, n)?.rps()?, find(results, *h, d)?.rps()?);
            (y > 0.0).then(|| (*h, format!("{n}/{d} req/s"), *what, x / y))
        })
        .collect();
    for h in [Host::Envoy, Host::Kong] {
        let p99 = |id| find(results, h, id).and_then(|m| m.med(|s| Some(s.load.p99_us)));
        if let (Some(f), Some(w)) = (p99("ours_flood"), p99("ours_warm")) {
            if w > 0.0 {
                let what = "valid callers' p99 in the forged flood vs warm p99";
                out.push((h, "ours_flood/ours_warm p99".into(), what, f / w));
            }
        }
    }
    out
}

fn opt(v: Option<f64>, width: usize, prec: usize) -> String {
    v.map_or(format!("{:>width$}", "-"), |x| format!("{x:>width$.prec$}"))
}

pub fn print_table(s: &Settings, results: &[Measured]) {
    for host in [Host::Envoy, Host::Kong] {
        let rows: Vec<&Measured> = results.iter().filter(|m| m.host == host).collect();
        if rows.is_empty() {
            continue;
        }
        println!("\n{} (one worker, pinned to one CPU)", host.product());
        println!(
            "{:<14} {:<40} {:>8} {:>15} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>5}",
            "variant",
            "",
            "req/s",
            "rounds min-max",
            "p50 us",
            "p99 us",
            "us added",
            "errors",
            "start ms",
            "load ms",
            "other"
        );
        println!("{}", "-".repeat(140));
        let none = find(results, host, "none");
        for m in rows {
            let (lo, hi) = m.rps_range();
            println!(
                "{:<14} {:<40} {} {:>15} {} {} {} {:>7} {} {} {}",
                m.id,
                m.title,
                opt(m.rps(), 8, 0),
                format!("{lo:.0}-{hi:.0}"),
                opt(m.med(|s| Some(s.load.p50_us)), 8, 0),
                opt(m.med(|s| Some(s.load.p99_us)), 8, 0),
                opt(us_added(results, m).filter(|_| m.id != "none"), 9, 1),
                m.errors(),
                opt(m.med(|s| Some(s.start_ms)), 8, 0),
                opt(m.module_load_ms(none), 8, 0),
                opt(m.max_other(), 5, 2),
            );
            if let Some(f) = m.med(|s| s.forged.as_ref().map(|f| f.per_second())) {
                println!(
                    "{:<14} {:<40} {f:>8.0}   forged-token responses/s beside them ({} accepted)",
                    "",
                    "  (the flood itself)",
                    m.forged_accepted()
                );
            }
        }
    }
    println!(
        "\nmedians over {} round(s) of {}s (wrk, {} connections; the flood: half valid, half \
         forged); us added = 1e6/req/s - 1e6/req/s(no filter);\nload ms: Kong's \"successfully \
         loaded ... module in N ms\" (one worker), Envoy: start-to-ready less no filter's;\n\
         other = most cores' worth of CPU used by processes outside the bench during a \
         measurement (the machine is shared: anything above 0 disturbed the numbers)",
        s.rounds, s.seconds, s.connections
    );
    println!("ratios (medians):");
    for (h, name, what, v) in ratios(results) {
        println!("  {:<6} {name:<30} {v:>7.3}  {what}", h.name());
    }
}

fn sample_json(x: &Sample) -> Value {
    let load = |w: &super::wrk::WrkOut| {
        json!({
            "requests": w.requests, "ok": w.ok(), "status_errors": w.status_errors,
            "io_errors": w.io_errors, "seconds": w.seconds,
            "ok_per_second": w.ok_per_second(),
            "latency_us": {"p50": w.p50_us, "p90": w.p90_us, "p99": w.p99_us,
                           "p999": w.p999_us, "max": w.max_us, "mean": w.mean_us}
        })
    };
    json!({
        "load": load(&x.load),
        "forged": x.forged.as_ref().map(load),
        "start_ms": x.start_ms,
        "module_load_ms": x.module_load_ms,
        "other_processes_cores": x.other_cores,
        "gateway_cpus_allowed": x.gateway_cpus,
    })
}

fn wasm_json(path: &std::path::Path) -> Value {
    json!({"path": path.display().to_string(),
           "bytes": std::fs::metadata(path).ok().map(|m| m.len())})
}

/// Print the table and build the JSON document.
pub fn report(s: &Settings, a: &Artifacts, results: &[Measured]) -> Value {
    print_table(s, results);
    let ours = wasm_json(&a.wasm);
    let minimal = wasm_json(&s.minimal_wasm);
    println!(
        "modules: ours {} bytes ({}), minimal {} bytes",
        ours["bytes"],
        a.wasm.display(),
        minimal["bytes"]
    );
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let variants: Vec<Value> = results
        .iter()
        .map(|m| {
            let none = find(results, m.host, "none");
            json!({
                "host": m.host.name(), "id": m.id, "title": m.title,
                "median": {
                    "requests_per_second": m.rps(),
                    "p50_us": m.med(|s| Some(s.load.p50_us)),
                    "p99_us": m.med(|s| Some(s.load.p99_us)),
                    "us_added_per_request": us_added(results, m),
                    "start_ms": m.med(|s| Some(s.start_ms)),
                    "module_load_ms": m.module_load_ms(none),
                    "forged_per_second": m.med(|s| s.forged.as_ref().map(|f| f.per_second())),
                },
                "forged_accepted": m.forged_accepted(),
                "rounds": m.samples.iter().map(sample_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let hosts: Vec<&str> = [Host::Envoy, Host::Kong]
        .into_iter()
        .filter(|h| results.iter().any(|m| m.host == *h))
        .map(Host::name)
        .collect();
    json!({
        "generated_unix": unix,
        "git_commit": git_commit(),
        "smoke": s.smoke,
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "cpu": cpu_model(),
            "note": "shared machine: the gateway and wrk are pinned to their CPUs, other \
                     processes are not; see other_processes_cores per round"
        },
        "versions": {
            "envoy": hosts.contains(&"envoy").then(|| envoy_version(a)).flatten(),
            "kong": hosts.contains(&"kong").then(|| kong_version(a)).flatten(),
            "wrk": wrk_version(),
        },
        "settings": {
            "seconds": s.seconds, "warmup_seconds": s.warmup_seconds, "rounds": s.rounds,
            "connections": s.connections, "tokens": s.tokens, "forged": s.forged,
            "gateway_cpu": s.gateway_cpu, "load_cpu": s.load_cpu, "workers": 1,
            "envoy_log_level": s.envoy_log_level, "kong_log_level": s.kong_log_level,
            "max_error_rate": s.max_error_rate, "request": "GET / (Authorization: Bearer)",
        },
        "wasm": {"ours": ours, "minimal": minimal},
        "variants": variants,
        "ratios": ratios(results).into_iter().map(|(h, name, what, v)| json!({
            "host": h.name(), "name": name, "what": what, "value": v
        })).collect::<Vec<_>>(),
    })
}

/// False when a variant answered nothing right, too many errors, or accepted a forged token.
pub fn check(s: &Settings, results: &[Measured]) -> bool {
    let mut ok = true;
    for m in results {
        for (i, x) in m.samples.iter().enumerate() {
            let l = &x.load;
            let errors = l.status_errors + l.io_errors;
            let rate = errors as f64 / (l.requests + l.io_errors).max(1) as f64;
            if l.ok() == 0 || rate > s.max_error_rate {
                eprintln!(
                    "{} {} round {}: {} ok, {errors} errors ({:.3}%, BENCH_MAX_ERROR_RATE {})",
                    m.host.name(),
                    m.id,
                    i + 1,
                    l.ok(),
                    rate * 100.0,
                    s.max_error_rate
                );
                ok = false;
            }
            if let Some(f) = &x.forged {
                if f.ok() > 0 || f.requests == 0 {
                    eprintln!(
                        "{} {} round {}: {} forged-token requests answered 2xx/3xx of {}",
                        m.host.name(),
                        m.id,
                        i + 1,
                        f.ok(),
                        f.requests
                    );
                    ok = false;
                }
            }
        }
    }
    ok
}
