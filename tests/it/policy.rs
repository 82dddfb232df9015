//! Policy on the call path through `warden serve`: rate limits per surface, server and
//! tool with the retry delay a client needs; quotas that survive a restart; limits that a
//! reload changes without a restart; and hooks of every handler type allowing, denying
//! and rewriting, with compiled matchers that fire only where they should.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};

use super::supervision::fixture;
use crate::support::mcp::{EventStream, McpClient, admin_token, event};
use crate::support::{TestDb, http, warden};

const WAIT: Duration = Duration::from_secs(60);

fn start(
    db: &TestDb,
    edit: impl FnOnce(&mut warden::Profile),
) -> (warden::Profile, warden::WardenProcess, String) {
    let mut profile = warden::Profile::with_database(db.url());
    profile.set(
        "servers",
        json!({ "fix": fixture(&format!("policy-{}", std::process::id()), &[]) }),
    );
    edit(&mut profile);
    let warden = profile.start();
    let token = admin_token(&warden, &profile.state_dir());
    let mut events = EventStream::open(&warden, &token);
    if !warden.log().contains("server ready") {
        events.wait_for(WAIT, event("ready", "fix"));
    }
    (profile, warden, token)
}

fn rate_limit_error(answer: &crate::support::mcp::Answer) -> Value {
    let error = answer.error().clone();
    assert_eq!(error["code"], -32004, "{error}");
    error
}

#[test]
fn surface_limit_bursts_then_refuses_with_a_retry_delay() {
    let db = TestDb::new();
    let (_profile, warden, token) = start(&db, |p| {
        p.set(
            "rate_limits",
            json!({"mcp": "3/m", "admin": "2/m", "burst_multiplier": 1}),
        );
    });
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    // initialize took one of the three.
    for _ in 0..2 {
        assert_eq!(
            client.call("fix__echo", json!({"message": "ok"})).text(),
            "ok"
        );
    }
    let refused = client.call("fix__echo", json!({"message": "too many"}));
    let error = rate_limit_error(&refused);
    let retry = error["data"]["retry_after_secs"]
        .as_u64()
        .expect("a retry delay");
    assert!((1..=20).contains(&retry), "{error}");
    assert_eq!(error["data"]["scope"], "`mcp`");

    // The admin surface has its own allowance (the event stream may have used one).
    let auth = format!("Bearer {token}");
    let mut allowed = 0;
    let limited = loop {
        let answer = http::request(
            "GET",
            &warden.url("/admin/servers"),
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
        if answer.status != 200 {
            break answer;
        }
        allowed += 1;
        assert!(allowed <= 2, "more admin requests allowed than `2/m`");
    };
    assert_eq!(limited.status, 429, "{limited:?}");
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
}

#[test]
fn tool_limits_apply_to_that_tool_only_and_reload_changes_them() {
    let db = TestDb::new();
    let (mut profile, warden, token) = start(&db, |p| {
        p.set("servers.fix.tools", json!({"echo": {"rate_limit": "1/m"}}));
    });
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    assert_eq!(
        client.call("fix__echo", json!({"message": "one"})).text(),
        "one"
    );
    let refused = client.call("fix__echo", json!({"message": "two"}));
    assert_eq!(
        rate_limit_error(&refused)["data"]["scope"],
        "of tool `fix/echo`"
    );
    assert_eq!(client.call("fix__add", json!({"a": 1, "b": 2})).text(), "3");

    // A tightening is a config push; so is lifting it.
    let mut events = EventStream::open(&warden, &token);
    profile.set(
        "servers.fix.tools",
        json!({"echo": {"rate_limit": "1000/s"}}),
    );
    profile.write();
    warden.sighup();
    events.wait_for(WAIT, |e| e["event"] == "reconciliation_completed");
    assert_eq!(
        client.call("fix__echo", json!({"message": "three"})).text(),
        "three"
    );
}

/// That `warden serve` runs the sweep and publishes what it holds; that a sweep forgets a
/// caller whose allowance is full again is `idle_keys_are_forgotten` in
/// src/policy/limits.rs (seeing the gauge at 1 first here would race the sweep).
#[test]
fn the_sweep_runs_every_sweep_interval_and_reports_the_callers_it_holds() {
    let db = TestDb::new();
    let (_profile, warden, token) = start(&db, |p| {
        p.set(
            "rate_limits",
            json!({"mcp": "100/s", "sweep_interval": "1s"}),
        );
    });
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    assert_eq!(
        client.call("fix__echo", json!({"message": "one"})).text(),
        "one"
    );
    // At 100/s the caller's allowance is full again 10 ms after its last call, so a
    // sweep forgets it; the gauge appears with the first sweep.
    crate::support::eventually("no sweep reported zero callers held", WAIT, || {
        http::get(&warden.url("/metrics"))
            .body
            .lines()
            .any(|l| l == "warden_rate_limit_keys 0")
    });
}

#[test]
fn quotas_hold_across_a_restart() {
    let db = TestDb::new();
    let quota =
        json!([{"name": "echo-per-day", "per": "day", "limit": 2, "match": {"tool": "echo"}}]);
    let (mut profile, mut warden, token) = start(&db, |p| {
        p.set("quotas", quota.clone());
    });
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    for i in 0..2 {
        assert_eq!(
            client
                .call("fix__echo", json!({"message": i.to_string()}))
                .text(),
            i.to_string()
        );
    }
    let refused = client.call("fix__echo", json!({"message": "third"}));
    assert_eq!(rate_limit_error(&refused)["data"]["quota"], "echo-per-day");
    assert!(warden.sigterm().success());

    let warden = profile.start();
    let token = admin_token(&warden, &profile.state_dir());
    let mut events = EventStream::open(&warden, &token);
    if !warden.log().contains("server ready") {
        events.wait_for(WAIT, event("ready", "fix"));
    }
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    let refused = client.call("fix__echo", json!({"message": "after restart"}));
    rate_limit_error(&refused);
    assert_eq!(
        client.call("fix__add", json!({"a": 2, "b": 2})).text(),
        "4",
        "other tools are not counted"
    );
}

/// A webhook the test runs: answers every request by `respond(body)`, and records the
/// signatures it saw. Returns the URL.
fn webhook(
    respond: fn(&Value) -> (u16, String),
) -> (String, std::sync::mpsc::Receiver<(Value, Option<String>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut length = 0usize;
            let mut signature = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-warden-signature:") {
                    signature = Some(
                        line.split_once(':')
                            .map(|(_, v)| v.trim().to_owned())
                            .unwrap_or_default(),
                    );
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("read the body");
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, answer) = respond(&body);
            let _ = tx.send((body, signature));
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, rx)
}

#[test]
fn hooks_allow_deny_and_rewrite_where_their_matchers_say() {
    let (url, seen) = webhook(|body| {
        if body["arguments"]["message"] == "forbidden" {
            (403, "no forbidden words".into())
        } else {
            (200, r#"{"decision":"allow"}"#.into())
        }
    });
    let db = TestDb::new();
    let (_profile, warden, token) = start(&db, |p| {
        p.set(
            "hooks",
            json!([
                {"name": "no-crash", "event": "PreToolUse", "match": {"tool": "fix__crash*"}, "deny": "crashing is not allowed here"},
                {"name": "shout", "event": "PreToolUse", "match": {"tool": "re:^(fix__)?echo$"},
                 "command": {"program": "/bin/sh", "args": ["-c", "cat >/dev/null; echo '{\"arguments\":{\"message\":\"REWRITTEN\"}}'"]}},
                {"name": "no-keys-in", "event": "PreToolUse", "match": {"tool": "add"}, "secret_scan": {}},
                {"name": "veto", "event": "PreToolUse", "match": {"tool": "add"},
                 "command": {"program": "/bin/sh", "args": ["-c", "echo 'adding is vetoed' >&2; exit 2"]}},
                {"name": "slowpoke", "event": "PreToolUse", "match": {"tool": "pid"}, "timeout": "300ms", "on_error": "allow",
                 "command": {"program": "/bin/sh", "args": ["-c", "sleep 30"]}},
                {"name": "reviewer", "event": "PreToolUse", "match": {"tool": "slow"},
                 "webhook": {"url": url, "secret": "hook-secret"}},
                {"name": "no-keys-out", "event": "PostToolUse", "secret_scan": {}},
            ]),
        );
    });
    let mut client = McpClient::connect(warden.url("/mcp"), &token);

    let crash = client.call("fix__crash", json!({}));
    assert_eq!(crash.error()["code"], -32006, "{:?}", crash.message);
    assert!(
        crash.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("crashing is not allowed")
    );

    assert_eq!(
        client.call("fix__echo", json!({"message": "quiet"})).text(),
        "REWRITTEN"
    );

    let vetoed = client.call("fix__add", json!({"a": 1, "b": 1}));
    assert_eq!(vetoed.error()["data"]["hook"], "veto");
    assert!(
        vetoed.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("adding is vetoed")
    );

    // A hook that hangs is killed at its timeout; on_error: allow lets the call through.
    assert!(
        client
            .call("fix__pid", json!({}))
            .text()
            .parse::<u32>()
            .is_ok()
    );

    assert_eq!(
        client
            .call("fix__slow", json!({"ms": 1, "message": "fine"}))
            .text(),
        "fine"
    );
    let refused = client.call("fix__slow", json!({"ms": 1, "message": "forbidden"}));
    assert_eq!(
        refused.error()["data"]["hook"],
        "reviewer",
        "{:?}",
        refused.message
    );
    let (body, signature) = seen.recv_timeout(WAIT).expect("the webhook was called");
    assert_eq!(body["event"], "PreToolUse");
    assert!(signature.unwrap_or_default().starts_with("sha256="));

    let leaked = client.call("fix__add", json!({"message": "key AKIAIOSFODNN7EXAMPLE"}));
    assert!(
        leaked.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("aws_access_key_id")
    );

    // A credential in a result is redacted before the client sees it.
    let key = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    let echoed = client.call(
        "fix__slow",
        json!({"ms": 1, "message": format!("here: {key}")}),
    );
    assert_eq!(echoed.text(), "here: [REDACTED:github_token]");
    // So is one in a failed call's result (a command's output before it failed): the
    // client reads that content too.
    let failed = client.call("fix__fail", json!({"message": format!("denied: {key}")}));
    assert_eq!(failed.result()["isError"], true, "{:?}", failed.message);
    assert_eq!(failed.text(), "denied: [REDACTED:github_token]");

    // Clients report their own events and get the decision back.
    let auth = format!("Bearer {token}");
    let prompt = json!({"prompt": "use AKIAIOSFODNN7EXAMPLE please"}).to_string();
    let answer = http::request(
        "POST",
        &warden.url("/hooks/UserPromptSubmit"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(prompt.as_bytes()),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["decision"],
        "allow",
        "no hook for this event yet"
    );
    let unknown = http::request(
        "POST",
        &warden.url("/hooks/PreToolUse"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(b"{}"),
    )
    .unwrap();
    assert_eq!(unknown.status, 404);
}

#[test]
fn invalid_hook_patterns_fail_config_check_with_the_hook_and_line() {
    let dir = crate::support::dirs::temp_dir("policy");
    let path = dir.path().join("profile.yaml");
    std::fs::write(
        &path,
        "hooks:\n  - name: fine\n    event: PreToolUse\n    deny: no\n  - name: broken\n    event: PreToolUse\n    match: {tool: \"re:(\"}\n    deny: no\n",
    )
    .unwrap();
    let mut command = warden::command(&["config", "check"]);
    command.arg(&path);
    let output = warden::run(command);
    assert!(!output.status.success());
    assert!(
        output
            .stderr
            .contains(":5:9: hooks[1]: hook `broken`: invalid regex"),
        "{}",
        output.stderr
    );
}
