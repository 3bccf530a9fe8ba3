//! `selfheal audit`: the audit log from the notifier's gRPC `Audit` service, as a table or JSON.

use std::process::ExitCode;

use crate::client::{GrpcArgs, authorized};
use clap::Args;
use selfheal_proto::v1::{AuditQueryRequest, AuditRow, AuditStatsRequest, audit_client::AuditClient};
use serde_json::json;

#[derive(Args)]
pub struct AuditArgs {
    /// Only this service's rows.
    #[arg(long)]
    service: Option<String>,
    /// Only this incident's rows.
    #[arg(long)]
    incident: Option<String>,
    /// Only `decision`, `remediation` or `dead_letter` rows.
    #[arg(long)]
    kind: Option<String>,
    /// Per-service figures (actions, success ratio, MTTR) instead of rows.
    #[arg(long)]
    stats: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The notifier's gRPC address.
    #[arg(long, env = "SELFHEAL_AUDIT_URL", default_value = "http://127.0.0.1:50054")]
    addr: String,
    #[command(flatten)]
    grpc: GrpcArgs,
}

fn row_json(row: &AuditRow) -> serde_json::Value {
    json!({
        "id": row.id, "recorded_at": row.recorded_at, "incident": row.incident, "service": row.service,
        "kind": row.kind, "action": row.action, "state": row.state, "success": row.success,
        "mttr_seconds": row.mttr_seconds, "reference": row.reference, "reason": row.reason, "trace_id": row.trace_id,
    })
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let token = args.grpc.token()?;
    let addr = args.addr.clone();
    let client = AuditClient::new(args.grpc.connect(&addr).await?);
    crate::client::calling(&addr, call(args, client, token)).await
}

async fn call(
    args: AuditArgs,
    mut client: AuditClient<tonic::transport::Channel>,
    token: selfheal_config::Secret,
) -> anyhow::Result<ExitCode> {
    if args.stats {
        let request = AuditStatsRequest {
            service: args.service.unwrap_or_default(),
        };
        let stats = client.stats(authorized(request, &token)?).await?.into_inner().services;
        if args.json {
            let out: Vec<_> = stats
                .iter()
                .map(|s| {
                    json!({"service": s.service, "actions": s.actions, "verified": s.verified, "escalated": s.escalated,
                           "failed": s.failed, "success_ratio": s.success_ratio,
                           "mttr_p50_seconds": s.mttr_p50_seconds, "mttr_p90_seconds": s.mttr_p90_seconds})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!(
                "{:<20} {:>8} {:>9} {:>6} {:>8} {:>9} {:>9}",
                "SERVICE", "VERIFIED", "ESCALATED", "FAILED", "SUCCESS", "MTTR p50", "MTTR p90"
            );
            for s in &stats {
                println!(
                    "{:<20} {:>8} {:>9} {:>6} {:>7.0}% {:>8.0}s {:>8.0}s",
                    s.service,
                    s.verified,
                    s.escalated,
                    s.failed,
                    s.success_ratio * 100.0,
                    s.mttr_p50_seconds,
                    s.mttr_p90_seconds
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = AuditQueryRequest {
            service: args.service.clone().unwrap_or_default(),
            incident: args.incident.clone().unwrap_or_default(),
            kind: args.kind.clone().unwrap_or_default(),
            page_size: 500,
            page_token: page_token.clone(),
        };
        let page = client.query(authorized(request, &token)?).await?.into_inner();
        rows.extend(page.rows);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.iter().map(row_json).collect::<Vec<_>>())?
        );
    } else {
        println!(
            "{:<24} {:<16} {:<12} {:<11} {:<8} {:<9} {:>6} {:<12} REASON",
            "TIME", "INCIDENT", "SERVICE", "KIND", "ACTION", "STATE", "MTTR", "REFERENCE"
        );
        for row in &rows {
            let mttr = row.mttr_seconds.map(|m| format!("{m:.0}s")).unwrap_or_default();
            let reference: String = row.reference.chars().take(12).collect();
            let reason: String = row.reason.chars().take(60).collect();
            println!(
                "{:<24} {:<16} {:<12} {:<11} {:<8} {:<9} {:>6} {:<12} {}",
                row.recorded_at, row.incident, row.service, row.kind, row.action, row.state, mttr, reference, reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
