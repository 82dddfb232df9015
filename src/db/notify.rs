//! One PostgreSQL `LISTEN` connection for the whole process, kept alive across drops.
//!
//! Changes made by another process (`warden secret set`, `warden user disable`, a second
//! replica) are announced with `NOTIFY`; a running Warden hears them here. Notices sent
//! while the connection is down are lost, so every (re)connection is reported as
//! [`Notice::Connected`] and consumers resynchronise (clear a cache, re-read state).

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the listener reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The connection is (again) listening on every channel.
    Connected,
    Message {
        channel: String,
        payload: String,
    },
}

/// Starts listening on `channels`. The oneshot fires once the first `LISTEN` succeeded,
/// so a caller can be sure nothing announced after that point is missed.
pub fn spawn(
    pg_config: tokio_postgres::Config,
    channels: Vec<&'static str>,
    shutdown: CancellationToken,
) -> (mpsc::UnboundedReceiver<Notice>, oneshot::Receiver<()>) {
    let (notices, receiver) = mpsc::unbounded_channel();
    let (first, listening) = oneshot::channel();
    tokio::spawn(run(pg_config, channels, shutdown, notices, first));
    (receiver, listening)
}

async fn run(
    pg_config: tokio_postgres::Config,
    channels: Vec<&'static str>,
    shutdown: CancellationToken,
    notices: mpsc::UnboundedSender<Notice>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut delay = Duration::from_millis(250);
    while !shutdown.is_cancelled() && !notices.is_closed() {
        match pg_config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                let forward = notices.clone();
                let mut driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let notice = Notice::Message {
                                channel: n.channel().to_owned(),
                                payload: n.payload().to_owned(),
                            };
                            if forward.send(notice).is_err() {
                                return;
                            }
                        }
                    }
                });
                let statements: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
                if client.batch_execute(&statements).await.is_ok() {
                    delay = Duration::from_millis(250);
                    let _ = notices.send(Notice::Connected);
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    // `client` stays alive while the connection is driven; the driver ends
                    // when the server closes the connection.
                    tokio::select! {
                        _ = &mut driver => {}
                        _ = shutdown.cancelled() => {
                            driver.abort();
                            return;
                        }
                    }
                    drop(client);
                }
                driver.abort();
            }
            Err(error) => tracing::debug!(%error, "the notice listener cannot connect; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
