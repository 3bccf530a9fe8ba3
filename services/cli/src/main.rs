//! `selfheal`: the command line. `selfheal up` runs the whole loop in one process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod client;
mod dead_letters;
mod nats_args;
mod policy;
mod remediations;
mod replay;
mod up;

/// selfheal: Alertmanager fires, Rego decides, Git changes, Argo CD or Flux applies.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway, policy, pr-controller and notifier in one process.
    Up(Box<up::UpArgs>),
    /// Work with Rego policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The audit log: every decision and remediation, or per-service figures with --stats.
    Audit(audit::AuditArgs),
    /// Remediations: list them, look at one, approve, reject or retry it.
    Remediations(remediations::RemediationsArgs),
    /// Messages a service gave up on (failed on every delivery, or unreadable): list them, or
    /// publish them again once the cause is fixed.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Stop (on) or allow (off) every automatic action at once, on every replica: no new
    /// decision changes anything, decisions still waiting are not carried out (they become failed
    /// remediations to retry by hand), a fix that escalates meanwhile is not reverted. It stays on until turned
    /// off. (It reaches `selfheal up` only when that runs with --nats-url; the in-process bus is
    /// the process's own.)
    KillSwitch {
        /// `on`, `off` or `status`.
        #[arg(value_parser = ["on", "off", "status"])]
        state: String,
        /// The NATS server the services use.
        #[arg(long, env = "SELFHEAL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[command(flatten)]
        nats: nats_args::NatsArgs,
    },
    /// A change freeze for every service and replica at once: until it ends (or is turned off)
    /// every decision that would change something escalates instead, naming the freeze. Kept
    /// where the kill switch is, so a restart does not lift it.
    Freeze(policy::FreezeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = selfheal_telemetry::init("selfheal");
    let result = match cli.command {
        Command::Up(args) => up::run(*args).await,
        Command::Policy(command) => policy::run(command).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Remediations(args) => remediations::run(args).await,
        Command::DeadLetters(args) => dead_letters::run(args).await,
        Command::KillSwitch { state, nats_url, nats } => policy::kill_switch(&state, &nats_url, &nats).await,
        Command::Freeze(args) => policy::freeze(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("selfheal: {error:#}");
            ExitCode::FAILURE
        }
    }
}
