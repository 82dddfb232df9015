//! Processes as `/proc` shows them, to prove that no child outlives Warden.
//!
//! A [`Proc`] remembers its start time, so a pid the kernel has since reused for an
//! unrelated process is not mistaken for the one recorded.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `Z` (zombie: exited, not yet reaped), …
    pub state: char,
    /// Clock ticks after boot; with the pid, identifies the process.
    pub start_time: u64,
    /// The command line, arguments joined by spaces.
    pub cmdline: String,
}

impl Proc {
    /// True while this very process (not a later one with its pid) runs or sleeps.
    pub fn is_alive(&self) -> bool {
        get(self.pid).is_some_and(|now| now.start_time == self.start_time && now.state != 'Z')
    }
}

/// One process, if it exists.
pub fn get(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything; fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // starttime is field 22 of stat; 20th after the command name (0-based 19).
    let start_time = fields.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        state,
        start_time,
        cmdline,
    })
}

/// Every process visible now.
pub fn all() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(get)
        .collect()
}

/// Live processes whose parent chain includes `pid` (not `pid` itself).
pub fn descendants(pid: i32) -> Vec<Proc> {
    let all = all();
    let mut children: HashMap<i32, Vec<&Proc>> = HashMap::new();
    for proc in &all {
        children.entry(proc.ppid).or_default().push(proc);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child.pid) {
                queue.push(child.pid);
                if child.state != 'Z' {
                    found.push((*child).clone());
                }
            }
        }
    }
    found
}

/// Live processes (other than this test binary) whose command line contains `marker`.
pub fn with_cmdline_containing(marker: &str) -> Vec<Proc> {
    let me = std::process::id() as i32;
    all()
        .into_iter()
        .filter(|p| p.pid != me && p.state != 'Z' && p.cmdline.contains(marker))
        .collect()
}

/// Waits (polling `/proc`) until none of `procs` is alive; on timeout returns those that
/// still are. Polling is the only way to wait for a process that is not our child.
pub fn wait_all_gone(procs: &[Proc], timeout: Duration) -> Result<(), Vec<Proc>> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<Proc> = procs.iter().filter(|p| p.is_alive()).cloned().collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
