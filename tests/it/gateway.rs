//! The MCP gateway through `warden serve`: real clients (the official Python SDK in both
//! protocol eras, and through `warden bridge`), pass-through of `_meta`, progress,
//! logging, sampling (on the call's stream, or as `input_required` rounds for stateless
//! clients) and list changes, tool pinning, and every edge case a client must be
//! able to act on (limits, deadlines, a dying upstream, bad bodies, bad sessions, bad
//! versions, bad origins).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::supervision::fixture;
use crate::support::mcp::{
    Answer, EventStream, Line, McpClient, admin_token, event, next_line, parse_answer,
};
use crate::support::{TestDb, external, http, warden};

const WAIT: Duration = Duration::from_secs(60);

struct Gateway {
    warden: warden::WardenProcess,
    token: String,
    profile: warden::Profile,
    _db: TestDb,
}

impl Gateway {
    fn start(servers: Value) -> Gateway {
        Gateway::start_with(servers, &[])
    }

    /// With profile keys set besides the servers.
    fn start_with(servers: Value, settings: &[(&str, Value)]) -> Gateway {
        let db = TestDb::new();
        let mut profile = warden::Profile::with_database(db.url());
        profile.set("servers", servers);
        for (key, value) in settings {
            profile.set(key, value.clone());
        }
        let warden = profile.start();
        let token = admin_token(&warden, &profile.state_dir());
        let gateway = Gateway {
            warden,
            token,
            profile,
            _db: db,
        };
        gateway.wait_all_ready();
        gateway
    }

    fn wait_all_ready(&self) {
        let mut events = EventStream::open(&self.warden, &self.token);
        let names: Vec<String> = self.profile.value["servers"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            if self.status(&name)["state"] != "ready" {
                let server = name.clone();
                events.wait_for(WAIT, move |e| {
                    e["event"] == "ready" && e["server"] == server.as_str()
                });
            }
        }
    }

    fn status(&self, name: &str) -> Value {
        let response = http::request(
            "GET",
            &self.warden.url("/admin/servers"),
            &[("Authorization", &format!("Bearer {}", self.token))],
            None,
        )
        .expect("GET /admin/servers");
        response.json()["servers"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    fn client(&self) -> McpClient {
        McpClient::connect(self.warden.url("/mcp"), &self.token)
    }
}

fn run_python(args: &[&str]) -> Value {
    let output = Command::new(external::python())
        .arg(external::script("client_scenarios.py"))
        .args(args)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad report {last:?}: {e}"))
}

#[test]
fn python_sdk_client_works_in_both_protocol_eras() {
    for mode in ["legacy", "auto"] {
        let gateway = Gateway::start(
            json!({ "fix": fixture(&format!("py-{mode}-{}", std::process::id()), &[]) }),
        );
        let report = run_python(&["http", &gateway.warden.url("/mcp"), &gateway.token, mode]);
        let tools = report["tools"].as_array().expect("tools");
        assert!(tools.contains(&json!("fix__echo")), "{report}");
        assert_eq!(report["echo"], json!(["hello from python"]), "{report}");
        assert_eq!(
            report["progress"],
            json!([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]]),
            "{report}"
        );
        assert_eq!(report["fail_is_error"], true, "{report}");
        assert!(
            report["unknown_tool"]
                .as_str()
                .unwrap_or_default()
                .contains("fix__missing"),
            "{report}"
        );
        assert_eq!(
            report["sample"],
            json!(["sampled by the python client"]),
            "{report}"
        );
        if mode == "legacy" {
            assert_eq!(report["log_result"], json!(["logged"]), "{report}");
            let notes = report["notifications"].as_array().expect("notifications");
            assert!(
                notes
                    .iter()
                    .any(|n| n["kind"] == "log" && n["data"] == "a log line"),
                "{report}"
            );
            assert!(
                notes.iter().any(|n| n["kind"] == "tools_list_changed"),
                "{report}"
            );
        } else {
            assert_eq!(report["listen_event"], "ToolsListChanged", "{report}");
        }
    }
}

#[test]
fn bridge_serves_a_stdio_client_and_survives_a_warden_restart() {
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    profile.set(
        "servers",
        json!({ "fix": fixture(&format!("bridge-{}", std::process::id()), &[]) }),
    );
    let port = warden::free_port();
    profile.set("server.listen", format!("127.0.0.1:{port}"));
    let start = |profile: &warden::Profile| {
        let command = profile.command(&["serve"]);
        let process =
            warden::WardenProcess::spawn(command, Some(format!("http://127.0.0.1:{port}")));
        process.wait_ready();
        let token = admin_token(&process, &profile.state_dir());
        let mut events = EventStream::open(&process, &token);
        if !process.log().contains("server ready") {
            events.wait_for(WAIT, event("ready", "fix"));
        }
        process
    };
    let mut warden = start(&profile);
    let token_file = profile.state_dir().join("admin.token");
    let mut client = Command::new(external::python())
        .arg(external::script("client_scenarios.py"))
        .args([
            "bridge",
            warden::bin(),
            &format!("http://127.0.0.1:{port}/mcp"),
        ])
        .arg(&token_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python stdio client");
    let mut stdout = BufReader::new(client.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the client's request to restart");
    assert!(line.contains("restart-warden"), "{line}");
    let status = warden.sigterm();
    assert!(status.success());
    warden = start(&profile);
    client
        .stdin
        .as_mut()
        .expect("piped stdin")
        .write_all(b"restarted\n")
        .expect("tell the client");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read the report");
    let output = client.wait_with_output().expect("the client ends");
    assert!(
        output.status.success(),
        "{rest}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        warden.log()
    );
    let report: Value =
        serde_json::from_str(rest.lines().last().unwrap_or_default()).expect("a JSON report");
    assert!(
        report["tools"]
            .as_array()
            .expect("tools")
            .contains(&json!("fix__echo")),
        "{report}"
    );
    assert_eq!(report["echo"], json!(["through the bridge"]));
    assert_eq!(report["progress"], json!([1.0, 2.0]));
    assert_eq!(
        report["echo_after_restart"],
        json!(["after the restart"]),
        "{report}"
    );
}

#[test]
fn meta_passes_through_and_the_trace_comes_back() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("meta-{}", std::process::id()), &[]) }));
    let mut client = gateway.client();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "fix__echo", "arguments": {"message": "m"}, "_meta": {"custom/key": [1, 2]}}});
    let answer = client.post_json(&body, &[("traceparent", parent)]);
    assert_eq!(
        answer.result()["_meta"]["receivedMeta"]["custom/key"],
        json!([1, 2]),
        "{:?}",
        answer.message
    );
    let returned = answer
        .response
        .header("traceparent")
        .expect("a traceparent header");
    assert!(
        returned.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{returned}"
    );
    assert_eq!(answer.result()["_meta"]["traceparent"], returned);
}

#[test]
fn concurrency_limit_and_deadline_fail_fast_with_clear_errors() {
    let mut server = fixture(&format!("limits-{}", std::process::id()), &[]);
    server["max_concurrent_calls"] = 1.into();
    server["max_queued_calls"] = 0.into();
    server["call_timeout"] = "1500ms".into();
    let gateway = Gateway::start(json!({ "fix": server }));
    let url = gateway.warden.url("/mcp");
    let token = gateway.token.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut client = McpClient::connect(url, &token);
        tx.send(()).expect("signal");
        client.call("fix__slow", json!({"ms": 600}))
    });
    rx.recv().expect("the slow call's client connected");
    // Wait (with a deadline) until Warden reports the slow call holding the only slot.
    let deadline = std::time::Instant::now() + WAIT;
    while gateway.status("fix")["in_flight"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow call never showed in flight"
        );
        assert!(
            !slow.is_finished(),
            "the slow call ended before it was seen in flight"
        );
    }
    let mut client = gateway.client();
    let refused = client.call("fix__echo", json!({"message": "x"}));
    let error = refused.error();
    assert_eq!(error["code"], -32001, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`fix`") && message.contains("1 concurrent calls"),
        "{message}"
    );
    assert!(
        slow.join()
            .expect("slow call")
            .message
            .get("result")
            .is_some()
    );

    let late = client.call("fix__slow", json!({"ms": 5000}));
    let error = late.error();
    assert_eq!(error["code"], -32002, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("call_timeout"),
        "{error}"
    );
}

#[test]
fn an_upstream_message_over_max_message_bytes_fails_its_call_and_names_the_key() {
    let id = std::process::id();
    let mut stdio = fixture(&format!("msg-limit-{id}"), &[]);
    stdio["max_message_bytes"] = json!("8KiB");
    let mut web = fixture(&format!("msg-limit-http-{id}"), &["--http", "{port}"]);
    web["port"] = json!("auto");
    web["max_message_bytes"] = json!("8KiB");
    let gateway = Gateway::start(json!({ "fix": stdio, "web": web }));
    let mut events = EventStream::open(&gateway.warden, &gateway.token);
    let mut client = gateway.client();
    let small = "s".repeat(100);
    let large = "l".repeat(10_000);

    for server in ["fix", "web"] {
        let tool = format!("{server}__echo");
        assert_eq!(client.call(&tool, json!({"message": small})).text(), small);
        let refused = client.call(&tool, json!({"message": large}));
        let error = refused.error();
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("larger than 8192 bytes")
                && message.contains(&format!("servers.{server}.max_message_bytes")),
            "{error}"
        );
    }

    // Over stdio the rest of the line cannot be skipped: the child was restarted. Over
    // HTTP only the one response was refused.
    events.wait_for(WAIT, event("ready", "fix"));
    for server in ["fix", "web"] {
        let tool = format!("{server}__echo");
        assert_eq!(client.call(&tool, json!({"message": small})).text(), small);
    }
    assert_eq!(gateway.status("web")["restarts"], 0);
}

#[test]
fn upstream_dying_mid_call_fails_that_call_and_the_session_survives() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("dying-{}", std::process::id()), &[]) }));
    let mut events = EventStream::open(&gateway.warden, &gateway.token);
    let url = gateway.warden.url("/mcp");
    let mut client = McpClient::connect(url, &gateway.token);
    let crash = client.call("fix__crash", json!({"code": 7}));
    let error = crash.error();
    assert_eq!(error["code"], -32001, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`fix`"),
        "{error}"
    );
    events.wait_for(WAIT, event("ready", "fix"));
    assert_eq!(
        client.call("fix__echo", json!({"message": "again"})).text(),
        "again"
    );
}

#[test]
fn malformed_and_hostile_requests_get_specific_answers() {
    let mut server = fixture(&format!("edges-{}", std::process::id()), &[]);
    server["max_concurrent_calls"] = 4.into();
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    profile.set("servers", json!({ "fix": server }));
    profile.set("server.max_body_bytes", 4096);
    profile.set("server.max_json_depth", 16);
    let warden = profile.start();
    let token = admin_token(&warden, &profile.state_dir());
    let url = warden.url("/mcp");
    let client = McpClient::connect(url.clone(), &token);

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
        "a".repeat(5000)
    );
    assert_eq!(client.post_raw(big.as_bytes(), &[]).status, 413);

    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{}1{}}}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let answer = crate::support::mcp::parse_answer(client.post_raw(deep.as_bytes(), &[]));
    assert_eq!(answer.status, 400);
    assert!(
        answer.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_json_depth")
    );

    let answer = crate::support::mcp::parse_answer(client.post_raw(b"{not json", &[]));
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error()["code"], -32700);

    let ping = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    assert_eq!(
        client
            .post_raw(ping, &[("Mcp-Session-Id", "no-such-session")])
            .status,
        404
    );
    assert_eq!(client.post_raw(ping, &[("Mcp-Session-Id", "")]).status, 400);
    assert_eq!(
        client
            .post_raw(ping, &[("MCP-Protocol-Version", "1999-01-01")])
            .status,
        400
    );
    assert_eq!(
        client
            .post_raw(ping, &[("Origin", "http://evil.example")])
            .status,
        403
    );
    assert_eq!(
        client.post_raw(ping, &[("Host", "evil.example")]).status,
        403
    );
    assert_eq!(client.post_raw(ping, &[("Authorization", "")]).status, 401);
    let unauthorised = client.post_raw(ping, &[("Authorization", "Bearer wrong")]);
    assert_eq!(unauthorised.status, 401);
    let challenge = unauthorised.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert_eq!(
        client.post_raw(ping, &[]).status,
        200,
        "the session is unharmed"
    );
}

#[test]
fn stateless_requests_need_matching_headers() {
    let gateway = Gateway::start(
        json!({ "fix": fixture(&format!("stateless-{}", std::process::id()), &[]) }),
    );
    let client = McpClient::new(gateway.warden.url("/mcp"), Some(gateway.token.clone()));
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "fix__echo", "arguments": {"message": "s"}, "_meta": meta}});
    let headers = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "fix__echo"),
    ];
    let answer =
        crate::support::mcp::parse_answer(client.post_raw(call.to_string().as_bytes(), &headers));
    assert_eq!(answer.status, 200, "{:?}", answer.message);
    assert_eq!(answer.result()["resultType"], "complete");
    assert_eq!(answer.text(), "s");
    let wrong_name = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "other"),
    ];
    let answer = crate::support::mcp::parse_answer(
        client.post_raw(call.to_string().as_bytes(), &wrong_name),
    );
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error()["code"], -32020);
    let mut old = call.clone();
    old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2027-01-01".into();
    let future = [
        ("MCP-Protocol-Version", "2027-01-01"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "fix__echo"),
    ];
    let answer =
        crate::support::mcp::parse_answer(client.post_raw(old.to_string().as_bytes(), &future));
    assert_eq!(answer.error()["code"], -32022);
    assert_eq!(answer.error()["data"]["supported"], json!(["2026-07-28"]));
}

/// Both answer shapes a stateless client must accept.
const JSON_OR_SSE: &str = "application/json, text/event-stream";

/// One stateless-era request from a client that declares `capabilities`, with the
/// admin token.
fn stateless(gateway: &Gateway, method: &str, params: Value, capabilities: Value) -> Answer {
    stateless_as(
        gateway,
        &gateway.token,
        JSON_OR_SSE,
        method,
        params,
        capabilities,
    )
}

/// One stateless-era request with `token`, accepting `accept`.
fn stateless_as(
    gateway: &Gateway,
    token: &str,
    accept: &str,
    method: &str,
    mut params: Value,
    capabilities: Value,
) -> Answer {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    });
    let name = params["name"].as_str().unwrap_or_default().to_owned();
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let client = McpClient::new(gateway.warden.url("/mcp"), Some(token.to_owned()));
    parse_answer(client.post_raw(
        body.to_string().as_bytes(),
        &[
            ("Accept", accept),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", method),
            ("Mcp-Name", &name),
        ],
    ))
}

/// An access token for another user with every scope (`warden token issue`).
fn token_for(gateway: &Gateway, user: &str) -> String {
    token_with(gateway, user, "*")
}

/// An access token for another user with `scopes`.
fn token_with(gateway: &Gateway, user: &str, scopes: &str) -> String {
    let output = warden::run(
        gateway
            .profile
            .command(&["token", "issue", "--user", user, "--scopes", scopes]),
    );
    assert!(output.status.success(), "token issue: {}", output.stderr);
    output.stdout.trim().to_owned()
}

/// The statuses of `server`'s `tool` calls in the audit trail, in call order.
fn statuses(gateway: &Gateway, server: &str, tool: &str) -> Vec<String> {
    gateway
        ._db
        .query(&format!(
            "SELECT status FROM mcp_tool_executions \
             WHERE server_name = '{server}' AND tool_name = '{tool}' ORDER BY started_at"
        ))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Polls the audit trail until `server`'s `tool` calls have the given statuses.
fn wait_for_statuses(gateway: &Gateway, server: &str, tool: &str, expected: &[&str]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = statuses(gateway, server, tool);
        if found == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{server}__{tool}` rows say {found:?}, expected {expected:?}"
        );
        std::thread::park_timeout(Duration::from_millis(25));
    }
}

/// Asserts that `answer` is a JSON-RPC error whose message says `why`.
fn assert_refused(answer: &Answer, why: &str) {
    let message = answer.error()["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(why),
        "expected {why:?} in {:?}",
        answer.message
    );
}

/// The answer of a call Warden holds for the client's input.
fn assert_held(answer: &Answer) {
    assert_eq!(
        answer.result()["resultType"],
        "input_required",
        "{:?}",
        answer.message
    );
}

/// The fixture's `interview` logs "interview starts" before its first question: the
/// answer's stream must carry that line ahead of the result.
fn assert_interview_started(answer: &Answer) {
    assert!(
        answer
            .notifications
            .iter()
            .any(|n| n["params"]["data"] == "interview starts"),
        "{:?}",
        answer.notifications
    );
}

#[test]
fn a_stateless_client_answers_an_upstreams_questions_by_retrying_with_its_input() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("mrtr-{}", std::process::id()), &[]) }));
    let capabilities = json!({"elicitation": {}, "sampling": {}});
    let call = json!({"name": "fix__interview", "arguments": {}});
    // Round one: the log line comes first, so the answer is a stream whose last event
    // asks for the name.
    let first = stateless(&gateway, "tools/call", call.clone(), capabilities.clone());
    assert_interview_started(&first);
    let asked = first.result().clone();
    assert_eq!(asked["resultType"], "input_required", "{asked}");
    let question = &asked["inputRequests"]["upstream"];
    assert_eq!(question["method"], "elicitation/create", "{asked}");
    assert_eq!(question["params"]["message"], "Your name?", "{asked}");
    let trace = asked["_meta"]["traceparent"].clone();
    assert!(trace.is_string(), "{asked}");
    let state = asked["requestState"]
        .as_str()
        .expect("a requestState")
        .to_owned();

    // Retries that cannot be taken: no answer, changed arguments, a made-up state.
    let mut retry = call.clone();
    retry["requestState"] = state.clone().into();
    let refused = stateless(&gateway, "tools/call", retry.clone(), capabilities.clone());
    assert_eq!(refused.error()["code"], -32602);
    assert_refused(&refused, "inputResponses");
    retry["inputResponses"] =
        json!({"upstream": {"action": "accept", "content": {"answer": "Ada"}}});
    let mut changed = retry.clone();
    changed["arguments"] = json!({"other": true});
    let refused = stateless(&gateway, "tools/call", changed, capabilities.clone());
    assert_refused(&refused, "repeat its request");
    let mut forged = retry.clone();
    forged["requestState"] = "warden-input-00000000000000000000000000000000".into();
    let refused = stateless(&gateway, "tools/call", forged, capabilities.clone());
    assert_refused(&refused, "names no call");

    // Round two: the name goes to the upstream, which asks again — for a sample.
    let second = stateless(&gateway, "tools/call", retry.clone(), capabilities.clone());
    let asked = second.result().clone();
    assert_eq!(asked["resultType"], "input_required", "{asked}");
    assert_eq!(
        asked["inputRequests"]["upstream"]["method"],
        "sampling/createMessage"
    );
    assert_eq!(
        asked["inputRequests"]["upstream"]["params"]["messages"][0]["content"]["text"],
        "greet Ada"
    );
    assert_eq!(asked["_meta"]["traceparent"], trace, "one call, one trace");
    let used_state = state;
    let state = asked["requestState"]
        .as_str()
        .expect("a new requestState")
        .to_owned();
    assert_ne!(state, used_state);

    // Round three completes the call; a retry is one whatever it accepts (this one
    // takes JSON only), and the answer's `resultType` is not the upstream's business.
    let mut last = call.clone();
    last["requestState"] = state.into();
    last["inputResponses"] = json!({"upstream": {"role": "assistant", "model": "m",
        "content": {"type": "text", "text": "hello Ada"}, "resultType": "complete"}});
    let done = stateless_as(
        &gateway,
        &gateway.token,
        "application/json",
        "tools/call",
        last,
        capabilities.clone(),
    );
    assert_eq!(
        done.response.header("traceparent").map(str::to_owned),
        trace.as_str().map(str::to_owned),
        "the header carries the call's trace too"
    );
    assert_eq!(
        done.result()["resultType"],
        "complete",
        "{:?}",
        done.message
    );
    assert_eq!(done.text(), "Ada: hello Ada");
    assert_eq!(done.result()["_meta"]["traceparent"], trace);

    // A state is good for one retry.
    let replayed = stateless(&gateway, "tools/call", retry, capabilities.clone());
    assert_refused(&replayed, "names no call");
    // A client that did not declare elicitation is not asked; the tool hears so.
    let undeclared = stateless(&gateway, "tools/call", call, json!({}));
    assert_eq!(
        undeclared.result()["isError"],
        true,
        "{:?}",
        undeclared.message
    );
    wait_for_statuses(&gateway, "fix", "interview", &["success", "error"]);
}

#[test]
fn calls_awaiting_input_are_bounded_in_total_and_per_principal() {
    // Over HTTP, an upstream's question arrives on its call's own stream, so it is known
    // whose it is with several calls in flight (over stdio, only with one).
    let mut server = fixture(
        &format!("mrtr-bounds-{}", std::process::id()),
        &["--http", "{port}"],
    );
    server["port"] = json!("auto");
    let mut gateway = Gateway::start_with(
        json!({ "fix": server }),
        &[
            ("gateway.max_awaiting_input", json!(2)),
            ("gateway.max_awaiting_input_per_principal", json!(1)),
        ],
    );
    let capabilities = json!({"elicitation": {}, "sampling": {}});
    let call = json!({"name": "fix__elicit", "arguments": {"message": "Sure?"}});
    let held = stateless(&gateway, "tools/call", call.clone(), capabilities.clone());
    assert_held(&held);
    let admin_state = held.result()["requestState"].clone();

    // The admin's one place is taken: the next question (on a stream, after a log line)
    // is refused to the upstream, and the tool's answer says why.
    let interview = json!({"name": "fix__interview", "arguments": {}});
    let refused = stateless(&gateway, "tools/call", interview, capabilities.clone());
    assert_interview_started(&refused);
    assert_eq!(refused.result()["isError"], true, "{:?}", refused.message);
    assert!(
        refused
            .text()
            .contains("gateway.max_awaiting_input_per_principal"),
        "{}",
        refused.text()
    );

    // Another principal has a place of their own, and cannot take the admin's call.
    let mallory = token_for(&gateway, "mallory");
    let theirs = stateless_as(
        &gateway,
        &mallory,
        JSON_OR_SSE,
        "tools/call",
        call.clone(),
        capabilities.clone(),
    );
    assert_held(&theirs);
    let mut stolen = call.clone();
    stolen["requestState"] = admin_state.clone();
    stolen["inputResponses"] = json!({"upstream": {"action": "accept", "content": {}}});
    let refused = stateless_as(
        &gateway,
        &mallory,
        JSON_OR_SSE,
        "tools/call",
        stolen.clone(),
        capabilities.clone(),
    );
    assert_refused(&refused, "names no call");

    // Two calls wait: a third principal's question is refused on the total.
    let eve = token_for(&gateway, "eve");
    let refused = stateless_as(
        &gateway,
        &eve,
        JSON_OR_SSE,
        "tools/call",
        call.clone(),
        capabilities.clone(),
    );
    assert!(
        refused.text().contains("holds 2 calls"),
        "{}",
        refused.text()
    );

    // The admin's call was unharmed by the attempt, and answers.
    let answered = stateless(&gateway, "tools/call", stolen, capabilities.clone());
    assert_eq!(answered.text(), r#"{"action":"accept","content":{}}"#);

    // Mallory's call still waits at shutdown: it is cancelled, and recorded before
    // Warden exits.
    assert!(
        gateway.warden.sigterm().success(),
        "{}",
        gateway.warden.log()
    );
    assert_eq!(
        statuses(&gateway, "fix", "elicit"),
        ["success", "cancelled", "error"]
    );
    assert_eq!(statuses(&gateway, "fix", "interview"), ["error"]);
}

#[test]
fn a_held_call_ends_at_its_own_deadline_or_after_the_input_timeout() {
    let mut quick = fixture(&format!("mrtr-quick-{}", std::process::id()), &[]);
    quick["call_timeout"] = json!("1s");
    let gateway = Gateway::start_with(
        json!({
            "fix": fixture(&format!("mrtr-wait-{}", std::process::id()), &[]),
            "quick": quick,
        }),
        &[
            ("gateway.input_timeout", json!("4s")),
            ("gateway.max_awaiting_input_per_principal", json!(1)),
        ],
    );
    let capabilities = json!({"elicitation": {}});
    let ask = |server: &str| {
        let call = json!({"name": format!("{server}__elicit"), "arguments": {"message": "Sure?"}});
        let held = stateless(&gateway, "tools/call", call.clone(), capabilities.clone());
        assert_held(&held);
        let mut retry = call;
        retry["requestState"] = held.result()["requestState"].clone();
        retry["inputResponses"] = json!({"upstream": {"action": "accept", "content": {}}});
        retry
    };
    // The call's own deadline (1 s) ends it while it waits, and frees its place at once:
    // the admin's next call can be held long before the input timeout (4 s).
    let quick_retry = ask("quick");
    wait_for_statuses(&gateway, "quick", "elicit", &["timeout"]);
    let late = stateless(&gateway, "tools/call", quick_retry, capabilities.clone());
    assert_refused(&late, "names no call");
    let fix_retry = ask("fix");
    // Nobody answers: after the input timeout the call is cancelled.
    wait_for_statuses(&gateway, "fix", "elicit", &["cancelled"]);
    let late = stateless(&gateway, "tools/call", fix_retry, capabilities);
    assert_refused(&late, "gateway.input_timeout");
}

#[test]
fn a_changed_tool_definition_is_withheld_until_approved() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("pins-{}", std::process::id()), &[]) }));
    let mut events = EventStream::open(&gateway.warden, &gateway.token);
    let mut client = gateway.client();
    assert_eq!(
        client
            .call("fix__echo", json!({"message": "trusted"}))
            .text(),
        "trusted"
    );
    client.call("fix__mutate_tools", json!({}));
    events.wait_for(WAIT, |e| {
        e["event"] == "tools_changed" && e["changed"] == json!(["echo"])
    });
    let tools = client.request("tools/list", json!({}));
    let names: Vec<&str> = tools.result()["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(!names.contains(&"fix__echo"), "{names:?}");
    assert!(names.contains(&"fix__added_tool"), "{names:?}");
    let refused = client.call("fix__echo", json!({"message": "x"}));
    assert_eq!(refused.error()["code"], -32003, "{:?}", refused.message);
    assert!(
        refused.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("withheld")
    );
    let approve = |query: &str| {
        http::request(
            "POST",
            &gateway
                .warden
                .url(&format!("/admin/tools/fix/echo/approve{query}")),
            &[("Authorization", &format!("Bearer {}", gateway.token))],
            None,
        )
        .expect("approve")
    };
    // Naming a definition other than the one withheld (the server changed it again
    // since it was reviewed): refused, naming the current one.
    let stale = approve("?hash=0123abcd");
    assert_eq!(stale.status, 409, "{stale:?}");
    let message = stale.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("not the 0123abcd reviewed"), "{message}");
    let refused = client.call("fix__echo", json!({"message": "x"}));
    assert_eq!(refused.error()["code"], -32003, "still withheld");
    let current = message
        .split("now has the definition ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the current hash in the message");
    let approved = approve(&format!("?hash={current}"));
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(
        client
            .call("fix__echo", json!({"message": "approved"}))
            .text(),
        "approved"
    );
}

/// The tool names a client sees on `/mcp`.
fn listed(client: &mut McpClient) -> Vec<String> {
    let tools = client.request("tools/list", json!({}));
    tools.result()["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_tool_approved_on_one_replica_is_served_by_the_other() {
    // Two replicas on one database, each with its own child of the same server.
    let db = TestDb::new();
    let marker = format!("pins-replica-{}", std::process::id());
    let mut first = warden::Profile::with_database(db.url());
    first.set(
        "servers",
        json!({"fix": fixture(&format!("{marker}-a"), &[])}),
    );
    let a = first.start();
    let token = admin_token(&a, &first.state_dir());
    let mut second = warden::Profile::with_database(db.url());
    second.set(
        "servers",
        json!({"fix": fixture(&format!("{marker}-b"), &[])}),
    );
    let key = first.state_dir().join("master.key");
    second.set("server.master_key_file", key.display().to_string());
    // Replicas share the bootstrap token (a state directory without it would rotate it).
    std::fs::create_dir_all(second.state_dir()).expect("the second state directory");
    std::fs::copy(
        first.state_dir().join("admin.token"),
        second.state_dir().join("admin.token"),
    )
    .expect("the bootstrap token copied");
    let b = second.start();
    let mut on_a = McpClient::connect(a.url("/mcp"), &token);
    let mut on_b = McpClient::connect(b.url("/mcp"), &token);
    for client in [&mut on_a, &mut on_b] {
        crate::support::eventually("fix__echo listed", WAIT, || {
            listed(client).contains(&"fix__echo".to_owned())
        });
    }

    // Both upstreams change the tool: both replicas withhold it.
    for client in [&mut on_a, &mut on_b] {
        client.call("fix__mutate_tools", json!({}));
        crate::support::eventually("the changed fix__echo withheld", WAIT, || {
            !listed(client).contains(&"fix__echo".to_owned())
        });
    }

    let approve = http::request(
        "POST",
        &a.url("/admin/tools/fix/echo/approve"),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .expect("approve");
    assert_eq!(approve.status, 200, "{approve:?}");
    // The other replica hears of the approval and serves the tool without a restart.
    crate::support::eventually("the approval reaches the other replica", WAIT, || {
        listed(&mut on_b).contains(&"fix__echo".to_owned())
    });
    assert_eq!(
        on_b.call("fix__echo", json!({"message": "on b"})).text(),
        "on b"
    );
    assert_eq!(
        on_a.call("fix__echo", json!({"message": "on a"})).text(),
        "on a"
    );
}

#[test]
fn per_server_route_keeps_upstream_names() {
    let gateway = Gateway::start(json!({
        "fix": fixture(&format!("route-{}", std::process::id()), &[]),
        "other": fixture(&format!("route2-{}", std::process::id()), &[]),
    }));
    let mut client = McpClient::connect(gateway.warden.url("/mcp/fix"), &gateway.token);
    let tools = client.request("tools/list", json!({}));
    let names: Vec<&str> = tools.result()["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"echo") && !names.iter().any(|n| n.contains("__")),
        "{names:?}"
    );
    assert_eq!(
        client.call("echo", json!({"message": "direct"})).text(),
        "direct"
    );
    // A name the upstream never listed is still passed on here, and answered by it; the
    // metrics count the call under the server, never under the made-up name.
    let made_up = client.request(
        "tools/call",
        json!({"name": "made_up_tool_name", "arguments": {}}),
    );
    assert!(made_up.message.get("error").is_some() || made_up.result()["isError"] == true);
    // Nothing says what an unlisted tool does: it takes the server's write scope, so a
    // reader cannot reach a hidden tool the upstream would still run.
    let reader = token_with(&gateway, "reader", "tools:read");
    let mut reader = McpClient::connect(gateway.warden.url("/mcp/fix"), &reader);
    assert_eq!(
        reader.call("echo", json!({"message": "read"})).text(),
        "read",
        "a listed read-only tool"
    );
    let hidden = reader.request(
        "tools/call",
        json!({"name": "made_up_tool_name", "arguments": {}}),
    );
    assert_eq!(hidden.error()["code"], -32003, "{:?}", hidden.message);
    let metrics = http::get(&gateway.warden.url("/metrics")).body;
    assert!(!metrics.contains("made_up_tool_name"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("warden_mcp_tool_calls_total{")
                && l.contains(r#"server="fix""#)
                && l.contains(r#"tool="""#)),
        "{metrics}"
    );
    let unknown = McpClient::new(gateway.warden.url("/mcp/nope"), Some(gateway.token.clone()));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    assert_eq!(
        unknown.post_raw(body.to_string().as_bytes(), &[]).status,
        404
    );
}

#[test]
fn a_reloaded_separator_renames_the_tools_from_the_next_list() {
    let mut gateway =
        Gateway::start(json!({ "fix": fixture(&format!("sep-{}", std::process::id()), &[]) }));
    let mut client = gateway.client();
    let names = |client: &mut McpClient| -> Vec<String> {
        client.request("tools/list", json!({})).result()["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(names(&mut client).contains(&"fix__echo".to_owned()));
    gateway.profile.set("gateway.separator", ".");
    gateway.profile.write();
    let mark = gateway.warden.log_mark();
    gateway.warden.sighup();
    assert!(
        gateway
            .warden
            .wait_for_log_since(mark, "profile reloaded", WAIT),
        "{}",
        gateway.warden.log()
    );
    let renamed = names(&mut client);
    assert!(
        renamed.contains(&"fix.echo".to_owned()) && !renamed.iter().any(|n| n.contains("__")),
        "{renamed:?}"
    );
    assert_eq!(
        client
            .call("fix.echo", json!({"message": "renamed"}))
            .text(),
        "renamed"
    );
}

#[test]
fn sessions_expire_end_and_are_bounded_per_principal() {
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    profile.set(
        "servers",
        json!({ "fix": fixture(&format!("sessions-{}", std::process::id()), &[]) }),
    );
    profile.set(
        "sessions",
        json!({"idle_timeout": "1s", "max_per_principal": 2}),
    );
    let warden = profile.start();
    let token = admin_token(&warden, &profile.state_dir());
    let url = warden.url("/mcp");
    let first = McpClient::connect(url.clone(), &token);
    let _second = McpClient::connect(url.clone(), &token);
    let mut third = McpClient::new(url.clone(), Some(token.clone()));
    let refused = third.initialize(json!({}));
    assert_eq!(refused.status, 503, "{:?}", refused.message);
    assert!(
        refused.error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_per_principal")
    );

    // DELETE ends a session: it is unknown afterwards, and its slot is free again.
    let delete = http::request(
        "DELETE",
        &url,
        &[
            ("Authorization", &format!("Bearer {token}")),
            (
                "Mcp-Session-Id",
                first.session.as_deref().unwrap_or_default(),
            ),
        ],
        None,
    )
    .expect("DELETE");
    assert_eq!(delete.status, 204);
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(first.post_raw(ping, &[]).status, 404);
    let mut fourth = McpClient::new(url.clone(), Some(token.clone()));
    assert_eq!(fourth.initialize(json!({})).status, 200);

    // An idle session expires (idle_timeout 1s); waiting is on Warden's own sweep.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = fourth.post_raw(ping, &[]).status;
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session never expired"
        );
        // Each ping keeps it alive; back off past the idle timeout between tries.
        std::thread::park_timeout(Duration::from_millis(1500));
    }
}

#[test]
fn the_notification_stream_resumes_from_last_event_id() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("resume-{}", std::process::id()), &[]) }));
    let mut client = gateway.client();
    let session = client.session.clone().expect("a session");
    // A list change while no stream is open is kept for replay.
    let mut events = EventStream::open(&gateway.warden, &gateway.token);
    client.call("fix__mutate_tools", json!({}));
    events.wait_for(WAIT, |e| e["event"] == "tools_changed");
    let seen = session_stream_until(&gateway, &session, "notifications/tools/list_changed");
    assert!(seen.contains("id: 1"), "{seen}");
}

/// Reads `session`'s notification stream from its first event (`Last-Event-ID: 0`)
/// until `needle` shows; returns what was read.
fn session_stream_until(gateway: &Gateway, session: &str, needle: &str) -> String {
    let mut stream = open_stream(
        gateway,
        "GET",
        &[
            ("Mcp-Session-Id", session),
            ("Accept", "text/event-stream"),
            ("Last-Event-ID", "0"),
        ],
        "",
    );
    read_until(&mut stream, needle)
}

/// A request to `/mcp` whose answer is read as it streams (the `http` helper waits for
/// the whole body; an event stream has no end).
fn open_stream(
    gateway: &Gateway,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> BufReader<std::net::TcpStream> {
    open_stream_as(gateway, &gateway.token, method, headers, body)
}

/// [`open_stream`] with `token`.
fn open_stream_as(
    gateway: &Gateway,
    token: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> BufReader<std::net::TcpStream> {
    let authority = gateway
        .warden
        .base_url()
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&authority).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut head = format!(
        "{method} /mcp HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n",
        token,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").expect("send");
    BufReader::new(stream)
}

/// Reads lines of `stream` until `needle` shows; returns what was read.
fn read_until(stream: &mut BufReader<std::net::TcpStream>, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let mut line = String::new();
        if stream.read_line(&mut line).expect("read the stream") == 0 {
            panic!("the stream ended; saw {seen}");
        }
        seen.push_str(&line);
    }
    seen
}

/// Polls `check` until it holds; panics naming `what` after [`WAIT`].
fn eventually(what: &str, check: impl FnMut() -> bool) {
    crate::support::eventually(what, WAIT, check);
}

#[test]
fn resource_subscriptions_are_held_once_upstream_fanned_out_and_renewed_after_a_restart() {
    let gateway = Gateway::start_with(
        json!({ "fix": fixture(&format!("subs-{}", std::process::id()), &[]) }),
        &[("gateway.max_resource_subscriptions", json!(2))],
    );
    let mut a = gateway.client();
    let mut b = gateway.client();
    let (a_session, b_session) = (
        a.session.clone().expect("a session"),
        b.session.clone().expect("a session"),
    );
    let hello = json!({"uri": "fixture://hello"});
    let item = json!({"uri": "fixture://item/1"});
    let subscribe = |client: &mut McpClient, resource: &Value| {
        let answer = client.request("resources/subscribe", resource.clone());
        assert_eq!(answer.result(), &json!({}), "{:?}", answer.message);
    };
    subscribe(&mut a, &hello);
    subscribe(&mut b, &hello);
    subscribe(&mut b, &item);
    let beyond = b.request("resources/subscribe", json!({"uri": "fixture://item/2"}));
    assert_refused(&beyond, "gateway.max_resource_subscriptions");
    // Subscribing is reading: a caller who may not read the server is refused, and the
    // refusal is audited.
    let outsider = token_with(&gateway, "olga", "other:read");
    let mut outsider = McpClient::connect(gateway.warden.url("/mcp"), &outsider);
    let denied = outsider.request("resources/subscribe", json!({"uri": "fixture://item/3"}));
    assert_eq!(denied.status, 403, "{:?}", denied.message);
    eventually("the refused subscription has no audit event", || {
        !gateway
            ._db
            .query(
                "SELECT 1 FROM audit_events WHERE kind = 'permission.decision' \
                 AND decision = 'deny' AND subject = 'fix/fixture://item/3'",
            )
            .is_empty()
    });
    let unknown = a.request("resources/subscribe", json!({"uri": "nowhere://x"}));
    assert_eq!(unknown.error()["code"], -32002, "{:?}", unknown.message);
    // Warden holds one subscription per resource at the upstream, whoever asked.
    let upstream = |client: &mut McpClient| client.call("fix__subscriptions", json!({})).text();
    assert_eq!(
        upstream(&mut a),
        r#"["fixture://hello","fixture://item/1"]"#
    );

    // An update reaches every subscriber of that resource, and nobody else.
    assert_eq!(a.call("fix__touch", item.clone()).text(), "notified");
    assert_eq!(a.call("fix__touch", hello.clone()).text(), "notified");
    let seen_by_b = session_stream_until(&gateway, &b_session, "fixture://hello");
    assert!(
        seen_by_b.contains("notifications/resources/updated"),
        "{seen_by_b}"
    );
    assert!(seen_by_b.contains("fixture://item/1"), "{seen_by_b}");
    let seen_by_a = session_stream_until(&gateway, &a_session, "fixture://hello");
    assert!(!seen_by_a.contains("fixture://item/1"), "{seen_by_a}");
    // An update may name a sub-resource (the protocol allows it): it reaches the
    // subscribers of the resource it lies under, at a path boundary only.
    let touch_naming = |client: &mut McpClient, updated: &str| {
        let args = json!({"uri": "fixture://hello", "updated": updated});
        client.call("fix__touch", args).text()
    };
    assert_eq!(touch_naming(&mut a, "fixture://hellox"), "notified");
    assert_eq!(touch_naming(&mut a, "fixture://hello/greeting"), "notified");
    let seen_by_b = session_stream_until(&gateway, &b_session, "fixture://hello/greeting");
    assert!(!seen_by_b.contains("fixture://hellox"), "{seen_by_b}");

    // A leaves `hello`, which B still wants: Warden stays subscribed.
    assert_eq!(
        a.request("resources/unsubscribe", hello).result(),
        &json!({})
    );
    assert_eq!(
        upstream(&mut a),
        r#"["fixture://hello","fixture://item/1"]"#
    );
    // B's session ends: its subscriptions end with it, and Warden's with the last one.
    let ended = http::request(
        "DELETE",
        &gateway.warden.url("/mcp"),
        &[
            ("Authorization", &format!("Bearer {}", gateway.token)),
            ("Mcp-Session-Id", &b_session),
        ],
        None,
    )
    .expect("DELETE /mcp");
    assert_eq!(ended.status, 204);
    eventually("Warden never unsubscribed upstream", || {
        upstream(&mut a) == "[]"
    });

    // The server restarts: a new process knows no subscriptions; Warden renews A's.
    subscribe(&mut a, &item);
    let mut events = EventStream::open(&gateway.warden, &gateway.token);
    let _ = a.call("fix__crash", json!({}));
    events.wait_for(WAIT, event("ready", "fix"));
    eventually("the subscription was not renewed after the restart", || {
        upstream(&mut a) == r#"["fixture://item/1"]"#
    });
}

#[test]
fn a_stateless_listen_stream_subscribes_to_resources_for_as_long_as_it_is_open() {
    let gateway = Gateway::start(
        json!({ "fix": fixture(&format!("listen-subs-{}", std::process::id()), &[]) }),
    );
    let body = json!({"jsonrpc": "2.0", "id": "watch", "method": "subscriptions/listen",
    "params": {
        "notifications": {"resourceSubscriptions": ["fixture://hello", "nowhere://x"]},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    }})
    .to_string();
    let listen_headers = [
        ("Content-Type", "application/json"),
        ("Accept", JSON_OR_SSE),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "subscriptions/listen"),
    ];
    let mut stream = open_stream(&gateway, "POST", &listen_headers, &body);
    let mut read = |needle: &str| read_until(&mut stream, needle);
    // The acknowledgement names what was honoured: the unknown resource is not.
    let ack = read("subscriptions/acknowledged");
    assert!(
        ack.contains(r#""resourceSubscriptions":["fixture://hello"]"#),
        "{ack}"
    );
    let upstream = || {
        stateless(
            &gateway,
            "tools/call",
            json!({"name": "fix__subscriptions", "arguments": {}}),
            json!({}),
        )
        .text()
    };
    assert_eq!(upstream(), r#"["fixture://hello"]"#);
    let touch = || {
        stateless(
            &gateway,
            "tools/call",
            json!({"name": "fix__touch", "arguments": {"uri": "fixture://hello"}}),
            json!({}),
        )
    };
    assert_eq!(touch().text(), "notified");
    let update = read("notifications/resources/updated");
    assert!(update.contains("fixture://hello"), "{update}");
    assert!(
        update.contains(r#""io.modelcontextprotocol/subscriptionId":"watch""#),
        "every notification on a listen stream names it: {update}"
    );
    // The handshake era's method is not part of this protocol.
    let old_way = stateless(
        &gateway,
        "resources/subscribe",
        json!({"uri": "fixture://hello"}),
        json!({}),
    );
    assert_eq!(old_way.status, 404);
    assert_eq!(old_way.error()["code"], -32601);
    // The client goes away: the subscription ends with its stream (noticed when Warden
    // next writes to it).
    drop(stream);
    eventually("the listen stream's subscription outlived it", || {
        touch();
        upstream() == "[]"
    });

    // A stream whose caller is disabled ends (and its subscriptions with it).
    let watcher = token_with(&gateway, "watcher", "tools:read");
    let mut stream = open_stream_as(&gateway, &watcher, "POST", &listen_headers, &body);
    read_until(&mut stream, "subscriptions/acknowledged");
    assert_eq!(upstream(), r#"["fixture://hello"]"#);
    let (ok, _, err) =
        crate::identity::cli(&gateway.profile, &["user", "disable", "watcher"], None);
    assert!(ok, "{err}");
    // Ends: the read sees the end of the body (or the connection closing).
    let deadline = std::time::Instant::now() + WAIT;
    let end = loop {
        match next_line(&mut stream, deadline) {
            Line::Text(_) => {}
            other => break other,
        }
    };
    assert!(
        matches!(end, Line::Ended),
        "the stream of a disabled caller stayed open"
    );
    eventually(
        "the disabled caller's subscription outlived its stream",
        || upstream() == "[]",
    );
}

#[test]
fn a_third_party_servers_resource_updates_reach_the_subscriber() {
    let gateway = Gateway::start(json!({ "everything": external::everything_stdio() }));
    let mut client = gateway.client();
    let session = client.session.clone().expect("a session");
    let uri = "demo://resource/static/document/features.md";
    let answer = client.request("resources/subscribe", json!({"uri": uri}));
    assert_eq!(answer.result(), &json!({}), "{:?}", answer.message);
    // Its updates start with one at once, sent while this call is in flight: it still
    // goes to the subscriber, not to the call.
    client.call("everything__toggle-subscriber-updates", json!({}));
    let seen = session_stream_until(&gateway, &session, "notifications/resources/updated");
    assert!(seen.contains(uri), "{seen}");
}

#[test]
fn a_cancelled_request_cancels_the_upstream_call_and_is_audited_as_cancelled() {
    let gateway =
        Gateway::start(json!({ "fix": fixture(&format!("cancel-{}", std::process::id()), &[]) }));
    let url = gateway.warden.url("/mcp");
    let mut client = gateway.client();
    let session = client.session.clone().expect("a session");
    let token = gateway.token.clone();
    let slow_url = url.clone();
    let slow = std::thread::spawn(move || {
        let mut caller = McpClient::new(slow_url, Some(token));
        caller.session = Some(session);
        let body = json!({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
            "params": {"name": "fix__slow", "arguments": {"ms": 30000}}});
        caller.post_json(&body, &[])
    });
    let deadline = std::time::Instant::now() + WAIT;
    while gateway.status("fix")["in_flight"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow call never showed in flight"
        );
    }
    let cancel = client.notify(
        "notifications/cancelled",
        json!({"requestId": "slow-1", "reason": "user pressed stop"}),
    );
    assert_eq!(cancel.status, 202);
    let answer = slow.join().expect("the slow call returns");
    assert_eq!(answer.error()["code"], -32007, "{:?}", answer.message);
    // The upstream slot is free again at once, not after 30 s.
    let deadline = std::time::Instant::now() + WAIT;
    while gateway.status("fix")["in_flight"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled call still holds its slot"
        );
    }
    assert_eq!(
        client.call("fix__echo", json!({"message": "next"})).text(),
        "next"
    );
    // Its row says what happened.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rows = gateway
            ._db
            .query("SELECT status FROM mcp_tool_executions WHERE tool_name = 'slow'");
        if let Some(row) = rows.first() {
            assert_eq!(row.get::<_, String>(0), "cancelled");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled call has no audit row"
        );
        std::thread::park_timeout(Duration::from_millis(25));
    }
}
