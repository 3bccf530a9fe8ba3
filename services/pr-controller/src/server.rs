//! The pr-controller's process: its consumers, the gRPC service and the health endpoints.

use std::{sync::Arc, time::Duration};

use selfheal_bus::{ConsumerSpec, SharedBus, consumer, nats::NatsOptions, subjects};
use selfheal_forge_gitea::GiteaRepository;
use selfheal_forge_github::GitHubRepository;
use selfheal_forge_gitlab::GitLabRepository;
use selfheal_git::{Forge, GitRepo, LocalRepository, RemoteRepository, RepoError};
use selfheal_runtime::{Addresses, RunError, Service, Shutdown, StartError};
use tokio_util::sync::CancellationToken;

use crate::{
    config::PrControllerConfig,
    grpc,
    handler::{CONSUMER, RemediationHandler},
    lifecycle::{VERIFY_CONSUMER, VerifyHandler, sweep_once},
    reconcile::Reconciler,
    sync, verify,
};

pub use selfheal_runtime::Listeners;

/// The pr-controller, built from its config with every setting checked: the gRPC token, the
/// repository (a local one, or GitHub), the targets, the verification windows and sync-now.
pub struct PrController {
    config: PrControllerConfig,
    repo: Arc<dyn GitRepo>,
    forge: Option<Arc<dyn Forge>>,
    token: selfheal_config::TokenCheck,
    verify_windows: Vec<(String, Duration)>,
    sync: sync::SyncNow,
    settings: crate::reconcile::ReconcileSettings,
    nats: selfheal_bus::config::CheckedNats,
    tls: Option<selfheal_runtime::grpc_tls::ServerTls>,
    /// `[slack]`, checked, and its client.
    slack: Option<(crate::slack::CheckedSlack, Arc<crate::slack::SlackApi>)>,
}

/// `/readyz`: the bus is connected and, on a repository of its own (not a forge's), main can be
/// read. A repository that is gone, unreadable or without main fails every remediation, so the
/// replica must not look ready. A forge is not called on every probe (GitHub counts the calls);
/// its failures show as failed remediations and in the logs.
pub fn readiness(
    bus: SharedBus,
    repo: Arc<dyn GitRepo>,
    forge: Option<Arc<dyn Forge>>,
    main: String,
) -> selfheal_telemetry::health::ReadinessCheck {
    Arc::new(move || {
        let (bus, repo, main) = (bus.clone(), repo.clone(), main.clone());
        let on_a_forge = forge.is_some();
        Box::pin(async move {
            bus.ready().await.map_err(|e| e.to_string())?;
            if on_a_forge {
                return Ok(());
            }
            let location = repo.location();
            let tip = tokio::task::spawn_blocking(move || repo.branch_tip(&main).map(|tip| (tip, main)))
                .await
                .map_err(|e| format!("reading the repository panicked: {e}"))?
                .map_err(|e| format!("the repository {location} cannot be read: {e}"))?;
            match tip {
                (Some(_), _) => Ok(()),
                (None, main) => Err(format!("the repository {location} has no branch {main}")),
            }
        })
    })
}

#[async_trait::async_trait]
impl Service for PrController {
    type Config = PrControllerConfig;
    const NAME: &'static str = "selfheal-pr-controller";
    const ENV_PREFIX: &'static str = "SELFHEAL_PR_CONTROLLER_";
    const ABOUT: &'static str = "selfheal's execution layer: decisions into GitOps commits.";

    async fn from_config(config: PrControllerConfig) -> Result<Self, StartError> {
        let token = selfheal_config::TokenCheck::from_settings(
            config.grpc_token.clone(),
            config.grpc_token_file.as_deref(),
            &config.grpc_tokens,
            Self::ENV_PREFIX,
        )?;
        let places: Vec<&str> = [
            (config.github.enabled(), "github.repository"),
            (config.gitlab.enabled(), "gitlab.project"),
            (config.gitea.enabled(), "gitea.repository"),
            (config.remote.enabled(), "remote.url"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if places.len() > 1 {
            return Err(StartError::config(format!(
                "{} are all set: choose one place for the repository",
                places.join(" and ")
            )));
        }
        let (repo, forge): (Arc<dyn GitRepo>, Option<Arc<dyn Forge>>) = if config.remote.enabled() {
            let settings = config
                .remote
                .settings()
                .map_err(|e| StartError::config(format!("remote.token_file: {e}")))?;
            let mirror = config.repository.clone();
            let opened = tokio::task::spawn_blocking(move || RemoteRepository::open(settings, &mirror))
                .await
                .map_err(|e| StartError::unavailable("the remote", e))?;
            match opened {
                Ok(remote) => (Arc::new(remote), None),
                Err(error @ (RepoError::Open { .. } | RepoError::Refused(_))) => {
                    return Err(StartError::config(format!("remote: {error}")));
                }
                Err(error) => return Err(StartError::unavailable("the remote", error)),
            }
        } else if config.gitlab.enabled() {
            let gitlab = GitLabRepository::new(config.gitlab.clone(), tokio::runtime::Handle::current())
                .map_err(|e| StartError::config(format!("gitlab: {e}")))?;
            let gitlab = Arc::new(gitlab);
            (gitlab.clone(), Some(gitlab))
        } else if config.gitea.enabled() {
            let gitea = GiteaRepository::new(
                config.gitea.clone(),
                &config.main_branch,
                tokio::runtime::Handle::current(),
            )
            .map_err(|e| StartError::config(format!("gitea: {e}")))?;
            let gitea = Arc::new(gitea);
            (gitea.clone(), Some(gitea))
        } else if config.github.enabled() {
            let github = GitHubRepository::new(config.github.clone(), tokio::runtime::Handle::current())
                .map_err(|e| StartError::config(format!("github: {e}")))?;
            let github = Arc::new(github);
            (github.clone(), Some(github))
        } else {
            let local = LocalRepository::open(&config.repository)
                .map_err(|e| StartError::config(format!("repository: {e}")))?;
            (Arc::new(local), None)
        };
        let verify_windows = config
            .verify_windows
            .iter()
            .map(|(action, window)| match action.as_str() {
                "rollback" | "scale" | "restart" => Ok((action.clone(), **window)),
                other => Err(StartError::config(format!(
                    "verify_windows.{other}: not an action (rollback, scale or restart)"
                ))),
            })
            .collect::<Result<_, _>>()?;
        let sync = sync::SyncNow::from_config(&config.sync).map_err(|e| StartError::config(e.to_string()))?;
        let settings = config
            .reconcile_settings()
            .map_err(|e| StartError::config(e.to_string()))?;
        let nats = config.nats.check().map_err(|e| StartError::config(e.to_string()))?;
        let tls = selfheal_runtime::grpc_tls::ServerTls::from_config(&config.grpc_tls)?;
        let slack = match config.slack.check().map_err(|e| StartError::config(e.to_string()))? {
            Some(slack) => {
                let api = crate::slack::SlackApi::new(&slack).map_err(|e| StartError::config(format!("slack: {e}")))?;
                Some((slack, Arc::new(api)))
            }
            None => None,
        };
        Ok(Self {
            slack,
            tls,
            nats,
            settings,
            config,
            repo,
            forge,
            token,
            verify_windows,
            sync,
        })
    }

    fn addresses(&self) -> Addresses {
        Addresses {
            http: self.config.listen,
            grpc: self.config.grpc_listen,
        }
    }

    fn bus_options(&self) -> NatsOptions {
        // The pr-controller keeps its remediation records' bucket.
        NatsOptions::new(&self.config.nats_url, Self::NAME)
            .with_config(self.nats.clone())
            .keeping(&[crate::verify::BUCKET])
    }

    /// Runs the consumers, the gRPC service and the health endpoints until `shutdown` completes.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
        let Self {
            config,
            repo,
            forge,
            token,
            verify_windows,
            sync,
            settings,
            tls,
            slack,
            ..
        } = self;
        let cancel = CancellationToken::new();
        let (repo_for_ready, forge_for_ready, main_branch) = (repo.clone(), forge.clone(), config.main_branch.clone());
        let (verify_window, verify_interval, auto_revert, ack_wait, concurrency) = (
            config.verify_window,
            config.verify_interval,
            config.auto_revert,
            config.ack_wait,
            config.concurrency,
        );
        let (retry_base, max_deliver) = (config.retry_base, config.max_deliver);
        let remediations = bus
            .key_value(verify::BUCKET, verify_window * 4 + Duration::from_secs(24 * 3600))
            .await?;
        let mut verifier = verify::Verifier::new(remediations, verify_window);
        for (action, window) in verify_windows {
            verifier = verifier.with_window(&action, window);
        }
        let control = selfheal_bus::control::open(&bus).await?;
        let handler = Arc::new(
            RemediationHandler::new(Reconciler::new(repo, forge, settings), bus.clone())
                .with_retry_base(retry_base)
                .with_verifier(verifier.clone())
                .with_sync(sync)
                .with_kill_switch(control.clone()),
        );
        let reconciler = handler.reconciler().clone();
        {
            // Read main's history now rather than on the first decision (a large repository takes
            // seconds); decisions arriving meanwhile wait on the same index, not on a second walk.
            let reconciler = reconciler.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let main = reconciler.settings().main_branch.clone();
                match reconciler.git().warm(&main) {
                    Ok(()) => {
                        tracing::info!(branch = %main, elapsed_ms = started.elapsed().as_millis() as u64, "history read")
                    }
                    Err(error) => tracing::warn!(branch = %main, error = %error, "history not read ahead"),
                }
            });
        }
        let service = Arc::new(grpc::RemediationsService::new(handler.clone()));
        let mut decisions = ConsumerSpec::new(CONSUMER, &[subjects::DECISIONS]);
        decisions.ack_wait = ack_wait;
        decisions.max_deliver = i64::from(max_deliver.max(1));
        decisions.concurrency = if handler.batches() { concurrency.max(1) } else { 1 };
        let consumer_task = tokio::spawn(consumer::run(
            bus.clone(),
            decisions,
            handler,
            cancel.clone().cancelled_owned(),
        ));
        tokio::spawn(selfheal_telemetry::metrics::sample_consumer_lag(
            bus.clone(),
            vec![CONSUMER.to_string(), VERIFY_CONSUMER.to_string()],
            Duration::from_secs(5),
            cancel.clone().cancelled_owned(),
        ));
        let verify_task = tokio::spawn(consumer::run(
            bus.clone(),
            ConsumerSpec::new(VERIFY_CONSUMER, &["selfheal.alerts.resolved.>"]),
            Arc::new(VerifyHandler {
                verifier: verifier.clone(),
                bus: bus.clone(),
            }),
            cancel.clone().cancelled_owned(),
        ));
        let sweep_task = {
            let (bus, cancel) = (bus.clone(), cancel.clone());
            let revert_with = auto_revert.then(|| reconciler.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(verify_interval);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    let swept = sweep_once(
                        &verifier,
                        revert_with.as_ref(),
                        Some(&control),
                        &bus,
                        chrono::Utc::now(),
                    )
                    .await;
                    if let Err(error) = swept {
                        tracing::warn!(error = %error, "verification sweep failed");
                    }
                }
            })
        };
        tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "pr-controller running");
        let grpc = selfheal_runtime::grpc_server(<selfheal_proto::v1::remediations_server::RemediationsServer<grpc::RemediationsService> as tonic::server::NamedService>::NAME)
            .await?
            .add_service(grpc::server(service.clone(), token));
        let mut http = selfheal_telemetry::health::router(
            readiness(bus, repo_for_ready, forge_for_ready, main_branch),
            selfheal_telemetry::metrics::install(),
        );
        if let Some((slack, api)) = slack {
            // Approvals from Slack go through the same service as the gRPC `Approve`.
            let interactions = crate::slack::Interactions::new(slack, api.clone(), api, service);
            tracing::info!(path = crate::slack::PATH, "slack interactivity served");
            http = http.merge(Arc::new(interactions).router());
        }
        let servers = selfheal_runtime::serve(listeners, grpc, tls, http, config.http, &cancel);
        shutdown.await;
        cancel.cancel();
        consumer_task.await??;
        verify_task.await??;
        sweep_task.await?;
        servers.join().await
    }
}
