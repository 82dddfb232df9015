//! The direct baseline: one stdio MCP server (the fixture) driven without any gateway.
//!
//! **Owns:** the child's stdin (one writer task, which batches queued lines into one
//! write) and stdout (one reader task, which routes each answer to its caller by id).
//! Any number of callers share it with requests in flight at once, each with a unique
//! id and payload, exactly what a gateway multiplexing sessions onto one upstream does;
//! the figure is what the upstream costs by itself.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot};

use crate::mcp::{CallError, check_echo, extract_result};
use crate::procs::{Spawned, spawn};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// A running stdio server shared by every caller.
pub struct StdioServer {
    lines: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Answers whose id no caller was waiting for.
    pub unmatched: Arc<AtomicU64>,
    pub process: Spawned,
}

impl StdioServer {
    /// Starts `program args` and runs the MCP handshake.
    pub async fn start(program: &str, args: &[String]) -> Result<Arc<StdioServer>, crate::Error> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = spawn(command, "direct stdio server")?;
        let (Some(stdin), Some(stdout)) = (process.child.stdin.take(), process.child.stdout.take())
        else {
            return Err(crate::Error::Start("stdio pipes were not created".into()));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let unmatched = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(stdin, rx));
        tokio::spawn(read_loop(
            stdout,
            Arc::clone(&pending),
            Arc::clone(&unmatched),
        ));
        let server = Arc::new(StdioServer {
            lines: tx,
            pending,
            next_id: AtomicU64::new(1),
            unmatched,
            process,
        });
        let init = format!(
            r#""initialize","params":{{"protocolVersion":"{}","capabilities":{{}},"clientInfo":{{"name":"warden-loadtest","version":"0"}}}}"#,
            crate::mcp::HANDSHAKE_VERSION
        );
        server
            .request(&init, Duration::from_secs(10))
            .await
            .map_err(|e| crate::Error::Start(format!("stdio initialize: {e}")))?;
        server
            .send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n".to_vec())?;
        Ok(server)
    }

    fn send(&self, line: Vec<u8>) -> Result<(), crate::Error> {
        self.lines
            .send(line)
            .map_err(|_| crate::Error::Start("the stdio server's stdin is closed".into()))
    }

    /// Sends `{"jsonrpc":"2.0","id":N,"method":<rest>}` and waits for the answer's result.
    async fn request(
        &self,
        rest: &str,
        timeout: Duration,
    ) -> Result<Box<serde_json::value::RawValue>, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let mut line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":{rest}}}"#).into_bytes();
        line.push(b'\n');
        if self.lines.send(line).is_err() {
            return Err(CallError::Closed);
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(CallError::Closed),
            Err(_) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.remove(&id);
                }
                return Err(CallError::Timeout(timeout));
            }
        };
        extract_result(&answer, false, &id.to_string())
    }

    /// One `tools/call` of `echo` with `message`, checked.
    pub async fn echo(
        &self,
        tool: &str,
        message: &str,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let rest = format!(
            r#""tools/call","params":{{"name":"{tool}","arguments":{{"message":"{message}"}}}}"#
        );
        let result = self.request(&rest, timeout).await?;
        check_echo(&result, message)
    }
}

async fn write_loop(stdin: ChildStdin, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut out = BufWriter::with_capacity(64 * 1024, stdin);
    while let Some(line) = rx.recv().await {
        if out.write_all(&line).await.is_err() {
            return;
        }
        while let Ok(line) = rx.try_recv() {
            if out.write_all(&line).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(stdout: ChildStdout, pending: Pending, unmatched: Arc<AtomicU64>) {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(default)]
        id: Option<u64>,
    }
    let mut input = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => {
                // Dropping the senders tells every waiting caller the server is gone.
                if let Ok(mut pending) = pending.lock() {
                    pending.clear();
                }
                return;
            }
            Ok(_) => {}
        }
        let Ok(Id { id: Some(id) }) = serde_json::from_slice::<Id>(line.trim_ascii()) else {
            continue; // a notification, or a request from the server
        };
        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Bytes::copy_from_slice(line.trim_ascii()));
            }
            None => {
                unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
