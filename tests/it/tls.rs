//! Warden's own TLS (`server.tls`): certificates made by `openssl` for the test (a CA and
//! two server certificates), a rustls client that trusts only that CA. https is served
//! with the profile's certificate, and the login cookies turn `__Host-`/`Secure`; plain
//! http and a client that never says hello are turned away; a broken replacement is
//! refused and the certificate in force stays; a good one is picked up without a
//! restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::support::{Profile, TestDb, WardenProcess};

const WAIT: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (the openssl package)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and server certificates `name.pem`/`name.key` it signed for localhost and
/// 127.0.0.1, one per name.
fn make_certificates(dir: &Path, names: &[&str]) {
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(p256);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=warden-test-ca",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions");
    for (serial, name) in names.iter().enumerate() {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN=warden-test-{name}");
        let mut request = vec!["req"];
        request.extend(p256);
        request.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &request);
        let serial = (serial + 1).to_string();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                &pem,
            ],
        );
    }
}

fn der(pem: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(pem).expect("a PEM certificate")
}

/// A client that trusts only the test CA.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca)).expect("the CA is a usable root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection a full handshake: a resumed one does not show the certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// `GET path` over TLS; the response and the certificate the server presented.
fn https_get(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> (String, CertificateDer<'static>) {
    let name = ServerName::try_from("localhost").expect("a server name");
    let mut connection = rustls::ClientConnection::new(config.clone(), name).expect("a TLS client");
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket.set_read_timeout(Some(WAIT)).expect("a read timeout");
    let mut tls = rustls::Stream::new(&mut connection, &mut socket);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send over TLS");
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer that closes without close_notify: the response is complete anyway.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(error) => panic!("reading over TLS: {error}"),
    }
    let presented = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
    (String::from_utf8_lossy(&response).into_owned(), presented)
}

fn port_of(warden: &WardenProcess) -> u16 {
    let url = warden.url("");
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Replaces `to` with `from` as certificate tooling does: a new file renamed over it.
fn replace(from: &Path, to: &Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).expect("stage the file");
    std::fs::rename(&staged, to).expect("rename over");
}

/// Warden serving https with the `first` certificate from `served.pem`/`served.key`, and
/// a client that trusts the test CA.
struct Served {
    certs: tempfile::TempDir,
    _db: TestDb,
    warden: WardenProcess,
    port: u16,
    client: Arc<rustls::ClientConfig>,
}

impl Served {
    /// `tls`: `server.tls` settings besides the two files.
    fn start(tls: serde_json::Value) -> Served {
        let certs = tempfile::tempdir().expect("a temp dir");
        let dir = certs.path();
        make_certificates(dir, &["first", "second"]);
        replace(&dir.join("first.pem"), &dir.join("served.pem"));
        replace(&dir.join("first.key"), &dir.join("served.key"));
        let mut settings = tls;
        settings["cert_file"] = serde_json::json!(dir.join("served.pem"));
        settings["key_file"] = serde_json::json!(dir.join("served.key"));
        let db = TestDb::new();
        let mut profile = Profile::with_database(db.url());
        profile.public_origin("https", "localhost");
        profile.set("server.tls", settings);
        let warden = profile.start();
        let port = port_of(&warden);
        let client = client_config(&dir.join("ca.pem"));
        Served {
            certs,
            _db: db,
            warden,
            port,
            client,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.certs.path().join(name)
    }

    /// Puts the `second` pair in place, key first, as tooling that renames files does.
    fn install_second(&self) {
        replace(&self.file("second.key"), &self.file("served.key"));
        replace(&self.file("second.pem"), &self.file("served.pem"));
    }

    /// Asserts that a new connection gets 200 from `/healthz` and certificate `name`.
    fn assert_serves(&self, name: &str) {
        let (response, presented) = https_get(self.port, &self.client, "/healthz");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(presented, der(&self.file(name)), "not {name}");
    }

    fn stop(mut self) {
        let status = self.warden.sigterm();
        assert_eq!(status.code(), Some(0), "{}", self.warden.log());
    }
}

#[test]
fn warden_serves_https_and_picks_up_a_new_certificate() {
    let served = Served::start(serde_json::json!({
        "handshake_timeout": "1s",
        "reload_interval": "1s",
    }));
    let (port, client, warden) = (served.port, &served.client, &served.warden);

    served.assert_serves("first.pem");
    // With an https public URL the sign-in cookies are `__Host-` and `Secure`.
    let (page, _) = https_get(port, client, "/oauth/account");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("set-cookie: __Host-warden_csrf=") && page.contains("; Secure"),
        "{page}"
    );

    // The certificate's expiry is a metric (openssl made it valid for two days).
    let (metrics, _) = https_get(port, client, "/metrics");
    let expiry: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("warden_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no expiry metric in {metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        (now + 86_400.0..now + 3.0 * 86_400.0).contains(&expiry),
        "{expiry} is not about two days from {now}"
    );

    // Plain http on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain.set_read_timeout(Some(WAIT)).expect("a read timeout");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "{answer:?}"
    );
    // A client that connects and says nothing is closed after the handshake timeout.
    // The read gives up after 5 s, before the 10 s default would close it: a Warden
    // ignoring the setting fails here.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent connection was not closed: {other:?}"),
    }

    // A broken replacement is refused; the certificate in force stays.
    let mark = warden.log_mark();
    std::fs::write(served.file("served.pem"), "not a certificate").expect("write");
    assert!(
        warden.wait_for_log_since(mark, "cannot reload the TLS certificate", WAIT),
        "{}",
        warden.log()
    );
    served.assert_serves("first.pem");

    // A new pair is picked up without a restart.
    let mark = warden.log_mark();
    served.install_second();
    assert!(
        warden.wait_for_log_since(mark, "TLS certificate reloaded", WAIT),
        "{}",
        warden.log()
    );
    served.assert_serves("second.pem");
    served.stop();
}

#[test]
fn sighup_loads_a_new_certificate_at_once() {
    // Files looked at once an hour: only the signal can explain a reload.
    let served = Served::start(serde_json::json!({"reload_interval": "1h"}));
    served.assert_serves("first.pem");
    served.install_second();
    let mark = served.warden.log_mark();
    served.warden.sighup();
    assert!(
        served
            .warden
            .wait_for_log_since(mark, "TLS certificate reloaded", WAIT),
        "{}",
        served.warden.log()
    );
    served.assert_serves("second.pem");
    served.stop();
}

#[test]
fn a_missing_or_mismatched_key_stops_warden_at_start_naming_the_file() {
    let certs = tempfile::tempdir().expect("a temp dir");
    let dir = certs.path();
    make_certificates(dir, &["first", "second"]);
    let db = TestDb::new();
    for (key, expected) in [
        ("missing.key", "server.tls.key_file"),
        ("second.key", "does not belong to the first certificate"),
    ] {
        let mut profile = Profile::with_database(db.url());
        profile.public_origin("https", "localhost");
        profile.set(
            "server.tls",
            serde_json::json!({
                "cert_file": dir.join("first.pem"),
                "key_file": dir.join(key),
            }),
        );
        let mut warden = profile.spawn();
        let status = warden.wait_exit(crate::support::warden::EXIT_TIMEOUT);
        assert!(!status.success(), "{}", warden.log());
        assert!(warden.log().contains(expected), "{}", warden.log());
        // `config check` loads the pair too.
        let mut command = crate::support::warden::command(&["config", "check"]);
        command.arg(profile.write());
        let checked = crate::support::warden::run(command);
        assert!(!checked.status.success());
        assert!(checked.stderr.contains(expected), "{}", checked.stderr);
    }
}
