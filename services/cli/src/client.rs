//! What every gRPC call of the CLI shares: the address, the token and TLS.

use std::path::PathBuf;

use anyhow::Context as _;
use selfheal_config::Secret;
use selfheal_runtime::grpc_tls::ClientTlsConfig;
use tonic::{Request, transport::Channel};

/// How `selfheal` reaches a service's gRPC API: its token, and TLS for an `https://` address.
#[derive(clap::Args, Clone, Debug)]
pub struct GrpcArgs {
    /// The gRPC token (default: read from --token-file).
    #[arg(long, global = true, env = "SELFHEAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the gRPC token (`selfheal up` writes it there).
    #[arg(long, global = true, env = "SELFHEAL_TOKEN_FILE", default_value = ".selfheal/token")]
    pub token_file: PathBuf,
    /// The CA that signed the service's certificate, for an https:// address (default: the
    /// system's roots).
    #[arg(long, global = true, env = "SELFHEAL_GRPC_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate, for a service that asks for one (with --tls-key-file).
    #[arg(long, global = true, env = "SELFHEAL_GRPC_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "SELFHEAL_GRPC_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The name the service's certificate carries, when it is not the address's host.
    #[arg(long, global = true, env = "SELFHEAL_GRPC_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl GrpcArgs {
    /// The token, from --token, $SELFHEAL_TOKEN or --token-file.
    pub fn token(&self) -> anyhow::Result<Secret> {
        Secret::inline_or_file(self.token.clone().map(Secret::new), Some(&self.token_file))?
            .context("no token: pass --token, set SELFHEAL_TOKEN, or point --token-file at one")
    }

    /// A channel to `addr`, connected (so a wrong address or certificate is told here, once).
    pub async fn connect(&self, addr: &str) -> anyhow::Result<Channel> {
        let tls = ClientTlsConfig {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
            server_name: self.tls_server_name.clone(),
        };
        Ok(selfheal_runtime::grpc_tls::connect(addr, &tls, |endpoint| endpoint).await?)
    }
}

/// `calls` to the service at `addr`, its error naming the address (and, for a connection
/// that an `http://` address could not keep, suggesting TLS).
pub async fn calling<T>(addr: &str, calls: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    calls.await.map_err(|error| {
        let hint = match error.downcast_ref::<tonic::Status>() {
            Some(status) if addr.starts_with("http://") && status.message() == "transport error" => {
                " (if it serves TLS, use an https:// address and --tls-ca-file)"
            }
            _ => "",
        };
        error.context(format!("calling {addr}{hint}"))
    })
}

/// `message` with the bearer token the services check.
pub fn authorized<T>(message: T, token: &Secret) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", token.expose()).parse()?);
    Ok(request)
}
