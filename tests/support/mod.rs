//! The integration-test harness: real PostgreSQL, the real `warden` binary, no mocks.
//!
//! - [`dirs`]: every file a test binary writes lives under one root,
//!   `$TMPDIR/warden-it-<pid>`, removed at exit; roots left by earlier runs whose process
//!   is gone are removed when the next run starts.
//! - [`rt`]: the harness's own tokio runtime, on a thread that lives as long as the test
//!   binary, so everything the harness forks keeps its parent-death anchor.
//! - [`db`]: one throwaway PostgreSQL cluster per test binary (fsync off), started on
//!   first use, and a fresh database per test ([`TestDb`]) copied from a template that
//!   already has every migration applied, dropped even when the test panics.
//! - [`warden`]: a profile written to a temp dir ([`Profile`]) and the `warden` binary run
//!   from it ([`WardenProcess`]): readiness from the "Warden is ready" log line, signals,
//!   exit status with deadlines, the captured log in every failure message.
//! - [`procs`]: `/proc` helpers that prove no child outlived its parent.
//! - [`http`]: a tiny HTTP/1.1 client, enough for probes and JSON endpoints.
//! - [`mcp`]: a blocking MCP client over streamable HTTP and a reader of `/events`.
//! - [`external`]: the fixture server, the Python `mcp` SDK and npm packages, installed
//!   into `target/` on first use.
//!
//! Waiting is for an event (a log line, an exit, a datagram) with a deadline where one
//! exists; where none does (a row that lands in PostgreSQL, a process that is not ours to
//! wait for) [`eventually`] polls, with a deadline too.

pub mod db;
pub mod dirs;
pub mod external;
pub mod http;
pub mod mcp;
pub mod procs;
pub mod rt;
pub mod warden;

pub use db::{TestCluster, TestDb};
pub use warden::{Profile, WardenProcess};

/// Polls `check` every 25 ms until it holds; panics naming `what` once `timeout` passed.
pub fn eventually(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(25));
    }
}
