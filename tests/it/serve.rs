//! `warden serve` as an operator runs it: the embedded PostgreSQL cluster, the probes and
//! metrics, readiness that follows the database, systemd notifications, reload on SIGHUP,
//! and shutdown that leaves no process behind — even after `kill -9`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use crate::support::db::connect;
use crate::support::warden::{EXIT_TIMEOUT, READY_LINE, START_TIMEOUT};
use crate::support::{Profile, TestCluster, TestDb, WardenProcess, http, procs, rt};

const INITDB_LINE: &str = "initialising the embedded PostgreSQL cluster";

/// `warden_instance.created_at` of the embedded cluster under `state_dir`, read over
/// its Unix socket.
fn instance_created_at(state_dir: &Path) -> String {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(state_dir.join("postgres"))
        .port(5432)
        .user("warden")
        .dbname("warden");
    rt::block_on(async move {
        let client = connect(&config).await;
        client
            .query_one("SELECT created_at::text FROM warden_instance", &[])
            .await
            .expect("warden_instance has its row")
            .get(0)
    })
}

/// SIGTERM, then exit 0 within the bound the default grace implies.
fn stop_with_sigterm(warden: &mut WardenProcess) {
    let status = warden.sigterm();
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", warden.log());
}

#[test]
fn embedded_serve_is_ready_stops_cleanly_and_reuses_its_data() {
    let mut profile = Profile::embedded();
    let state_dir = profile.state_dir();
    let data_dir = state_dir.join("postgres").display().to_string();

    let mut warden = profile.start();
    assert!(warden.log().contains(INITDB_LINE), "{}", warden.log());

    let health = http::get(&warden.url("/healthz"));
    assert_eq!(health.status, 200, "{health:?}");
    let ready = http::get(&warden.url("/readyz"));
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json()["ready"], true, "{ready:?}");
    let metrics = http::get(&warden.url("/metrics"));
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{metrics:?}"
    );
    assert!(
        metrics.body.contains("warden_build_info{"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("process_resident_memory_bytes "),
        "{}",
        metrics.body
    );

    let state_mode = std::fs::metadata(&state_dir)
        .expect("state dir")
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o066, 0, "state dir mode {state_mode:o}");
    let key_mode = std::fs::metadata(state_dir.join("master.key"))
        .expect("a generated master key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "master.key mode {key_mode:o}");

    let postmasters: Vec<_> = procs::with_cmdline_containing(&data_dir)
        .into_iter()
        .filter(|p| p.ppid == warden.pid() as i32)
        .collect();
    assert_eq!(postmasters.len(), 1, "{postmasters:?}");
    let family = procs::descendants(warden.pid() as i32);
    assert!(
        family.iter().any(|p| p.pid == postmasters[0].pid),
        "the postmaster is Warden's child: {family:?}"
    );
    let created_at = instance_created_at(&state_dir);

    stop_with_sigterm(&mut warden);
    let left: Vec<_> = family.iter().filter(|p| p.is_alive()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(procs::with_cmdline_containing(&data_dir).is_empty());
    assert!(
        !Path::new(&data_dir).join("postmaster.pid").exists(),
        "PostgreSQL did not shut down cleanly"
    );

    // The second start finds the cluster, the schema and the key where it left them.
    let mut again = profile.start();
    let log = again.log();
    assert!(!log.contains(INITDB_LINE), "{log}");
    assert!(!log.contains("generated a new master key"), "{log}");
    assert_eq!(instance_created_at(&state_dir), created_at);
    assert_eq!(http::get(&again.url("/readyz")).status, 200);
    stop_with_sigterm(&mut again);
    assert!(procs::with_cmdline_containing(&data_dir).is_empty());
}

#[test]
fn kill_9_of_serve_takes_the_embedded_postgres_down_too() {
    let mut profile = Profile::embedded();
    let data_dir = profile.state_dir().join("postgres").display().to_string();

    let mut warden = profile.start();
    // Only Warden's own child: a backend the postmaster is forking carries the same
    // command line for an instant.
    let postmasters: Vec<_> = procs::with_cmdline_containing(&data_dir)
        .into_iter()
        .filter(|p| p.ppid == warden.pid() as i32)
        .collect();
    assert_eq!(postmasters.len(), 1, "{postmasters:?}");
    let family = procs::descendants(warden.pid() as i32);

    let status = warden.kill9();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // The postmaster gets SIGINT through its parent-death signal and shuts down fast.
    if let Err(left) = procs::wait_all_gone(&family, EXIT_TIMEOUT) {
        panic!("still running after Warden was killed: {left:?}");
    }
    assert!(procs::with_cmdline_containing(&data_dir).is_empty());

    // And the data survives: the next start reuses it.
    let mut again = profile.start();
    assert!(!again.log().contains(INITDB_LINE), "{}", again.log());
    stop_with_sigterm(&mut again);
}

#[test]
fn readyz_answers_503_with_a_reason_while_the_database_is_unreachable() {
    let mut cluster = TestCluster::start();
    cluster.create_database("warden", None);
    let mut profile = Profile::with_database(&cluster.url("warden"));
    let mut warden = profile.start();
    assert_eq!(http::get(&warden.url("/readyz")).status, 200);

    cluster.stop();
    let ready = http::get(&warden.url("/readyz"));
    assert_eq!(ready.status, 503, "{ready:?}");
    let body = ready.json();
    assert_eq!(body["ready"], false, "{body}");
    let reasons = body["reasons"].as_array().expect("a list of reasons");
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str() == Some("the database is unreachable")),
        "{body}"
    );
    // Alive all the same: a liveness probe must not restart Warden for its database.
    assert_eq!(http::get(&warden.url("/healthz")).status, 200);

    cluster.restart();
    let ready = http::get(&warden.url("/readyz"));
    assert_eq!(ready.status, 200, "{ready:?}");
    stop_with_sigterm(&mut warden);
}

#[test]
fn serve_fails_at_start_when_the_database_is_unreachable() {
    let nowhere = crate::support::dirs::temp_dir("nodb");
    let url = format!(
        "postgresql://warden@/warden?host={}&port=5432",
        nowhere.path().display()
    );
    for migrate_on_start in [true, false] {
        let mut profile = Profile::with_database(&url);
        profile.set("database.migrate_on_start", migrate_on_start);
        profile.set("database.connect_timeout", "2s");
        let mut warden = profile.spawn();
        let status = warden.wait_exit(START_TIMEOUT);
        assert!(!status.success(), "{}", warden.log());
        let log = warden.log();
        assert!(!log.contains(READY_LINE), "{log}");
        if migrate_on_start {
            assert!(log.contains("error: cannot reach PostgreSQL"), "{log}");
        } else {
            assert!(log.contains("error: cannot reach PostgreSQL"), "{log}");
            assert!(log.contains("error connecting to server"), "{log}");
        }
    }
}

/// Receives datagrams until one contains `wanted`; returns everything received.
fn receive_until(socket: &UnixDatagram, wanted: &str, warden: &WardenProcess) -> Vec<String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == wanted);
                received.push(message);
                if done {
                    return received;
                }
            }
            Err(e) => panic!(
                "no `{wanted}` notification ({e}); received {received:?}; log:\n{}",
                warden.log()
            ),
        }
    }
}

#[test]
fn systemd_notify_gets_ready_watchdog_and_stopping() {
    let db = TestDb::new();
    let mut profile = Profile::with_database(db.url());
    let socket_path = profile.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(START_TIMEOUT))
        .expect("set a read timeout");
    profile.env("NOTIFY_SOCKET", socket_path.display().to_string());
    // Pings at half the interval: every second.
    profile.env("WATCHDOG_USEC", "2000000");

    let mut warden = profile.start();
    let first = receive_until(&socket, "READY=1", &warden);
    assert_eq!(
        first.len(),
        1,
        "READY=1 is the first notification: {first:?}"
    );
    assert!(first[0].contains("STATUS="), "{first:?}");
    receive_until(&socket, "WATCHDOG=1", &warden);

    warden.signal(libc::SIGTERM);
    receive_until(&socket, "STOPPING=1", &warden);
    let status = warden.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", warden.log());
}

#[test]
fn sighup_reloads_the_profile_and_names_settings_that_need_a_restart() {
    let db = TestDb::new();
    let mut profile = Profile::with_database(db.url());
    let mut warden = profile.start();

    let mark = warden.log_mark();
    profile.set("logging.level", "debug");
    profile.set("server.listen", "127.0.0.1:1");
    profile.set("server.public_url", "http://warden.example.test");
    profile.write();
    warden.sighup();
    assert!(
        warden.wait_for_log_since(mark, "profile reloaded", EXIT_TIMEOUT),
        "{}",
        warden.log()
    );
    let log = warden.log();
    assert!(log.contains("log level changed"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("takes effect after a restart") && l.contains("server.listen")),
        "{log}"
    );
    // The public URL is read from the running profile everywhere: applied at once, and
    // said so, since Warden's own tokens change issuer with it.
    assert!(
        log.contains("server.public_url changed: applied now"),
        "{log}"
    );
    let metadata = http::get(&warden.url("/.well-known/oauth-authorization-server"));
    assert_eq!(
        metadata.json()["issuer"],
        "http://warden.example.test",
        "{}",
        metadata.body
    );

    // A broken profile is refused and the running one kept.
    let mark = warden.log_mark();
    std::fs::write(profile.path(), "server:\n  listen: [unclosed\n").expect("write");
    warden.sighup();
    assert!(
        warden.wait_for_log_since(mark, "profile reload refused", EXIT_TIMEOUT),
        "{}",
        warden.log()
    );
    assert_eq!(http::get(&warden.url("/readyz")).status, 200);

    // SIGINT stops as cleanly as SIGTERM.
    warden.signal(libc::SIGINT);
    let status = warden.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", warden.log());
}

#[test]
fn a_client_that_trickles_its_headers_is_cut_off_and_others_are_served() {
    use std::io::{Read as _, Write as _};
    let db = TestDb::new();
    let mut profile = Profile::with_database(db.url());
    profile.set("server.header_read_timeout", "1s");
    let mut warden = profile.start();
    let address = warden.url("").trim_start_matches("http://").to_owned();

    // Half a request, then nothing: the connection is closed (no answer is owed). The
    // read gives up after 10 s, well before the 30 s default would close it: a Warden
    // ignoring the setting fails here.
    let mut slow = std::net::TcpStream::connect(&address).expect("connect");
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a read timeout");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("send half the headers");
    let mut answer = Vec::new();
    match slow.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the trickling connection was not closed: {error}"),
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Everyone else is served as before.
    let healthy = http::get(&warden.url("/healthz"));
    assert_eq!(healthy.status, 200, "{healthy:?}");
    stop_with_sigterm(&mut warden);
}
