//! The supervision tree through `warden serve`: restarts after a kill, the crash-loop
//! limit, the health monitor catching a hung child, reloads that touch exactly the right
//! servers, no child outliving Warden, and secrets reaching a child's environment but
//! never the log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::mcp::{EventStream, McpClient, admin_token, event};
use crate::support::{TestDb, external, http, procs, warden};

const WAIT: Duration = Duration::from_secs(60);

/// A stdio fixture server whose command line carries `marker` (to find it in /proc).
pub fn fixture(marker: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--name".to_owned(), marker.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    json!({
        "command": external::fixture(),
        "args": args,
        "restart": {"backoff_initial": "50ms", "backoff_max": "500ms", "max_restarts": 5, "restart_window": "60s"},
        "health": {"interval": "30s", "timeout": "5s", "failures_before_restart": 3},
        "stop_grace": "2s",
    })
}

fn marker(name: &str) -> String {
    format!("warden-it-{name}-{}", std::process::id())
}

struct Running {
    warden: warden::WardenProcess,
    token: String,
    profile: warden::Profile,
    _db: TestDb,
}

impl Running {
    fn start(servers: Value) -> Running {
        Running::start_with(servers, |_| {})
    }

    fn start_with(servers: Value, edit: impl FnOnce(&mut warden::Profile)) -> Running {
        let db = TestDb::new();
        let mut profile = warden::Profile::with_database(db.url());
        profile.set("servers", servers);
        edit(&mut profile);
        let warden = profile.start();
        let token = admin_token(&warden, &profile.state_dir());
        Running {
            warden,
            token,
            profile,
            _db: db,
        }
    }

    fn servers(&self) -> Value {
        let response = http::request(
            "GET",
            &self.warden.url("/admin/servers"),
            &[("Authorization", &format!("Bearer {}", self.token))],
            None,
        )
        .expect("GET /admin/servers");
        assert_eq!(response.status, 200, "{response:?}");
        response.json()
    }

    fn server(&self, name: &str) -> Value {
        self.servers()["servers"]
            .as_array()
            .and_then(|list| list.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no server {name} in {}", self.servers()))
    }

    fn events(&self) -> EventStream {
        EventStream::open(&self.warden, &self.token)
    }

    fn client(&self) -> McpClient {
        McpClient::connect(self.warden.url("/mcp"), &self.token)
    }

    /// Waits until `name` is ready (now or after the next `ready` event).
    fn wait_ready(&self, name: &'static str, events: &mut EventStream) {
        if self.server(name)["state"] != "ready" {
            events.wait_for(WAIT, event("ready", name));
        }
    }
}

#[test]
fn killed_child_is_restarted_and_serves_again() {
    let mark = marker("kill");
    let running = Running::start(json!({ "fix": fixture(&mark, &[]) }));
    let mut events = running.events();
    running.wait_ready("fix", &mut events);
    let mut client = running.client();
    let pid: i32 = client
        .call("fix__pid", json!({}))
        .text()
        .parse()
        .expect("a pid");
    // SAFETY: signalling the fixture process this test started through Warden.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let restarting = events.wait_for(WAIT, event("restarting", "fix"));
    assert!(
        restarting["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("signal 9"),
        "{restarting}"
    );
    events.wait_for(WAIT, event("ready", "fix"));
    let answer = client.call("fix__echo", json!({"message": "after restart"}));
    assert_eq!(answer.text(), "after restart");
    let new_pid: i32 = client
        .call("fix__pid", json!({}))
        .text()
        .parse()
        .expect("a pid");
    assert_ne!(new_pid, pid);
    let status = running.server("fix");
    assert_eq!(status["restarts"], 1, "{status}");
    assert_eq!(status["state"], "ready");
    let metrics = http::get(&running.warden.url("/metrics")).body;
    assert!(
        metrics.contains("warden_server_up{server=\"fix\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_server_restarts_total{server=\"fix\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_server_state{server=\"fix\",state=\"ready\"} 1"),
        "{metrics}"
    );
}

#[test]
fn crash_loop_ends_in_failed_with_the_reason_visible() {
    let mark = marker("loop");
    let mut server = fixture(&mark, &["--exit-after-ms", "20"]);
    server["restart"] = json!({"backoff_initial": "10ms", "backoff_max": "50ms", "max_restarts": 3, "restart_window": "60s"});
    let running =
        Running::start(json!({ "looping": server, "steady": fixture(&marker("steady"), &[]) }));
    let mut events = running.events();
    if running.server("looping")["state"] != "failed" {
        events.wait_for(WAIT, event("failed", "looping"));
    }
    let status = running.server("looping");
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("restart.max_restarts"), "{status}");
    assert!(
        status["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("status 3"),
        "{status}"
    );
    // Its sibling is untouched.
    running.wait_ready("steady", &mut events);
    assert_eq!(running.server("steady")["restarts"], 0);
    // An operator restart clears the failure and tries again.
    let response = http::request(
        "POST",
        &running.warden.url("/admin/servers/looping/restart"),
        &[("Authorization", &format!("Bearer {}", running.token))],
        None,
    )
    .expect("POST restart");
    assert_eq!(response.status, 200, "{response:?}");
    events.wait_for(WAIT, event("starting", "looping"));
}

#[test]
fn hung_child_is_restarted_by_the_health_monitor() {
    let mark = marker("hang");
    let mut server = fixture(&mark, &[]);
    server["health"] =
        json!({"interval": "200ms", "timeout": "200ms", "failures_before_restart": 2});
    server["call_timeout"] = "300ms".into();
    let running = Running::start(json!({ "fix": server }));
    let mut events = running.events();
    running.wait_ready("fix", &mut events);
    let mut client = running.client();
    let hung = client.call("fix__hang", json!({}));
    assert_eq!(hung.error()["code"], -32002, "{:?}", hung.message);
    let unhealthy = events.wait_for(WAIT, event("unhealthy", "fix"));
    assert!(
        unhealthy["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ping"),
        "{unhealthy}"
    );
    let restarting = events.wait_for(WAIT, event("restarting", "fix"));
    assert!(
        restarting["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("health checks failed"),
        "{restarting}"
    );
    events.wait_for(WAIT, event("ready", "fix"));
    assert_eq!(
        client.call("fix__echo", json!({"message": "alive"})).text(),
        "alive"
    );
}

#[test]
fn reload_adds_removes_and_restarts_exactly_the_changed_servers() {
    let running = Running::start(json!({
        "a": fixture(&marker("reload-a"), &[]),
        "b": fixture(&marker("reload-b"), &[]),
        "c": fixture(&marker("reload-c"), &[]),
    }));
    let mut running = running;
    let mut events = running.events();
    for name in ["a", "b", "c"] {
        running.wait_ready(name, &mut events);
    }
    let c_pid = running.server("c")["pid"].clone();
    let b_pid = running.server("b")["pid"].clone();
    running.profile.set(
        "servers",
        json!({
            "b": fixture(&marker("reload-b"), &["--tools-extra", "2"]),
            "c": fixture(&marker("reload-c"), &[]),
            "d": fixture(&marker("reload-d"), &[]),
        }),
    );
    running.profile.write();
    running.warden.sighup();
    let done = events.wait_for(WAIT, |e| e["event"] == "reconciliation_completed");
    assert_eq!(done["added"], json!(["d"]), "{done}");
    assert_eq!(done["removed"], json!(["a"]), "{done}");
    assert_eq!(done["changed"], json!(["b"]), "{done}");
    assert_eq!(done["unchanged"], json!(["c"]), "{done}");
    running.wait_ready("d", &mut events);
    running.wait_ready("b", &mut events);
    let names: Vec<Value> = running.servers()["servers"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("b"), json!("c"), json!("d")]);
    assert_eq!(running.server("c")["pid"], c_pid, "c was left alone");
    assert_ne!(running.server("b")["pid"], b_pid, "b was restarted");
    assert_eq!(
        running.server("b")["tools"].as_u64().unwrap_or(0),
        running.server("c")["tools"].as_u64().unwrap_or(0) + 2
    );
    procs::wait_all_gone(&procs::with_cmdline_containing(&marker("reload-a")), WAIT)
        .expect("a's process is gone");
}

#[test]
fn no_child_outlives_a_sigterm_or_a_kill9() {
    for kill in [false, true] {
        let mark = marker(if kill { "kill9" } else { "sigterm" });
        let mut running = Running::start(json!({
            "one": fixture(&mark, &[]),
            "two": fixture(&mark, &["--stderr-noise"]),
        }));
        let mut events = running.events();
        running.wait_ready("one", &mut events);
        running.wait_ready("two", &mut events);
        let children = procs::with_cmdline_containing(&mark);
        assert!(children.len() >= 2, "{children:?}");
        // The servers start with no signal blocked (the guard blocks its own; a child that
        // inherited that mask would ignore SIGTERM and every stop would end in SIGKILL).
        let mut servers_checked = 0;
        for child in &children {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap_or_default();
            if status.lines().next() == Some("Name:\twarden-fixture") {
                let blocked = status.lines().find(|l| l.starts_with("SigBlk:"));
                assert_eq!(blocked, Some("SigBlk:\t0000000000000000"), "{status}");
                servers_checked += 1;
            }
        }
        assert_eq!(servers_checked, 2, "both servers' masks read: {children:?}");
        if kill {
            running.warden.kill9();
        } else {
            let status = running.warden.sigterm();
            assert!(status.success(), "{}", running.warden.log());
        }
        procs::wait_all_gone(&children, WAIT)
            .unwrap_or_else(|left| panic!("children left behind: {left:?}"));
    }
}

#[test]
fn secrets_reach_the_child_environment_and_never_the_log() {
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    let value = format!("s3cr3t-{}", std::process::id());
    let mut set = profile.command(&["secret", "set", "api_token"]);
    set.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = set.spawn().expect("start warden secret set");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(value.as_bytes()).expect("write the secret");
    }
    let output = child.wait_with_output().expect("warden secret set");
    assert!(output.status.success(), "{output:?}");
    let mut server = fixture(&marker("secret"), &[]);
    server["secrets"] = json!({"API_TOKEN": "api_token"});
    server["env"] = json!({"PLAIN": "visible"});
    profile.set("servers", json!({ "fix": server }));
    profile.set("logging.level", "debug");
    let warden = profile.start();
    let token = admin_token(&warden, &profile.state_dir());
    let mut events = EventStream::open(&warden, &token);
    if !warden.log().contains("server ready") {
        events.wait_for(WAIT, event("ready", "fix"));
    }
    let mut client = McpClient::connect(warden.url("/mcp"), &token);
    let sha256 = |text: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text));
    let digest = json!({"name": "API_TOKEN", "digest": true});
    assert_eq!(
        client.call("fix__env", digest.clone()).text(),
        sha256(&value)
    );
    // Handed back by the tool, it reaches the client as its variable's name.
    let answer = client.call("fix__env", json!({"name": "API_TOKEN", "reveal": true}));
    assert_eq!(
        answer.result()["content"][1]["text"],
        "[REDACTED:API_TOKEN]",
        "{:?}",
        answer.message
    );
    // Warden's own environment never leaks into the child.
    let home = client.call("fix__env", json!({"name": "DATABASE_URL"}));
    assert_eq!(home.text(), "unset");

    // Changing the secret restarts the server with the new value.
    let new_value = format!("{value}-rotated");
    let mut set = profile.command(&["secret", "set", "api_token"]);
    set.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = set.spawn().expect("start warden secret set");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(new_value.as_bytes())
            .expect("write");
    }
    assert!(
        child
            .wait_with_output()
            .expect("secret set")
            .status
            .success()
    );
    events.wait_for(WAIT, event("ready", "fix"));
    assert_eq!(
        client.call("fix__env", digest.clone()).text(),
        sha256(&new_value)
    );

    let list = profile
        .command(&["secret", "list"])
        .output()
        .expect("secret list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("api_token") && !listed.contains(&value),
        "{listed}"
    );
    let log = warden.log();
    assert!(!log.contains(&value), "the secret leaked into the log");
    // One change, one restart (also when the listener's first connection and the
    // change's notice come close together).
    assert_eq!(
        log.matches("a secret it uses changed; restarting it")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn http_children_and_remote_servers_are_supervised_the_same_way() {
    // A fixture the test runs itself stands in for a remote server.
    let remote_port = warden::free_port();
    let mut remote = std::process::Command::new(external::fixture())
        .args([
            "--http",
            &remote_port.to_string(),
            "--name",
            &marker("remote"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the remote fixture");
    {
        use std::io::BufRead;
        let stderr = remote.stderr.take().expect("piped stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let listening = lines.any(|l| l.map(|l| l.contains("listening")).unwrap_or(false));
        assert!(listening, "the remote fixture did not start");
        std::thread::spawn(move || for _ in lines {});
    }
    let mark = marker("httpchild");
    let running = Running::start(json!({
        "child": {
            "command": external::fixture(),
            "args": ["--http", "{port}", "--name", mark],
            "port": "auto",
        },
        "remote": { "url": format!("http://127.0.0.1:{remote_port}/mcp") },
    }));
    let mut events = running.events();
    running.wait_ready("child", &mut events);
    running.wait_ready("remote", &mut events);
    assert_eq!(running.server("child")["kind"], "http");
    assert_eq!(running.server("remote")["kind"], "remote");
    let mut client = running.client();
    assert_eq!(
        client.call("child__echo", json!({"message": "c"})).text(),
        "c"
    );
    assert_eq!(
        client.call("remote__echo", json!({"message": "r"})).text(),
        "r"
    );
    let progress = client.request(
        "tools/call",
        json!({"name": "remote__progress", "arguments": {"steps": 2}, "_meta": {"progressToken": 7}}),
    );
    assert_eq!(progress.notifications.len(), 2, "{progress:?}");
    assert_eq!(progress.notifications[0]["params"]["progressToken"], 7);
    let _ = remote.kill();
    let _ = remote.wait();
}

#[test]
fn a_third_party_server_runs_under_the_tree() {
    let running = Running::start(json!({ "everything": external::everything_stdio() }));
    let mut events = running.events();
    running.wait_ready("everything", &mut events);
    let mut client = running.client();
    let tools = client.request("tools/list", json!({}));
    let names: Vec<&str> = tools.result()["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"everything__echo"), "{names:?}");
    let echo = client.call("everything__echo", json!({"message": "hello"}));
    assert!(echo.text().contains("hello"), "{:?}", echo.message);
    let sum = client.call("everything__get-sum", json!({"a": 2, "b": 3}));
    assert!(sum.text().contains('5'), "{:?}", sum.message);
}

#[test]
fn the_builtin_demo_server_runs_from_the_binary_itself() {
    let running = Running::start(json!({ "demo": {"builtin": "demo"} }));
    let mut events = running.events();
    running.wait_ready("demo", &mut events);
    let mut client = running.client();
    assert_eq!(
        client.call("demo__echo", json!({"message": "hi"})).text(),
        "hi"
    );
    assert_eq!(
        client.call("demo__add", json!({"a": 2, "b": 40})).text(),
        "42"
    );
    assert!(client.call("demo__now", json!({})).text().ends_with('Z'));
}

#[test]
fn per_user_isolation_gives_each_user_a_process_with_their_own_secret() {
    use crate::identity::cli;
    let mut server = fixture(&marker("peruser"), &[]);
    server["isolation"] = "per_user".into();
    server["user_secrets"] = json!({"API_TOKEN": "mail_token"});
    server["idle_timeout"] = "2s".into();
    server["max_instances"] = 2.into();
    let running = Running::start(json!({ "mail": server }));
    let profile = &running.profile;
    for user in ["alice", "bob", "carol"] {
        let (ok, _, err) = cli(
            profile,
            &["user", "add", user, "--role", "user"],
            Some("a long test password"),
        );
        assert!(ok, "{err}");
    }
    for (user, value) in [("alice", "alice-secret"), ("bob", "bob-secret")] {
        let (ok, _, err) = cli(
            profile,
            &["secret", "set", "mail_token", "--user", user],
            Some(value),
        );
        assert!(ok, "{err}");
    }
    let token = |user: &str| {
        let (ok, out, err) = cli(
            profile,
            &[
                "token",
                "issue",
                "--user",
                user,
                "--scopes",
                "tools:read tools:write",
            ],
            None,
        );
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    let mut alice = McpClient::connect(running.warden.url("/mcp"), &token("alice"));
    let mut bob = McpClient::connect(running.warden.url("/mcp"), &token("bob"));
    // Each user's process has that user's secret (compared by digest: the value itself
    // never comes back, below).
    let digest = json!({"name": "API_TOKEN", "digest": true});
    let sha256 = |text: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text));
    assert_eq!(
        alice.call("mail__env", digest.clone()).text(),
        sha256("alice-secret")
    );
    // A tool handing its secret back: the client gets the variable's name, not the value
    // — injected secrets never reach a prompt.
    let reveal = json!({"name": "API_TOKEN", "reveal": true});
    let alice_env = alice.call("mail__env", reveal.clone());
    assert_eq!(
        alice_env.result()["content"][1]["text"],
        "[REDACTED:API_TOKEN]",
        "{:?}",
        alice_env.message
    );
    // A caller who may not use the server gets no process of theirs started by listing
    // or calling: it would run under their identity, with their secrets, for nothing.
    let (ok, outsider, err) = cli(
        profile,
        &["token", "issue", "--user", "carol", "--scopes", "ai:chat"],
        None,
    );
    assert!(ok, "{err}");
    let mut outsider = McpClient::connect(running.warden.url("/mcp"), outsider.trim());
    let listed = outsider.request("tools/list", json!({}));
    assert_eq!(listed.result()["tools"], json!([]), "{:?}", listed.message);
    let refused = outsider.call("mail__pid", json!({}));
    assert!(
        refused.message.get("error").is_some(),
        "{:?}",
        refused.message
    );
    let instances = running.server("mail")["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), 1, "only alice's: {instances:?}");
    // A child printing its secret: Warden's log gets the variable's name, not the value.
    alice.call("mail__env", json!({"name": "API_TOKEN", "to_stderr": true}));
    assert!(
        running
            .warden
            .wait_for_log("API_TOKEN=[REDACTED:API_TOKEN]", WAIT),
        "{}",
        running.warden.log()
    );
    assert!(!running.warden.log().contains("alice-secret"));
    assert_eq!(
        bob.call("mail__env", digest.clone()).text(),
        sha256("bob-secret")
    );
    let alice_pid = alice.call("mail__pid", json!({})).text();
    let bob_pid = bob.call("mail__pid", json!({})).text();
    assert_ne!(alice_pid, bob_pid, "two users, two processes");
    let instances = running.server("mail")["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), 2, "{instances:?}");

    // max_instances: a third user is refused with a message naming the limit.
    let mut carol = McpClient::connect(running.warden.url("/mcp"), &token("carol"));
    let refused = carol.call("mail__echo", json!({"message": "x"}));
    let message = refused.message.to_string();
    assert!(
        message.contains("max_instances") || message.contains("unknown tool"),
        "{message}"
    );

    // An idle user's process is stopped after idle_timeout.
    let mut events = running.events();
    let stopped = events.wait_for(WAIT, |e| {
        e["event"] == "stopped" && e["server"] == "mail" && e["user"] == "alice"
    });
    assert!(stopped["reason"].as_str().is_some(), "{stopped}");
    if let Some(process) = procs::get(alice_pid.parse().expect("a pid")) {
        procs::wait_all_gone(&[process], WAIT)
            .unwrap_or_else(|left| panic!("alice's process outlived its idle timeout: {left:?}"));
    }
}
