//! TLS on Warden's own listener (`server.tls`), for deployments without a proxy in front.
//!
//! What this module owns: the certificate in force (read from the PEM files the profile
//! names, replaced whole when they change), and [`Connection`], the stream every accepted
//! socket becomes — plain, or TLS whose handshake runs in the connection's own task on
//! its first read or write (a slow or silent client never holds up the accept loop), and
//! is given up after `server.tls.handshake_timeout`.
//!
//! Certificates are rotated without a restart: [`Tls::watch`] reads the two files every
//! `server.tls.reload_interval`, and on SIGHUP, and loads them when their contents differ
//! from the pair in force (contents, not change times: a file rewritten twice within the
//! clock's resolution, or read while half written, is still noticed when it settles). A
//! pair that does not load (a half-written file, a key that does not match) is refused
//! with the reason logged once, and the current one stays. Connections already open keep
//! the certificate they were made with.
//!
//! HTTP/1.1 only (ALPN `http/1.1`), TLS 1.2 and 1.3 with rustls' default (ring) suites.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::listener::LimitedStream;
use crate::config::TlsConfig;

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file `{path}`: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("server.tls.key_file `{path}`: {message}")]
    Key { path: PathBuf, message: String },
}

/// The two files as read, and the digest that tells one reading from another.
struct Files {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    digest: [u8; 32],
}

fn read(config: &TlsConfig) -> Result<Files, TlsError> {
    let cert = std::fs::read(&config.cert_file).map_err(|e| TlsError::Certificate {
        path: config.cert_file.clone(),
        message: e.to_string(),
    })?;
    let key = Zeroizing::new(std::fs::read(&config.key_file).map_err(|e| TlsError::Key {
        path: config.key_file.clone(),
        message: e.to_string(),
    })?);
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_be_bytes());
    hasher.update(&cert);
    hasher.update(&*key);
    Ok(Files {
        digest: hasher.finalize().into(),
        cert,
        key,
    })
}

/// Reads the certificate chain and its private key, and checks that they belong together.
pub fn load(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    parse(config, &read(config)?)
}

fn parse(config: &TlsConfig, files: &Files) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Certificate {
        path: config.cert_file.clone(),
        message,
    };
    let key_error = |message: String| TlsError::Key {
        path: config.key_file.clone(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| key_error(e.to_string()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_error(format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        key_error(format!(
            "does not belong to the first certificate of server.tls.cert_file: {e}"
        ))
    })?;
    Ok(certified)
}

/// When a DER X.509 certificate stops being valid (its `notAfter`, RFC 5280 §4.1.2.5);
/// `None` when the structure cannot be read that far. Only the fields before it are
/// walked, never interpreted.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let (tag, _, after_version) = tlv(tbs)?;
    // `[0] EXPLICIT version` is optional; then serialNumber, signature, issuer.
    let mut rest = if tag == 0xA0 { after_version } else { tbs };
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    asn1_time(tag, time)
}

/// One DER tag-length-value: the tag, the value, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let length = rest[..octets]
            .iter()
            .fold(0usize, |acc, byte| acc << 8 | usize::from(*byte));
        (length, &rest[octets..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// An ASN.1 UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as certificates write them.
fn asn1_time(tag: u8, value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let short: u32 = text[..2].parse().ok()?;
            (
                if short >= 50 {
                    1900 + short
                } else {
                    2000 + short
                },
                &text[2..],
            )
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let rfc3339 = format!(
        "{year:04}-{}-{}T{}:{}:{}Z",
        &rest[0..2],
        &rest[2..4],
        &rest[4..6],
        &rest[6..8],
        &rest[8..10]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// Says when the certificate in force expires, and warns when it has or is about to.
fn announce(config: &TlsConfig, expires: Option<SystemTime>) {
    let cert_file = config.cert_file.display();
    let Some(expires) = expires else {
        tracing::warn!(%cert_file, "cannot read the TLS certificate's expiry date");
        return;
    };
    let at = humantime::format_rfc3339_seconds(expires);
    match expires.duration_since(SystemTime::now()) {
        Err(_) => {
            tracing::error!(%cert_file, expires = %at, "the TLS certificate has expired; clients refuse it")
        }
        Ok(left) if left < EXPIRY_WARNING => {
            tracing::warn!(%cert_file, expires = %at, "the TLS certificate expires within 14 days")
        }
        Ok(_) => tracing::info!(%cert_file, expires = %at, "TLS certificate in force"),
    }
}

/// How long before its expiry a certificate in force is warned about.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86400);

/// The certificate handed to every new handshake.
struct Current(ArcSwap<CertifiedKey>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current(certificate)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS for the listener: the acceptor, the certificate in force and where it came from.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    config: TlsConfig,
    /// The digest of the files in force.
    loaded: Mutex<[u8; 32]>,
    /// The last reload's refusal, so that it is logged once.
    last_error: Mutex<Option<String>>,
    /// When the certificate in force expires (for the metric).
    expires: Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish()
    }
}

impl Tls {
    /// Loads the profile's certificate; an error names the file and what is wrong.
    pub fn new(config: &TlsConfig) -> Result<Tls, TlsError> {
        warden_actors::upstream::http::install_crypto_provider();
        let files = read(config)?;
        let certified = parse(config, &files)?;
        let expires = certified.cert.first().and_then(|c| not_after(c));
        announce(config, expires);
        let current = Arc::new(Current(ArcSwap::from_pointee(certified)));
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
            config: config.clone(),
            loaded: Mutex::new(files.digest),
            last_error: Mutex::new(None),
            expires: Mutex::new(expires),
        })
    }

    /// Loads the files again if their contents differ from the pair in force; true when
    /// a new certificate is in force. On an error the current certificate stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let files = read(&self.config)?;
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *loaded == files.digest {
            return Ok(false);
        }
        let certified = parse(&self.config, &files)?;
        let expires = certified.cert.first().and_then(|c| not_after(c));
        announce(&self.config, expires);
        *self
            .expires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = expires;
        self.current.0.store(Arc::new(certified));
        *loaded = files.digest;
        Ok(true)
    }

    /// Looks for changed files every `reload_interval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    self.reload_logged();
                    self.publish_expiry();
                }
            }
        }
    }

    /// `warden_tls_certificate_expiry_timestamp_seconds`: when the certificate in force
    /// expires, for alerting before it does.
    fn publish_expiry(&self) {
        let expires = *self
            .expires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(seconds) = expires
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
        {
            metrics::gauge!("warden_tls_certificate_expiry_timestamp_seconds").set(seconds);
        }
    }

    /// [`Tls::reload_if_changed`], saying what happened: a new certificate, or why the
    /// files were refused (once per distinct problem, not on every look).
    pub fn reload_logged(&self) {
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.reload_if_changed() {
            Ok(true) => {
                *last_error = None;
                tracing::info!(
                    cert_file = %self.config.cert_file.display(),
                    "TLS certificate reloaded; new connections use it"
                );
            }
            // The pair in force is back (a broken file was put right): the next breakage
            // is news again.
            Ok(false) => *last_error = None,
            Err(error) => {
                let text = error.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!(%error, "cannot reload the TLS certificate; keeping the current one");
                    *last_error = Some(text);
                }
            }
        }
    }

    /// `stream` as a TLS connection whose handshake runs on its first use.
    pub fn connection(&self, stream: LimitedStream) -> Connection {
        let handshake =
            tokio::time::timeout(self.config.handshake_timeout, self.acceptor.accept(stream));
        Connection::Tls(TlsState::Handshaking(Box::pin(handshake)))
    }
}

type Handshake = Pin<Box<tokio::time::Timeout<tokio_rustls::Accept<LimitedStream>>>>;

/// An accepted connection: plain, or TLS.
pub enum Connection {
    Plain(LimitedStream),
    Tls(TlsState),
}

/// Where a TLS connection stands.
pub enum TlsState {
    Handshaking(Handshake),
    Ready(Box<TlsStream<LimitedStream>>),
    Failed,
}

impl TlsState {
    /// Drives the handshake; `Ready(Ok)` once the stream can carry data.
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut TlsStream<LimitedStream>>> {
        if let TlsState::Handshaking(handshake) = self {
            let outcome = ready!(handshake.as_mut().poll(cx)).unwrap_or_else(|_elapsed| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out (server.tls.handshake_timeout)",
                ))
            });
            match outcome {
                Ok(stream) => *self = TlsState::Ready(Box::new(stream)),
                Err(error) => {
                    // Scanners and plain-HTTP clients end here: not worth more than debug.
                    tracing::debug!(%error, "TLS handshake failed");
                    *self = TlsState::Failed;
                    return Poll::Ready(Err(error));
                }
            }
        }
        match self {
            TlsState::Ready(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(state) => Pin::new(ready!(state.poll_ready(cx))?).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(state) => Pin::new(ready!(state.poll_ready(cx))?).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(state) => {
                Pin::new(ready!(state.poll_ready(cx))?).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(state) => Pin::new(ready!(state.poll_ready(cx))?).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(TlsState::Ready(stream)) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            // Nothing was said over TLS yet: give the socket (and its permit) up now.
            Connection::Tls(state) => {
                *state = TlsState::Failed;
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 … -days 3650`: notAfter Nov 24 16:18:28 2036 GMT (UTCTime).
    const UTC_TIME: &str = "-----BEGIN CERTIFICATE-----\nMIIBezCCASGgAwIBAgIUM4Dt9V7+t4x2Sa9vSCaRVu9QekcwCgYIKoZIzj0EAwIw\nEzERMA8GA1UEAwwIdXRjLXRlc3QwHhcNMjYxMTI3MTYxODI4WhcNMzYxMTI0MTYx\nODI4WjATMREwDwYDVQQDDAh1dGMtdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH\nA0IABFpX8y0wi1llsghudeplYB1mchR88FsWUkIXJSKDzDJzuM0cNr0DCHaMoPMU\nH9VRjNRuRJ3vImGg1mMx9ysBohejUzBRMB0GA1UdDgQWBBT4q9M+/Prt+eUi51Ke\nWFpQ40aVXDAfBgNVHSMEGDAWgBT4q9M+/Prt+eUi51KeWFpQ40aVXDAPBgNVHRMB\nAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCjJ7QrBOi3dsj/+twyCJA87vDV\nN59iiizcGeWExWmWrAIgMfzjMq/B8w3UWjyOK4HXyt1M5AKlJL6Bah7Dpshoi2k=\n-----END CERTIFICATE-----";
    /// `… -days 30000`: notAfter Jan 16 16:18:28 2109 GMT (GeneralizedTime).
    const GENERALIZED_TIME: &str = "-----BEGIN CERTIFICATE-----\nMIIBfDCCASOgAwIBAgIUW2pWKMqH90F9uxkIvQ4XRh4jY/gwCgYIKoZIzj0EAwIw\nEzERMA8GA1UEAwwIZ2VuLXRlc3QwIBcNMjYxMTI3MTYxODI4WhgPMjEwOTAxMTYx\nNjE4MjhaMBMxETAPBgNVBAMMCGdlbi10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\nAQcDQgAEQW2e6ZMUfCLej5na6DkOCUQmAkf+h3oyBvsdQEYaZyCCbzvUtoSNpGrG\ngh3HLB6kJoUMEogRvN0kaL09NSnqkKNTMFEwHQYDVR0OBBYEFAUzW0YOQ4k4dNGX\nqmBLJjppGvODMB8GA1UdIwQYMBaAFAUzW0YOQ4k4dNGXqmBLJjppGvODMA8GA1Ud\nEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgImnz7JoWKKqpLb8TXxKTKMrn\nRUjx8v5s5KQ272YkRRACIGqz5eQny1PeH8CvjoFYLMMfu0Q2CGZoMpqPI1OgmbQ8\n-----END CERTIFICATE-----";

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("a PEM certificate")
            .to_vec()
    }

    #[test]
    fn expiry_dates_are_read_in_both_time_formats() {
        let at = |text: &str| humantime::parse_rfc3339(text).expect("a date");
        assert_eq!(not_after(&der(UTC_TIME)), Some(at("2036-11-24T16:18:28Z")));
        assert_eq!(
            not_after(&der(GENERALIZED_TIME)),
            Some(at("2109-01-16T16:18:28Z"))
        );
    }

    #[test]
    fn unreadable_certificates_have_no_expiry() {
        let whole = der(UTC_TIME);
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&whole[..whole.len() / 3]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(asn1_time(0x17, b"3611241618Z"), None);
        assert_eq!(asn1_time(0x17, b"36112416182aZ"), None);
        assert_eq!(asn1_time(0x02, b"361124161828Z"), None);
        assert_eq!(asn1_time(0x17, b"361324161828Z"), None, "month 13");
    }
}
