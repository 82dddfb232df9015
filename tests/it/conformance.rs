//! The official MCP conformance suite (server scenarios), run against the reference server
//! directly and through Warden's per-server route in the same test: Warden must not turn
//! any passing scenario into a failure. See `tests/conformance/baseline.md`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::mcp::{EventStream, admin_token, event};
use crate::support::{TestDb, external, warden};

const WAIT: Duration = Duration::from_secs(90);

/// Scenario → passed, from the suite's summary lines (`✓ name: 1 passed, 0 failed`).
fn run_suite(url: &str) -> BTreeMap<String, bool> {
    let output = Command::new(external::npm_bin().join("conformance"))
        .args(["server", "--url", url])
        .stdin(Stdio::null())
        .output()
        .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: BTreeMap<String, bool> = stdout
        .lines()
        .filter_map(|line| {
            let (mark, rest) = line.split_at(line.char_indices().nth(1)?.0);
            let name = rest.trim().split(':').next()?.to_owned();
            match mark {
                "✓" => Some((name, true)),
                "✗" => Some((name, false)),
                _ => None,
            }
        })
        .collect();
    assert!(
        results.len() > 20,
        "no summary from the suite:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    results
}

#[test]
fn warden_passes_every_scenario_the_reference_server_passes() {
    let bin = external::everything_bin();
    // The reference server on its own, over streamable HTTP.
    let port = warden::free_port();
    let mut direct = Command::new(&bin)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the reference server");
    let stderr = direct.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    assert!(
        lines.any(|l| l.map(|l| l.contains("listening")).unwrap_or(false)),
        "the reference server did not start"
    );
    std::thread::spawn(move || for _ in lines {});
    let direct_results = run_suite(&format!("http://127.0.0.1:{port}/mcp"));
    let _ = direct.kill();
    let _ = direct.wait();

    // The same server as Warden's stdio child, open to anonymous callers like the suite.
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    profile.set("roles", json!({"anonymous": {"scopes": ["*"]}}));
    profile.set(
        "servers",
        json!({ "everything": external::everything_stdio() }),
    );
    let process = profile.start();
    let token = admin_token(&process, &profile.state_dir());
    let mut events = EventStream::open(&process, &token);
    if !process.log().contains("server ready") {
        events.wait_for(WAIT, event("ready", "everything"));
    }
    let warden_results = run_suite(&process.url("/mcp/everything"));

    let broken: Vec<&String> = direct_results
        .iter()
        .filter(|(name, passed)| **passed && !warden_results.get(*name).copied().unwrap_or(false))
        .map(|(name, _)| name)
        .collect();
    assert!(
        broken.is_empty(),
        "scenarios that pass directly but fail through Warden: {broken:?}\ndirect: {direct_results:?}\nwarden: {warden_results:?}"
    );
    assert_eq!(
        warden_results.get("dns-rebinding-protection"),
        Some(&true),
        "{warden_results:?}"
    );
}
