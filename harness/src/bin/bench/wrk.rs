//! The load generator: Debian's `wrk` (one thread, closed loop, keep-alive connections) pinned
//! to the load CPU, driven by `bench/wrk/tokens.lua`, which prints its summary as one JSON line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use aml_harness::repo_root;
use serde_json::Value;

/// One wrk run's summary.
#[derive(Clone, Debug, Default)]
pub struct WrkOut {
    /// Responses (any status).
    pub requests: u64,
    /// Responses with a status outside 2xx/3xx.
    pub status_errors: u64,
    /// Connect/read/write failures and timeouts.
    pub io_errors: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl WrkOut {
    /// 2xx/3xx responses.
    pub fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.status_errors)
    }

    pub fn ok_per_second(&self) -> f64 {
        self.ok() as f64 / self.seconds.max(1e-9)
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

pub struct Load<'a> {
    pub port: u16,
    /// One token per line; `None` sends no Authorization header.
    pub tokens: Option<&'a Path>,
    pub connections: usize,
    pub seconds: u64,
    pub cpu: Option<usize>,
}

pub fn script() -> PathBuf {
    repo_root().join("bench/wrk/tokens.lua")
}

/// Start wrk; [`finish`] waits for it and parses its summary.
pub fn spawn(l: &Load) -> Result<Child, String> {
    let mut cmd = match l.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t1", "--timeout", "10s"])
        .arg(format!("-c{}", l.connections))
        .arg(format!("-d{}s", l.seconds))
        .arg("-s")
        .arg(script())
        .arg(format!("http://127.0.0.1:{}/", l.port));
    if let Some(t) = l.tokens {
        cmd.arg("--").arg(t);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run wrk ({e}); `make bench` installs it (apt-get install -y wrk)")
        })
}

pub fn finish(child: Child) -> Result<WrkOut, String> {
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .ok_or_else(|| {
            format!(
                "wrk printed no summary (exit {}): {}{}",
                o.status,
                stdout.trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )
        })?;
    let v: Value = serde_json::from_str(line).map_err(|e| format!("wrk summary {line}: {e}"))?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    Ok(WrkOut {
        requests: n("/requests") as u64,
        status_errors: n("/errors/status") as u64,
        io_errors: (n("/errors/connect")
            + n("/errors/read")
            + n("/errors/write")
            + n("/errors/timeout")) as u64,
        seconds: n("/duration_us") / 1e6,
        p50_us: n("/latency_us/p50"),
        p90_us: n("/latency_us/p90"),
        p99_us: n("/latency_us/p99"),
        p999_us: n("/latency_us/p999"),
        max_us: n("/latency_us/max"),
        mean_us: n("/latency_us/mean"),
    })
}

pub fn run(l: &Load) -> Result<WrkOut, String> {
    finish(spawn(l)?)
}

/// Send every token of `tokens` once (8 connections at a time), so a cache holds them all
/// before measuring however slow verification is; returns (requests, seconds).
pub fn prime(port: u16, tokens: &Path) -> Result<(usize, f64), String> {
    let text = std::fs::read_to_string(tokens).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let t0 = std::time::Instant::now();
    let url = format!("http://127.0.0.1:{port}/");
    std::thread::scope(|sc| {
        for part in lines.chunks(lines.len().div_ceil(8).max(1)) {
            let url = &url;
            sc.spawn(move || {
                for t in part {
                    let auth = format!("Bearer {t}");
                    let _ = aml_harness::http("GET", url, &[("authorization", &auth)], None);
                }
            });
        }
    });
    Ok((lines.len(), t0.elapsed().as_secs_f64()))
}
