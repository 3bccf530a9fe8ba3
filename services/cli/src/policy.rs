//! `selfheal policy test DIR`: runs the `test_*` rules of every policy, like `opa test`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Subcommand;
use selfheal_policy::engine::RegoEngine;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule in the .rego files of DIR; exit 1 if any fails.
    Test {
        /// Directory of .rego files.
        dir: PathBuf,
    },
    /// Print the input document and the decision for each alert of an Alertmanager webhook body,
    /// or for a whole input document (--input, as `opa eval --input`). Evaluates locally: the
    /// metrics are those given with --metric, and no history, target or limits are read.
    Eval {
        /// An Alertmanager webhook body (JSON), e.g. examples/alertmanager-firing.json.
        #[arg(long, required_unless_present = "input", conflicts_with = "input")]
        alert: Option<PathBuf>,
        /// A whole input document (JSON), e.g. the `input` this command printed or the policy
        /// service's `Evaluate` returned: decided as it is.
        #[arg(long, conflicts_with_all = ["metric", "config"])]
        input: Option<PathBuf>,
        /// A metric's value for `input.metrics`, as the configured PromQL would have read it
        /// (repeatable): `--metric error_rate=0.12 --metric restarts=5`.
        #[arg(long, value_name = "NAME=VALUE", value_parser = metric)]
        metric: Vec<(String, f64)>,
        /// Directory of .rego files.
        #[arg(long, default_value = "deploy/policies")]
        policy_dir: PathBuf,
        /// The rule whose value is the decision.
        #[arg(long, default_value = "data.selfheal.decision")]
        query: String,
        /// The policy service's config file: its `[[windows]]` in force now go into the input,
        /// with `limits.recently_fixed` and `limits.max_firing_dependents`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// What the policy would have done over a past time range: the alerts that fired, rebuilt
    /// from Prometheus's ALERTS and ALERTS_FOR_STATE series, each decided in order as the
    /// service would have — the configured metrics queried at the moment it fired, the history
    /// and limits building up — and printed with what overrode the policy, if anything.
    Replay(Box<crate::replay::ReplayArgs>),
}

/// `--metric NAME=VALUE`.
fn metric(text: &str) -> Result<(String, f64), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write NAME=VALUE, e.g. error_rate=0.12"))?;
    let value = value
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{text:?}: {value:?} is not a number"))?;
    if name.trim().is_empty() {
        return Err(format!("{text:?}: the metric has no name"));
    }
    Ok((name.trim().to_string(), value))
}

/// One decision as `policy eval` prints it: the input and the decision.
fn print_decision(input: &serde_json::Value, decision: &selfheal_proto::v1::Decision) -> anyhow::Result<()> {
    let params = decision.params.clone().unwrap_or_default();
    let output = serde_json::json!({
        "input": input,
        "decision": {
            "action": selfheal_proto::names::action(decision.action()),
            "approval": selfheal_proto::names::approval(decision.approval()),
            "reason": decision.reason,
            "params": {"target_tag": params.target_tag, "replicas": params.replicas},
            "policy": decision.policy,
            "rule": decision.rule,
        },
    });
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Replay(args) => crate::replay::run(*args).await,
        PolicyCommand::Eval {
            input: Some(path),
            policy_dir,
            query,
            ..
        } => {
            let engine = RegoEngine::load_dir(&policy_dir, &query)?;
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let input: serde_json::Value =
                serde_json::from_slice(&text).with_context(|| format!("{}: not a JSON document", path.display()))?;
            anyhow::ensure!(input.is_object(), "{}: the input must be a JSON object", path.display());
            let decision = selfheal_policy::decide::decide_input(&engine, &input, None, true, chrono::Utc::now()).await;
            print_decision(&input, &decision)?;
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Eval {
            alert,
            policy_dir,
            query,
            config,
            metric,
            ..
        } => {
            let alert = alert.context("--alert or --input is required")?;
            let engine = RegoEngine::load_dir(&policy_dir, &query)?;
            let config: selfheal_policy::PolicyConfig = match &config {
                Some(path) => selfheal_config::load(Some(path), "SELFHEAL_POLICY_")?,
                None => Default::default(),
            };
            let windows = selfheal_policy::windows::Windows::new(&config.windows).map_err(anyhow::Error::msg)?;
            let body = std::fs::read(&alert).with_context(|| format!("reading {}", alert.display()))?;
            let webhook =
                selfheal_gateway::webhook::parse(&body).map_err(|e| anyhow::anyhow!("{}: {e}", alert.display()))?;
            let events = selfheal_gateway::webhook::to_events(
                &webhook,
                &selfheal_gateway::webhook::Limits::default(),
                &selfheal_gateway::incident::Identity::default(),
                chrono::Utc::now(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", alert.display()))?;
            for refused in &events.refused {
                eprintln!("{}: refused: {refused}", alert.display());
            }
            for event in events.accepted {
                let now = chrono::Utc::now();
                let labels = event
                    .alert
                    .as_ref()
                    .map(|a| a.labels.clone().into_iter().collect())
                    .unwrap_or_default();
                let extra = selfheal_policy::decide::Extra {
                    windows: windows
                        .in_force(&labels, now)
                        .iter()
                        .map(selfheal_policy::windows::InForce::to_json)
                        .collect(),
                    recently_fixed_seconds: config.limits.recently_fixed.as_secs(),
                    max_firing_dependents: config.limits.max_firing_dependents,
                    metrics: metric
                        .iter()
                        .map(|(name, value)| (name.clone(), serde_json::json!(value)))
                        .collect(),
                    ..Default::default()
                };
                let (decision, input) = selfheal_policy::decide::decide(&engine, &event, &extra, true, now).await;
                print_decision(&input, &decision)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { dir } => {
            let engine = RegoEngine::load_dir(&dir, "data.selfheal.decision")?;
            let results = engine.run_tests();
            if results.is_empty() {
                println!("no test_ rules in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let failed = results.iter().filter(|(_, passed)| !passed).count();
            for (rule, passed) in &results {
                println!("{} {rule}", if *passed { "PASS" } else { "FAIL" });
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[derive(clap::Args)]
pub struct FreezeArgs {
    /// `on` (with --until and --reason), `off` or `status`.
    #[arg(value_parser = ["on", "off", "status"])]
    state: String,
    /// When the freeze ends: an RFC 3339 time (`2026-12-24T18:00:00Z`) or a duration from now
    /// (`2h`, `1d 12h`).
    #[arg(long, required_if_eq("state", "on"))]
    until: Option<String>,
    /// Why: shown in every decision the freeze stops.
    #[arg(long, required_if_eq("state", "on"))]
    reason: Option<String>,
    /// Who sets it (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// The NATS server the services use.
    #[arg(long, env = "SELFHEAL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    nats: crate::nats_args::NatsArgs,
}

/// `--until`: an RFC 3339 time, or a duration from `now`; it must be later than `now`.
fn freeze_end(text: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let until = match chrono::DateTime::parse_from_rfc3339(text.trim()) {
        Ok(time) => time.with_timezone(&chrono::Utc),
        Err(_) => {
            let duration = humantime::parse_duration(text.trim()).map_err(|_| {
                anyhow::anyhow!("--until: {text:?} is neither an RFC 3339 time nor a duration such as 2h")
            })?;
            now + chrono::Duration::from_std(duration)?
        }
    };
    anyhow::ensure!(until > now, "--until: {text:?} is not in the future");
    Ok(until)
}

/// `selfheal freeze on|off|status`.
pub async fn freeze(args: FreezeArgs) -> anyhow::Result<ExitCode> {
    use selfheal_bus::control::{self, Freeze};
    let options = selfheal_bus::nats::NatsOptions::new(&args.nats_url, "selfheal-cli").with_config(args.nats.auth()?);
    let bus: selfheal_bus::SharedBus = std::sync::Arc::new(selfheal_bus::nats::NatsBus::connect(options).await?);
    let kv = control::open(&bus).await?;
    let now = chrono::Utc::now();
    match args.state.as_str() {
        "on" => {
            let freeze = Freeze {
                until: freeze_end(args.until.as_deref().unwrap_or_default(), now)?,
                reason: args.reason.unwrap_or_default(),
                by: args.by.or_else(|| std::env::var("USER").ok()).unwrap_or_default(),
            };
            control::set_freeze(&kv, Some(&freeze)).await?;
        }
        "off" => control::set_freeze(&kv, None).await?,
        _ => {}
    }
    match control::freeze(&kv).await?.filter(|f| f.until > now) {
        Some(freeze) => println!(
            "frozen until {} ({}): no automatic change{}",
            freeze.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            freeze.reason,
            if freeze.by.is_empty() {
                String::new()
            } else {
                format!("; set by {}", freeze.by)
            }
        ),
        None => println!("no freeze"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `selfheal kill-switch on|off|status`.
pub async fn kill_switch(state: &str, nats_url: &str, nats: &crate::nats_args::NatsArgs) -> anyhow::Result<ExitCode> {
    use selfheal_policy::limits;
    let options = selfheal_bus::nats::NatsOptions::new(nats_url, "selfheal-cli").with_config(nats.auth()?);
    let bus: selfheal_bus::SharedBus = std::sync::Arc::new(selfheal_bus::nats::NatsBus::connect(options).await?);
    let kv = limits::control_bucket(&bus).await?;
    match state {
        "on" => limits::set_kill_switch(&kv, true).await?,
        "off" => limits::set_kill_switch(&kv, false).await?,
        _ => {}
    }
    let on = limits::kill_switch_on(&kv).await?;
    println!(
        "kill switch is {}",
        if on { "on: no automatic action is taken" } else { "off" }
    );
    Ok(ExitCode::SUCCESS)
}
