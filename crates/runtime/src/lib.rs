//! The one shape of every selfheal service, and the `main` they share.
//!
//! A service is a [`Service`]: built from its typed config in one call that checks every setting
//! it needs ([`Service::from_config`]: tokens, URLs, windows, the files it reads — a bad one is a
//! [`StartError::Config`], exit 64), then run on given [`Listeners`] and a bus until a shutdown
//! future completes ([`Service::run`]). A binary's `main` is [`main`]; `selfheal up` builds the
//! four services the same way and starts them on one [`Supervisor`], so no service is wired
//! twice. [`serve`] starts a service's gRPC and HTTP servers, the part every service shares;
//! [`http`] is the HTTP server, within [`http::HttpLimits`] (`[http]` in every service's file).

pub mod grpc_tls;
pub mod http;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, process::ExitCode, sync::Arc};

use async_trait::async_trait;
use selfheal_bus::{
    SharedBus,
    nats::{NatsBus, NatsOptions},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Resolves when the service is to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Connections the kernel holds for a listener before it accepts them.
const LISTEN_QUEUE: u32 = 4096;

/// Where a service serves.
pub struct Listeners {
    /// `/healthz`, `/readyz`, `/metrics` (and, for the gateway, the webhook).
    pub http: TcpListener,
    /// The service's gRPC API and `grpc.health.v1`.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds both addresses, each with a listen queue of 4096 (a burst of new connections waits
    /// there instead of being dropped and sent again a second later).
    pub async fn bind(addresses: Addresses) -> Result<Self, StartError> {
        let bind = |address: SocketAddr| {
            let socket = if address.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            socket
                .and_then(|socket| {
                    socket.set_reuseaddr(true)?;
                    socket.bind(address)?;
                    socket.listen(LISTEN_QUEUE)
                })
                .map_err(|error| StartError::unavailable(format!("binding {address}"), error))
        };
        Ok(Self {
            http: bind(addresses.http)?,
            grpc: bind(addresses.grpc)?,
        })
    }
}

/// The addresses a service listens on (from its config).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// Why a service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or wrong; the message names it. Exit code 64 (`EX_USAGE`).
    #[error("{0}")]
    Config(String),
    /// Something the service needs cannot be reached or opened now (the bus, the database, a
    /// port). Exit code 1.
    #[error("{what}: {source}")]
    Unavailable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StartError {
    /// A bad setting.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// `what` is unavailable, because of `source`.
    pub fn unavailable(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 64,
            Self::Unavailable { .. } => 1,
        }
    }
}

impl From<grpc_tls::TlsError> for StartError {
    fn from(error: grpc_tls::TlsError) -> Self {
        Self::Config(error.to_string())
    }
}

impl From<selfheal_config::ConfigError> for StartError {
    fn from(error: selfheal_config::ConfigError) -> Self {
        Self::Config(error.to_string())
    }
}

/// Why a running service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bus(#[from] selfheal_bus::BusError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("a task of the service stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// What the service needs at start-up (a bucket, a stream) was not there.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A selfheal service.
#[async_trait]
pub trait Service: Sized + Send + 'static {
    /// Its settings (TOML file and `ENV_PREFIX` environment variables, defaults for the rest).
    type Config: serde::de::DeserializeOwned + serde::Serialize + Default + Send + 'static;
    /// The process name, e.g. `selfheal-gateway`: telemetry's `service.name`, the NATS client name.
    const NAME: &'static str;
    /// The environment prefix of its settings, e.g. `SELFHEAL_GATEWAY_`.
    const ENV_PREFIX: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;

    /// Checks every setting and builds what the service needs (it may read files or open a
    /// database; it does not touch the bus).
    async fn from_config(config: Self::Config) -> Result<Self, StartError>;
    /// Where it listens.
    fn addresses(&self) -> Addresses;
    /// How its binary reaches NATS.
    fn bus_options(&self) -> NatsOptions;
    /// Serves on `listeners` until `shutdown` completes, then finishes what it has in hand.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError>;
}

/// Services running side by side until a shutdown signal, or until one of them stops.
#[derive(Default)]
pub struct Supervisor {
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<(&'static str, Result<(), RunError>)>,
}

impl Supervisor {
    /// Binds `service`'s addresses and starts it on `bus`.
    pub async fn start<S: Service>(&mut self, service: S, bus: SharedBus) -> Result<(), StartError> {
        let listeners = Listeners::bind(service.addresses()).await?;
        let shutdown: Shutdown = Box::pin(self.cancel.clone().cancelled_owned());
        self.tasks
            .spawn(async move { (S::NAME, service.run(bus, listeners, shutdown).await) });
        Ok(())
    }

    /// Runs until SIGTERM or Ctrl-C (then stops every service and waits for them) or until a
    /// service stops by itself (then the others are stopped too, and the exit code is 1).
    pub async fn run_until_signal(mut self) -> ExitCode {
        let mut failed = false;
        tokio::select! {
            () = selfheal_telemetry::shutdown_signal() => {}
            Some(stopped) = self.tasks.join_next() => {
                failed = true;
                match stopped {
                    Ok((name, Ok(()))) => tracing::error!(service = name, "a service stopped"),
                    Ok((name, Err(error))) => tracing::error!(service = name, error = %error, "a service failed"),
                    Err(error) => tracing::error!(error = %error, "a service panicked"),
                }
            }
        }
        self.cancel.cancel();
        while let Some(stopped) = self.tasks.join_next().await {
            match stopped {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(error))) => {
                    failed = true;
                    tracing::error!(service = name, error = %error, "a service stopped with an error");
                }
                Err(error) => {
                    failed = true;
                    tracing::error!(error = %error, "a service panicked");
                }
            }
        }
        if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    }
}

/// A service binary's `main`: `--config FILE` and `--probe URL`, telemetry, the config (exit 64
/// when bad), the service built from it (64 or 1), NATS, the listeners, then the service until
/// SIGTERM.
pub async fn main<S: Service>() -> ExitCode {
    let args = args::<S>();
    if let Some(url) = args.get_one::<String>("probe") {
        return selfheal_telemetry::health::probe(url);
    }
    let _telemetry = selfheal_telemetry::init(S::NAME);
    let file = args.get_one::<PathBuf>("config").map(PathBuf::as_path);
    let config: S::Config = match selfheal_config::load(file, S::ENV_PREFIX) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "bad configuration");
            return ExitCode::from(64);
        }
    };
    let service = match S::from_config(config).await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(error = %error, "cannot start");
            return ExitCode::from(error.exit_code());
        }
    };
    let bus = match NatsBus::connect(service.bus_options()).await {
        Ok(bus) => bus,
        Err(error) => {
            tracing::error!(error = %error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let mut supervisor = Supervisor::default();
    if let Err(error) = supervisor.start(service, Arc::new(bus)).await {
        tracing::error!(error = %error, "cannot start");
        return ExitCode::from(error.exit_code());
    }
    supervisor.run_until_signal().await
}

fn args<S: Service>() -> clap::ArgMatches {
    let config_env = format!("{}CONFIG", S::ENV_PREFIX);
    clap::Command::new(S::NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .about(S::ABOUT)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .env(config_env)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML config file; {}* environment variables override it",
                    S::ENV_PREFIX
                )),
        )
        .arg(clap::Arg::new("probe").long("probe").value_name("URL").help(
            "Check the health endpoint at URL and exit 0 if it answers 200, for container health checks \
                     (`--probe http://127.0.0.1:PORT/readyz`); starts nothing",
        ))
        .get_matches()
}

/// The start of every selfheal gRPC server: beside the service named `name` (which the caller
/// adds), the standard services that Kubernetes probes and integrators' tools use —
/// `grpc.health.v1.Health` (SERVING, for `name` and for the server as a whole) and server
/// reflection (`grpc.reflection.v1` and `v1alpha`, as grpcurl and grpcio's clients ask) of
/// `name` from selfheal's protos.
pub async fn grpc_server(name: &'static str) -> Result<tonic::transport::server::Router, StartError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(name, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(selfheal_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(name)
            .with_service_name("grpc.health.v1.Health")
    };
    let unusable = |error| StartError::unavailable("gRPC server reflection", error);
    Ok(tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection().build_v1().map_err(unusable)?)
        .add_service(reflection().build_v1alpha().map_err(unusable)?))
}

/// Serves `grpc` and `http` on `listeners` until `cancel` fires, then lets both finish what
/// they have in hand. gRPC over TLS only when `tls` is given ([`grpc_tls::incoming`]); HTTP
/// within `limits` ([`http::serve`]). Both sockets send small answers where latency matters:
/// no Nagle.
pub fn serve(
    listeners: Listeners,
    grpc: tonic::transport::server::Router,
    tls: Option<grpc_tls::ServerTls>,
    http: axum::Router,
    limits: http::HttpLimits,
    cancel: &CancellationToken,
) -> Servers {
    let stop = cancel.clone().cancelled_owned();
    let grpc = match tls {
        Some(tls) => tokio::spawn(
            grpc.serve_with_incoming_shutdown(grpc_tls::incoming(listeners.grpc, tls, cancel.clone()), stop),
        ),
        None => tokio::spawn(grpc.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            stop,
        )),
    };
    let http = tokio::spawn(http::serve(listeners.http, http, limits, cancel.clone()));
    Servers { grpc, http }
}

/// A service's running gRPC and HTTP servers.
pub struct Servers {
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Servers {
    /// Waits for both to finish.
    pub async fn join(self) -> Result<(), RunError> {
        self.grpc.await??;
        self.http.await??;
        Ok(())
    }
}
