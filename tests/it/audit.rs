//! The audit trail end to end: tool calls through the real gateway to the real fixture
//! server, rows in real PostgreSQL — including PostgreSQL stopped mid-load, Warden killed
//! while spooling, a full backlog under `fail_closed` and `block`, tampering caught by
//! `warden audit verify`, and secrets redacted before they are stored.
//!
//! Waiting is for a condition with a deadline (a row count, a readiness detail, a file's
//! content), never a fixed sleep; nothing asserts on timing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::warden::{self, run};
use crate::support::{Profile, TestCluster, TestDb, WardenProcess, http};

const DEADLINE: Duration = Duration::from_secs(60);

/// `warden-fixture`, built beside `warden` by `cargo test --workspace`.
fn fixture_bin() -> PathBuf {
    let path = Path::new(warden::bin())
        .parent()
        .expect("the warden binary has a directory")
        .join("warden-fixture");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p warden-fixture` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A profile with the fixture as server `fx` (tools `fx__echo`, …).
fn profile_with_fixture(url: &str) -> Profile {
    let mut profile = Profile::with_database(url);
    profile.set(
        "servers",
        json!({ "fx": { "command": fixture_bin().display().to_string() } }),
    );
    profile.set("audit.batch_max_delay", "20ms");
    profile
}

use crate::support::eventually;

/// An MCP client session against `/mcp`, as the bootstrap admin.
struct Mcp {
    endpoint: String,
    token: String,
    session: String,
}

impl Mcp {
    fn connect(warden: &WardenProcess, state_dir: &Path) -> Mcp {
        let token = std::fs::read_to_string(state_dir.join("admin.token"))
            .expect("the bootstrap admin token")
            .trim()
            .to_owned();
        let endpoint = warden.url("/mcp");
        let mut mcp = Mcp {
            endpoint,
            token,
            session: String::new(),
        };
        wait_for_server(warden, &mcp.token);
        let response = mcp.post(
            &json!({
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "audit-test", "version": "1"}}
            }),
            None,
        );
        assert_eq!(response.status, 200, "{response:?}");
        mcp.session = response
            .header("mcp-session-id")
            .expect("initialize answers Mcp-Session-Id")
            .to_owned();
        let response = mcp.post(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            None,
        );
        assert_eq!(response.status, 202, "{response:?}");
        mcp
    }

    fn post(&self, body: &Value, traceparent: Option<&str>) -> http::Response {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        if !self.session.is_empty() {
            headers.push(("Mcp-Session-Id", self.session.as_str()));
            headers.push(("MCP-Protocol-Version", "2025-11-25"));
        }
        if let Some(tp) = traceparent {
            headers.push(("traceparent", tp));
        }
        let body = serde_json::to_vec(body).expect("JSON");
        http::request("POST", &self.endpoint, &headers, Some(&body))
            .unwrap_or_else(|e| panic!("POST {}: {e}", self.endpoint))
    }

    /// `tools/call`; the JSON-RPC response.
    fn call(&self, tool: &str, arguments: Value, traceparent: Option<&str>) -> Value {
        let response = self.post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments}}),
            traceparent,
        );
        assert_eq!(response.status, 200, "{response:?}");
        response.json()
    }

    fn echo(&self, message: &str) -> Value {
        self.call("fx__echo", json!({ "message": message }), None)
    }
}

/// Waits until server `fx` is ready (its tools are routable).
fn wait_for_server(warden: &WardenProcess, token: &str) {
    let auth = format!("Bearer {token}");
    eventually("server fx to be ready", DEADLINE, || {
        let response = http::request(
            "GET",
            &warden.url("/admin/servers"),
            &[("Authorization", auth.as_str())],
            None,
        )
        .expect("GET /admin/servers");
        response.status == 200
            && response.json()["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "fx" && s["state"] == "ready"))
    });
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.query(sql)[0].get(0)
}

fn readyz_audit(warden: &WardenProcess) -> (u16, Value) {
    let response = http::get(&warden.url("/readyz"));
    let body = response.json();
    (response.status, body["audit"].clone())
}

fn metric(warden: &WardenProcess, name: &str) -> f64 {
    let body = http::get(&warden.url("/metrics")).body;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn is_success(response: &Value) -> bool {
    response.get("result").is_some() && response["result"]["isError"] != true
}

/// `warden audit ARGS --config <profile>`.
fn audit_cli(profile: &Profile, args: &[&str]) -> warden::Output {
    let mut full = vec!["audit"];
    full.extend_from_slice(args);
    run(profile.command(&full))
}

// ---------------------------------------------------------------------------------------
// Rows, traces, search, verify
// ---------------------------------------------------------------------------------------

#[test]
fn every_call_leaves_one_row_with_principal_trace_status_and_payloads_and_verify_catches_tampering()
{
    let db = TestDb::new();
    let mut profile = profile_with_fixture(db.url());
    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());

    const N: usize = 12;
    let mut traces = Vec::new();
    for i in 0..N {
        let trace = format!("{:032x}", 0xabc0_0000 + i);
        let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
        let message = format!("hello number {i}");
        let response = mcp.call(
            "fx__echo",
            json!({ "message": message }),
            Some(&traceparent),
        );
        assert!(is_success(&response), "{response}");
        assert_eq!(
            response["result"]["_meta"]["traceparent"]
                .as_str()
                .map(|t| &t[3..35]),
            Some(trace.as_str()),
            "{response}"
        );
        traces.push((trace, message));
    }
    let unknown = mcp.call("fx__no_such_tool", json!({}), None);
    assert!(unknown.get("error").is_some(), "{unknown}");
    // Malformed calls are refused, and leave their rows too.
    let malformed = [
        (
            0xd00d_0001_u64,
            json!({"name": 42, "arguments": {}}),
            "`name` must be a string",
        ),
        (
            0xd00d_0002,
            json!({"name": "fx__echo", "arguments": "x"}),
            "`arguments` must be an object",
        ),
    ];
    for (trace, params, error) in &malformed {
        let traceparent = format!("00-{trace:032x}-00f067aa0ba902b7-01");
        let response = mcp.post(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}),
            Some(&traceparent),
        );
        let message = response.json()["error"]["message"].clone();
        assert!(
            message.as_str().is_some_and(|m| m.contains(error)),
            "{response:?}"
        );
    }
    // The metrics count the same calls: by server, tool and status, and an unknown
    // tool's name is never a label.
    let metrics = http::get(&warden.url("/metrics")).body;
    let series = |parts: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let calls = "warden_mcp_tool_calls_total{";
    assert_eq!(
        series(&[
            calls,
            r#"server="fx""#,
            r#"tool="echo""#,
            r#"status="success""#
        ]),
        Some(N as f64),
        "{metrics}"
    );
    assert_eq!(
        series(&[calls, r#"server="""#, r#"tool="""#, r#"status="error""#]),
        Some(3.0),
        "{metrics}"
    );
    assert!(!metrics.contains("no_such_tool"), "{metrics}");
    assert_eq!(
        series(&[r#"warden_mcp_tool_call_seconds_count{server="fx"}"#]),
        Some(N as f64),
        "{metrics}"
    );

    eventually("N + 3 tool rows", DEADLINE, || {
        count(&db, "SELECT count(*) FROM mcp_tool_executions") == N as i64 + 3
    });
    for ((trace, _, error), requested) in malformed.iter().zip(["42", "fx__echo"]) {
        let rows = db.query(&format!(
            "SELECT requested_name, server_name, status, error FROM mcp_tool_executions
             WHERE trace_id = '{trace:032x}'"
        ));
        assert_eq!(rows.len(), 1, "one row for the malformed call {trace:x}");
        assert_eq!(rows[0].get::<_, String>(0), requested);
        assert_eq!(rows[0].get::<_, String>(1), "");
        assert_eq!(rows[0].get::<_, String>(2), "error");
        assert!(rows[0].get::<_, String>(3).contains(error));
    }
    for (trace, message) in &traces {
        let rows = db.query(&format!(
            "SELECT user_id, server_name, tool_name, requested_name, status, input::text, output::text, batch_seq
             FROM mcp_tool_executions WHERE trace_id = '{trace}'"
        ));
        assert_eq!(rows.len(), 1, "one row for trace {trace}");
        let row = &rows[0];
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("admin"));
        assert_eq!(row.get::<_, String>(1), "fx");
        assert_eq!(row.get::<_, String>(2), "echo");
        assert_eq!(row.get::<_, String>(3), "fx__echo");
        assert_eq!(row.get::<_, String>(4), "success");
        let input: Value = serde_json::from_str(&row.get::<_, String>(5)).unwrap();
        assert_eq!(input, json!({ "message": message }));
        assert!(row.get::<_, String>(6).contains(message.as_str()));
        assert!(row.get::<_, Option<i64>>(7).is_some(), "sealed in a batch");
        // The permission decision carries the same trace.
        let decisions = count(
            &db,
            &format!(
                "SELECT count(*) FROM audit_events WHERE kind = 'permission.decision' AND decision = 'allow' AND trace_id = '{trace}' AND actor_id = 'admin'"
            ),
        );
        assert_eq!(decisions, 1, "decision for trace {trace}");
    }
    let unknown_status: String = db
        .query("SELECT status FROM mcp_tool_executions WHERE requested_name = 'fx__no_such_tool'")
        [0]
    .get(0);
    assert_eq!(unknown_status, "error");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) - count(DISTINCT id) FROM mcp_tool_executions"
        ),
        0
    );
    // The server's start-up is in the trail too.
    eventually("lifecycle events", DEADLINE, || {
        count(
            &db,
            "SELECT count(*) FROM audit_events WHERE kind = 'server.lifecycle' AND subject = 'fx' AND reason = 'ready'",
        ) >= 1
    });

    // Search: CLI and HTTP agree on one trace's story.
    let (trace, message) = &traces[3];
    let search = audit_cli(&profile, &["search", "--trace", trace, "--json"]);
    assert!(search.status.success(), "{search:?}");
    let page: Value = serde_json::from_str(&search.stdout).expect("search --json prints JSON");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{page}");
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "tool_call" && i["input"]["message"] == *message)
    );
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "event" && i["kind"] == "permission.decision")
    );
    let table = audit_cli(
        &profile,
        &[
            "search", "--user", "admin", "--tool", "echo", "--since", "1h",
        ],
    );
    assert!(table.status.success(), "{table:?}");
    assert!(
        table.stdout.contains("fx__echo\tsuccess"),
        "{}",
        table.stdout
    );

    let token = std::fs::read_to_string(profile.state_dir().join("admin.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let url = warden.url(&format!("/admin/audit?trace={trace}"));
    let response = http::request("GET", &url, &[("Authorization", auth.as_str())], None).unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["items"].as_array().map(Vec::len), Some(2));
    // Paginated: one tool call per page.
    let url = warden.url("/admin/audit?kind=tool_call&limit=5");
    let first = http::request("GET", &url, &[("Authorization", auth.as_str())], None)
        .unwrap()
        .json();
    assert_eq!(first["items"].as_array().map(Vec::len), Some(5));
    let cursor = first["next_cursor"].as_str().expect("more pages");
    let url = warden.url(&format!(
        "/admin/audit?kind=tool_call&limit=100&cursor={cursor}"
    ));
    let rest = http::request("GET", &url, &[("Authorization", auth.as_str())], None)
        .unwrap()
        .json();
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(N + 3 - 5));
    let unauthenticated = http::get(&warden.url("/admin/audit"));
    assert_eq!(unauthenticated.status, 401);
    let bad = http::request(
        "GET",
        &warden.url("/admin/audit?status=maybe"),
        &[("Authorization", auth.as_str())],
        None,
    )
    .unwrap();
    assert_eq!(bad.status, 400, "{bad:?}");

    // Verify: an untouched trail passes.
    let verify = audit_cli(&profile, &["verify"]);
    assert!(verify.status.success(), "{verify:?}");
    assert!(verify.stdout.contains("ok: "), "{}", verify.stdout);
    assert!(verify.stdout.contains("head: batch "), "{}", verify.stdout);

    // An UPDATE behind Warden's back is pinpointed.
    let tampered: String = db.query(&format!(
        "UPDATE mcp_tool_executions SET status = 'denied' WHERE trace_id = '{}' RETURNING id::text",
        traces[5].0
    ))[0]
        .get(0);
    let verify = audit_cli(&profile, &["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let first_line = verify.stdout.lines().next().unwrap_or_default();
    assert!(
        first_line.contains(&format!("row mcp_tool_executions {tampered}"))
            && first_line.contains("was altered"),
        "{}",
        verify.stdout
    );
    // So is a row deleted, and one inserted without a batch.
    let deleted: String = db.query(&format!(
        "DELETE FROM audit_events WHERE trace_id = '{}' RETURNING id::text",
        traces[7].0
    ))[0]
        .get(0);
    db.execute(
        "INSERT INTO audit_events (id, occurred_at, kind, actor_kind) VALUES (gen_random_uuid(), now(), 'forged', 'user')",
    );
    let verify = audit_cli(&profile, &["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    let report: Value = serde_json::from_str(&verify.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["problem"] == "row_deleted" && p["id"] == deleted.as_str()),
        "{report}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["problem"] == "row_inserted" && p["seq"].is_null()),
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------
// The feed (`GET /admin/audit/feed`, `warden audit tail`)
// ---------------------------------------------------------------------------------------

/// `GET path` as the bootstrap admin.
fn admin_get(warden: &WardenProcess, profile: &Profile, path: &str) -> http::Response {
    let token = crate::support::mcp::admin_token(warden, &profile.state_dir());
    let auth = format!("Bearer {}", token.trim());
    http::request(
        "GET",
        &warden.url(path),
        &[("Authorization", auth.as_str())],
        None,
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Reads the feed after `after` until it is caught up, `limit` rows a read: the items
/// and the position read up to.
fn read_feed(
    warden: &WardenProcess,
    profile: &Profile,
    mut after: i64,
    limit: usize,
) -> (Vec<Value>, i64) {
    let mut items = Vec::new();
    for _ in 0..10_000 {
        let response = admin_get(
            warden,
            profile,
            &format!("/admin/audit/feed?after={after}&limit={limit}"),
        );
        assert_eq!(response.status, 200, "{response:?}");
        let page = response.json();
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        after = page["next_after"].as_i64().expect("next_after");
        if page["caught_up"] == true {
            return (items, after);
        }
    }
    panic!("the feed never caught up");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The `message` arguments of the echo calls among `items`, in feed order.
fn echoed(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|item| item["type"] == "tool_call")
        .filter_map(|item| item["input"]["message"].as_str().map(str::to_owned))
        .collect()
}

/// A `warden audit tail --follow` child, killed if the test ends without stopping it.
struct Tail {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Tail {
    fn start(profile: &Profile, after: i64) -> Tail {
        let mut command = profile.command(&[
            "audit",
            "tail",
            "--follow",
            "--interval",
            "100ms",
            "--after",
            &after.to_string(),
        ]);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().expect("warden audit tail starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    /// Lines until one satisfies `done` (all of them, that one included).
    fn until(&self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no matching line; saw {seen:?}"));
            let item: Value = serde_json::from_str(&line).expect("each line is JSON");
            let found = done(&item);
            seen.push(item);
            if found {
                return seen;
            }
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid fits");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "tail did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_feed_gives_every_row_once_in_written_order_and_resumes_after_a_position() {
    let db = TestDb::new();
    let mut profile = profile_with_fixture(db.url());
    // One batch in flight: with two, which commits first is not determined, and the
    // calls' order in the feed (written order) would not be the order they were made.
    profile.set("audit.write_concurrency", 1);
    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    let first: Vec<String> = (0..6).map(|i| format!("first {i}")).collect();
    for message in &first {
        assert!(is_success(&mcp.echo(message)));
    }
    eventually("the rows", DEADLINE, || {
        count(&db, "SELECT count(*) FROM mcp_tool_executions") == 6
    });

    let (items, head) = read_feed(&warden, &profile, 0, 1000);
    assert_eq!(echoed(&items), first, "the calls, in the order made");
    // Exactly the rows of the batches up to the position read, each once.
    let expected = count(
        &db,
        &format!(
            "SELECT (SELECT count(*) FROM mcp_tool_executions WHERE batch_seq IN (SELECT seq FROM audit_batches WHERE position <= {head})) \
                  + (SELECT count(*) FROM audit_events WHERE batch_seq IN (SELECT seq FROM audit_batches WHERE position <= {head})) \
                  + (SELECT count(*) FROM ai_requests WHERE batch_seq IN (SELECT seq FROM audit_batches WHERE position <= {head}))"
        ),
    );
    assert_eq!(items.len() as i64, expected);
    let unique: std::collections::HashSet<String> = ids(&items).into_iter().collect();
    assert_eq!(unique.len(), items.len(), "a row appeared twice");
    let batches: Vec<i64> = items.iter().map(|i| i["batch"].as_i64().unwrap()).collect();
    assert!(batches.windows(2).all(|w| w[0] <= w[1]), "{batches:?}");
    assert_eq!(batches.last().copied(), Some(head));
    let call = items.iter().find(|i| i["type"] == "tool_call").unwrap();
    for key in [
        "id", "at", "trace_id", "user", "server", "tool", "status", "input", "batch",
    ] {
        assert!(call.get(key).is_some(), "no `{key}` in {call}");
    }

    // A row at a time: the same rows in the same order (whole batches per read).
    // (Warden may have written more batches since: compare what both read.)
    let (small, small_head) = read_feed(&warden, &profile, 0, 1);
    assert!(small_head >= head);
    assert_eq!(ids(&small[..items.len()]), ids(&items));
    assert!(
        small[items.len()..]
            .iter()
            .all(|i| i["batch"].as_i64() > Some(head))
    );

    // Resumed after the position: only what came since.
    let later: Vec<String> = (0..2).map(|i| format!("later {i}")).collect();
    for message in &later {
        assert!(is_success(&mcp.echo(message)));
    }
    eventually("the later rows", DEADLINE, || {
        count(&db, "SELECT count(*) FROM mcp_tool_executions") == 8
    });
    let (resumed, _) = read_feed(&warden, &profile, head, 1000);
    assert_eq!(echoed(&resumed), later);
    assert!(ids(&resumed).iter().all(|id| !unique.contains(id)));

    // `warden audit tail` prints the same documents, one per line.
    let tail = audit_cli(&profile, &["tail"]);
    assert!(tail.status.success(), "{tail:?}");
    let lines: Vec<Value> = tail
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(ids(&lines[..items.len()]), ids(&items));
    assert_eq!(lines[..items.len()], items[..]);
    // … and with --follow, what is written while it runs.
    let follower = Tail::start(&profile, head);
    assert!(is_success(&mcp.echo("while following")));
    let followed = follower.until(|item| item["input"]["message"] == "while following");
    assert_eq!(echoed(&followed), ["later 0", "later 1", "while following"]);
    assert!(follower.stop().success());

    // Limits and bad input, each named.
    for (query, expected_status, named) in [
        ("limit=0", 400, "`limit` is 1 to 10000"),
        ("limit=10001", 400, "`limit` is 1 to 10000"),
        ("limit=10000", 200, ""),
        ("after=-1", 400, "`after` is a chain position"),
        ("after=999999", 400, "past the newest batch"),
        ("after=first", 400, "after: invalid digit"),
        ("since=1h", 400, "unknown field `since`"),
    ] {
        let response = admin_get(&warden, &profile, &format!("/admin/audit/feed?{query}"));
        assert_eq!(response.status, expected_status, "{query}: {response:?}");
        assert!(response.body.contains(named), "{query}: {}", response.body);
    }
    let unauthenticated = http::get(&warden.url("/admin/audit/feed"));
    assert_eq!(unauthenticated.status, 401);
    let bad = audit_cli(&profile, &["tail", "--limit", "0"]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("`limit` is 1 to 10000"), "{bad:?}");
}

// ---------------------------------------------------------------------------------------
// Redaction and durable acknowledgement
// ---------------------------------------------------------------------------------------

#[test]
fn a_secret_passed_as_a_tool_argument_is_stored_redacted_and_durable_ack_records_the_start() {
    let db = TestDb::new();
    let mut profile = profile_with_fixture(db.url());
    profile.set("audit.ack", "durable");
    profile.set("audit.redact", json!([r"\bcustomer-\d{6}\b"]));
    // A fixed master key, so `warden secret set` works before the first start.
    profile.env(
        "WARDEN_MASTER_KEY",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    );
    let secret = "sup3r-s3cret-token-value";
    let mut set = profile.command(&["secret", "set", "upstream_token"]);
    set.stdin(std::process::Stdio::piped());
    let mut child = set
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("warden secret set");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(secret.as_bytes()).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "warden secret set failed");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_events WHERE kind = 'secret.changed' AND subject = 'upstream_token' AND reason = 'set'"
        ),
        1,
        "the CLI's change is audited"
    );

    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    let message = format!("use {secret} for customer-123456 please");
    let response = mcp.echo(&message);
    assert!(is_success(&response), "{response}");
    assert!(
        response.to_string().contains(secret),
        "the client still gets its answer"
    );

    eventually("the tool row", DEADLINE, || {
        count(&db, "SELECT count(*) FROM mcp_tool_executions") == 1
    });
    let row = &db.query("SELECT id::text, input::text, output::text FROM mcp_tool_executions")[0];
    let (id, input, output): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    for stored in [&input, &output] {
        assert!(!stored.contains(secret), "secret stored: {stored}");
        assert!(
            !stored.contains("customer-123456"),
            "pattern not redacted: {stored}"
        );
        assert!(stored.contains("[redacted]"), "{stored}");
    }
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input["message"], "use [redacted] for [redacted] please");
    // Nowhere else either.
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM audit_events WHERE attributes::text LIKE '%{secret}%' OR coalesce(reason, '') LIKE '%{secret}%'"
            )
        ),
        0
    );
    // Durable acknowledgement: the start was recorded (and durable) before dispatch.
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM audit_events WHERE kind = 'tool.started' AND attributes->>'execution_id' = '{id}'"
            )
        ),
        1
    );
    assert!(!warden.log().contains(secret), "the secret reached the log");
}

// ---------------------------------------------------------------------------------------
// PostgreSQL down: spool, replay, backlog
// ---------------------------------------------------------------------------------------

/// A cluster of the test's own with an empty database `audit` (Warden migrates it).
fn own_cluster() -> (TestCluster, String) {
    let cluster = TestCluster::start();
    cluster.create_database("audit", None);
    let url = cluster.url("audit");
    (cluster, url)
}

fn query_cluster(cluster: &TestCluster, sql: &str) -> i64 {
    let config = cluster.pg_config("audit");
    let sql = sql.to_owned();
    crate::support::rt::block_on(async move {
        let client = crate::support::db::connect(&config).await;
        client.query_one(&sql, &[]).await.unwrap().get(0)
    })
}

#[test]
fn postgres_stopped_mid_load_then_started_every_call_has_exactly_one_row() {
    let (mut cluster, url) = own_cluster();
    let mut profile = profile_with_fixture(&url);
    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    let mut calls = 0;
    for i in 0..10 {
        assert!(is_success(&mcp.echo(&format!("before {i}"))));
        calls += 1;
    }
    cluster.stop();
    for i in 0..15 {
        let response = mcp.echo(&format!("during {i}"));
        assert!(is_success(&response), "{response}");
        calls += 1;
    }
    eventually("the backlog in /readyz", DEADLINE, || {
        let (_, audit) = readyz_audit(&warden);
        audit["spool_bytes"].as_u64().unwrap_or(0) > 0 && audit["database_down"] == true
    });
    cluster.restart();
    for i in 0..5 {
        assert!(is_success(&mcp.echo(&format!("after {i}"))));
        calls += 1;
    }
    eventually("every call's row", DEADLINE, || {
        query_cluster(&cluster, "SELECT count(*) FROM mcp_tool_executions") == calls
    });
    eventually("the spool to drain", DEADLINE, || {
        readyz_audit(&warden).1["spool_bytes"] == 0
    });
    assert_eq!(
        query_cluster(
            &cluster,
            "SELECT count(DISTINCT id) FROM mcp_tool_executions"
        ),
        calls
    );
    assert_eq!(
        query_cluster(
            &cluster,
            "SELECT count(*) FROM mcp_tool_executions WHERE input->>'message' LIKE 'during %'"
        ),
        15
    );
    assert!(
        query_cluster(
            &cluster,
            "SELECT count(*) FROM audit_batches WHERE replayed"
        ) >= 1,
        "the outage's rows came from the spool"
    );
    let verify = audit_cli(&profile, &["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn warden_killed_while_spooling_replays_the_spool_at_restart_without_duplicates() {
    let (mut cluster, url) = own_cluster();
    let mut profile = profile_with_fixture(&url);
    let mut warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    for i in 0..5 {
        assert!(is_success(&mcp.echo(&format!("before {i}"))));
    }
    eventually("the first rows", DEADLINE, || {
        query_cluster(&cluster, "SELECT count(*) FROM mcp_tool_executions") == 5
    });
    cluster.stop();
    let messages: Vec<String> = (0..20).map(|i| format!("spooled-call-{i:03}")).collect();
    for message in &messages {
        assert!(is_success(&mcp.echo(message)));
    }
    let spool = profile.state_dir().join("audit").join("spool.log");
    eventually("every spooled call in the spool file", DEADLINE, || {
        let bytes = std::fs::read(&spool).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        messages.iter().all(|m| text.contains(m.as_str()))
    });
    let copy = std::fs::read(&spool).unwrap();
    warden.kill9();
    drop(mcp);

    cluster.restart();
    let warden = profile.start();
    eventually("the replayed rows", DEADLINE, || {
        query_cluster(&cluster, "SELECT count(*) FROM mcp_tool_executions") == 25
    });
    eventually("the spool to be emptied", DEADLINE, || {
        std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0) == 0
    });
    drop(warden);

    // A crash during replay means the same spool is replayed again: nothing doubles.
    std::fs::write(&spool, &copy).unwrap();
    let warden = profile.start();
    eventually("the second replay to finish", DEADLINE, || {
        std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0) == 0
    });
    assert_eq!(
        query_cluster(&cluster, "SELECT count(*) FROM mcp_tool_executions"),
        25
    );
    assert_eq!(
        query_cluster(
            &cluster,
            "SELECT count(DISTINCT id) FROM mcp_tool_executions"
        ),
        25
    );
    drop(warden);
    let verify = audit_cli(&profile, &["verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn fail_closed_refuses_calls_while_the_backlog_is_full_and_recovers_when_it_drains() {
    let (mut cluster, url) = own_cluster();
    let mut profile = profile_with_fixture(&url);
    profile.set("audit.on_backlog", "fail_closed");
    profile.set("audit.spool_max_bytes", "2KiB");
    profile.set("audit.batch_max_rows", 2);
    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    assert!(is_success(&mcp.echo("first")));
    cluster.stop();

    let mut succeeded = 1;
    let mut refused = None;
    for i in 0..200 {
        let response = mcp.echo(&format!("call {i}"));
        if is_success(&response) {
            succeeded += 1;
        } else {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("calls are refused once the spool is full");
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("backlogged")),
        "{refused}"
    );
    let (status, audit) = readyz_audit(&warden);
    assert_eq!(status, 503, "{audit}");
    assert_eq!(audit["refusing"], true, "{audit}");
    // Still refusing while nothing changed.
    assert!(!is_success(&mcp.echo("still refused")));

    cluster.restart();
    eventually("the trail to accept again", DEADLINE, || {
        let (status, audit) = readyz_audit(&warden);
        status == 200 && audit["refusing"] == false
    });
    assert!(is_success(&mcp.echo("after recovery")));
    succeeded += 1;
    eventually("every admitted call's row", DEADLINE, || {
        query_cluster(
            &cluster,
            "SELECT count(*) FROM mcp_tool_executions WHERE status = 'success'",
        ) == succeeded
    });
    // The refused calls are on record as refused.
    eventually("the refusals' rows", DEADLINE, || {
        query_cluster(
            &cluster,
            "SELECT count(*) FROM mcp_tool_executions WHERE status = 'error' AND error LIKE '%backlogged%'",
        ) == 2
    });
}

#[test]
fn block_makes_callers_wait_for_room_and_completes_them_when_postgres_returns() {
    let (mut cluster, url) = own_cluster();
    let mut profile = profile_with_fixture(&url);
    profile.set("audit.on_backlog", "block");
    profile.set("audit.block_timeout", "120s");
    profile.set("audit.spool_max_bytes", "1KiB");
    profile.set("audit.batch_max_rows", 2);
    profile.set("audit.queue_capacity", 1);
    let warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    assert!(is_success(&mcp.echo("first")));
    cluster.stop();

    let full_before = metric(&warden, "warden_audit_queue_full_total");
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let endpoint = mcp.endpoint.clone();
            let token = mcp.token.clone();
            let session = mcp.session.clone();
            std::thread::spawn(move || {
                let mcp = Mcp {
                    endpoint,
                    token,
                    session,
                };
                mcp.echo(&format!("blocked {i}"))
            })
        })
        .collect();
    eventually("a caller waiting on a full queue", DEADLINE, || {
        let (_, audit) = readyz_audit(&warden);
        audit["stalled"] == true && metric(&warden, "warden_audit_queue_full_total") > full_before
    });
    assert!(
        callers.iter().any(|c| !c.is_finished()),
        "with `block`, callers wait while the backlog is full"
    );
    let (_, audit) = readyz_audit(&warden);
    assert_eq!(audit["refusing"], false, "block does not refuse: {audit}");

    cluster.restart();
    for caller in callers {
        let response = caller.join().expect("caller thread");
        assert!(is_success(&response), "{response}");
    }
    eventually("every call's row", DEADLINE, || {
        query_cluster(&cluster, "SELECT count(*) FROM mcp_tool_executions") == 9
    });
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

#[test]
fn retention_deletes_old_batches_records_that_it_did_and_verify_still_passes() {
    let db = TestDb::new();
    let mut profile = profile_with_fixture(db.url());
    profile.set("audit.retention", "400d");
    let mut warden = profile.start();
    let mcp = Mcp::connect(&warden, &profile.state_dir());
    for i in 0..3 {
        assert!(is_success(&mcp.echo(&format!("old call {i}"))));
    }
    eventually("the rows", DEADLINE, || {
        count(&db, "SELECT count(*) FROM mcp_tool_executions") == 3
    });
    // The job runs at the first start and finds nothing to do.
    eventually("the first retention run", DEADLINE, || {
        count(
            &db,
            "SELECT count(*) FROM scheduler_jobs WHERE name = 'audit.retention' AND last_detail LIKE 'nothing%'",
        ) == 1
    });
    let status = warden.sigterm();
    assert_eq!(status.code(), Some(0), "{}", warden.log());
    // Everything written so far is now "500 days old", and the job last ran two hours ago
    // (it runs hourly).
    db.execute("UPDATE audit_batches SET last_at = now() - interval '500 days'");
    db.execute("UPDATE scheduler_jobs SET last_started_at = now() - interval '2 hours'");
    let old_batches = count(&db, "SELECT count(*) FROM audit_batches");

    let warden = profile.start();
    eventually("the retention run", DEADLINE, || {
        count(
            &db,
            "SELECT count(*) FROM scheduler_jobs WHERE name = 'audit.retention' AND last_status = 'ok' AND last_detail LIKE 'deleted%'",
        ) == 1
    });
    assert_eq!(count(&db, "SELECT count(*) FROM mcp_tool_executions"), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_batches WHERE pruned_at IS NOT NULL"
        ),
        old_batches
    );
    eventually("the audit.retention event", DEADLINE, || {
        count(
            &db,
            "SELECT count(*) FROM audit_events WHERE kind = 'audit.retention' AND (attributes->'rows'->>'mcp_tool_executions')::int = 3",
        ) == 1
    });
    drop(warden);
    // The feed steps over the pruned batches to the rows written after them.
    let tail = audit_cli(&profile, &["tail"]);
    assert!(tail.status.success(), "{tail:?}");
    assert!(
        tail.stdout.contains("\"audit.retention\""),
        "{}",
        tail.stdout
    );
    let verify = audit_cli(&profile, &["verify"]);
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        verify
            .stdout
            .contains(&format!("({old_batches} pruned by retention)")),
        "{}",
        verify.stdout
    );
}

// ---------------------------------------------------------------------------------------
// Batches side by side
// ---------------------------------------------------------------------------------------

/// Records for the writer test: tool calls and permission decisions, alternating.
fn burst_record(i: usize) -> warden_actors::audit::AuditRecord {
    use warden_actors::audit::{AuditEvent, AuditRecord, ToolCallRecord, ToolStatus};
    let now = std::time::SystemTime::now();
    if i.is_multiple_of(2) {
        AuditRecord::ToolCall(Box::new(ToolCallRecord {
            id: uuid::Uuid::now_v7(),
            trace_id: format!("{i:032x}"),
            session_id: None,
            user_id: Some("alice@example.com".into()),
            client_id: Some("cli".into()),
            server_name: "fixture".into(),
            tool_name: "echo".into(),
            requested_name: "fixture__echo".into(),
            input: serde_json::value::RawValue::from_string(format!(r#"{{"n":{i}}}"#)).ok(),
            output: None,
            status: ToolStatus::Success,
            error: None,
            started_at: now,
            completed_at: now,
            duration_us: 1,
        }))
    } else {
        let mut event = AuditEvent::new("permission.decision", "user");
        event.trace_id = Some(format!("{i:032x}"));
        event.decision = Some("allow");
        AuditRecord::Event(Box::new(event))
    }
}

/// Rows per batch of the pipeline tests' writer.
const BATCH: usize = 50;

/// The writer of the pipeline tests: batches of [`BATCH`], `concurrency` in flight.
fn pipeline_config(
    pool: deadpool_postgres::Pool,
    spool_dir: PathBuf,
    concurrency: usize,
) -> warden_actors::audit::writer::WriterConfig {
    use warden_actors::audit::Backlog;
    warden_actors::audit::writer::WriterConfig {
        pool,
        spool_dir,
        batch_max_rows: BATCH,
        batch_max_delay: Duration::from_millis(10),
        write_concurrency: concurrency,
        spool_max_bytes: 1 << 30,
        max_payload_bytes: 64 << 10,
        backlog: Backlog::Block(Duration::from_secs(5)),
        scrubber: warden_actors::audit::scrub::Scrubber::builtin().into_cell(),
        writer_name: "pipeline".into(),
    }
}

#[test]
fn batches_written_side_by_side_form_one_unbroken_chain_that_verify_walks() {
    use warden_actors::audit::writer::AuditWriter;
    use warden_actors::audit::{Audit, Backlog};
    const RECORDS: usize = 3_000;
    let db = TestDb::new();
    let spool = tempfile::tempdir().unwrap();
    let pg_config = db.pg_config();
    let spool_dir = spool.path().to_path_buf();
    let report = crate::support::rt::block_on(async move {
        let pool = ::warden::db::pool(pg_config, 8, Duration::from_secs(10)).unwrap();
        let (audit, queue) = Audit::channel(RECORDS, Backlog::Block(Duration::from_secs(5)));
        // The whole burst is queued before the writer starts, so every Pump finds full
        // batches waiting and writes `write_concurrency` of them at once.
        for i in 0..RECORDS {
            audit.record(burst_record(i)).await.unwrap();
        }
        let writer = AuditWriter::start(pipeline_config(pool.clone(), spool_dir, 4), queue, None)
            .await
            .unwrap();
        let backlog = writer.flush(Duration::from_secs(60)).await.unwrap();
        assert_eq!(backlog.queued, 0);
        assert_eq!(backlog.spool_bytes, 0);
        writer.shutdown(Duration::from_secs(10)).await;
        let client = pool.get().await.unwrap();
        ::warden::audit::verify::verify(&**client, None)
            .await
            .unwrap()
    });
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, RECORDS as u64);
    assert_eq!(report.batches, (RECORDS / BATCH) as u64);
    let stored = count(
        &db,
        "SELECT (SELECT count(*) FROM mcp_tool_executions) + (SELECT count(*) FROM audit_events)",
    );
    assert_eq!(stored, RECORDS as i64);
    // Positions run 1..=N with no gap, whatever order the seqs committed in.
    let positions = count(
        &db,
        "SELECT count(*) FROM audit_batches WHERE position BETWEEN 1 AND (SELECT count(*) FROM audit_batches)",
    );
    assert_eq!(positions, (RECORDS / BATCH) as i64);

    // A whole batch deleted behind Warden's back (its rows and its seal) is a gap in the
    // chain, named by position.
    db.execute(
        "DELETE FROM mcp_tool_executions WHERE batch_seq = (SELECT seq FROM audit_batches WHERE position = 7);
         DELETE FROM audit_events WHERE batch_seq = (SELECT seq FROM audit_batches WHERE position = 7);
         DELETE FROM audit_batches WHERE position = 7;",
    );
    let pg_config = db.pg_config();
    let report = crate::support::rt::block_on(async move {
        let client = crate::support::db::connect(&pg_config).await;
        ::warden::audit::verify::verify(&client, None)
            .await
            .unwrap()
    });
    assert_eq!(
        report.problems.first().map(ToString::to_string).as_deref(),
        Some("the batch at chain position 7 is missing"),
        "{report:?}"
    );
}

/// One batch that PostgreSQL cannot take, in the middle of a pipeline of writes: it is
/// spooled, and the batches formed after it follow it into the spool — all but those
/// already in flight beside it (at most `write_concurrency - 1`) — so that once PostgreSQL
/// takes it, the spool replays them in the order they were formed. One unbroken chain,
/// every record exactly once.
#[test]
fn a_batch_failing_mid_pipeline_is_spooled_and_the_batches_formed_after_it_follow_it_in_order() {
    use warden_actors::audit::writer::AuditWriter;
    use warden_actors::audit::{Audit, Backlog};
    const RECORDS: usize = 3_000;
    const CONCURRENCY: usize = 3;
    // A permission decision (odd index) in the 21st batch of 60.
    const FAILING: usize = 1_001;
    let db = TestDb::new();
    // PostgreSQL answers that one row as if the connection had failed (SQLSTATE 08006),
    // the way it answers while it is stopping: the writer must spool its batch.
    db.execute(&format!(
        "CREATE FUNCTION fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'connection lost (test)' USING ERRCODE = '08006'; END $$;
         CREATE TRIGGER fail_one BEFORE INSERT ON audit_events FOR EACH ROW
         WHEN (NEW.trace_id = '{FAILING:032x}') EXECUTE FUNCTION fail_one();"
    ));
    let spool = tempfile::tempdir().unwrap();
    let pg_config = db.pg_config();
    let spool_dir = spool.path().to_path_buf();
    let first = crate::support::rt::block_on(async move {
        let pool = ::warden::db::pool(pg_config, 8, Duration::from_secs(10)).unwrap();
        let (audit, queue) = Audit::channel(RECORDS, Backlog::Block(Duration::from_secs(5)));
        for i in 0..RECORDS {
            audit.record(burst_record(i)).await.unwrap();
        }
        let writer = AuditWriter::start(pipeline_config(pool, spool_dir, CONCURRENCY), queue, None)
            .await
            .unwrap();
        let backlog = writer.flush(Duration::from_secs(60)).await.unwrap();
        writer.shutdown(Duration::from_secs(10)).await;
        backlog
    });
    assert_eq!(first.queued, 0, "{first:?}");
    assert!(first.spool_bytes > 0, "nothing was spooled: {first:?}");
    assert!(first.database_down, "{first:?}");

    // PostgreSQL takes the row again; the next writer replays the spool at its start.
    db.execute("DROP TRIGGER fail_one ON audit_events;");
    let pg_config = db.pg_config();
    let spool_dir = spool.path().to_path_buf();
    let (second, report) = crate::support::rt::block_on(async move {
        let pool = ::warden::db::pool(pg_config, 8, Duration::from_secs(10)).unwrap();
        let (_audit, queue) = Audit::channel(16, Backlog::Block(Duration::from_secs(5)));
        let writer = AuditWriter::start(
            pipeline_config(pool.clone(), spool_dir, CONCURRENCY),
            queue,
            None,
        )
        .await
        .unwrap();
        let backlog = writer.flush(Duration::from_secs(60)).await.unwrap();
        writer.shutdown(Duration::from_secs(10)).await;
        let client = pool.get().await.unwrap();
        let report = ::warden::audit::verify::verify(&**client, None)
            .await
            .unwrap();
        (backlog, report)
    });
    assert_eq!(second.spool_bytes, 0, "{second:?}");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, RECORDS as u64);
    assert_eq!(report.batches, (RECORDS / BATCH) as u64);
    let stored = count(
        &db,
        "SELECT (SELECT count(DISTINCT id) FROM mcp_tool_executions) + (SELECT count(DISTINCT id) FROM audit_events)",
    );
    assert_eq!(stored, RECORDS as i64);

    // Each batch in chain order: replayed or not, and the first record it holds (trace
    // ids are the records' indexes, zero-padded, so they sort as the records were made).
    let batches: Vec<(bool, usize)> = db
        .query(
            "SELECT b.replayed,
                    least((SELECT min(trace_id) FROM mcp_tool_executions t WHERE t.batch_seq = b.seq),
                          (SELECT min(trace_id) FROM audit_events e WHERE e.batch_seq = b.seq))
             FROM audit_batches b ORDER BY b.position",
        )
        .iter()
        .map(|row| {
            let first: String = row.get(1);
            (
                row.get(0),
                usize::from_str_radix(&first, 16).unwrap(),
            )
        })
        .collect();
    let failing = FAILING / BATCH * BATCH;
    let replayed: Vec<usize> = batches
        .iter()
        .filter(|(replayed, _)| *replayed)
        .map(|(_, first)| *first)
        .collect();
    assert_eq!(replayed.first(), Some(&failing), "{batches:?}");
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "the spool was replayed out of the order the batches were formed in: {batches:?}"
    );
    let overtook = batches
        .iter()
        .filter(|(replayed, first)| !replayed && *first > failing)
        .count();
    assert!(
        overtook < CONCURRENCY,
        "{overtook} batches formed after the failing one went to PostgreSQL: {batches:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The COPY encoding
// ---------------------------------------------------------------------------------------

/// The binary COPY data is encoded by hand (actors/src/audit/store.rs), with no column
/// types to check it against: a field written out of order, or one missing, would store
/// a value in the wrong column. One row of each kind with every column set to a value of
/// its own, and one with every optional column empty, go through `write_batch`; `audit
/// verify` then recomputes each row's hash from its columns as stored, so any value that
/// did not land where the writer meant it fails the check.
#[test]
fn every_column_of_every_row_kind_is_stored_where_the_writer_meant_it() {
    use warden_actors::audit::prepare::{AiRow, EventRow, Payload, Row, ToolRow};
    let db = TestDb::new();
    let at = 1_764_000_000_000_000_i64;
    let id = uuid::Uuid::now_v7;
    let tool = ToolRow {
        id: id(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        session_id: Some("session-1".into()),
        user_id: Some("alice@example.com".into()),
        client_id: Some("claude-desktop".into()),
        server_name: "github".into(),
        tool_name: "create_issue".into(),
        requested_name: "github__create_issue".into(),
        input: Some(Payload {
            json: r#""{\"title\":\"cut here""#.into(),
            truncated: true,
            sha256: Some("ab".repeat(32)),
        }),
        output: Some(Payload {
            json: r##"{"content":[{"type":"text","text":"#1234"}]}"##.into(),
            truncated: false,
            sha256: None,
        }),
        status: "error".into(),
        error: Some("upstream said no".into()),
        started_at_us: at,
        completed_at_us: at + 1_500,
        duration_us: 1_500,
    };
    let bare_tool = ToolRow {
        id: id(),
        session_id: None,
        user_id: None,
        client_id: None,
        input: None,
        output: None,
        error: None,
        ..tool.clone()
    };
    let event = EventRow {
        id: id(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        occurred_at_us: at + 1,
        kind: "permission.decision".into(),
        actor_kind: "user".into(),
        actor_id: Some("alice@example.com".into()),
        subject: Some("github/create_issue".into()),
        decision: Some("deny".into()),
        reason: Some("no scope tools:write".into()),
        attributes: r#"{"action":"tools/call"}"#.into(),
    };
    let bare_event = EventRow {
        id: id(),
        trace_id: None,
        actor_id: None,
        subject: None,
        decision: None,
        reason: None,
        ..event.clone()
    };
    let ai = AiRow {
        id: id(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        user_id: Some("alice@example.com".into()),
        client_id: Some("claude-desktop".into()),
        session_id: Some("session-1".into()),
        provider: "anthropic".into(),
        model: "claude-sonnet-4-5".into(),
        requested_model: Some("fast".into()),
        input_tokens: Some(11),
        output_tokens: Some(22),
        cache_read_tokens: Some(33),
        cache_write_tokens: Some(44),
        cost_microdollars: Some(55),
        latency_ms: Some(66),
        ttft_ms: Some(77),
        status: "success".into(),
        error: Some("none really".into()),
        streaming: true,
        created_at_us: at + 2,
    };
    let bare_ai = AiRow {
        id: id(),
        user_id: None,
        client_id: None,
        session_id: None,
        requested_model: None,
        input_tokens: None,
        output_tokens: None,
        cache_read_tokens: None,
        cache_write_tokens: None,
        cost_microdollars: None,
        latency_ms: None,
        ttft_ms: None,
        error: None,
        streaming: false,
        ..ai.clone()
    };
    let rows = vec![
        Row::Tool(tool),
        Row::Event(event),
        Row::Ai(ai),
        Row::Tool(bare_tool),
        Row::Event(bare_event),
        Row::Ai(bare_ai),
    ];
    let pg_config = db.pg_config();
    let (written, report) = crate::support::rt::block_on(async move {
        let pool = ::warden::db::pool(pg_config, 2, Duration::from_secs(10)).unwrap();
        let mut client = pool.get().await.unwrap();
        let written =
            warden_actors::audit::store::write_batch(&mut client, &rows, "encoding", false, false)
                .await
                .unwrap();
        let report = ::warden::audit::verify::verify(&**client, None)
            .await
            .unwrap();
        (written, report)
    });
    assert_eq!(written.rows, 6);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, 6);
    // And by name, the columns most alike (seven integers in a row).
    let stored = db.query(
        "SELECT input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                cost_microdollars, latency_ms, ttft_ms
         FROM ai_requests WHERE requested_model = 'fast'",
    );
    let values: Vec<i64> = (0..7).map(|i| stored[0].get(i)).collect();
    assert_eq!(values, [11, 22, 33, 44, 55, 66, 77]);
}
