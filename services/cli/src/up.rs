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
use selfheal_gateway::{Gateway, GatewayConfig};
use selfheal_git::{Author, GitRepo, LocalRepository};
use selfheal_notifier::{Notifier, NotifierConfig};
use selfheal_policy::{Policy, PolicyConfig};
use selfheal_pr_controller::{PrController, PrControllerConfig};
use selfheal_runtime::{Service as _, Supervisor};

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
    /// Use this NATS server (or servers, separated by commas) instead of the in-process bus.
    #[arg(long, env = "SELFHEAL_NATS_URL")]
    nats_url: Option<String>,
    #[command(flatten)]
    nats: crate::nats_args::NatsArgs,
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
    open_or_create_repo(&repo_path)?;
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
    // Every service is built from its config as its own binary builds it (each setting
    // checked), then all four run on one bus.
    let internal: SocketAddr = ([127, 0, 0, 1], 0).into();
    let gateway = Gateway::from_config(GatewayConfig {
        listen: args.listen,
        grpc_listen: args.gateway_grpc_listen,
        token: Some(token.clone()),
        ..Default::default()
    })
    .await?;
    let policy = Policy::from_config(PolicyConfig {
        listen: internal,
        grpc_listen: args.grpc_listen,
        policy_dir: policy_dir.clone(),
        grpc_token: Some(token.clone()),
        target: selfheal_policy::target::TargetConfig {
            url: Some(format!("http://{}", args.pr_controller_grpc_listen)),
            token: Some(token.clone()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let pr_controller = PrController::from_config(PrControllerConfig {
        listen: internal,
        grpc_listen: args.pr_controller_grpc_listen,
        repository: repo_path.clone(),
        grpc_token: Some(token.clone()),
        ..Default::default()
    })
    .await?;
    let notifier = Notifier::from_config(NotifierConfig {
        listen: internal,
        grpc_listen: args.audit_grpc_listen,
        grpc_token: Some(token.clone()),
        database_url: Some(Secret::new(format!("sqlite://{}", dir.join("audit.db").display()))),
        webhook_url: args.webhook_url.map(Secret::new),
        ..Default::default()
    })
    .await?;
    let bus: SharedBus = match &args.nats_url {
        Some(url) => {
            Arc::new(NatsBus::connect(NatsOptions::new(url, "selfheal-up").with_config(args.nats.auth()?)).await?)
        }
        None => Arc::new(MemoryBus::default()),
    };
    let mut supervisor = Supervisor::default();
    supervisor.start(gateway, bus.clone()).await?;
    supervisor.start(policy, bus.clone()).await?;
    supervisor.start(pr_controller, bus.clone()).await?;
    supervisor.start(notifier, bus).await?;

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

    Ok(supervisor.run_until_signal().await)
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
