//! The stdio transport: newline-delimited JSON-RPC on a child's stdin and stdout, and its
//! stderr drained line by line into the log (never inherited — a child blocked on a full
//! stderr pipe would stall every call).
//!
//! Three tasks per child: the writer batches queued frames into as few `write` calls as
//! possible; the reader splits stdout into lines (each bounded by [`MAX_LINE_BYTES`]) and
//! hands them to [`Connection::dispatch`]; the stderr drain logs. The writer's queue is
//! unbounded by itself but bounded in practice by the server's `max_concurrent_calls`.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use tokio::sync::mpsc;

use super::{CallError, Connection, ConnectionEvent, Outbound};

/// A message larger than this closes the connection: a runaway child must not take
/// Warden's memory with it.
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// Stderr lines are cut at this length in the log.
const MAX_STDERR_LINE: usize = 4096;

struct StdioOutbound {
    frames: mpsc::UnboundedSender<Vec<u8>>,
}

impl Outbound for StdioOutbound {
    fn send_request(
        &self,
        conn: &Arc<Connection>,
        _id: u64,
        frame: Vec<u8>,
    ) -> Result<(), CallError> {
        self.send_frame(conn, frame)
    }

    fn send_frame(&self, conn: &Arc<Connection>, mut frame: Vec<u8>) -> Result<(), CallError> {
        frame.push(b'\n');
        self.frames
            .send(frame)
            .map_err(|_| CallError::Closed(conn.close_reason()))
    }
}

/// Wires a connection to a child's pipes and starts its tasks.
pub fn connect(
    server: Arc<str>,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) -> Arc<Connection> {
    let (frames, queue) = mpsc::unbounded_channel();
    let conn = Connection::new(server.clone(), Box::new(StdioOutbound { frames }), events);
    tokio::spawn(write_loop(conn.clone(), stdin, queue));
    tokio::spawn(read_loop(conn.clone(), stdout));
    if let Some(stderr) = stderr {
        drain_to_log(server, stderr);
    }
    conn
}

async fn write_loop(
    conn: Arc<Connection>,
    mut stdin: ChildStdin,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                batch.extend_from_slice(&frame);
                while batch.len() < 256 * 1024 {
                    match queue.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if let Err(error) = stdin.write_all(&batch).await {
                    conn.close(format!("writing to the server's stdin failed: {error}"));
                    break;
                }
                batch.clear();
            }
            _ = conn.closed() => break,
        }
    }
    // Dropping stdin closes it: the first step of a polite stop.
}

async fn read_loop(conn: Arc<Connection>, stdout: ChildStdout) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => {
                conn.close("the server closed its stdout".into());
                return;
            }
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                conn.close(format!(
                    "the server sent a message larger than {MAX_LINE_BYTES} bytes"
                ));
                return;
            }
            Ok(_) => {
                let text = line.trim_ascii();
                if !text.is_empty() {
                    conn.dispatch(text, None);
                }
            }
            Err(error) => {
                conn.close(format!("reading the server's stdout failed: {error}"));
                return;
            }
        }
    }
}

/// Logs every line `stream` produces (a child's stderr, an HTTP child's stdout), tagged
/// with the server.
pub fn drain_to_log(server: Arc<str>, stream: impl tokio::io::AsyncRead + Send + Unpin + 'static) {
    crate::process::read_lines(stream, MAX_STDERR_LINE, move |line| {
        tracing::info!(target: "warden::upstream::stderr", server = %server, "{line}");
    });
}
