//! `selfheal-policy`: loads the policies, connects to NATS, serves until SIGTERM.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use selfheal_bus::nats::{NatsBus, NatsOptions};
use selfheal_policy::{
    Listeners, PolicyConfig,
    engine::{PolicyEngine, ReloadingEngine},
    opa::OpaEngine,
};

/// selfheal's decision layer: Rego policies over alerts.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; SELFHEAL_POLICY_* environment variables override it.
    #[arg(long, env = "SELFHEAL_POLICY_CONFIG")]
    config: Option<PathBuf>,
    /// Check the health endpoint at URL and exit 0 if it answers 200, for container health
    /// checks (`--probe http://127.0.0.1:PORT/readyz`); starts nothing.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        return selfheal_telemetry::health::probe(url);
    }
    let _telemetry = selfheal_telemetry::init("selfheal-policy");
    let config: PolicyConfig = match selfheal_config::load(args.config.as_deref(), "SELFHEAL_POLICY_") {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "bad configuration");
            return ExitCode::from(64);
        }
    };
    let engine: Arc<dyn PolicyEngine> = match &config.opa_url {
        Some(url) if !url.is_empty() => match OpaEngine::new(url, &config.query, config.opa_timeout) {
            Ok(engine) => Arc::new(engine),
            Err(error) => {
                tracing::error!(error = %error, "bad OPA settings");
                return ExitCode::from(64);
            }
        },
        _ => match ReloadingEngine::load(&config.policy_dir, &config.query) {
            Ok(engine) => Arc::new(engine),
            Err(error) => {
                tracing::error!(error = %error, "policies do not load");
                return ExitCode::from(64);
            }
        },
    };
    match serve(config, engine).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "policy service stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: PolicyConfig, engine: Arc<dyn PolicyEngine>) -> anyhow::Result<()> {
    let bus = NatsBus::connect(NatsOptions::new(&config.nats_url, "selfheal-policy")).await?;
    let listeners = Listeners {
        http: tokio::net::TcpListener::bind(config.listen).await?,
        grpc: tokio::net::TcpListener::bind(config.grpc_listen).await?,
    };
    selfheal_policy::run(
        config,
        engine,
        Arc::new(bus),
        listeners,
        selfheal_telemetry::shutdown_signal(),
    )
    .await
}
