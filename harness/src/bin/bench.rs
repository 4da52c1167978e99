//! `make bench`: requests/s and latency of our filter in real Envoy 1.40 (V8) and real Kong
//! 3.9 (Wasmtime), each with one worker pinned to one CPU and `wrk` on another, next to what
//! the same host does without a filter, with a minimal Proxy-Wasm filter (the floor) and with
//! its native JWT check, all measured in the same run. Round r runs every variant once; the
//! report gives medians over rounds. docs/BENCH.md describes the method and every variable.
//!
//! Performance is reported, never asserted: the exit code is non-zero only when a variant
//! could not run, answered too many errors (`BENCH_MAX_ERROR_RATE`), or accepted a forged
//! token. `BENCH_SMOKE=1` runs every variant for a second without warm-up (`make test` does,
//! so the bench cannot rot).

#[path = "bench/machine.rs"]
mod machine;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/variants.rs"]
mod variants;
#[path = "bench/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::time::Instant;

use aml_harness::{repo_root, Artifacts, Host, MockIdp};
use serde_json::json;

use variants::{Ctx, Running, Traffic, Variant};
use wrk::{Load, WrkOut};

pub struct Settings {
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub connections: usize,
    pub tokens: usize,
    pub forged: usize,
    pub rounds: usize,
    pub hosts: Vec<Host>,
    pub only: Option<Vec<String>>,
    pub envoy_log_level: String,
    pub kong_log_level: String,
    pub gateway_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    pub smoke: bool,
    pub max_error_rate: f64,
    pub out: PathBuf,
    pub filter_wasm: Option<PathBuf>,
    pub minimal_wasm: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<T>()
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect()
        })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let smoke = env_or("BENCH_SMOKE", 0u8)? != 0;
        let target = env_path("CARGO_TARGET_DIR").unwrap_or_else(|| repo_root().join("target"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Pinning needs two CPUs; "none" turns it off.
        let cpu = |name: &str, default: usize| -> Result<Option<usize>, String> {
            match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
                Some(v) if v.trim() == "none" => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a CPU number or \"none\"")),
                None => Ok((cores >= 2).then_some(default)),
            }
        };
        let hosts = match env_list("BENCH_HOSTS") {
            Some(names) => names
                .iter()
                .map(|n| Host::parse(n))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![Host::Envoy, Host::Kong],
        };
        let s = Settings {
            seconds: if smoke {
                1
            } else {
                env_or("BENCH_SECONDS", 10)?
            },
            warmup_seconds: if smoke {
                0
            } else {
                env_or("BENCH_WARMUP_SECONDS", 2)?
            },
            connections: env_or("BENCH_CONNECTIONS", if smoke { 2 } else { 16 })?,
            tokens: env_or("BENCH_TOKENS", if smoke { 40 } else { 3000 })?,
            forged: env_or("BENCH_FORGED", if smoke { 20 } else { 1000 })?,
            rounds: if smoke { 1 } else { env_or("BENCH_ROUNDS", 1)? },
            hosts,
            only: env_list("BENCH_VARIANTS"),
            envoy_log_level: env_or("BENCH_ENVOY_LOG_LEVEL", "warning".to_string())?,
            kong_log_level: env_or("BENCH_KONG_LOG_LEVEL", "notice".to_string())?,
            gateway_cpu: cpu("BENCH_GATEWAY_CPU", 0)?,
            load_cpu: cpu("BENCH_LOAD_CPU", 1)?,
            smoke,
            max_error_rate: env_or("BENCH_MAX_ERROR_RATE", 0.001)?,
            out: env_path("BENCH_OUT").unwrap_or_else(|| target.join("bench/results.json")),
            filter_wasm: env_path("BENCH_FILTER_WASM"),
            minimal_wasm: env_path("BENCH_MINIMAL_WASM")
                .unwrap_or_else(|| target.join("wasm32-wasip1/release/minimal_filter.wasm")),
        };
        if s.seconds == 0 || s.connections < 2 || s.tokens < 2 || s.rounds == 0 {
            return Err(
                "BENCH_SECONDS and BENCH_ROUNDS must be > 0, BENCH_CONNECTIONS and \
                        BENCH_TOKENS at least 2"
                    .into(),
            );
        }
        Ok(s)
    }
}

/// One round of one variant.
pub struct Sample {
    /// The valid callers' load (the only load but in the flood).
    pub load: WrkOut,
    /// The flood's forged-token load.
    pub forged: Option<WrkOut>,
    pub start_ms: f64,
    pub module_load_ms: Vec<f64>,
    /// Cores' worth of CPU used during the measurement by processes outside the bench.
    pub other_cores: Option<f64>,
    /// The gateway's `Cpus_allowed_list` (shows the pinning took).
    pub gateway_cpus: Option<String>,
}

pub struct Measured {
    pub host: Host,
    pub id: &'static str,
    pub title: &'static str,
    pub traffic: Traffic,
    pub samples: Vec<Sample>,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}

/// The hosts to run; Kong missing is a NOTE unless BENCH_HOSTS asked for it.
fn usable_hosts(s: &Settings) -> Result<Vec<Host>, String> {
    let kong = aml_harness::kong_path();
    let explicit = env_list("BENCH_HOSTS").is_some();
    let mut hosts = s.hosts.clone();
    if hosts.contains(&Host::Kong) && !kong.exists() {
        let why = format!(
            "{} not found (build Kong 3.9 from source as docs/kong.md says, or set AMLK_KONG)",
            kong.display()
        );
        if explicit {
            return Err(format!("BENCH_HOSTS names kong, but {why}"));
        }
        println!("NOTE: Kong not benchmarked: {why}");
        hosts.retain(|h| *h != Host::Kong);
    }
    if hosts.is_empty() {
        return Err("no host to benchmark".into());
    }
    Ok(hosts)
}

fn locate(s: &Settings, hosts: &[Host]) -> Result<Artifacts, String> {
    let mut a = Artifacts::locate_for(hosts[0])?;
    if let Some(w) = &s.filter_wasm {
        if !w.exists() {
            return Err(format!("BENCH_FILTER_WASM={} does not exist", w.display()));
        }
        a.wasm = w.clone();
    }
    if !s.minimal_wasm.exists() {
        return Err(format!(
            "minimal filter not built: {} (run `make minimal-wasm`)",
            s.minimal_wasm.display()
        ));
    }
    wrk::script()
        .exists()
        .then_some(())
        .ok_or("bench/wrk/tokens.lua missing")?;
    machine::wrk_version()
        .ok_or("wrk not found; `make bench` installs it (apt-get install -y wrk)")?;
    Ok(a)
}

/// Token files for wrk: the warm token, the pool of distinct ones, the forged ones.
struct Tokens {
    warm: String,
    warm_file: PathBuf,
    pool_file: PathBuf,
    forged_file: PathBuf,
}

fn tokens(s: &Settings, idp: &MockIdp, dir: &Path, need_pool: bool) -> Result<Tokens, String> {
    let warm = idp.token(json!({"client_id": "bench-client"}))?;
    let pool = if need_pool {
        let t0 = Instant::now();
        let pool = mint_pool(idp, s.tokens.max(s.forged + 1))?;
        println!(
            "minted {} distinct tokens in {:.1}s",
            pool.len(),
            t0.elapsed().as_secs_f64()
        );
        pool
    } else {
        Vec::new()
    };
    let forged = variants::forge(&pool, s.forged);
    let write = |name: &str, lines: &[String]| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").map_err(|e| e.to_string())?;
        Ok(p)
    };
    Ok(Tokens {
        warm_file: write("warm.tokens", std::slice::from_ref(&warm))?,
        pool_file: write("pool.tokens", &pool[..s.tokens.min(pool.len())])?,
        forged_file: write("forged.tokens", &forged)?,
        warm,
    })
}

fn run() -> Result<bool, String> {
    let s = Settings::from_env()?;
    let hosts = usable_hosts(&s)?;
    let a = locate(&s, &hosts)?;
    let dir = tempfile::Builder::new()
        .prefix("aml-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let selected: Vec<Variant> = hosts
        .iter()
        .flat_map(|h| variants::variants(*h))
        .filter(|v| {
            s.only.as_ref().is_none_or(|ids| {
                ids.iter()
                    .any(|i| *i == v.id || *i == format!("{}:{}", v.host, v.id))
            })
        })
        .collect();
    if selected.is_empty() {
        return Err(
            "BENCH_VARIANTS selects no variant (ids: none, minimal, native, \
                    native_cache, ours_warm, ours_distinct, ours_cache1, ours_flood; \
                    or host:id)"
                .into(),
        );
    }
    println!(
        "bench{}: {} round(s) x {}s after {}s warm-up, {} connections (wrk -t1), one gateway \
         worker; gateway on CPU {}, wrk on CPU {}; hosts: {}",
        if s.smoke { " (smoke)" } else { "" },
        s.rounds,
        s.seconds,
        s.warmup_seconds,
        s.connections,
        s.gateway_cpu.map_or("any".into(), |c| c.to_string()),
        s.load_cpu.map_or("any".into(), |c| c.to_string()),
        hosts
            .iter()
            .map(|h| h.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let idp = MockIdp::start(&a, dir.path(), &[])?;
    let need_pool = selected.iter().any(|v| v.traffic != Traffic::One);
    let toks = tokens(&s, &idp, dir.path(), need_pool)?;
    let kong_jwt = if selected
        .iter()
        .any(|v| v.host == Host::Kong && v.id == "native")
    {
        Some(variants::kong_jwt_credential(&idp.base(), &toks.warm)?)
    } else {
        None
    };
    let ctx = Ctx {
        artifacts: a.clone(),
        minimal_wasm: s.minimal_wasm.clone(),
        idp_port: idp.port,
        envoy_log_level: s.envoy_log_level.clone(),
        kong_log_level: s.kong_log_level.clone(),
        gateway_cpu: s.gateway_cpu,
        wasmtime_cache: s.smoke.then(|| dir.path().join("wasmtime-cache")),
        kong_jwt,
    };
    let mut results: Vec<Measured> = selected
        .iter()
        .map(|v| Measured {
            host: v.host,
            id: v.id,
            title: v.title,
            traffic: v.traffic,
            samples: Vec::new(),
        })
        .collect();
    for round in 1..=s.rounds {
        println!("round {round}/{}", s.rounds);
        // Smoke: consecutive variants with the same configuration share one gateway.
        let mut current: Option<(Host, variants::Setup, variants::Started)> = None;
        for (i, v) in selected.iter().enumerate() {
            let reuse = s.smoke
                && current
                    .as_ref()
                    .is_some_and(|(h, st, _)| *h == v.host && *st == v.setup);
            if !reuse {
                drop(current.take());
                let vdir = dir.path().join(format!("{}-{}-{round}", v.host, v.id));
                std::fs::create_dir_all(&vdir).map_err(|e| e.to_string())?;
                print!("  {:<5} {:<14}", v.host.name(), v.id);
                flush();
                current = Some((v.host, v.setup, variants::start(&ctx, v, &vdir)?));
            } else {
                print!("  {:<5} {:<14}", v.host.name(), v.id);
            }
            let gw = &current.as_ref().ok_or("no gateway")?.2;
            results[i].samples.push(measure(&s, gw, v, &toks)?);
        }
    }
    let doc = report::report(&s, &a, &results);
    if let Some(parent) = s.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        &s.out,
        serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| format!("{}: {e}", s.out.display()))?;
    println!("\nresults: {}", s.out.display());
    Ok(report::check(&s, &results))
}

/// Warm up and measure one round of `v` on its started gateway.
fn measure(
    s: &Settings,
    gw: &variants::Started,
    v: &Variant,
    toks: &Tokens,
) -> Result<Sample, String> {
    let pid = match &gw.gw {
        Running::Envoy(e) => e.proc.pid(),
        Running::Kong(k) => k.pid as u32,
    };
    let gateway_cpus = machine::cpus_allowed(pid);
    let file = match v.traffic {
        Traffic::Distinct => &toks.pool_file,
        Traffic::One | Traffic::Flood => &toks.warm_file,
    };
    let port = gw.port();
    let load = |tokens, connections, seconds| Load {
        port,
        tokens: Some(tokens),
        connections,
        seconds,
        cpu: s.load_cpu,
    };
    if s.warmup_seconds > 0 {
        if v.traffic == Traffic::Distinct && v.id != "ours_cache1" {
            // Every token in the cache before measuring, however long verifying them takes (a
            // cache of one holds none of them).
            let (n, secs) = wrk::prime(port, file)?;
            print!(" primed {n} in {secs:.1}s;");
        }
        wrk::run(&load(file.as_path(), s.connections, s.warmup_seconds))?;
    }
    let before = machine::cpu_sample(&gw.detached_pids());
    let (out, forged) = match v.traffic {
        Traffic::Flood => {
            // Half the connections are valid callers, half send the forged tokens; only the
            // valid callers' latencies are reported as the variant's.
            let half = s.connections / 2;
            let bad = wrk::spawn(&load(toks.forged_file.as_path(), half, s.seconds))?;
            let good = wrk::run(&load(file, s.connections - half, s.seconds));
            let bad = wrk::finish(bad);
            (good?, Some(bad?))
        }
        _ => (wrk::run(&load(file, s.connections, s.seconds))?, None),
    };
    let other_cores = machine::cpu_sample(&gw.detached_pids())
        .zip(before)
        .map(|(b, a)| b.foreign_cores_since(&a));
    println!(
        " start {:>5.0} ms{}  {:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  errors {}{}  other {}",
        gw.start_ms,
        gw.module_load_ms
            .first()
            .map_or(String::new(), |ms| format!(" (module {ms:.0} ms)")),
        out.ok_per_second(),
        out.p50_us,
        out.p99_us,
        out.status_errors + out.io_errors,
        forged.as_ref().map_or(String::new(), |f| format!(
            "; forged {:.0} req/s, {} accepted",
            f.per_second(),
            f.ok()
        )),
        other_cores.map_or("?".into(), |c| format!("{c:.2}"))
    );
    if out.ok() == 0 {
        println!("      gateway log tail:\n{}", gw.log_tail(30));
    }
    Ok(Sample {
        load: out,
        forged,
        start_ms: gw.start_ms,
        module_load_ms: gw.module_load_ms.clone(),
        other_cores,
        gateway_cpus,
    })
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Mint `n` distinct RS256 tokens (distinct `client_id`) through the IdP control API.
fn mint_pool(idp: &MockIdp, n: usize) -> Result<Vec<String>, String> {
    let workers = 4.min(n);
    let base = idp.base();
    let mut pool = std::thread::scope(|sc| -> Result<Vec<String>, String> {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let base = &base;
                sc.spawn(move || -> Result<Vec<String>, String> {
                    (w..n)
                        .step_by(workers)
                        .map(|i| {
                            let r = aml_harness::http(
                                "POST",
                                &format!("{base}/_control/token"),
                                &[("content-type", "application/json")],
                                Some(
                                    &json!({"client_id": format!("bench-client-{i}")}).to_string(),
                                ),
                            )?;
                            r.json()["access_token"]
                                .as_str()
                                .map(str::to_string)
                                .ok_or_else(|| format!("mint: {} {}", r.status, r.body))
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().map_err(|_| "mint thread panicked")??);
        }
        Ok(all)
    })?;
    pool.sort_unstable();
    pool.dedup();
    if pool.len() != n {
        return Err(format!("minted {} distinct tokens, wanted {n}", pool.len()));
    }
    Ok(pool)
}
