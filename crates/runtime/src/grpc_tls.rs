//! gRPC over TLS (rustls), for every server and client, with certificates read again when their
//! files change.
//!
//! A server with `[grpc_tls]` set serves TLS only: a plaintext client's connection fails its
//! handshake and is closed. With `client_ca_file` it also asks every client for a certificate
//! signed by that CA (mutual TLS). Clients take `ca_file` (whom to trust; the system's roots when
//! unset) and, for mutual TLS, their own `cert_file` and `key_file`.
//!
//! Files are looked at again (their size and modification time) at every new connection; when
//! they changed they are read again, so a rotated certificate (cert-manager writing a Secret, a
//! `mv` of new files) is used from the next connection on, with no restart. A rotation caught half
//! way (a new certificate beside the old key) keeps the previous configuration and logs why, until
//! the files agree again.

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// `[grpc_tls]` in a service's file: its gRPC server's certificate. Unset: plaintext gRPC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// When set, every client must present a certificate signed by this CA (PEM).
    pub client_ca_file: Option<PathBuf>,
}

/// A gRPC client's TLS: `[target.tls]` in the policy, `--tls-*` on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// The CA (PEM) the server's certificate must chain to; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate (PEM), for a server that asks for one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the URL's host.
    pub server_name: Option<String>,
}

/// A TLS setting that cannot be used; the message names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: set {missing} too")]
    Incomplete {
        setting: &'static str,
        missing: &'static str,
    },
    #[error("{setting} {path}: {source}")]
    File {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{setting} {path}: no {what} in the file")]
    Empty {
        setting: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("url {url}: {problem}")]
    Url { url: String, problem: String },
    #[error("connecting to {url}: {}", chain(source))]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// An error and its causes, `: `-joined (tonic's own text is only "transport error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |source: rustls::pki_types::pem::Error| TlsError::File {
        setting,
        path: path.to_path_buf(),
        source: source.into(),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(file)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file)?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            setting,
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

fn private_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            setting,
            path: path.to_path_buf(),
            what: "private key",
        },
        source => TlsError::File {
            setting,
            path: path.to_path_buf(),
            source: source.into(),
        },
    })
}

fn roots(setting: &'static str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(setting, path)? {
        roots.add(certificate).map_err(|source| TlsError::File {
            setting,
            path: path.to_path_buf(),
            source: source.into(),
        })?;
    }
    Ok(roots)
}

/// What a file looked like when it was last read: a change of either means read it again.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// A configuration built from files, built again when they change.
struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: Mutex<(Vec<Stamp>, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let built = Arc::new(build()?);
        Ok(Self {
            files,
            build: Box::new(build),
            state: Mutex::new((stamps, built)),
        })
    }

    /// The configuration, read again first if a file changed since.
    fn current(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0 != stamps {
            match (self.build)() {
                Ok(built) => {
                    tracing::info!(files = ?self.files, "TLS certificate files changed; read them again");
                    *state = (stamps, Arc::new(built));
                }
                // Tried again at the next connection (the stamps are left as they were).
                Err(error) => {
                    tracing::warn!(error = %error, "TLS certificate files changed but cannot be used; keeping the previous ones")
                }
            }
        }
        state.1.clone()
    }
}

/// A gRPC server's TLS, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<rustls::ServerConfig>>);

impl ServerTls {
    /// `None` when `config` sets no certificate (plaintext gRPC); an error naming the setting
    /// when it is half set or its files cannot be used.
    pub fn from_config(config: &ServerTlsConfig) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&config.cert_file, &config.key_file, &config.client_ca_file) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
            (None, _, _) => {
                return Err(TlsError::Incomplete {
                    setting: "grpc_tls",
                    missing: "grpc_tls.cert_file",
                });
            }
            (_, None, _) => {
                return Err(TlsError::Incomplete {
                    setting: "grpc_tls",
                    missing: "grpc_tls.key_file",
                });
            }
        };
        let client_ca = config.client_ca_file.clone();
        let mut files = vec![cert.clone(), key.clone()];
        files.extend(client_ca.clone());
        let build = move || {
            let builder =
                rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
            let builder = match &client_ca {
                None => builder.with_no_client_auth(),
                Some(ca) => builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots("grpc_tls.client_ca_file", ca)?),
                        provider(),
                    )
                    .build()?,
                ),
            };
            let mut config = builder.with_single_cert(
                certificates("grpc_tls.cert_file", &cert)?,
                private_key("grpc_tls.key_file", &key)?,
            )?;
            // gRPC is HTTP/2; clients such as grpc-core insist the server says so.
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        };
        Ok(Some(Self(Arc::new(Reloading::new(files, build)?))))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.current())
    }
}

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the listen queue.
const HANDSHAKES: usize = 1024;

/// The connections `listener` accepts, each through its TLS handshake (run beside each other, so
/// a slow client delays no one), until `cancel` fires. A failed handshake — a plaintext client,
/// an untrusted client certificate — closes that connection and is counted in
/// `selfheal_grpc_tls_handshake_failures_total`.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    cancel: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsIo>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %error, "accepting a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, sender) = (tls.acceptor(), sender.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let local = stream.local_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let io = TlsIo {
                            stream,
                            info: tonic::transport::server::TcpConnectInfo {
                                local_addr: local,
                                remote_addr: Some(peer),
                            },
                        };
                        let _ = sender.send(Ok(io)).await;
                    }
                    Ok(Err(error)) => {
                        metrics::counter!("selfheal_grpc_tls_handshake_failures_total").increment(1);
                        tracing::debug!(peer = %peer, error = %error, "gRPC TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("selfheal_grpc_tls_handshake_failures_total").increment(1);
                        tracing::debug!(peer = %peer, "gRPC TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// One accepted gRPC connection over TLS.
pub struct TlsIo {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: tonic::transport::server::TcpConnectInfo,
}

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A gRPC client's TLS, ready to connect.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<Reloading<rustls::ClientConfig>>,
    server_name: Option<String>,
}

impl ClientTls {
    /// The client side of `config`; the system's roots when it names no CA.
    pub fn from_config(config: &ClientTlsConfig) -> Result<Self, TlsError> {
        let identity = match (&config.cert_file, &config.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    setting: "tls.cert_file",
                    missing: "tls.key_file",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    setting: "tls.key_file",
                    missing: "tls.cert_file",
                });
            }
        };
        let ca = config.ca_file.clone();
        let mut files: Vec<PathBuf> = ca.iter().cloned().collect();
        if let Some((cert, key)) = &identity {
            files.extend([cert.clone(), key.clone()]);
        }
        let build = move || {
            let roots = match &ca {
                Some(ca) => roots("tls.ca_file", ca)?,
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    roots
                }
            };
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
            let mut config = match &identity {
                None => builder.with_no_client_auth(),
                Some((cert, key)) => builder
                    .with_client_auth_cert(certificates("tls.cert_file", cert)?, private_key("tls.key_file", key)?)?,
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        };
        Ok(Self {
            config: Arc::new(Reloading::new(files, build)?),
            server_name: config.server_name.clone(),
        })
    }

    async fn connect(
        &self,
        uri: http::Uri,
    ) -> io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
        let invalid = |problem: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {problem}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string()).map_err(|_| invalid("not a valid TLS server name"))?;
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(self.config.current())
            .connect(name, stream)
            .await?;
        Ok(hyper_util::rt::TokioIo::new(stream))
    }
}

/// Where a client connects, and how.
enum Target {
    Plain(tonic::transport::Endpoint),
    Tls(tonic::transport::Endpoint, ClientTls),
}

impl Target {
    /// An `https://` URL over TLS as `tls` says (the system's roots when it names no CA), an
    /// `http://` one in plaintext (and then `tls` must be empty: TLS settings with a plaintext
    /// address are a mistake, not a fallback).
    fn new(
        url: &str,
        tls: &ClientTlsConfig,
        configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Result<Self, TlsError> {
        let bad = |problem: &str| TlsError::Url {
            url: url.to_string(),
            problem: problem.to_string(),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e.to_string()))?;
        let endpoint = configure(endpoint);
        match endpoint.uri().scheme_str() {
            Some("https") => Ok(Self::Tls(endpoint, ClientTls::from_config(tls)?)),
            Some("http") if *tls == ClientTlsConfig::default() => Ok(Self::Plain(endpoint)),
            Some("http") => Err(bad("TLS settings are given: use an https:// address")),
            _ => Err(bad("use http:// or https://")),
        }
    }
}

fn connector(
    tls: ClientTls,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move { tls.connect(uri).await }
    })
}

/// A lazily connected channel to `url` (see [`connect`] for the schemes): a server that starts
/// later is fine.
pub fn channel(
    url: &str,
    tls: &ClientTlsConfig,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, TlsError> {
    Ok(match Target::new(url, tls, configure)? {
        Target::Plain(endpoint) => endpoint.connect_lazy(),
        Target::Tls(endpoint, tls) => endpoint.connect_with_connector_lazy(connector(tls)),
    })
}

/// A channel to `url`, connected now: an `https://` URL over TLS as `tls` says (the system's
/// roots when it names no CA), an `http://` one in plaintext (and then `tls` must be empty).
pub async fn connect(
    url: &str,
    tls: &ClientTlsConfig,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, TlsError> {
    let connected = match Target::new(url, tls, configure)? {
        Target::Plain(endpoint) => endpoint.connect().await,
        Target::Tls(endpoint, tls) => endpoint.connect_with_connector(connector(tls)).await,
    };
    connected.map_err(|source| TlsError::Connect {
        url: url.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_set_or_unreadable_setting_is_named() {
        let error = |config: &ServerTlsConfig| match ServerTls::from_config(config) {
            Err(error) => error.to_string(),
            Ok(tls) => format!("accepted ({})", tls.is_some()),
        };
        assert_eq!(error(&ServerTlsConfig::default()), "accepted (false)");
        let cert_only = ServerTlsConfig {
            cert_file: Some("/nonexistent/tls.crt".into()),
            ..Default::default()
        };
        assert_eq!(error(&cert_only), "grpc_tls: set grpc_tls.key_file too");
        let missing = ServerTlsConfig {
            key_file: Some("/nonexistent/tls.key".into()),
            ..cert_only
        };
        let text = error(&missing);
        assert!(text.starts_with("grpc_tls.cert_file /nonexistent/tls.crt: "), "{text}");

        let dir = tempfile::tempdir().expect("a temporary folder");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("written");
        let client = ClientTlsConfig {
            ca_file: Some(empty.clone()),
            ..Default::default()
        };
        let text = ClientTls::from_config(&client)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            text,
            format!("tls.ca_file {}: no certificate in the file", empty.display())
        );
    }

    #[test]
    fn tls_settings_with_a_plaintext_address_are_refused() {
        let with_ca = ClientTlsConfig {
            ca_file: Some("/etc/ssl/ca.pem".into()),
            ..Default::default()
        };
        let refused = |url: &str, tls: &ClientTlsConfig| Target::new(url, tls, |e| e).err().map(|e| e.to_string());
        assert_eq!(
            refused("http://pr-controller:50053", &with_ca).as_deref(),
            Some("url http://pr-controller:50053: TLS settings are given: use an https:// address")
        );
        assert_eq!(
            refused("ftp://pr-controller", &ClientTlsConfig::default()).as_deref(),
            Some("url ftp://pr-controller: use http:// or https://")
        );
        assert_eq!(refused("http://pr-controller:50053", &ClientTlsConfig::default()), None);
    }
}
