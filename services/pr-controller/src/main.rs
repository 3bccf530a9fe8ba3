//! `selfheal-pr-controller`: opens the GitOps repository, connects to NATS, serves until SIGTERM.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use selfheal_bus::nats::{NatsBus, NatsOptions};
use selfheal_forge_github::GitHubRepository;
use selfheal_git::{Forge, GitRepo, LocalRepository};
use selfheal_pr_controller::PrControllerConfig;

/// selfheal's execution layer: decisions into GitOps commits.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; SELFHEAL_PR_CONTROLLER_* environment variables override it.
    #[arg(long, env = "SELFHEAL_PR_CONTROLLER_CONFIG")]
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
    let _telemetry = selfheal_telemetry::init("selfheal-pr-controller");
    let config: PrControllerConfig = match selfheal_config::load(args.config.as_deref(), "SELFHEAL_PR_CONTROLLER_") {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "bad configuration");
            return ExitCode::from(64);
        }
    };
    let (repo, forge): (Arc<dyn GitRepo>, Option<Arc<dyn Forge>>) = if config.github.enabled() {
        match GitHubRepository::new(config.github.clone(), tokio::runtime::Handle::current()) {
            Ok(repo) => {
                let repo = Arc::new(repo);
                (repo.clone(), Some(repo))
            }
            Err(error) => {
                tracing::error!(error = %error, "GitHub is not usable");
                return ExitCode::from(64);
            }
        }
    } else {
        match LocalRepository::open(&config.repository) {
            Ok(repo) => (Arc::new(repo), None),
            Err(error) => {
                tracing::error!(error = %error, "repository does not open");
                return ExitCode::from(64);
            }
        }
    };
    match serve(config, repo, forge).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "pr-controller stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: PrControllerConfig,
    repo: Arc<dyn GitRepo>,
    forge: Option<Arc<dyn Forge>>,
) -> anyhow::Result<()> {
    let bus = NatsBus::connect(NatsOptions::new(&config.nats_url, "selfheal-pr-controller")).await?;
    let listeners = selfheal_pr_controller::Listeners {
        http: tokio::net::TcpListener::bind(config.listen).await?,
        grpc: tokio::net::TcpListener::bind(config.grpc_listen).await?,
    };
    selfheal_pr_controller::run(
        config,
        repo,
        forge,
        Arc::new(bus),
        listeners,
        selfheal_telemetry::shutdown_signal(),
    )
    .await
}
