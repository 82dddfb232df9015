//! Processes the load test starts, and what `/proc` says about them.
//!
//! **Owns:** every child process of a run. Each is started in a process group of its own
//! with a parent-death signal, so nothing outlives the load test even when it is killed;
//! [`Spawned`] stops its group when dropped (SIGKILL) and [`Spawned::stop`] does it
//! politely (SIGTERM, a grace period, then SIGKILL). Signals go only to groups this
//! process created, by their id.
//!
//! Measurements: resident memory (`VmRSS`, `VmHWM`) of one process, and CPU time
//! (`utime + stime`) of a process tree split into the gateway itself, its upstream
//! servers (`warden-fixture`) and PostgreSQL, so a gateway is charged only for its own
//! work.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::Error;

/// A child process in its own process group.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub label: String,
}

/// Starts `command` in a new process group that dies with this process.
pub fn spawn(mut command: Command, label: &str) -> Result<Spawned, Error> {
    command.kill_on_drop(true);
    // SAFETY: setpgid and prctl are async-signal-safe and only affect the child.
    unsafe {
        command.as_std_mut().pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| Error::Start(format!("{label}: {e}")))?;
    let pid = child
        .id()
        .ok_or_else(|| Error::Start(format!("{label}: exited at once")))?;
    Ok(Spawned {
        child,
        pid,
        label: label.to_owned(),
    })
}

impl Spawned {
    /// SIGTERM to the process (it stops its own children, as it would under systemd),
    /// up to `grace` for it to exit, then SIGKILL to its whole group.
    pub async fn stop(mut self, grace: Duration) {
        signal_pid(self.pid, libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Whatever is left of the group (children it failed to stop).
        signal_group(self.pid, libc::SIGKILL);
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: sends a signal to a process group this process created; no memory is
        // touched. A group that no longer exists gives ESRCH, which is fine.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Sends `signal` to one process (used by the chaos scenario on a gateway's child, whose
/// pid the gateway reported).
pub fn signal_pid(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) touches no memory.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// A free loopback port (bind port 0, read it, release it).
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Start(format!("bind 127.0.0.1:0: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Start(format!("local_addr: {e}")))
}

/// Clock ticks per second for `/proc/*/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `(ppid, comm, cpu seconds)` of a process from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, String, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state(0) ppid(1) … utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((ppid, comm, (utime + stime) / ticks_per_second()))
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> f64 {
    stat(std::process::id()).map_or(0.0, |(_, _, cpu)| cpu)
}

/// Resident set size of `pid` in KiB (`VmRSS`), and its peak so far (`VmHWM`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds used by a process tree so far, split by role.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TreeCpu {
    /// The root and every descendant that is neither an upstream nor PostgreSQL.
    pub gateway_s: f64,
    /// Descendants named `warden-fixture` (the upstream MCP servers).
    pub upstream_s: f64,
    /// Descendants named `postgres` (an embedded cluster).
    pub postgres_s: f64,
}

impl TreeCpu {
    pub fn since(self, before: TreeCpu) -> TreeCpu {
        TreeCpu {
            gateway_s: (self.gateway_s - before.gateway_s).max(0.0),
            upstream_s: (self.upstream_s - before.upstream_s).max(0.0),
            postgres_s: (self.postgres_s - before.postgres_s).max(0.0),
        }
    }
}

/// Walks `/proc` once and sums the CPU time of `root` and its descendants, by role.
/// `extra_roots` are trees counted as upstream (a peer that runs its upstream elsewhere).
pub fn tree_cpu(root: u32) -> TreeCpu {
    let mut table: HashMap<u32, (u32, String, f64)> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(info) = stat(pid) {
                table.insert(pid, info);
            }
        }
    }
    let mut cpu = TreeCpu::default();
    for (&pid, (_, comm, seconds)) in &table {
        let mut cursor = pid;
        let mut within = false;
        // Walk up to the root (or init); depth is small.
        for _ in 0..64 {
            if cursor == root {
                within = true;
                break;
            }
            match table.get(&cursor) {
                Some((ppid, _, _)) if *ppid > 1 => cursor = *ppid,
                _ => break,
            }
        }
        if !within {
            continue;
        }
        if pid != root && comm.starts_with("warden-fixture") {
            cpu.upstream_s += seconds;
        } else if pid != root && comm.starts_with("postgres") {
            cpu.postgres_s += seconds;
        } else {
            cpu.gateway_s += seconds;
        }
    }
    cpu
}

/// Samples a process's RSS every 100 ms until dropped, keeping the peak.
pub struct RssSampler {
    peak_kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = std::sync::Arc::clone(&peak_kib);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak_kib, task }
    }

    /// The peak resident set seen, in MiB.
    pub fn finish(self) -> f64 {
        self.task.abort();
        self.peak_kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat_and_status() {
        let (_, comm, cpu) = stat(std::process::id()).unwrap();
        assert!(!comm.is_empty());
        assert!(cpu >= 0.0);
        let (rss, hwm) = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0 && hwm >= rss);
        let tree = tree_cpu(std::process::id());
        assert!(tree.gateway_s >= 0.0);
    }
}
