//! The stdio transport: newline-delimited JSON-RPC on a child's stdin and stdout, and its
//! stderr drained line by line into the log (never inherited — a child blocked on a full
//! stderr pipe would stall every call).
//!
//! Three tasks per child: the writer batches queued frames into as few `write` calls as
//! possible; the reader splits stdout into lines (each bounded by the server's
//! `max_message_bytes`) and hands them to [`Connection::dispatch`]; the stderr drain
//! logs. The writer's queue is unbounded by itself but bounded in practice by the
//! server's `max_concurrent_calls`.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use tokio::sync::mpsc;

use super::{CallError, Connection, ConnectionEvent, Outbound};

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
    max_message_bytes: usize,
    scrub: crate::redact::Scrub,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) -> Arc<Connection> {
    let (frames, queue) = mpsc::unbounded_channel();
    let outbound = Box::new(StdioOutbound { frames });
    let conn = Connection::new(server.clone(), outbound, events, scrub.clone());
    tokio::spawn(write_loop(conn.clone(), stdin, queue));
    tokio::spawn(read_loop(conn.clone(), stdout, max_message_bytes));
    if let Some(stderr) = stderr {
        drain_to_log(server, stderr, scrub);
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

/// Reads stdout line by line. A line longer than `max_bytes` closes the connection: the
/// rest of it cannot be skipped without reading it, and a call whose answer it was would
/// wait for its deadline anyway. The supervisor then restarts the child.
async fn read_loop(
    conn: Arc<Connection>,
    stdout: impl tokio::io::AsyncRead + Unpin,
    max_bytes: usize,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let read = (&mut reader)
            // Room for the message and its line end (`\n` or `\r\n`), so a message of
            // exactly the limit passes and one byte more does not.
            .take(max_bytes as u64 + 2)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => {
                conn.close("the server closed its stdout".into());
                return;
            }
            Ok(_) if message_len(&line) > max_bytes => {
                conn.close(format!(
                    "the server sent a message larger than {max_bytes} bytes \
                     (servers.{}.max_message_bytes)",
                    conn.server()
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

/// The length of a line without its line end.
fn message_len(line: &[u8]) -> usize {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line).len()
}

/// Logs every line `stream` produces (a child's stderr, an HTTP child's stdout), tagged
/// with the server, with the secrets the child was given (`scrub`) taken out.
pub fn drain_to_log(
    server: Arc<str>,
    stream: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    scrub: crate::redact::Scrub,
) {
    crate::process::read_lines(stream, MAX_STDERR_LINE, move |line| {
        let line = scrub.apply(line);
        tracing::info!(target: "warden::upstream::stderr", server = %server, "{line}");
    });
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::upstream::ListKind;

    struct Nowhere;

    impl Outbound for Nowhere {
        fn send_request(&self, _: &Arc<Connection>, _: u64, _: Vec<u8>) -> Result<(), CallError> {
            Ok(())
        }
        fn send_frame(&self, _: &Arc<Connection>, _: Vec<u8>) -> Result<(), CallError> {
            Ok(())
        }
    }

    /// A `list_changed` notification padded to exactly `len` bytes.
    fn notification_of_len(len: usize) -> Vec<u8> {
        let head =
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"pad":""#;
        let tail = r#""}}"#;
        let mut line = head.as_bytes().to_vec();
        line.resize(len - tail.len(), b'x');
        line.extend_from_slice(tail.as_bytes());
        line
    }

    #[tokio::test]
    async fn a_message_of_the_limit_passes_and_one_byte_more_closes_the_connection() {
        const MAX: usize = 1024;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let conn = Connection::new(
            Arc::from("fx"),
            Box::new(Nowhere),
            events_tx,
            crate::redact::Scrub::default(),
        );
        let (mut child_stdout, stdout) = tokio::io::duplex(8 * 1024);
        tokio::spawn(read_loop(conn.clone(), stdout, MAX));

        let mut at_limit = notification_of_len(MAX);
        at_limit.push(b'\n');
        child_stdout.write_all(&at_limit).await.unwrap();
        let mut at_limit_crlf = notification_of_len(MAX);
        at_limit_crlf.extend_from_slice(b"\r\n");
        child_stdout.write_all(&at_limit_crlf).await.unwrap();
        let mut over = notification_of_len(MAX + 1);
        over.push(b'\n');
        child_stdout.write_all(&over).await.unwrap();

        for line_end in ["\\n", "\\r\\n"] {
            match events.recv().await.unwrap() {
                ConnectionEvent::ListChanged(ListKind::Tools) => {}
                other => panic!("a message of {MAX} bytes and {line_end} must arrive: {other:?}"),
            }
        }
        match events.recv().await.unwrap() {
            ConnectionEvent::Closed { reason } => assert_eq!(
                reason,
                "the server sent a message larger than 1024 bytes (servers.fx.max_message_bytes)"
            ),
            other => panic!("expected the connection to close, got {other:?}"),
        }
        assert!(conn.is_closed());
    }
}
