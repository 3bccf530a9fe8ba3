//! `selfheal-gateway`: reads config, connects to NATS, serves until SIGTERM.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use selfheal_bus::nats::{NatsBus, NatsOptions};
use selfheal_gateway::GatewayConfig;

/// selfheal's ingest: Alertmanager webhooks into the SELFHEAL stream.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; SELFHEAL_GATEWAY_* environment variables override it.
    #[arg(long, env = "SELFHEAL_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Check the health endpoint at URL and exit 0 if it answers 200, for container health
    /// checks (`--probe http://127.0.0.1:PORT/readyz`); starts nothing.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
}

/// mimalloc: the webhook path allocates per request, and glibc's malloc was a fifth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        return selfheal_telemetry::health::probe(url);
    }
    let _telemetry = selfheal_telemetry::init("selfheal-gateway");
    let config: GatewayConfig = match selfheal_config::load(args.config.as_deref(), "SELFHEAL_GATEWAY_") {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "bad configuration");
            return ExitCode::from(64);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let mut options = NatsOptions::new(&config.nats_url, "selfheal-gateway");
    options.duplicate_window = config.duplicate_window;
    options.publish_timeout = config.publish_timeout;
    let bus = NatsBus::connect(options).await?;
    let listeners = selfheal_gateway::Listeners {
        http: tokio::net::TcpListener::bind(config.listen).await?,
        grpc: tokio::net::TcpListener::bind(config.grpc_listen).await?,
    };
    selfheal_gateway::run(config, Arc::new(bus), listeners, selfheal_telemetry::shutdown_signal()).await
}
