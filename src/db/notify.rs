//! One PostgreSQL `LISTEN` connection for the whole process, kept alive across drops.
//!
//! Changes made by another process (`warden secret set`, `warden user disable`, a second
//! replica) are announced with `NOTIFY`; a running Warden hears them here. Notices sent
//! while the connection is down are lost, so every (re)connection is reported as
//! [`Notice::Connected`] and consumers resynchronise (clear a cache, re-read state) —
//! those that re-read through [`refresh_when_wanted`], which tries a failed read again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

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

impl Notice {
    /// Whether state announced on `channel` may have changed: a message on it, or a
    /// (re)connection, after which any of its messages may have been lost.
    pub fn concerns(&self, channel: &str) -> bool {
        match self {
            Notice::Connected => true,
            Notice::Message { channel: on, .. } => on == channel,
        }
    }
}

/// How often the listening connection is asked to answer, and how long it has to: a
/// connection that went silent (a network partition, a host gone without a reset) would
/// otherwise wait for the kernel's keep-alive — hours — while every notice meanwhile is
/// lost: revoked tokens kept in caches, approvals, skills and secrets unseen. With these,
/// a dead connection is replaced (and [`Notice::Connected`] makes everyone re-read)
/// within about 40 seconds.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts listening on `channels`. The oneshot fires once the first `LISTEN` succeeded,
/// so a caller can be sure nothing announced after that point is missed. The connection
/// is checked every `ping.0` and replaced when it does not answer within `ping.1`
/// ([`PING_INTERVAL`], [`PING_TIMEOUT`]).
pub fn spawn(
    pg_config: tokio_postgres::Config,
    channels: Vec<&'static str>,
    ping: (Duration, Duration),
    shutdown: CancellationToken,
) -> (mpsc::UnboundedReceiver<Notice>, oneshot::Receiver<()>) {
    let (notices, receiver) = mpsc::unbounded_channel();
    let (first, listening) = oneshot::channel();
    tokio::spawn(run(pg_config, channels, ping, shutdown, notices, first));
    (receiver, listening)
}

async fn run(
    pg_config: tokio_postgres::Config,
    channels: Vec<&'static str>,
    (ping_every, ping_timeout): (Duration, Duration),
    shutdown: CancellationToken,
    notices: mpsc::UnboundedSender<Notice>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut delay = Duration::from_millis(250);
    while !shutdown.is_cancelled() && !notices.is_closed() {
        // Connecting and listening are bounded like a ping: a connection that goes
        // silent before it listens must not hang the listener either.
        let connecting = async {
            let (client, connection) = pg_config.connect(tokio_postgres::NoTls).await?;
            // Aborted wherever it is dropped: also when the timeout below gives up.
            let driver = AbortOnDropHandle::new(drive(connection, notices.clone()));
            let statements: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
            client.batch_execute(&statements).await?;
            Ok::<_, tokio_postgres::Error>((client, driver))
        };
        let connected = tokio::select! {
            connected = tokio::time::timeout(ping_timeout, connecting) => connected,
            () = shutdown.cancelled() => return,
        };
        match connected {
            Ok(Ok((client, mut driver))) => {
                delay = Duration::from_millis(250);
                let _ = notices.send(Notice::Connected);
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                // `client` stays alive while the connection is driven; the driver ends
                // when the server closes the connection, and a connection that stops
                // answering is given up.
                let mut ping = tokio::time::interval(ping_every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut driver => break,
                        () = shutdown.cancelled() => return,
                        _ = ping.tick() => {}
                    }
                    let answered = tokio::select! {
                        answered = tokio::time::timeout(ping_timeout, client.simple_query("")) => answered,
                        () = shutdown.cancelled() => return,
                    };
                    match answered {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "the notice listener's connection failed; connecting again (changes meanwhile are re-read)");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?ping_timeout, "the notice listener's connection stopped answering; connecting again (changes meanwhile are re-read)");
                            break;
                        }
                    }
                }
                // Dropping the driver (an `AbortOnDropHandle`) stops it.
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "the notice listener cannot connect; retrying");
            }
            Err(_) => {
                tracing::debug!(timeout = ?ping_timeout, "the notice listener could not connect in time; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Polls `connection`, forwarding its notifications, until it closes (or the receiver
/// went away).
fn drive(
    mut connection: tokio_postgres::Connection<
        tokio_postgres::Socket,
        tokio_postgres::tls::NoTlsStream,
    >,
    notices: mpsc::UnboundedSender<Notice>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let notice = Notice::Message {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                };
                if notices.send(notice).is_err() {
                    return;
                }
            }
        }
    })
}

/// Why state could not be read again from PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("no database connection: {0}")]
    Connection(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Read(#[from] tokio_postgres::Error),
}

/// How long a failed refresh waits before it is tried again; the wait doubles up to
/// [`REFRESH_RETRY_MAX`].
const REFRESH_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts [`refresh_when_wanted`] in a task of its own; returns what to notify to have
/// `refresh` run.
pub fn spawn_refresher<F, Fut, E>(
    what: &'static str,
    shutdown: CancellationToken,
    refresh: F,
) -> Arc<Notify>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let wanted = Arc::new(Notify::new());
    tokio::spawn(refresh_when_wanted(
        what,
        wanted.clone(),
        shutdown,
        REFRESH_RETRY_FIRST,
        refresh,
    ));
    wanted
}

/// Runs `refresh` (re-reading state a notice said changed, and what follows from it)
/// each time `wanted` is notified — notices that come while one runs are covered by one
/// more run — and, after a failure, again with back-off from `first_retry` until one
/// succeeds: a refresh given up would leave a change made elsewhere (a tool approved, a
/// skill changed) unseen here until the next notice or restart. `what` names the state
/// in the log. Ends with `shutdown`.
pub async fn refresh_when_wanted<F, Fut, E>(
    what: &'static str,
    wanted: Arc<Notify>,
    shutdown: CancellationToken,
    first_retry: Duration,
    mut refresh: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        tokio::select! {
            () = wanted.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let mut wait = first_retry;
        while let Err(error) = refresh().await {
            tracing::warn!(%error, retry_in = ?wait, "cannot read {what} again (changes made elsewhere are not seen here until it succeeds)");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = (wait * 2).min(REFRESH_RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refreshes fail twice, then succeed: tried until one does, and not again until
    /// the next notice.
    #[tokio::test]
    async fn a_failed_refresh_is_tried_again_until_it_succeeds() {
        let wanted = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let (attempts, mut attempted) = tokio::sync::mpsc::unbounded_channel();
        let mut failures_left = 2;
        let refresher = tokio::spawn(refresh_when_wanted(
            "test state",
            wanted.clone(),
            shutdown.clone(),
            Duration::from_millis(1),
            move || {
                let outcome = if failures_left > 0 {
                    failures_left -= 1;
                    Err("database unreachable".to_owned())
                } else {
                    Ok(())
                };
                let _ = attempts.send(outcome.is_ok());
                std::future::ready(outcome)
            },
        ));
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), attempted.recv())
                .await
                .expect("an attempt in time")
                .expect("the refresher runs")
        };
        wanted.notify_one();
        assert!(!next().await);
        assert!(!next().await);
        assert!(next().await);
        // The next notice runs it once more.
        wanted.notify_one();
        assert!(next().await);
        shutdown.cancel();
        refresher.await.expect("ends with the shutdown");
        assert!(attempted.try_recv().is_err(), "nothing ran unasked");
    }
}
