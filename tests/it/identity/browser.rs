//! The authorization-code flow in a real browser: headless Chromium (Debian's `chromium`)
//! driven over WebDriver by `chromedriver`, with plain HTTP JSON calls. Dynamic
//! registration → authorize → the login form → the consent page → the redirect to the
//! client's loopback callback (a listener in this test) → code → token → `/mcp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Env, PASSWORD, authorize_query, exchange, pkce, query};
use crate::support::warden::free_port;

pub(super) const WAIT: Duration = Duration::from_secs(60);
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free port in a process group of its own; on drop the session is
/// closed and the whole group (chromedriver and the browser it started) is killed.
pub(super) struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Closes the browser; the answer does not matter.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &format!("/session/{session}"), Value::Null)
            }));
        }
        // SAFETY: kill(2) on the process group we created for chromedriver.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(super) fn start() -> Driver {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: `apt-get install chromium chromium-driver` (.ci/run does)"
            );
        }
        let port = free_port();
        let mut child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // Readiness is the line chromedriver prints once it listens.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("chromedriver did not start");
        Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            _profile: tempfile::tempdir().expect("a profile directory"),
        }
    }

    /// One WebDriver command. chromedriver keeps connections open whatever the request
    /// says, so the answer is read by its `Content-Length`, not to the end.
    pub(super) fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let address = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect to chromedriver");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let text = if method == "POST" {
            body.to_string()
        } else {
            String::new()
        };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .expect("send a WebDriver command");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("WebDriver answer");
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(
            status_line.contains(" 200 "),
            "{method} {path}: {status_line} {value}"
        );
        value["value"].clone()
    }

    pub(super) fn open_session(&mut self) {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ];
        let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            self._profile.path().display()
        ));
        let value = self.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
            }}}),
        );
        let session = value["sessionId"].as_str().expect("sessionId").to_owned();
        self.session = Some(session);
        // Element lookups wait (in the browser) for the next page to render.
        self.call(
            "POST",
            &self.path("/timeouts"),
            json!({"implicit": 20_000, "pageLoad": 60_000}),
        );
    }

    pub(super) fn path(&self, rest: &str) -> String {
        format!(
            "/session/{}{rest}",
            self.session.as_deref().expect("a session")
        )
    }

    pub(super) fn go(&self, url: &str) {
        self.call("POST", &self.path("/url"), json!({"url": url}));
    }

    pub(super) fn find(&self, css: &str) -> String {
        let value = self.call(
            "POST",
            &self.path("/element"),
            json!({"using": "css selector", "value": css}),
        );
        value[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {value}"))
            .to_owned()
    }

    pub(super) fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/value")),
            json!({"text": text}),
        );
    }

    pub(super) fn click(&self, css: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &self.path(&format!("/element/{element}/click")),
            json!({}),
        );
    }

    pub(super) fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.call(
            "GET",
            &self.path(&format!("/element/{element}/text")),
            json!({}),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }
}

/// The client's redirect endpoint: answers every request, handing over each callback's
/// target (the thread ends with the test binary).
pub(super) fn callback_listener() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the callback");
    let url = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Chromium may open speculative connections; serve until the callback arrives.
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(target) = request.split_whitespace().nth(1).map(str::to_owned) else {
                continue;
            };
            let body =
                "<html><body><p id=done>Signed in; you can close this window.</p></body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if target.starts_with("/callback") && tx.send(target).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn browser_walks_registration_login_consent_and_calls_mcp() {
    let env = Env::start(|_| {});
    env.add_user("erin", "user");
    let (redirect_uri, callbacks) = callback_listener();
    let client_id = env.register(&redirect_uri);
    let (verifier, challenge) = pkce();
    let authorize = env.url(&format!(
        "/oauth/authorize?{}",
        authorize_query(
            &client_id,
            &redirect_uri,
            "tools:read",
            &challenge,
            "browser-state"
        )
    ));

    let mut driver = Driver::start();
    driver.open_session();
    driver.go(&authorize);
    driver.type_into("#username", "erin");
    driver.type_into("#password", PASSWORD);
    driver.click("#login");
    assert_eq!(driver.text("#user"), "erin");
    assert_eq!(driver.text("#scopes"), "tools:read");
    driver.click("#allow");
    let target = callbacks
        .recv_timeout(WAIT)
        .expect("the browser reached the callback");
    let params = query(&target);
    assert_eq!(params["state"], "browser-state");
    assert_eq!(params["iss"], env.url(""));

    let tokens = exchange(&env, &client_id, &params["code"], &redirect_uri, &verifier);
    assert_eq!(tokens.status, 200, "{tokens:?}");
    let access = tokens.json()["access_token"].as_str().unwrap().to_owned();
    let echo = env.call_tool(&access, "fx__echo", json!({"message": "from chromium"}));
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.json()["result"]["content"][0]["text"], "from chromium");

    // The browser keeps its login session: a second authorization goes straight to
    // consent, and "Deny" sends the user back with access_denied.
    let (_, challenge) = pkce();
    driver.go(&env.url(&format!(
        "/oauth/authorize?{}",
        authorize_query(
            &client_id,
            &redirect_uri,
            "tools:read",
            &challenge,
            "second"
        )
    )));
    driver.click("#deny");
    let target = callbacks.recv_timeout(WAIT).expect("the browser came back");
    let params = query(&target);
    assert_eq!(params["error"], "access_denied", "{target}");
    assert_eq!(params["state"], "second");
}
