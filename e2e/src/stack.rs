//! A whole selfheal stack on real components, for the end-to-end scenarios: nats-server (one
//! node or a cluster), a GitOps repository, the four services, and — when there are demo apps —
//! Prometheus and Alertmanager. The chaos scenarios and the cluster test share it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, ensure};
use futures::StreamExt;
use prost::Message as _;
use selfheal_proto::v1::{Decision, RemediationEvent};

use crate::{NatsCluster, Process, TOKEN, binary, free_port, git, wait_ready, workspace_root};

/// A service's kustomization: its image tag and replicas.
pub fn kustomization(service: &str, tag: &str, replicas: u32) -> String {
    format!(
        "# {service}, production\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: ghcr.io/acme/{service}\n    newTag: {tag} # release pipeline\nreplicas:\n  - name: {service}\n    count: {replicas}\n"
    )
}

/// A bare repository; each service's history is `releases` (tag, replicas), oldest first.
pub fn gitops_repo(dir: &Path, services: &[(&str, &[(&str, u32)])]) -> anyhow::Result<PathBuf> {
    let (bare, work) = crate::bare_repository_and_clone(dir)?;
    for (service, releases) in services {
        std::fs::create_dir_all(work.join(format!("apps/{service}")))?;
        for (tag, replicas) in *releases {
            std::fs::write(
                work.join(format!("apps/{service}/kustomization.yaml")),
                kustomization(service, tag, *replicas),
            )?;
            git(&work, &["add", "."])?;
            git(&work, &["commit", "-q", "-m", &format!("{service}: release {tag}")])?;
        }
    }
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok(bare)
}

/// Prometheus's rules for the demo apps.
pub const RULES: &str = r#"groups:
  - name: demo
    rules:
      - alert: HighErrorRate
        expr: sum by (service) (rate(http_requests_total{status="500"}[5s])) / sum by (service) (rate(http_requests_total[5s])) > 0.05
        for: 1s
        labels: {severity: critical, auto_heal: "true"}
        annotations: {summary: "{{ $labels.service }} fails too many requests"}
      - alert: HighCPU
        expr: max by (service) (demo_cpu_utilization) > 0.8
        for: 1s
        labels: {severity: critical, auto_heal: "true"}
        annotations: {summary: "{{ $labels.service }} is CPU-bound"}
"#;

/// A demo service: its name, its releases in git (tag, replicas; oldest first), its CPU demand.
pub type Demo<'a> = (&'a str, &'a [(&'a str, u32)], f64);

/// How to (re)start one process of the stack.
#[derive(Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    /// A URL that answers 200 once it is ready.
    pub ready: String,
}

/// Everything, started and ready.
pub struct Stack {
    pub nats: NatsCluster,
    pub dir: PathBuf,
    /// The GitOps repository (bare).
    pub repo: PathBuf,
    /// What the services are given: every node's URL, comma-separated.
    pub nats_url: String,
    pub specs: BTreeMap<String, Spec>,
    pub processes: BTreeMap<String, Process>,
    starts: usize,
    pub demo_ports: BTreeMap<String, u16>,
    /// Prometheus's base URL (empty without demo apps).
    pub prometheus: String,
}

impl Stack {
    /// Starts (or starts again) the process `name` and waits until it is ready.
    pub async fn launch(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self.specs.get(name).context("no such process")?.clone();
        self.starts += 1;
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let log_name = format!("{name}.{}", self.starts);
        let mut process = Process::start(&log_name, &spec.program, &args, &spec.env, &self.dir)?;
        wait_ready(&spec.ready, &mut process).await?;
        self.processes.insert(name.to_string(), process);
        Ok(())
    }

    /// CPU time used so far by each process running, nats-server included, by name.
    pub fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        self.processes
            .iter()
            .chain(self.nats.nodes.iter().map(|node| (&node.name, &node.server.process)))
            .filter_map(|(name, process)| Some((name.clone(), process.cpu_seconds()?)))
            .collect()
    }

    /// SIGKILL.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        self.processes.get_mut(name).context("not running")?.kill().await
    }

    /// The last lines of every process's log, nats-servers' included.
    pub fn dump(&self) -> String {
        self.processes
            .values()
            .chain(self.nats.nodes.iter().map(|n| &n.server.process))
            .map(|p| {
                let out = p.output();
                let tail: Vec<&str> = out.lines().rev().take(30).collect();
                format!(
                    "--- {}\n{}",
                    p.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// On one nats-server: [`Self::start_on`].
    pub async fn start(
        dir: &Path,
        demos: &[Demo<'_>],
        more: &[(&str, &[(&str, u32)])],
        extra_env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_on(NatsCluster::start(1).await?, dir, demos, more, extra_env).await
    }

    /// Starts a GitOps repository holding `demos` and `more` services, a demo app per demo,
    /// selfheal on `nats` with `extra_env`, and — when there are demos — Prometheus and
    /// Alertmanager.
    pub async fn start_on(
        nats: NatsCluster,
        dir: &Path,
        demos: &[Demo<'_>],
        more: &[(&str, &[(&str, u32)])],
        extra_env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let mut services: Vec<(&str, &[(&str, u32)])> = demos.iter().map(|(s, r, _)| (*s, *r)).collect();
        services.extend_from_slice(more);
        let repo = gitops_repo(dir, &services)?;
        let mut stack = Stack {
            nats_url: nats.url(),
            nats,
            dir: dir.to_path_buf(),
            repo: repo.clone(),
            specs: BTreeMap::new(),
            processes: BTreeMap::new(),
            starts: 0,
            demo_ports: BTreeMap::new(),
            prometheus: String::new(),
        };
        let nats_url = stack.nats_url.clone();

        // The demo apps (they apply main themselves: the sync stand-in).
        for (service, _, cpu_load) in demos {
            let port = free_port()?;
            let args = [
                "--listen".to_string(),
                format!("127.0.0.1:{port}"),
                "--repository".into(),
                repo.display().to_string(),
                "--path".into(),
                format!("apps/{service}/kustomization.yaml"),
                "--service".into(),
                service.to_string(),
                "--sync-interval".into(),
                "500ms".into(),
                "--rps".into(),
                "200".into(),
                "--cpu-load".into(),
                cpu_load.to_string(),
            ];
            let name = format!("demo-{service}");
            stack.specs.insert(
                name.clone(),
                Spec {
                    program: binary("demo-app")?,
                    args: args.to_vec(),
                    env: vec![],
                    ready: format!("http://127.0.0.1:{port}/healthz"),
                },
            );
            stack.launch(&name).await?;
            stack.demo_ports.insert(service.to_string(), port);
        }

        // selfheal.
        let (gateway_port, policy_port, pr_port, notifier_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let pr_grpc = free_port()?;
        let prometheus_port = free_port()?;
        let alertmanager_port = free_port()?;
        // With a CA for the policy's client in `extra_env`, it calls the pr-controller over TLS.
        let target_scheme = if extra_env
            .iter()
            .any(|(k, _)| *k == "SELFHEAL_POLICY_TARGET__TLS__CA_FILE")
        {
            "https"
        } else {
            "http"
        };
        let policy_config = dir.join("policy.toml");
        std::fs::write(
            &policy_config,
            if demos.is_empty() {
                String::new()
            } else {
                format!(
                    "[metrics]\nprometheus_url = \"http://127.0.0.1:{prometheus_port}\"\ntimeout = \"2s\"\n\
                 [metrics.queries.HighErrorRate]\nerror_rate = 'sum(rate(http_requests_total{{service=\"{{{{service}}}}\",status=\"500\"}}[5s])) / sum(rate(http_requests_total{{service=\"{{{{service}}}}\"}}[5s]))'\n\
                 [metrics.queries.HighCPU]\ncpu = 'max(demo_cpu_utilization{{service=\"{{{{service}}}}\"}})'\n"
                )
            },
        )?;
        let services = [
            (
                "gateway",
                vec![
                    ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{gateway_port}")),
                    ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
                    ("SELFHEAL_GATEWAY_NATS_URL", nats_url.clone()),
                    ("SELFHEAL_GATEWAY_TOKEN", TOKEN.into()),
                ],
                gateway_port,
            ),
            (
                "policy",
                vec![
                    ("SELFHEAL_POLICY_CONFIG", policy_config.display().to_string()),
                    ("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{policy_port}")),
                    ("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
                    ("SELFHEAL_POLICY_NATS_URL", nats_url.clone()),
                    (
                        "SELFHEAL_POLICY_POLICY_DIR",
                        workspace_root().join("deploy/policies").display().to_string(),
                    ),
                    ("SELFHEAL_POLICY_GRPC_TOKEN", TOKEN.into()),
                    (
                        "SELFHEAL_POLICY_TARGET__URL",
                        format!("{target_scheme}://127.0.0.1:{pr_grpc}"),
                    ),
                    ("SELFHEAL_POLICY_TARGET__TOKEN", TOKEN.into()),
                ],
                policy_port,
            ),
            (
                "pr-controller",
                vec![
                    ("SELFHEAL_PR_CONTROLLER_LISTEN", format!("127.0.0.1:{pr_port}")),
                    ("SELFHEAL_PR_CONTROLLER_GRPC_LISTEN", format!("127.0.0.1:{pr_grpc}")),
                    ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats_url.clone()),
                    ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
                    ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", TOKEN.into()),
                    ("SELFHEAL_PR_CONTROLLER_VERIFY_WINDOW", "2m".into()),
                    ("SELFHEAL_PR_CONTROLLER_VERIFY_INTERVAL", "1s".into()),
                ],
                pr_port,
            ),
            (
                "notifier",
                vec![
                    ("SELFHEAL_NOTIFIER_LISTEN", format!("127.0.0.1:{notifier_port}")),
                    ("SELFHEAL_NOTIFIER_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
                    ("SELFHEAL_NOTIFIER_NATS_URL", nats_url.clone()),
                    (
                        "SELFHEAL_NOTIFIER_DATABASE_URL",
                        format!("sqlite://{}?mode=rwc", dir.join("audit.db").display()),
                    ),
                    ("SELFHEAL_NOTIFIER_GRPC_TOKEN", TOKEN.into()),
                ],
                notifier_port,
            ),
        ];
        for (name, mut env, port) in services {
            let prefix = format!("SELFHEAL_{}_", name.to_uppercase().replace('-', "_"));
            env.extend(extra_env.iter().filter(|(k, _)| k.starts_with(&prefix)).cloned());
            stack.specs.insert(
                name.to_string(),
                Spec {
                    program: binary(&format!("selfheal-{name}"))?,
                    args: vec![],
                    env,
                    ready: format!("http://127.0.0.1:{port}/readyz"),
                },
            );
            stack.launch(name).await?;
        }

        if demos.is_empty() {
            return Ok(stack);
        }
        // Prometheus scrapes the demo apps every second and alerts through Alertmanager.
        let targets: Vec<String> = stack
            .demo_ports
            .values()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        std::fs::write(dir.join("rules.yml"), RULES)?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [\"{}\"]\n\
                 alerting: {{alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{alertmanager_port}\"]}}]}}]}}\n\
                 scrape_configs:\n  - job_name: demo\n    static_configs: [{{targets: [{}]}}]\n",
                dir.join("rules.yml").display(),
                targets.join(", ")
            ),
        )?;
        std::fs::write(dir.join("token"), TOKEN)?;
        std::fs::write(
            dir.join("alertmanager.yml"),
            format!(
                "route: {{receiver: selfheal, group_by: [alertname, service], group_wait: 500ms, group_interval: 1s, repeat_interval: 1h}}\n\
                 receivers:\n  - name: selfheal\n    webhook_configs:\n      - url: http://127.0.0.1:{gateway_port}/v1/alerts/alertmanager\n        send_resolved: true\n        http_config: {{authorization: {{type: Bearer, credentials_file: \"{}\"}}}}\n",
                dir.join("token").display()
            ),
        )?;
        let alertmanager_program = std::env::var_os("ALERTMANAGER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("prometheus-alertmanager"));
        let am_args = [
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{alertmanager_port}"),
            "--cluster.listen-address=".into(),
        ];
        stack.specs.insert(
            "alertmanager".into(),
            Spec {
                program: alertmanager_program,
                args: am_args.to_vec(),
                env: vec![],
                ready: format!("http://127.0.0.1:{alertmanager_port}/-/ready"),
            },
        );
        stack.launch("alertmanager").await.context(
            "alertmanager must be installed (apt-get install prometheus-alertmanager) or named by $ALERTMANAGER",
        )?;
        let prometheus_program = std::env::var_os("PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("prometheus"));
        let prom_args = [
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ];
        stack.specs.insert(
            "prometheus".into(),
            Spec {
                program: prometheus_program,
                args: prom_args.to_vec(),
                env: vec![],
                ready: format!("http://127.0.0.1:{prometheus_port}/-/ready"),
            },
        );
        stack
            .launch("prometheus")
            .await
            .context("prometheus must be installed (apt-get install prometheus) or named by $PROMETHEUS")?;
        stack.prometheus = format!("http://127.0.0.1:{prometheus_port}");
        Ok(stack)
    }

    /// `selfheal ARGS --nats-url <the stack's>` (a `selfheal` command that talks to the bus): its
    /// exit status and output.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--nats-url", &self.nats_url]);
        let mut process = Process::start(
            &format!("cli-{}", args.join("-")),
            &binary("selfheal")?,
            &full,
            &[],
            &self.dir,
        )?;
        let status = process.wait_exit(Duration::from_secs(30)).await?;
        Ok((status.success(), process.output()))
    }

    /// Where the process `name` (`gateway`, `pr-controller`, a second replica added to
    /// `specs`, …) serves gRPC: `127.0.0.1:PORT` (the last `SELFHEAL_*_GRPC_LISTEN` it is given).
    pub fn grpc_address(&self, name: &str) -> Option<String> {
        let spec = self.specs.get(name)?;
        spec.env
            .iter()
            .rev()
            .find(|(k, _)| k.starts_with("SELFHEAL_") && k.ends_with("_GRPC_LISTEN"))
            .map(|(_, v)| v.clone())
    }

    pub fn main_file(&self, service: &str) -> anyhow::Result<String> {
        git(
            &self.repo,
            &["show", &format!("main:apps/{service}/kustomization.yaml")],
        )
    }

    /// What the demo app runs now: (tag, replicas).
    pub async fn deployed(&self, client: &reqwest::Client, service: &str) -> Option<(String, String)> {
        let port = self.demo_ports.get(service)?;
        let text = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let line = text.lines().find(|l| l.starts_with("demo_deployed_info"))?;
        let field = |name: &str| -> Option<String> {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(line[start..].split('"').next()?.to_string())
        };
        Some((field("tag")?, field("replicas")?))
    }
}

/// A timestamp in seconds since the epoch.
pub fn seconds(t: Option<&selfheal_proto::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// Every decision and remediation event on the bus for `service`.
pub async fn events(nats_url: &str, service: &str) -> anyhow::Result<(Vec<Decision>, Vec<RemediationEvent>)> {
    let js = async_nats::jetstream::new(crate::connect_nats(nats_url).await?);
    let stream = js.get_stream("SELFHEAL").await?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subjects: vec![
                format!("selfheal.decisions.{service}"),
                format!("selfheal.remediations.{service}"),
            ],
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer
        .fetch()
        .max_messages(pending.max(1))
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let (mut decisions, mut remediations) = (Vec::new(), Vec::new());
    let mut seen = 0;
    while seen < pending {
        let Some(message) = messages.next().await else { break };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
        if message.subject.starts_with("selfheal.decisions.") {
            decisions.push(Decision::decode(message.payload.clone())?);
        } else {
            remediations.push(RemediationEvent::decode(message.payload.clone())?);
        }
    }
    Ok((decisions, remediations))
}

impl Stack {
    /// Deploys `tag` of `service`: a release commit on main, as a release pipeline would push.
    pub fn deploy(&self, service: &str, tag: &str) -> anyhow::Result<()> {
        let work = self.dir.join("gitops-work");
        git(&work, &["fetch", "-q", "origin"])?;
        git(&work, &["reset", "-q", "--hard", "origin/main"])?;
        std::fs::write(
            work.join(format!("apps/{service}/kustomization.yaml")),
            kustomization(service, tag, 1),
        )?;
        git(&work, &["commit", "-q", "-am", &format!("{service}: release {tag}")])?;
        git(&work, &["push", "-q", "origin", "HEAD:main"])?;
        Ok(())
    }

    /// Messages delivered to the durable consumer `durable` and not acked yet (in work).
    pub async fn in_work(&self, durable: &str) -> u64 {
        let Ok(client) = crate::connect_nats(&self.nats_url).await else {
            return 0;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(stream) = js.get_stream("SELFHEAL").await else {
            return 0;
        };
        match stream.consumer_info(durable).await {
            Ok(info) => info.num_ack_pending as u64,
            Err(_) => 0,
        }
    }

    /// The value of the metric line `series` (name and labels, as `/metrics` writes them) of
    /// the selfheal process `name`, or 0 when it has none.
    pub async fn metric(&self, client: &reqwest::Client, name: &str, series: &str) -> anyhow::Result<f64> {
        let url = self
            .specs
            .get(name)
            .context("no such process")?
            .ready
            .replace("/readyz", "/metrics");
        let text = client.get(url).send().await?.text().await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// The stream sequence of the last message on `subject`.
    pub async fn sequence_on_bus(&self, subject: &str) -> anyhow::Result<u64> {
        let js = async_nats::jetstream::new(crate::connect_nats(&self.nats_url).await?);
        let message = crate::wait_for(Duration::from_secs(30), "the stream", || async {
            js.get_stream("SELFHEAL")
                .await
                .ok()?
                .get_last_raw_message_by_subject(subject)
                .await
                .ok()
        })
        .await?;
        Ok(message.sequence)
    }

    /// Whether the stream holds a message on `subject`.
    pub async fn on_bus(&self, subject: &str) -> bool {
        let Ok(client) = crate::connect_nats(&self.nats_url).await else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(stream) = js.get_stream("SELFHEAL").await else {
            return false;
        };
        stream.get_last_raw_message_by_subject(subject).await.is_ok()
    }

    /// Once a message is on `subject`, SIGKILLs `process` and starts it again.
    pub async fn crash_once_on_bus(&mut self, subject: &str, process: &str) -> anyhow::Result<()> {
        until(&format!("a message on {subject}"), self, async || {
            self.on_bus(subject).await
        })
        .await?;
        self.kill(process).await?;
        self.launch(process).await
    }

    /// Whether Prometheus has `alertname` firing for `service`.
    pub async fn firing(&self, client: &reqwest::Client, alertname: &str, service: &str) -> bool {
        let Ok(response) = client.get(format!("{}/api/v1/alerts", self.prometheus)).send().await else {
            return false;
        };
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return false;
        };
        body["data"]["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["state"] == "firing" && a["labels"]["alertname"] == alertname && a["labels"]["service"] == service
            })
        })
    }
}

/// Waits (60 s at most) until `probe` holds; the stack's logs in the error.
pub async fn until(what: &str, stack: &Stack, probe: impl AsyncFn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !probe().await {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            stack.dump()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// How many of selfheal's commits on main changed `service`'s kustomization.
pub fn selfheal_commits(repo: &Path, service: &str) -> anyhow::Result<usize> {
    let path = format!("apps/{service}/kustomization.yaml");
    Ok(git(repo, &["log", "--format=%s", "main", "--", &path])?
        .lines()
        .filter(|s| s.starts_with("selfheal:"))
        .count())
}
