//! The real `warden` binary, run the way an operator runs it.
//!
//! A [`Profile`] is a temp directory holding the profile file and the state directory.
//! The profile is kept as JSON, which is YAML too, so a test edits it as a
//! `serde_json::Value` (`profile.set("server.shutdown_grace", "5s")`). Each start picks a
//! free loopback port (bind port 0, read it, release it).
//!
//! A [`WardenProcess`] captures stdout and stderr line by line; readiness is the
//! "Warden is ready" log line, awaited with a deadline, and every failure message carries
//! the captured log. The exit is awaited with `waitid(WNOWAIT)` on a thread of its own,
//! so a signal is never sent to a pid that has been reaped and possibly reused. The
//! process is SIGKILLed when the value drops (and by its parent-death signal if the test
//! thread dies first), and its log is printed when the test is failing.
//!
//! The environment is scrubbed of variables that would change what Warden does
//! (`DATABASE_URL`, `NOTIFY_SOCKET`, …); a test sets what it needs with
//! [`Profile::env`].

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::dirs;

/// How long a start may take before the test fails (first starts run `initdb`; CI is a
/// loaded 2-core machine running debug builds).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an exit may take after it was asked for. Covers a SIGTERM with the default
/// `server.shutdown_grace` of 10 s: draining gets the grace, the embedded cluster's fast
/// shutdown the grace again and its immediate shutdown 5 s more, plus slack.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The log line that marks readiness.
pub const READY_LINE: &str = "Warden is ready";

/// Variables a developer's shell or CI may carry that would change what Warden does.
const SCRUBBED_ENV: &[&str] = &[
    "DATABASE_URL",
    "WARDEN_CONFIG",
    "WARDEN_MASTER_KEY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
    "RUST_LOG",
];

/// The binary cargo built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// `warden ARGS` with a scrubbed environment and parseable logs. The child is
/// SIGKILLed if the thread that started it (the test's) ends first.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command.args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "info,warden::postgres=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches nothing but the child.
    unsafe {
        command.pre_exec(|| {
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
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to the end (bounded by [`EXIT_TIMEOUT`]).
pub fn run(command: Command) -> Output {
    let mut process = WardenProcess::spawn(command, None);
    let status = process.wait_exit(EXIT_TIMEOUT);
    Output {
        status,
        stdout: process.stdout(),
        stderr: process.stderr(),
    }
}

/// A free loopback port (another process could take it before Warden binds it; the
/// kernel hands out ports in a way that makes this rare).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// A profile file and a state directory in a temp dir of their own.
pub struct Profile {
    dir: TempDir,
    /// The profile; written as JSON (a subset of YAML) on every start.
    pub value: Value,
    env: Vec<(String, String)>,
    /// The scheme and host of `server.public_url` (with the port chosen at start), when
    /// it is not `http://` and the listen address: `localhost` for browser features
    /// refused on IP addresses, `https` for Warden's own TLS.
    public_origin: Option<(String, String)>,
}

impl Profile {
    /// A profile against an existing database (`database.url`).
    pub fn with_database(url: &str) -> Profile {
        let mut profile = Profile::embedded();
        profile.set("database.url", url);
        profile
    }

    /// A profile with no `database.url`: Warden runs its embedded cluster under the
    /// state directory.
    pub fn embedded() -> Profile {
        let dir = dirs::temp_dir("warden");
        let value = json!({
            "server": {
                "listen": "127.0.0.1:0",
                "state_dir": dir.path().join("state"),
                "shutdown_grace": "10s",
            },
            "database": {},
            "logging": { "level": "info", "format": "json" },
        });
        Profile {
            dir,
            value,
            env: Vec::new(),
            public_origin: None,
        }
    }

    /// Makes `server.public_url` `http://HOST:PORT` (the port chosen at each start).
    pub fn public_host(&mut self, host: &str) -> &mut Profile {
        self.public_origin("http", host)
    }

    /// Makes `server.public_url` `SCHEME://HOST:PORT` (the port chosen at each start).
    pub fn public_origin(&mut self, scheme: &str, host: &str) -> &mut Profile {
        self.public_origin = Some((scheme.to_owned(), host.to_owned()));
        self
    }

    /// Sets a value by dotted path (`server.shutdown_grace`), creating sections.
    pub fn set(&mut self, path: &str, value: impl Into<Value>) -> &mut Profile {
        let (parents, last) = match path.rsplit_once('.') {
            Some((parents, last)) => (Some(parents), last),
            None => (None, path),
        };
        let mut node = &mut self.value;
        for key in parents.into_iter().flat_map(|p| p.split('.')) {
            node = object(node)
                .entry(key.to_owned())
                .or_insert_with(|| json!({}));
        }
        object(node).insert(last.to_owned(), value.into());
        self
    }

    /// An environment variable for every process started from this profile.
    pub fn env(&mut self, name: &str, value: impl Into<String>) -> &mut Profile {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(
            self.value["server"]["state_dir"]
                .as_str()
                .expect("server.state_dir is a string"),
        )
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("warden.yaml")
    }

    /// Writes the profile file and returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.path();
        let text = serde_json::to_string_pretty(&self.value).expect("JSON values serialise");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// `warden ARGS --config <this profile>` with the profile's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let path = self.write();
        let mut command = command(args);
        command.arg("--config").arg(path);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts `warden serve` on a fresh port without waiting for readiness.
    pub fn spawn(&mut self) -> WardenProcess {
        let port = free_port();
        self.set("server.listen", format!("127.0.0.1:{port}"));
        if let Some((scheme, host)) = &self.public_origin {
            let url = format!("{scheme}://{host}:{port}");
            self.set("server.public_url", url);
        }
        let command = self.command(&["serve"]);
        WardenProcess::spawn(command, Some(format!("http://127.0.0.1:{port}")))
    }

    /// Starts `warden serve` and waits for it to be ready. The port [`free_port`] chose
    /// is free when chosen, not when Warden binds it a moment later: another process
    /// (a test's own listener, any connection's local port) may take it in between. A
    /// start that failed for that alone is made again on another port.
    pub fn start(&mut self) -> WardenProcess {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let process = self.spawn();
            if process.wait_for_log(READY_LINE, START_TIMEOUT) {
                return process;
            }
            if attempt == ATTEMPTS || !process.lost_its_port() {
                process.not_ready();
            }
            eprintln!(
                "warden (pid {}) lost its port to another socket before it could bind it; starting it again on another",
                process.pid()
            );
            attempt += 1;
        }
    }
}

/// `node` as a JSON object, replacing whatever else it was.
fn object(node: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut().expect("just made an object")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct State {
    lines: Vec<(Stream, String)>,
    open_streams: usize,
    status: Option<Result<ExitStatus, String>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running (or finished) `warden` process.
pub struct WardenProcess {
    pid: u32,
    base_url: Option<String>,
    shared: Arc<Shared>,
}

impl WardenProcess {
    /// Spawns `command` with captured output. `base_url` is where it will listen, if
    /// it serves.
    pub fn spawn(mut command: Command, base_url: Option<String>) -> WardenProcess {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pid = child.id();
        let shared = Arc::new(Shared::default());
        let streams: [(Stream, Option<Box<dyn Read + Send>>); 2] = [
            (
                Stream::Stdout,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
            (
                Stream::Stderr,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
        ];
        for (stream, reader) in streams {
            let Some(reader) = reader else { continue };
            shared.lock().open_streams += 1;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("warden-{pid}-{stream:?}"))
                .spawn(move || read_lines(reader, stream, &shared))
                .expect("cannot start a log reader thread");
        }
        let waiter = shared.clone();
        std::thread::Builder::new()
            .name(format!("warden-{pid}-wait"))
            .spawn(move || {
                wait_without_reaping(pid);
                // Reaped under the lock: `signal` checks the status under the same lock,
                // so it never signals a pid that may have been reused.
                let mut state = waiter.lock();
                state.status = Some(child.wait().map_err(|e| e.to_string()));
                drop(state);
                waiter.changed.notify_all();
            })
            .expect("cannot start the exit waiter thread");
        WardenProcess {
            pid,
            base_url,
            shared,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://127.0.0.1:PORT` of a serving process.
    pub fn base_url(&self) -> &str {
        self.base_url
            .as_deref()
            .expect("this process was not started to serve")
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Everything it printed so far, stdout and stderr interleaved as they arrived.
    pub fn log(&self) -> String {
        self.collect(None)
    }

    pub fn stdout(&self) -> String {
        self.collect(Some(Stream::Stdout))
    }

    pub fn stderr(&self) -> String {
        self.collect(Some(Stream::Stderr))
    }

    fn collect(&self, which: Option<Stream>) -> String {
        let state = self.shared.lock();
        let mut out = String::new();
        for (stream, line) in &state.lines {
            if which.is_none_or(|w| w == *stream) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until `done(state)` holds or `timeout` passes; returns whether it held.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for a log line containing `needle`. False when the deadline passed or the
    /// process ended (and its output closed) without printing it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_since(0, needle, timeout)
    }

    /// A position in the log, for [`WardenProcess::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        self.shared.lock().lines.len()
    }

    /// Like [`WardenProcess::wait_for_log`], looking only at lines after `mark`.
    pub fn wait_for_log_since(&self, mark: usize, needle: &str, timeout: Duration) -> bool {
        self.wait_for_line_since(mark, &[needle], timeout)
    }

    /// Waits for one line after `mark` that contains every one of `needles`.
    pub fn wait_for_line_since(&self, mark: usize, needles: &[&str], timeout: Duration) -> bool {
        let seen = |state: &State| {
            state
                .lines
                .iter()
                .skip(mark)
                .any(|(_, line)| needles.iter().all(|needle| line.contains(needle)))
        };
        self.wait_until(timeout, |state| {
            seen(state) || (state.status.is_some() && state.open_streams == 0)
        });
        seen(&self.shared.lock())
    }

    /// Whether it ended because its `server.listen` port was taken.
    fn lost_its_port(&self) -> bool {
        let state = self.shared.lock();
        state.status.is_some()
            && state.lines.iter().any(|(_, line)| {
                line.contains("(server.listen)") && line.contains("Address already in use")
            })
    }

    /// Waits for the ready line; panics with the log if it does not come. Warden installs
    /// its signal handlers before it says it is ready, so signals may follow at once.
    pub fn wait_ready(&self) {
        if !self.wait_for_log(READY_LINE, START_TIMEOUT) {
            self.not_ready();
        }
    }

    /// Panics with the log: it did not say it was ready (it ended, or the start timeout
    /// passed).
    fn not_ready(&self) -> ! {
        panic!(
            "warden (pid {}) did not become ready within {START_TIMEOUT:?} ({}); its log:\n{}",
            self.pid,
            self.describe_status(),
            self.log()
        );
    }

    fn describe_status(&self) -> String {
        match &self.shared.lock().status {
            None => "still running".to_owned(),
            Some(Ok(status)) => format!("exited: {status}"),
            Some(Err(e)) => format!("exit unknown: {e}"),
        }
    }

    /// Waits for the exit; panics with the log when it does not come within `timeout`.
    /// Also waits (briefly) for the output to close so the log is complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if !self.wait_until(timeout, |state| state.status.is_some()) {
            panic!(
                "warden (pid {}) did not exit within {timeout:?}; its log:\n{}",
                self.pid,
                self.log()
            );
        }
        // A grandchild holding the pipes open must not hang the test.
        self.wait_until(Duration::from_secs(5), |state| state.open_streams == 0);
        match &self.shared.lock().status {
            Some(Ok(status)) => *status,
            Some(Err(e)) => panic!("cannot collect the exit status of {}: {e}", self.pid),
            None => unreachable!("waited for the status"),
        }
    }

    /// Sends `signal` unless the process has already been reaped.
    pub fn signal(&self, signal: libc::c_int) {
        let state = self.shared.lock();
        if state.status.is_none() {
            // SAFETY: the pid is our child and not yet reaped (checked under the lock
            // the reaper holds), so it cannot name another process.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, then the exit status (within [`EXIT_TIMEOUT`]).
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// SIGKILL, then the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(EXIT_TIMEOUT)
    }

    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }
}

impl Drop for WardenProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_until(EXIT_TIMEOUT, |state| state.status.is_some());
        if std::thread::panicking() {
            eprintln!(
                "---- log of warden pid {} ----\n{}---- end of log ----",
                self.pid,
                self.log()
            );
        }
    }
}

/// Blocks until `pid` has exited, leaving it unreaped (a zombie) for `Child::wait`.
fn wait_without_reaping(pid: u32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter; waitid writes into it.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn read_lines(reader: Box<dyn Read + Send>, stream: Stream, shared: &Shared) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                shared.lock().lines.push((stream, line));
                shared.changed.notify_all();
            }
        }
    }
    shared.lock().open_streams -= 1;
    shared.changed.notify_all();
}
