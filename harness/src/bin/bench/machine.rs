//! Facts about the machine and the run for the bench report: CPU use of other processes,
//! CPU model, commit, host and wrk versions, and pinning to a CPU.

use std::process::Command;

use aml_harness::{repo_root, Artifacts};

/// CPU counters from /proc: the whole machine and this process with all its descendants.
pub struct CpuSample {
    total: u64,
    busy: u64,
    own: u64,
}

impl CpuSample {
    /// Average cores used since `earlier` by processes that are not ours.
    pub fn foreign_cores_since(&self, earlier: &CpuSample) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let own = self.own.saturating_sub(earlier.own) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ((busy - own).max(0.0) / total) * cores
    }
}

/// Linux only; `None` elsewhere. Both counters are in clock ticks. `also_ours`: roots of
/// other process trees that belong to the run (a daemonized gateway).
pub fn cpu_sample(also_ours: &[u32]) -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 8 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    // user + nice + system + steal. Not irq/softirq: loopback TCP is mostly softirq work
    // that the kernel charges to no process, and here it is nearly all ours.
    let busy = fields[0] + fields[1] + fields[2] + fields[7];
    // pid -> (ppid, utime + stime) for every process.
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid ... utime(12) stime(13).
        let Some(rest) = st.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut ours = vec![std::process::id()];
    ours.extend(also_ours.iter().filter(|p| **p != std::process::id()));
    let mut own = 0;
    let mut i = 0;
    while i < ours.len() {
        let parent = ours[i];
        for (pid, ppid, ticks) in &procs {
            if *pid == parent {
                own += ticks;
            }
            if *ppid == parent && !ours.contains(pid) {
                ours.push(*pid);
            }
        }
        i += 1;
    }
    Some(CpuSample { total, busy, own })
}

pub fn git_commit() -> Option<String> {
    let o = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub fn envoy_version(a: &Artifacts) -> Option<String> {
    let o = Command::new(&a.envoy).arg("--version").output().ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find(|l| l.contains("version"))
        .map(|l| l.trim().to_string())
}

pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Restrict the calling thread to `cpu` (processes it starts inherit that); returns the
/// previous mask for [`restore_this_thread`]. `None` (no pinning asked) does nothing.
pub fn pin_this_thread(cpu: Option<usize>) -> Option<libc::cpu_set_t> {
    let cpu = cpu?;
    // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity(0, ..) act on this thread and
    // only read/write the sets passed with their exact size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            return None;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return None;
        }
        Some(old)
    }
}

pub fn restore_this_thread(saved: Option<libc::cpu_set_t>) {
    if let Some(old) = saved {
        // SAFETY: as in pin_this_thread.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
        }
    }
}

/// The CPUs a process may run on (`Cpus_allowed_list` in /proc/<pid>/status).
pub fn cpus_allowed(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

pub fn kong_version(a: &Artifacts) -> Option<String> {
    let o = Command::new(&a.kong).arg("version").output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines().last().map(|l| l.trim().to_string())
}

pub fn wrk_version() -> Option<String> {
    let o = Command::new("wrk").arg("-v").output().ok()?;
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    text.lines().next().map(|l| l.trim().to_string())
}
