//! Child processes that never outlive Warden.
//!
//! Three mechanisms, because each alone has a gap:
//!
//! 1. **Own process group.** Every child starts as the leader of a new group, so a stop
//!    can signal the child and everything it forked (`npx` → `sh` → `node`) at once.
//! 2. **Parent-death signal.** `PR_SET_PDEATHSIG` is armed in the child between `fork` and
//!    `exec`. Linux delivers it when the *thread* that forked the child exits, so all
//!    children are forked from one long-lived spawner thread ([`spawn`]), never from a
//!    tokio worker that may be retired.
//! 3. **The child guard.** With [`Hardening::guard`] the command runs under `warden
//!    child-guard` (this module's [`guard_main`]), a tiny supervisor in the child's group
//!    that is also a subreaper. It holds the read end of Warden's *lifeline* pipe: when
//!    Warden dies in any way, even `kill -9`, the kernel closes the write end, the guard
//!    reads EOF and SIGKILLs the whole group, grandchildren included. A parent-death
//!    signal alone reaches only the direct child.
//!
//! Stopping ([`stop`]): close stdin, SIGTERM to the direct child, wait `grace`, then
//! SIGKILL to the whole group.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The fd number the guard finds the lifeline on.
const LIFELINE_FD: RawFd = 3;

/// How a child is protected against outliving Warden.
#[derive(Clone, Copy, Debug)]
pub struct Hardening {
    /// Run under the child guard (needs [`set_guard_executable`]; falls back to a plain
    /// parent-death signal when none is set, as in unit tests).
    pub guard: bool,
    /// Signal the direct child receives if the spawning thread (and so Warden) dies.
    pub death_signal: i32,
}

impl Hardening {
    /// For MCP server children: guarded, SIGKILL on parent death.
    pub const CHILD: Hardening = Hardening {
        guard: true,
        death_signal: libc::SIGKILL,
    };
}

struct Lifeline {
    read: OwnedFd,
    // Kept open for the life of the process; its closing is the signal.
    _write: OwnedFd,
}

static LIFELINE: OnceLock<io::Result<Lifeline>> = OnceLock::new();
static GUARD_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Names the executable that runs `child-guard` (Warden's own binary).
pub fn set_guard_executable(path: PathBuf) {
    let _ = GUARD_EXE.set(path);
}

fn lifeline() -> io::Result<RawFd> {
    let line = LIFELINE.get_or_init(|| {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array; O_CLOEXEC keeps them out of every
        // child except where pre_exec deliberately dup2s the read end.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe {
            Ok(Lifeline {
                read: OwnedFd::from_raw_fd(fds[0]),
                _write: OwnedFd::from_raw_fd(fds[1]),
            })
        }
    });
    match line {
        Ok(l) => Ok(l.read.as_raw_fd()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

type SpawnJob = (Command, mpsc::SyncSender<io::Result<Child>>);

struct Spawner {
    jobs: mpsc::Sender<SpawnJob>,
}

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

fn spawner(handle: tokio::runtime::Handle) -> &'static Spawner {
    SPAWNER.get_or_init(|| {
        let (jobs, rx) = mpsc::channel::<SpawnJob>();
        let spawn_thread = std::thread::Builder::new()
            .name("warden-spawner".into())
            .spawn(move || {
                // tokio's child handling registers with the runtime's signal driver.
                let _enter = handle.enter();
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(e) = spawn_thread {
            tracing::error!(error = %e, "cannot start the spawner thread; children will be forked from callers");
        }
        Spawner { jobs }
    })
}

/// Spawns `command` hardened as described in the module doc. The command's stdio must
/// already be configured by the caller.
///
/// Must be called inside a tokio runtime.
pub async fn spawn(mut command: Command, hardening: Hardening) -> io::Result<GroupChild> {
    harden(&mut command, hardening)?;
    let handle = tokio::runtime::Handle::current();
    let spawner = spawner(handle);
    let (tx, rx) = mpsc::sync_channel(1);
    if spawner.jobs.send((command, tx)).is_err() {
        return Err(io::Error::other("spawner thread is gone"));
    }
    let child = tokio::task::spawn_blocking(move || {
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("spawner thread dropped the request")))
    })
    .await
    .map_err(io::Error::other)??;
    let pgid = child
        .id()
        .map(|id| id as libc::pid_t)
        .ok_or_else(|| io::Error::other("child exited before it could be tracked"))?;
    Ok(GroupChild { child, pgid })
}

/// Reads `stream` line by line on a task of its own, handing each line (cut at `max`
/// bytes, on a character boundary) to `on_line`, until the stream ends. A child's output
/// is always drained this way: an undrained pipe would stall the child once it fills.
pub fn read_lines(
    stream: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    max: usize,
    mut on_line: impl FnMut(&str) + Send + 'static,
) {
    use tokio::io::AsyncBufReadExt as _;
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = Vec::with_capacity(512);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(line.trim_ascii_end());
                    let mut cut = text.len().min(max);
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    on_line(&text[..cut]);
                }
            }
        }
    });
}

/// A spawned child and its process group. Dropping it SIGKILLs the whole group, so an
/// abandoned child (a panicking actor, say) cannot linger.
#[derive(Debug)]
pub struct GroupChild {
    pub child: Child,
    pgid: libc::pid_t,
}

impl GroupChild {
    /// The process group id (also the pid of the direct child or its guard).
    pub fn pgid(&self) -> libc::pid_t {
        self.pgid
    }

    /// Drains the child's stdout and stderr (whichever were piped and not taken yet)
    /// line by line into `on_line`.
    pub fn drain_output(&mut self, max: usize, on_line: impl Fn(&str) + Clone + Send + 'static) {
        if let Some(stdout) = self.child.stdout.take() {
            read_lines(stdout, max, on_line.clone());
        }
        if let Some(stderr) = self.child.stderr.take() {
            read_lines(stderr, max, on_line);
        }
    }

    /// See [`stop`].
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        stop(&mut self.child, self.pgid, grace).await
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

/// Rewrites `command` to run under the guard when asked, and arms the pre-exec steps.
fn harden(command: &mut Command, hardening: Hardening) -> io::Result<()> {
    command.process_group(0);
    command.kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    let mut death_signal = hardening.death_signal;
    let lifeline_fd = match (hardening.guard, GUARD_EXE.get()) {
        (true, Some(exe)) => {
            let inner = command.as_std();
            let mut args: Vec<OsString> = vec!["child-guard".into(), "--".into()];
            args.push(inner.get_program().to_owned());
            args.extend(inner.get_args().map(|a| a.to_owned()));
            let envs: Vec<(OsString, Option<OsString>)> = inner
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
                .collect();
            let cwd = inner.get_current_dir().map(|p| p.to_owned());
            let mut guarded = Command::new(exe);
            guarded.args(args).env_clear();
            for (key, value) in envs {
                if let Some(value) = value {
                    guarded.env(key, value);
                }
            }
            if let Some(cwd) = cwd {
                guarded.current_dir(cwd);
            }
            guarded.process_group(0).kill_on_drop(true);
            copy_stdio_config(command, &mut guarded);
            *command = guarded;
            // The guard handles SIGTERM by killing the group; SIGKILL would orphan it.
            death_signal = libc::SIGTERM;
            Some(lifeline()?)
        }
        _ => None,
    };
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, dup2, _exit) on plain integers.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Warden may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if let Some(fd) = lifeline_fd
                && libc::dup2(fd, LIFELINE_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// tokio does not expose a command's stdio settings; callers configure piped stdio, so
/// the guarded command pipes all three as well.
fn copy_stdio_config(_from: &Command, to: &mut Command) {
    to.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
}

/// Stops a child: close its stdin, SIGTERM the direct child (the guard forwards it),
/// wait up to `grace`, then SIGKILL the whole process group. Returns the exit status.
///
/// # Cancel safety
/// Not cancel safe: dropping the future mid-way leaves the child to `kill_on_drop`.
pub async fn stop(child: &mut Child, pgid: libc::pid_t, grace: Duration) -> io::Result<ExitStatus> {
    drop(child.stdin.take());
    let Some(pid) = child.id() else {
        kill_group(pgid);
        return child.wait().await;
    };
    let pid = pid as libc::pid_t;
    // SAFETY: signalling a pid we spawned and have not yet reaped; it cannot be reused.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            kill_group(pgid);
            status
        }
        Err(_) => {
            kill_group(pgid);
            child.wait().await
        }
    }
}

/// SIGKILLs every process in the group led by `pgid` (a no-op when it is empty).
pub fn kill_group(pgid: libc::pid_t) {
    // SAFETY: a negative pid addresses the process group we created for the child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Describes an exit status the way an operator reads it.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// The guard (runs as `warden child-guard -- command args...`)
// ---------------------------------------------------------------------------------------

/// Entry point of `warden child-guard -- CMD ARGS...`. Synchronous, no runtime. Returns
/// the exit code the guard should exit with (the child's, or 128 + its signal).
pub fn guard_main(args: Vec<OsString>) -> i32 {
    let mut args = args.into_iter();
    let Some(program) = args.next() else {
        eprintln!("child-guard: no command given");
        return 2;
    };
    let original_parent = unsafe { libc::getppid() };
    // SAFETY: plain syscalls on our own process; fd 3 is the lifeline set up by Warden
    // (or absent, in which case fcntl fails harmlessly).
    let has_lifeline = unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::fcntl(LIFELINE_FD, libc::F_SETFD, libc::FD_CLOEXEC) == 0
    };
    let mut blocked: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: building and installing a signal mask for this single-threaded process
    // before any other thread exists, so every thread inherits it.
    unsafe {
        libc::sigemptyset(&mut blocked);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut blocked, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
    }
    if has_lifeline {
        std::thread::spawn(|| {
            let mut byte = [0u8; 1];
            // SAFETY: reading into a local buffer from the lifeline fd we own.
            loop {
                let n = unsafe { libc::read(LIFELINE_FD, byte.as_mut_ptr().cast(), 1) };
                if n == 0
                    || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
                {
                    break;
                }
            }
            // Warden is gone: take the whole group down, ourselves included.
            unsafe {
                libc::kill(0, libc::SIGKILL);
            }
        });
    }
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(&program);
    command.args(args);
    // The mask above is the guard's own: a child that inherited it would never see SIGTERM
    // (every stop would wait out `stop_grace` and end in SIGKILL), nor SIGINT or SIGHUP.
    // SAFETY: runs between fork and exec; sigemptyset, pthread_sigmask and signal are
    // async-signal-safe and touch only this process's own state.
    unsafe {
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Start the program with the default SIGPIPE action, as a shell would.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = command.spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "child-guard: cannot start {}: {e}",
                program.to_string_lossy()
            );
            return 127;
        }
    };
    let child_pid = child.id() as libc::pid_t;
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: waiting on the mask installed above.
        if unsafe { libc::sigwait(&blocked, &mut signal) } != 0 {
            continue;
        }
        match signal {
            libc::SIGCHLD => {
                if let Some(code) = reap(child_pid) {
                    kill_other_group_members();
                    if code > 128 {
                        // Die the way the child died, so Warden reports the signal.
                        reraise(code - 128);
                    }
                    return code;
                }
            }
            _ => {
                // SAFETY: signalling our own child or our own group.
                unsafe {
                    if libc::getppid() != original_parent {
                        libc::kill(0, libc::SIGKILL);
                    }
                    libc::kill(child_pid, signal);
                }
            }
        }
    }
}

/// Terminates the guard with `signal` (default action), as its child was.
fn reraise(signal: i32) {
    // SAFETY: restoring the default action, unblocking and raising a signal in this
    // single-purpose process; if the signal does not end it, the caller exits normally.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Reaps every exited descendant; returns the exit code once the direct child is gone.
fn reap(child_pid: libc::pid_t) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: non-blocking wait for any child; we are a subreaper.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child_pid {
            result = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
    }
}

/// Kills whatever the child left behind in our group, sparing the guard itself.
fn kill_other_group_members() {
    // SAFETY: plain syscalls.
    let (me, group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if process_group_of(pid) == Some(group) {
            // SAFETY: signalling a process in our own group.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The process group of `pid` from `/proc/<pid>/stat`, if it still exists.
pub fn process_group_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let _ppid = fields.next()?;
    fields.next()?.parse().ok()
}

/// Pids of every live process whose process group is `pgid` (tests and diagnostics).
pub fn group_members(pgid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| process_group_of(*pid) == Some(pgid) && !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat[stat.rfind(')')? + 2..].to_owned();
            rest.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(true)
}
