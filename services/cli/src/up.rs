//! `selfheal up`: the whole loop in one process, on an embedded default.
//!
//! Without flags it keeps everything under `.selfheal/`: a bearer token (`token`), a bare GitOps
//! repository with an example app (`gitops.git`), the default policy (`policies/`), and the
//! SQLite audit log (`audit.db`). The bus is in-process unless `--nats-url` is given.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use clap::Args;
use selfheal_bus::{
    SharedBus,
    memory::MemoryBus,
    nats::{NatsBus, NatsOptions},
};
use selfheal_config::Secret;
use selfheal_git::{Author, GitRepo, LocalRepository};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The default policy, shipped in the binary.
const DEFAULT_POLICY: &str = include_str!("../../../deploy/policies/selfheal.rego");

#[derive(Args)]
pub struct UpArgs {
    /// Where selfheal keeps its state (token, example repository, audit log).
    #[arg(long, default_value = ".selfheal", env = "SELFHEAL_DIR")]
    dir: PathBuf,
    /// Address for the Alertmanager webhook.
    #[arg(long, default_value = "127.0.0.1:9099", env = "SELFHEAL_LISTEN")]
    listen: SocketAddr,
    /// Address for the gateway's gRPC service (Ingest, GetIncident, ListIncidents).
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway_grpc_listen: SocketAddr,
    /// Address for the gRPC policy service (Evaluate).
    #[arg(long, default_value = "127.0.0.1:50052")]
    grpc_listen: SocketAddr,
    /// Address for the notifier's gRPC service (the audit log: `selfheal audit`).
    #[arg(long, default_value = "127.0.0.1:50054")]
    audit_grpc_listen: SocketAddr,
    /// Address for the pr-controller's gRPC service (DescribeTarget).
    #[arg(long, default_value = "127.0.0.1:50053")]
    pr_controller_grpc_listen: SocketAddr,
    /// Use this NATS server instead of the in-process bus.
    #[arg(long, env = "SELFHEAL_NATS_URL")]
    nats_url: Option<String>,
    /// The GitOps repository (default: DIR/gitops.git, created with an example app).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Directory of .rego policies (default: DIR/policies with the built-in policy).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// POST notifications as JSON here (default: log them).
    #[arg(long, env = "SELFHEAL_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Bearer token for the webhook and gRPC (default: DIR/token, generated on first run).
    #[arg(long, env = "SELFHEAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let token_file = dir.join("token");
    let token = match args.token {
        Some(token) if !token.is_empty() => Secret::new(token),
        _ => load_or_create_token(&token_file)?,
    };
    let repo_path = args.repo.clone().unwrap_or_else(|| dir.join("gitops.git"));
    let repo = open_or_create_repo(&repo_path)?;
    let policy_dir = match args.policy_dir {
        Some(policy_dir) => policy_dir,
        None => {
            let policy_dir = dir.join("policies");
            std::fs::create_dir_all(&policy_dir)?;
            let file = policy_dir.join("selfheal.rego");
            if !file.exists() {
                std::fs::write(&file, DEFAULT_POLICY)?;
            }
            policy_dir
        }
    };
    let bus: SharedBus = match &args.nats_url {
        Some(url) => Arc::new(NatsBus::connect(NatsOptions::new(url, "selfheal-up")).await?),
        None => Arc::new(MemoryBus::default()),
    };

    let gateway_config = selfheal_gateway::GatewayConfig {
        listen: args.listen,
        token: Some(token.clone()),
        ..Default::default()
    };
    let policy_config = selfheal_policy::PolicyConfig {
        grpc_listen: args.grpc_listen,
        policy_dir: policy_dir.clone(),
        grpc_token: Some(token.clone()),
        target: selfheal_policy::target::TargetConfig {
            url: Some(format!("http://{}", args.pr_controller_grpc_listen)),
            token: Some(token.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = selfheal_policy::engine::ReloadingEngine::load(&policy_dir, &policy_config.query)?;
    let pr_config = selfheal_pr_controller::PrControllerConfig {
        repository: repo_path.clone(),
        grpc_listen: args.pr_controller_grpc_listen,
        grpc_token: Some(token.clone()),
        ..Default::default()
    };
    let notifier_config = selfheal_notifier::NotifierConfig {
        database_url: Some(Secret::new(format!("sqlite://{}", dir.join("audit.db").display()))),
        webhook_url: args.webhook_url.map(Secret::new),
        ..Default::default()
    };
    let store = selfheal_notifier::audit::SqlAuditStore::connect(notifier_config.database_url().expose()).await?;
    let routes = selfheal_notifier::routes_from(&notifier_config)?;

    let gateway_listeners = selfheal_gateway::Listeners {
        http: TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?,
        grpc: TcpListener::bind(args.gateway_grpc_listen)
            .await
            .with_context(|| format!("binding {}", args.gateway_grpc_listen))?,
    };
    let policy_listeners = selfheal_policy::Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        grpc: TcpListener::bind(args.grpc_listen)
            .await
            .with_context(|| format!("binding {}", args.grpc_listen))?,
    };
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(selfheal_gateway::run(
        gateway_config,
        bus.clone(),
        gateway_listeners,
        cancel.clone().cancelled_owned(),
    ));
    tasks.spawn(selfheal_policy::run(
        policy_config,
        Arc::new(engine),
        bus.clone(),
        policy_listeners,
        cancel.clone().cancelled_owned(),
    ));
    tasks.spawn(selfheal_pr_controller::run(
        pr_config,
        Arc::new(repo),
        None,
        bus.clone(),
        selfheal_pr_controller::Listeners {
            http: TcpListener::bind("127.0.0.1:0").await?,
            grpc: TcpListener::bind(args.pr_controller_grpc_listen)
                .await
                .with_context(|| format!("binding {}", args.pr_controller_grpc_listen))?,
        },
        cancel.clone().cancelled_owned(),
    ));
    tasks.spawn(selfheal_notifier::run(
        Arc::new(store),
        routes,
        selfheal_notifier::Pacing::from_config(&notifier_config),
        token.clone(),
        bus.clone(),
        selfheal_notifier::Listeners {
            http: TcpListener::bind("127.0.0.1:0").await?,
            grpc: TcpListener::bind(args.audit_grpc_listen)
                .await
                .with_context(|| format!("binding {}", args.audit_grpc_listen))?,
        },
        cancel.clone().cancelled_owned(),
    ));

    let bus_name = if args.nats_url.is_some() {
        "NATS JetStream"
    } else {
        "the in-process bus"
    };
    println!(
        "selfheal is up on {bus_name}.\n\n  webhook:    http://{listen}/v1/alerts/alertmanager\n  token:      {token_path}\n  repository: {repo}\n  policies:   {policies}\n  audit log:  {audit}\n\nSend an alert:\n  curl -sS -H \"Authorization: Bearer $(cat {token_path})\" -H 'Content-Type: application/json' \\\n    --data @examples/alertmanager-firing.json http://{listen}/v1/alerts/alertmanager\nSee the fix:\n  git --git-dir {repo} log -p -1 main\n\nCtrl-C stops.",
        listen = args.listen,
        token_path = token_file.display(),
        repo = repo_path.display(),
        policies = policy_dir.display(),
        audit = dir.join("audit.db").display(),
    );

    let mut failed = false;
    tokio::select! {
        () = selfheal_telemetry::shutdown_signal() => {}
        Some(result) = tasks.join_next() => {
            failed = true;
            match result {
                Ok(Ok(())) => tracing::error!("a service stopped"),
                Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "a service failed"),
                Err(error) => tracing::error!(error = %error, "a service panicked"),
            }
        }
    }
    cancel.cancel();
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(error)) = result {
            tracing::error!(error = format!("{error:#}"), "service stopped with an error");
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn load_or_create_token(path: &Path) -> anyhow::Result<Secret> {
    if let Some(token) = Secret::inline_or_file(None, path.exists().then_some(path))? {
        return Ok(token);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &format!("{token}\n"))?;
    Ok(Secret::new(token))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)?;
    Ok(())
}

/// The example app: a checkout service whose latest release (v1.5.0) followed v1.4.1, so a
/// rollback has somewhere to go.
fn open_or_create_repo(path: &Path) -> anyhow::Result<LocalRepository> {
    if path.exists() {
        return LocalRepository::open(path).with_context(|| format!("opening {}", path.display()));
    }
    let kustomization = |tag: &str| {
        format!(
            "# The checkout service, as Argo CD / Flux deploys it.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: shop\nresources:\n  - deployment.yaml\nimages:\n  - name: ghcr.io/example/checkout\n    newTag: {tag} # set by the release pipeline\nreplicas:\n  - name: checkout\n    count: 2\n"
        )
    };
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: checkout\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: checkout}\n  template:\n    metadata:\n      labels: {app: checkout}\n    spec:\n      containers:\n        - name: checkout\n          image: ghcr.io/example/checkout\n";
    let first = kustomization("v1.4.1");
    let second = kustomization("v1.5.0");
    let author = Author {
        name: "release-bot".into(),
        email: "release-bot@example.com".into(),
    };
    let repo = LocalRepository::init_bare_with_commits(
        path,
        "main",
        &[
            (
                "checkout: release v1.4.1",
                vec![
                    ("apps/checkout/deployment.yaml", deployment),
                    ("apps/checkout/kustomization.yaml", first.as_str()),
                ],
            ),
            (
                "checkout: release v1.5.0",
                vec![("apps/checkout/kustomization.yaml", second.as_str())],
            ),
        ],
        &author,
    )
    .with_context(|| format!("creating the example repository {}", path.display()))?;
    tracing::info!(repository = %repo.location(), "created an example GitOps repository");
    Ok(repo)
}
