//! The NATS connection's credentials and TLS on the command line (or `SELFHEAL_NATS_*`), as the
//! services take them in `[nats]`.

use std::path::PathBuf;

use selfheal_bus::config::{CheckedNats, NatsConfig};

/// How `selfheal` authenticates to NATS (one way at most) and checks its certificate.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NatsArgs {
    /// NATS user (with --nats-password-file).
    #[arg(long, global = true, env = "SELFHEAL_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long, global = true, env = "SELFHEAL_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long, global = true, env = "SELFHEAL_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// File holding an NKey seed.
    #[arg(long, global = true, env = "SELFHEAL_NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (JWT and seed).
    #[arg(long, global = true, env = "SELFHEAL_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// The CA that signed the NATS server's certificate (TLS is then required).
    #[arg(long, global = true, env = "SELFHEAL_NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS (with --nats-tls-key-file).
    #[arg(long, global = true, env = "SELFHEAL_NATS_TLS_CERT_FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "SELFHEAL_NATS_TLS_KEY_FILE")]
    pub nats_tls_key_file: Option<PathBuf>,
}

impl NatsArgs {
    /// The settings, checked (files there, one way to authenticate). The CLI leaves the stream's
    /// replicas and limits as the services keep them (it creates a missing stream with the defaults).
    pub fn auth(&self) -> Result<CheckedNats, selfheal_bus::config::NatsConfigError> {
        NatsConfig {
            user: self.nats_user.clone(),
            password_file: self.nats_password_file.clone(),
            token_file: self.nats_token_file.clone(),
            nkey_seed_file: self.nats_nkey_seed_file.clone(),
            creds_file: self.nats_creds_file.clone(),
            tls_ca_file: self.nats_tls_ca_file.clone(),
            tls_cert_file: self.nats_tls_cert_file.clone(),
            tls_key_file: self.nats_tls_key_file.clone(),
            ..Default::default()
        }
        .check()
        .map(CheckedNats::leaving_stream_as_is)
    }
}
