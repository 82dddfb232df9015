//! Programs the tests need beyond the workspace, installed on first use into the target
//! directory (never outside the checkout): the fixture MCP server binary, a Python venv
//! with the official `mcp`, `openai`, `anthropic` and `google-genai` SDKs, and npm packages (the reference MCP servers and the
//! conformance suite). Installs take a file lock so parallel test binaries do not race.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Pinned versions, so a registry update cannot change what the tests exercise.
pub const PYTHON_PACKAGES: &[&str] = &[
    "mcp==2.3.0",
    "openai==3.57.0",
    "anthropic==2.14.0",
    "google-genai==3.6.1",
];
pub const NPM_PACKAGES: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/conformance@0.1.13",
];

/// The directory cargo builds into (`target/debug`), found from the warden binary.
fn build_dir() -> PathBuf {
    Path::new(super::warden::bin())
        .parent()
        .expect("the warden binary lives in a directory")
        .to_path_buf()
}

/// `target/` itself, for tool installs.
fn target_dir() -> PathBuf {
    build_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .to_path_buf()
}

fn with_lock<T>(name: &str, work: impl FnOnce() -> T) -> T {
    let path = target_dir().join(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file we hold open; released when it closes.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let result = work();
    drop(file);
    result
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The fixture MCP server binary, built with the workspace (or now, if missing).
pub fn fixture() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = build_dir().join("warden-fixture");
        if !path.exists() {
            with_lock("fixture", || {
                if !path.exists() {
                    run(
                        Command::new(env!("CARGO")).args(["build", "-p", "warden-fixture"]),
                        "cargo build -p warden-fixture",
                    );
                }
            });
        }
        path
    })
}

/// A Python interpreter with the `mcp`, `openai`, `anthropic` and `google-genai` SDKs.
pub fn python() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let venv = target_dir().join("pyenv");
        let python = venv.join("bin/python");
        let marker = venv.join(format!(".installed-{}", PYTHON_PACKAGES.join(",")));
        with_lock("pyenv", || {
            if !marker.exists() {
                run(
                    Command::new("python3").arg("-m").arg("venv").arg(&venv),
                    "python3 -m venv",
                );
                run(
                    Command::new(&python)
                        .args(["-m", "pip", "install", "-q"])
                        .args(PYTHON_PACKAGES),
                    "pip install (the Python SDKs)",
                );
                std::fs::write(&marker, b"").expect("write the venv marker");
            }
        });
        python
    })
}

/// The `node_modules/.bin` directory holding the pinned npm packages.
pub fn npm_bin() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let prefix = target_dir().join("npm");
        let marker = prefix.join(format!(
            ".installed-{}",
            NPM_PACKAGES.join(",").replace('/', "_")
        ));
        with_lock("npm", || {
            if !marker.exists() {
                std::fs::create_dir_all(&prefix).expect("create target/npm");
                let mut command = Command::new("npm");
                command
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        "--prefix",
                    ])
                    .arg(&prefix)
                    .args(NPM_PACKAGES);
                run(&mut command, "npm install");
                std::fs::write(&marker, b"").expect("write the npm marker");
            }
        });
        prefix.join("node_modules/.bin")
    })
}

/// Where the tests' Python scripts live.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The reference server's executable (`@modelcontextprotocol/server-everything`).
pub fn everything_bin() -> PathBuf {
    npm_bin().join("mcp-server-everything")
}

/// A profile's server entry that runs the reference server over stdio (its first start
/// loads Node, hence the long start-up timeout).
pub fn everything_stdio() -> serde_json::Value {
    serde_json::json!({"command": everything_bin(), "args": ["stdio"], "startup_timeout": "60s"})
}
