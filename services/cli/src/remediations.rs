//! `selfheal remediations`: the pr-controller's remediations — list them, look at one, and
//! approve, reject or retry it — through its gRPC `Remediations` service.

use std::process::ExitCode;

use crate::client::{GrpcArgs, authorized};
use clap::{Args, Subcommand};
use selfheal_proto::{
    names,
    v1::{
        ApproveRequest, GetRemediationRequest, ListRemediationsRequest, RejectRequest, RemediationEvent, RetryRequest,
        remediations_client::RemediationsClient,
    },
};
use serde_json::json;

#[derive(Args)]
pub struct RemediationsArgs {
    #[command(subcommand)]
    command: RemediationsCommand,
    /// The pr-controller's gRPC address.
    #[arg(
        long,
        global = true,
        env = "SELFHEAL_PR_CONTROLLER_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    addr: String,
    #[command(flatten)]
    grpc: GrpcArgs,
    /// JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum RemediationsCommand {
    /// Remediations, most recently updated first.
    List {
        /// Only this state: opened, merged, failed, rejected, verified or escalated.
        #[arg(long, value_parser = ["opened", "merged", "failed", "rejected", "verified", "escalated"])]
        state: Option<String>,
        /// Only this service's.
        #[arg(long)]
        service: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One remediation, by incident key.
    Get { incident: String },
    /// Merge a remediation that waits for approval.
    Approve {
        incident: String,
        /// Who approves, for the record (default: $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Refuse a remediation that waits or failed: its decision is not carried out, its pull request is closed.
    Reject {
        incident: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
        /// Who rejects, for the record (default: $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Carry out a failed remediation's decision again, once its cause is fixed.
    Retry {
        incident: String,
        /// Who retries, for the record (default: $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
}

fn event_json(event: &RemediationEvent) -> serde_json::Value {
    json!({
        "incident": event.incident_key, "state": names::state(event.state()), "action": names::action(event.action()),
        "service": event.service, "repository": event.repository, "path": event.path, "branch": event.branch,
        "commit": event.commit, "pull_request_url": event.pull_request_url, "from": event.from_value,
        "to": event.to_value, "message": event.message, "mttr_seconds": event.mttr_seconds,
    })
}

fn print(events: &[RemediationEvent], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let out: Vec<_> = events.iter().map(event_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<9} {:<8} {:<14} {:<20} MESSAGE",
        "INCIDENT", "STATE", "ACTION", "SERVICE", "CHANGE"
    );
    for event in events {
        let change = match (event.from_value.as_str(), event.to_value.as_str()) {
            ("", "") => String::new(),
            (from, to) => format!("{from} → {to}"),
        };
        let message: String = event.message.chars().take(80).collect();
        println!(
            "{:<18} {:<9} {:<8} {:<14} {:<20} {}",
            event.incident_key,
            names::state(event.state()),
            names::action(event.action()),
            event.service,
            change,
            message
        );
    }
    Ok(())
}

pub async fn run(args: RemediationsArgs) -> anyhow::Result<ExitCode> {
    let token = args.grpc.token()?;
    let addr = args.addr.clone();
    let client = RemediationsClient::new(args.grpc.connect(&addr).await?);
    crate::client::calling(&addr, call(args, client, token)).await
}

async fn call(
    args: RemediationsArgs,
    mut client: RemediationsClient<tonic::transport::Channel>,
    token: selfheal_config::Secret,
) -> anyhow::Result<ExitCode> {
    let by = |by: Option<String>| by.unwrap_or_default();
    let events = match args.command {
        RemediationsCommand::List { state, service, limit } => {
            let request = ListRemediationsRequest {
                state: state.as_deref().and_then(names::parse_state).unwrap_or_default() as i32,
                service: service.unwrap_or_default(),
                limit,
            };
            client
                .list(authorized(request, &token)?)
                .await?
                .into_inner()
                .remediations
        }
        RemediationsCommand::Get { incident } => {
            let request = GetRemediationRequest { incident_key: incident };
            vec![client.get(authorized(request, &token)?).await?.into_inner()]
        }
        RemediationsCommand::Approve { incident, by: who } => {
            let request = ApproveRequest {
                incident_key: incident,
                by: by(who),
            };
            vec![client.approve(authorized(request, &token)?).await?.into_inner()]
        }
        RemediationsCommand::Reject {
            incident,
            reason,
            by: who,
        } => {
            let request = RejectRequest {
                incident_key: incident,
                by: by(who),
                reason,
            };
            vec![client.reject(authorized(request, &token)?).await?.into_inner()]
        }
        RemediationsCommand::Retry { incident, by: who } => {
            let request = RetryRequest {
                incident_key: incident,
                by: by(who),
            };
            vec![client.retry(authorized(request, &token)?).await?.into_inner()]
        }
    };
    print(&events, args.json)?;
    Ok(ExitCode::SUCCESS)
}
