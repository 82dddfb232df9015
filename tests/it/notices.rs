//! The change listener (`db::notify`) against a real PostgreSQL through a TCP proxy the
//! test controls: a connection that goes silent without closing — a partition, a host
//! gone without a reset — is noticed by the listener's ping and replaced, so notices
//! flow again and everyone is told to re-read what they may have missed.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;
use warden::db::notify::{self, Notice};

use crate::support::{TestDb, rt};

const WAIT: Duration = Duration::from_secs(30);

/// Forwards TCP connections to PostgreSQL's Unix socket. Setting `freeze` stops every
/// connection open at that moment from passing bytes, while keeping it open (nothing
/// is closed, as when the network in between fails); later connections pass. Everything
/// ends with `stop`.
async fn proxy(socket: PathBuf, freeze: watch::Receiver<u64>, stop: CancellationToken) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a proxy port");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            let mut freeze = freeze.clone();
            let born = *freeze.borrow();
            let socket = socket.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut unix) = UnixStream::connect(&socket).await else {
                    let _ = tcp.shutdown().await;
                    return;
                };
                let frozen = async {
                    loop {
                        if freeze.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        if *freeze.borrow() > born {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                    () = frozen => {
                        // Silent from now on, and not closed until the test ends.
                        stop.cancelled().await;
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    port
}

async fn next(notices: &mut tokio::sync::mpsc::UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(WAIT, notices.recv())
        .await
        .expect("a notice in time")
        .expect("the listener runs")
}

/// The next message, past any reconnection a slow moment of the machine caused.
async fn next_message(notices: &mut tokio::sync::mpsc::UnboundedReceiver<Notice>) -> Notice {
    loop {
        match next(notices).await {
            Notice::Connected => continue,
            message => return message,
        }
    }
}

#[test]
fn a_listener_whose_connection_goes_silent_connects_again_and_hears_notices() {
    let db = TestDb::new();
    let direct = db.pg_config();
    rt::block_on(async move {
        let Some(Host::Unix(dir)) = direct.get_hosts().first().cloned() else {
            panic!("the test cluster listens on a Unix socket");
        };
        let pg_port = direct.get_ports().first().copied().unwrap_or(5432);
        let (freeze, frozen) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let _stop_proxy = stop.clone().drop_guard();
        let port = proxy(dir.join(format!(".s.PGSQL.{pg_port}")), frozen, stop).await;
        let mut through_proxy = tokio_postgres::Config::new();
        through_proxy
            .host("127.0.0.1")
            .port(port)
            .user(direct.get_user().expect("a user"))
            .dbname(direct.get_dbname().expect("a database"));

        let shutdown = CancellationToken::new();
        // Asked often, given long enough to answer on a busy machine.
        let ping = (Duration::from_millis(200), Duration::from_secs(5));
        let (mut notices, _listening) =
            notify::spawn(through_proxy, vec!["warden_test"], ping, shutdown.clone());
        assert_eq!(next(&mut notices).await, Notice::Connected);

        let (client, connection) = direct
            .connect(tokio_postgres::NoTls)
            .await
            .expect("a direct connection");
        tokio::spawn(connection);
        let announce = |payload: &'static str| {
            let client = &client;
            async move {
                client
                    .execute("SELECT pg_notify('warden_test', $1)", &[&payload])
                    .await
                    .expect("NOTIFY");
            }
        };
        announce("before").await;
        assert_eq!(
            next_message(&mut notices).await,
            Notice::Message {
                channel: "warden_test".into(),
                payload: "before".into()
            }
        );

        // The connection goes silent: the ping finds out, and a new one is made.
        freeze.send_modify(|generation| *generation += 1);
        assert_eq!(next(&mut notices).await, Notice::Connected);
        announce("after").await;
        assert_eq!(
            next_message(&mut notices).await,
            Notice::Message {
                channel: "warden_test".into(),
                payload: "after".into()
            }
        );
        shutdown.cancel();
    });
}
