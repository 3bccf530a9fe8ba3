//! `selfheal-notifier`: opens the audit log, connects to NATS, serves until SIGTERM.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use selfheal_bus::nats::{NatsBus, NatsOptions};
use selfheal_notifier::{NotifierConfig, audit::SqlAuditStore};

/// selfheal's feedback and record: notifications and the audit log.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; SELFHEAL_NOTIFIER_* environment variables override it.
    #[arg(long, env = "SELFHEAL_NOTIFIER_CONFIG")]
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
    let _telemetry = selfheal_telemetry::init("selfheal-notifier");
    let config = match selfheal_config::load::<NotifierConfig>(args.config.as_deref(), "SELFHEAL_NOTIFIER_")
        .and_then(NotifierConfig::with_secret_files)
    {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "bad configuration");
            return ExitCode::from(64);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "notifier stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: NotifierConfig) -> anyhow::Result<()> {
    let store = SqlAuditStore::connect(config.database_url().expose()).await?;
    let routes = selfheal_notifier::routes_from(&config)?;
    let bus = NatsBus::connect(NatsOptions::new(&config.nats_url, "selfheal-notifier")).await?;
    let token = selfheal_config::Secret::inline_or_file(config.grpc_token.clone(), config.grpc_token_file.as_deref())?
        .ok_or_else(|| anyhow::anyhow!("no gRPC token: set SELFHEAL_NOTIFIER_GRPC_TOKEN or grpc_token_file"))?;
    let listeners = selfheal_notifier::Listeners {
        http: tokio::net::TcpListener::bind(config.listen).await?,
        grpc: tokio::net::TcpListener::bind(config.grpc_listen).await?,
    };
    selfheal_notifier::run(
        Arc::new(store),
        routes,
        selfheal_notifier::Pacing::from_config(&config),
        token,
        Arc::new(bus),
        listeners,
        selfheal_telemetry::shutdown_signal(),
    )
    .await
}
