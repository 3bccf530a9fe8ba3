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
    /// Print the input document and the decision for each alert of an Alertmanager webhook body.
    /// Evaluates locally: no metrics, history or limits (the services add those).
    Eval {
        /// An Alertmanager webhook body (JSON), e.g. examples/alertmanager-firing.json.
        #[arg(long)]
        alert: PathBuf,
        /// Directory of .rego files.
        #[arg(long, default_value = "deploy/policies")]
        policy_dir: PathBuf,
        /// The rule whose value is the decision.
        #[arg(long, default_value = "data.selfheal.decision")]
        query: String,
    },
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Eval {
            alert,
            policy_dir,
            query,
        } => {
            let engine = RegoEngine::load_dir(&policy_dir, &query)?;
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
                let (decision, input) = selfheal_policy::decide::decide(
                    &engine,
                    &event,
                    &selfheal_policy::decide::Extra::default(),
                    true,
                    chrono::Utc::now(),
                )
                .await;
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
