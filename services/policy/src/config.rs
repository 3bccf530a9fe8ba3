//! The policy service's settings. File: `--config FILE` (TOML); environment: `SELFHEAL_POLICY_*`.

use std::{net::SocketAddr, path::PathBuf};

use selfheal_config::Secret;
use serde::{Deserialize, Serialize};

/// Everything the policy service can be told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Address of the gRPC `selfheal.v1.Policy` service.
    pub grpc_listen: SocketAddr,
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
    /// An OPA server (`http://opa:8181`) to evaluate `query` on instead of the files in
    /// `policy_dir`; the input, the decision contract and the limits stay the same.
    pub opa_url: Option<String>,
    /// How long one OPA call may take.
    #[serde(with = "humantime_serde")]
    pub opa_timeout: std::time::Duration,
    /// Directory of `.rego` files; every file in it is loaded.
    pub policy_dir: PathBuf,
    /// The rule whose value is the decision.
    pub query: String,
    /// Token gRPC callers must send as `authorization: Bearer <token>`.
    pub grpc_token: Option<Secret>,
    /// File holding the gRPC token (used when `grpc_token` is unset).
    pub grpc_token_file: Option<PathBuf>,
    /// Named gRPC tokens, each with its roles (`read`: `Evaluate`, `ListPolicies`; `operate`: `Reload`). The shared `grpc_token` may do
    /// everything.
    pub grpc_tokens: Vec<selfheal_config::NamedToken>,
    /// Decide and publish, but mark every decision dry-run so nothing is changed.
    pub dry_run: bool,
    /// Evaluate the Rego policies on regorus's virtual machine (about four times as fast as its
    /// interpreter; a policy that does not compile for it, or an evaluation it cannot finish, is
    /// evaluated by the interpreter). `false`: the interpreter only, the reference — should a
    /// policy decide differently on the two, which is a regorus bug worth reporting.
    pub rego_vm: bool,
    /// How often to look for changed policy files (zero: never; gRPC Reload still works).
    #[serde(with = "humantime_serde")]
    pub reload_interval: std::time::Duration,
    /// How long an alert may be in work before JetStream delivers it again (after a crash, the
    /// alert comes back this long after it was taken).
    #[serde(with = "humantime_serde")]
    pub ack_wait: std::time::Duration,
    /// Alerts decided at once by this replica (the reservations of those deciding at once are
    /// taken together; across replicas, limits hold by compare-and-set). Deciding waits mostly
    /// on round trips (the history, the target, the limits, the publish), so a burst is decided
    /// fastest when it is all in work at once: 256 takes a burst of 200 in one go.
    pub concurrency: usize,
    /// Critical windows (`[[windows]]`): recurring (`days`, `start`, `end`, `time_zone`) or
    /// one-off (`from`, `until`), each for the alerts it `match`es; inside one nothing is changed
    /// automatically.
    pub windows: Vec<crate::windows::WindowConfig>,
    /// Who calls each service (`[dependents]`: a service-graph `query`, or `static` callers), and
    /// the gateway to ask which of them are firing: `input.dependents`, and what
    /// `limits.max_firing_dependents` counts.
    pub dependents: crate::dependents::DependentsConfig,
    /// Where `input.target` comes from.
    pub target: crate::target::TargetConfig,
    /// Metrics read for the policy input.
    pub metrics: crate::promql::MetricsConfig,
    /// Limits enforced beyond the policy.
    pub limits: crate::limits::LimitsConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            http: Default::default(),
            grpc_tls: Default::default(),
            opa_url: None,
            opa_timeout: std::time::Duration::from_secs(2),
            policy_dir: PathBuf::from("deploy/policies"),
            query: "data.selfheal.decision".into(),
            grpc_token: None,
            grpc_token_file: None,
            grpc_tokens: Vec::new(),
            dry_run: false,
            rego_vm: true,
            reload_interval: std::time::Duration::from_secs(2),
            ack_wait: std::time::Duration::from_secs(30),
            concurrency: 256,
            windows: Vec::new(),
            dependents: Default::default(),
            target: crate::target::TargetConfig::default(),
            metrics: crate::promql::MetricsConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
        }
    }
}
