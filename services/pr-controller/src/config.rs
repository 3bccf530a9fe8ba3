//! The pr-controller's settings. File: `--config FILE` (TOML); environment:
//! `SELFHEAL_PR_CONTROLLER_*` (nested keys with `__`, e.g. `SELFHEAL_PR_CONTROLLER_TARGET__PATH` for the single `[target]`).

use std::{net::SocketAddr, path::PathBuf};

use selfheal_git::Author;
use serde::{Deserialize, Serialize};

use crate::reconcile::{ReconcileSettings, Targets};

/// Everything the pr-controller can be told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrControllerConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Address of the gRPC `selfheal.v1.Remediations` service.
    pub grpc_listen: SocketAddr,
    /// Token gRPC callers must send as `authorization: Bearer <token>`.
    pub grpc_token: Option<selfheal_config::Secret>,
    /// File holding the gRPC token (used when `grpc_token` is unset).
    pub grpc_token_file: Option<PathBuf>,
    /// Named gRPC tokens, each with its roles (`read`: `Get`, `List`; `operate`: `Approve`,
    /// `Reject`, `Retry`; `describe`: `DescribeTarget`). An approval made with one is recorded
    /// under its name. The shared `grpc_token` may do everything and names nobody.
    pub grpc_tokens: Vec<selfheal_config::NamedToken>,
    /// NATS server holding the SELFHEAL stream, or a cluster's servers separated by commas
    /// (`nats://a:4222,nats://b:4222`): the service starts while any of them is up.
    pub nats_url: String,
    /// Credentials and TLS for the NATS connection (`[nats]`: user and password, token, NKey
    /// seed file or `.creds` file; `tls_ca_file`, `tls_cert_file` and `tls_key_file`).
    pub nats: selfheal_bus::config::NatsConfig,
    /// Limits of the HTTP server (`[http]`: header and body timeouts, connections, requests in
    /// work).
    pub http: selfheal_runtime::http::HttpLimits,
    /// The gRPC server's certificate (`[grpc_tls]`: `cert_file`, `key_file`, and
    /// `client_ca_file` to ask clients for theirs). Unset: plaintext gRPC. Files are read again
    /// when they change.
    pub grpc_tls: selfheal_runtime::grpc_tls::ServerTlsConfig,
    /// The GitOps repository on disk (bare recommended: selfheal never touches a work tree).
    pub repository: PathBuf,
    /// How long a decision may be in work before JetStream delivers it again (to this or another
    /// replica): after a crash, the decision comes back this long after it was taken.
    #[serde(with = "humantime_serde")]
    pub ack_wait: std::time::Duration,
    /// How long a decision that could not be carried out waits before its next try: this, then
    /// twice as long each time, up to 30 times this.
    #[serde(with = "humantime_serde")]
    pub retry_base: std::time::Duration,
    /// Tries a decision gets before it goes to the dead letters (`selfheal dead-letters`).
    pub max_deliver: u32,
    /// Decisions in work at once. On a local repository they are carried out together, in
    /// batches written at once (one pack, one ref transaction); on a forge, one at a time
    /// whatever this says, as GitHub asks of content-creating requests.
    pub concurrency: usize,
    /// The branch Argo CD or Flux deploys from; auto-approved changes are merged into it.
    pub main_branch: String,
    /// Which file serves which alerts, and where in it the service lives: an ordered list, the
    /// first entry whose `match` the alert's labels meet wins (see ARCHITECTURE.md).
    pub targets: Vec<TargetConfig>,
    /// The single target of earlier versions: the same as a `[[targets]]` of one entry.
    pub target: Option<TargetConfig>,
    /// Commit author.
    pub author_name: String,
    /// Commit author email.
    pub author_email: String,
    /// How long after a merge the alert may keep firing before the remediation is escalated.
    #[serde(with = "humantime_serde")]
    pub verify_window: std::time::Duration,
    /// Undo selfheal's own change when its remediation escalates (once, as a commit on main).
    pub auto_revert: bool,
    /// Per action (`rollback`, `scale`, `restart`), a verification window other than
    /// `verify_window`, e.g. `{ scale = "5m" }`.
    pub verify_windows: std::collections::BTreeMap<String, humantime_serde::Serde<std::time::Duration>>,
    /// How often to look for remediations past their verification window.
    #[serde(with = "humantime_serde")]
    pub verify_interval: std::time::Duration,
    /// The most replicas a scale may set (reported to the policy as `target.max_replicas`).
    pub max_replicas: i32,
    /// How many changes of a file's history to search for the previous image tag.
    pub history_depth: usize,
    /// GitHub as the forge (pull requests) instead of the local `repository`, when
    /// `github.repository` is set.
    pub github: selfheal_forge_github::GitHubConfig,
    /// GitLab as the forge (merge requests), when `gitlab.project` is set.
    pub gitlab: selfheal_forge_gitlab::GitLabConfig,
    /// Gitea or Forgejo as the forge (pull requests), when `gitea.repository` is set.
    pub gitea: selfheal_forge_gitea::GiteaConfig,
    /// Any Git remote, without a forge API, when `remote.url` is set: `repository` is then the
    /// local mirror it is fetched into, and changes are pushed.
    pub remote: RemoteConfig,
    /// On a rollback, hold Flux image automation off the rolled-back line (its `$imagepolicy`
    /// marker is renamed), so the bad tag is not written back. See ARCHITECTURE.md.
    pub hold_image_automation: bool,
    /// After a merge, ask Argo CD or Flux to apply it now (both off by default).
    pub sync: crate::sync::SyncConfig,
    /// Approve and reject from Slack (`[slack]`: `signing_secret`, `allowed_users`,
    /// `allowed_groups`, `bot_token`): serves `POST /slack/interactions` on `listen`. Off
    /// unless a signing secret is set.
    pub slack: crate::slack::SlackConfig,
}

pub use crate::reconcile::{TargetConfig, TargetError};

impl Default for PrControllerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            grpc_token: None,
            grpc_token_file: None,
            grpc_tokens: Vec::new(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            http: Default::default(),
            grpc_tls: Default::default(),
            repository: PathBuf::from("gitops.git"),
            main_branch: "main".into(),
            ack_wait: std::time::Duration::from_secs(30),
            retry_base: std::time::Duration::from_secs(2),
            max_deliver: 10,
            concurrency: 64,
            targets: Vec::new(),
            target: None,
            author_name: "selfheal".into(),
            author_email: "selfheal@localhost".into(),
            verify_window: std::time::Duration::from_secs(15 * 60),
            verify_windows: Default::default(),
            verify_interval: std::time::Duration::from_secs(30),
            auto_revert: false,
            max_replicas: 10,
            history_depth: 200,
            github: Default::default(),
            gitlab: Default::default(),
            gitea: Default::default(),
            remote: Default::default(),
            sync: Default::default(),
            slack: Default::default(),
            hold_image_automation: true,
        }
    }
}

/// A Git remote reached over SSH or HTTPS with no forge API (`[remote]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// `ssh://git@host[:port]/path.git`, `git@host:path.git` or `https://host/path.git` (never
    /// with a password or token in it); empty: no remote.
    pub url: String,
    /// SSH: the private key's file.
    pub ssh_key_file: Option<PathBuf>,
    /// SSH: the known_hosts file the server's host key must be in (required with a key: host
    /// keys are always checked).
    pub known_hosts_file: Option<PathBuf>,
    /// HTTPS: the user name sent with the token (default `git`; GitHub wants `x-access-token`).
    pub username: Option<String>,
    /// HTTPS: a token that may push (sent as the basic-auth password).
    pub token: Option<selfheal_config::Secret>,
    /// File holding the token (used when `token` is unset).
    pub token_file: Option<PathBuf>,
}

impl RemoteConfig {
    /// Whether a remote is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The settings the git engine takes, the token read from its file when it is there.
    pub fn settings(&self) -> Result<selfheal_git::RemoteSettings, selfheal_config::ConfigError> {
        let token = selfheal_config::Secret::inline_or_file(self.token.clone(), self.token_file.as_deref())?;
        Ok(selfheal_git::RemoteSettings {
            url: self.url.clone(),
            ssh_key_file: self.ssh_key_file.clone(),
            known_hosts_file: self.known_hosts_file.clone(),
            username: self.username.clone(),
            token: token.map(|t| t.expose().to_string()),
        })
    }
}

impl PrControllerConfig {
    /// The targets, checked: `[[targets]]`, else the single `[target]`, else the default
    /// (`apps/{service}/kustomization.yaml`). Both set is an error: which one was meant?
    pub fn targets(&self) -> Result<Targets, TargetError> {
        match (&self.target, self.targets.is_empty()) {
            (Some(_), false) => Err(TargetError {
                field: "target".into(),
                problem: "set [[targets]] or the single [target], not both".into(),
            }),
            (Some(target), true) => Targets::new(vec![target.clone()], true),
            (None, true) => Targets::new(vec![TargetConfig::default()], true),
            (None, false) => Targets::new(self.targets.clone(), false),
        }
    }

    /// What the reconciler needs of these settings (the targets checked).
    pub fn reconcile_settings(&self) -> Result<ReconcileSettings, TargetError> {
        Ok(ReconcileSettings {
            main_branch: self.main_branch.clone(),
            targets: self.targets()?,
            author: Author {
                name: self.author_name.clone(),
                email: self.author_email.clone(),
            },
            history_depth: self.history_depth,
            max_replicas: self.max_replicas,
            hold_image_automation: self.hold_image_automation,
        })
    }
}
