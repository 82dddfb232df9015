//! MCP servers built into the binary, run as ordinary supervised children (`servers.<name>.
//! builtin: demo` starts `warden builtin-server demo` over stdio). They get the same
//! process isolation, restarts and audit as any other server; the point is a working
//! tool on a fresh machine with nothing else installed.

pub mod demo;

/// Runs the built-in server `name` on stdin/stdout; returns the exit code.
pub fn run(name: &str) -> i32 {
    match name {
        "demo" => demo::serve(std::io::stdin().lock(), std::io::stdout().lock()),
        other => {
            eprintln!(
                "warden builtin-server: unknown server `{other}` (built in: {})",
                NAMES.join(", ")
            );
            2
        }
    }
}

/// The built-in servers.
pub const NAMES: &[&str] = &["demo"];
