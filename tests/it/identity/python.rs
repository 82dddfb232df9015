//! A real MCP client library, the Python SDK (`mcp` on PyPI, installed by `.ci/run` into
//! `target/pyenv`), completing OAuth discovery from Warden's 401: protected-resource
//! metadata → authorization-server metadata → dynamic registration → authorization code
//! with PKCE → token → the MCP call, as any MCP client would.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::{Env, PASSWORD};

/// The Python with the `mcp` SDK: `WARDEN_TEST_PYTHON`, else `target/pyenv/bin/python`.
fn python() -> PathBuf {
    let path = std::env::var_os("WARDEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run `.ci/run` once, or `python3 -m venv target/pyenv && target/pyenv/bin/pip install mcp==2.3.0`",
        path.display()
    );
    path
}

#[test]
fn python_mcp_sdk_discovers_oauth_from_a_401_and_calls_a_tool() {
    let env = Env::start(|_| {});
    env.add_user("pat", "user");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/identity/mcp_oauth_client.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(env.url("/mcp"))
        .arg("pat")
        .arg(PASSWORD)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK client failed:\n{stdout}\n{stderr}"
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(seen["echo"], "from the python sdk", "{seen}");
    assert_eq!(seen["is_error"], false);
    assert_eq!(seen["authorizations"], 1);
    assert_eq!(seen["code_challenge_method"], "S256");
    // The scope the 401 challenge named, and this Warden as the resource (RFC 8707).
    assert_eq!(seen["scope"], "tools:read");
    assert_eq!(seen["resource"], Value::from(env.url("/mcp")));
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"fx__echo") && !tools.contains(&"fx__crash"),
        "{tools:?}"
    );
}
