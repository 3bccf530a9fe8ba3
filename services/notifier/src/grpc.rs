//! gRPC `selfheal.v1.Audit`: the audit log, queried and summarised.

use std::{collections::BTreeMap, sync::Arc};

use selfheal_config::TokenCheck;
use selfheal_proto::v1::{
    AuditQueryRequest, AuditQueryResponse, AuditRow, AuditStatsRequest, AuditStatsResponse, ServiceStats,
    audit_server::{Audit, AuditServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::audit::{AuditEntry, AuditStore, Filter};

/// The gRPC service.
pub struct AuditService {
    store: Arc<dyn AuditStore>,
}

/// The service behind its token check.
pub fn server(
    store: Arc<dyn AuditStore>,
    tokens: TokenCheck,
) -> InterceptedService<AuditServer<AuditService>, TokenCheck> {
    AuditServer::with_interceptor(AuditService { store }, tokens)
}

fn row(id: i64, entry: AuditEntry) -> AuditRow {
    AuditRow {
        id,
        event_key: entry.event_key,
        recorded_at: entry.recorded_at,
        incident: entry.incident,
        service: entry.service,
        kind: entry.kind,
        action: entry.action,
        state: entry.state,
        reason: entry.reason,
        decision_json: entry.decision_json,
        reference: entry.reference,
        success: entry.success,
        trace_id: entry.trace_id,
        mttr_seconds: entry.mttr_seconds,
    }
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-service figures from remediation rows.
pub fn stats(rows: &[AuditEntry]) -> Vec<ServiceStats> {
    let mut by_service: BTreeMap<&str, Vec<&AuditEntry>> = BTreeMap::new();
    for entry in rows.iter().filter(|e| e.kind == "remediation") {
        by_service.entry(entry.service.as_str()).or_default().push(entry);
    }
    by_service
        .into_iter()
        .map(|(service, entries)| {
            let mut actions = std::collections::HashMap::new();
            for entry in &entries {
                *actions
                    .entry(format!("{} {}", entry.action, entry.state))
                    .or_insert(0u64) += 1;
            }
            let count = |state: &str| entries.iter().filter(|e| e.state == state).count() as u64;
            let (verified, escalated, failed) = (count("verified"), count("escalated"), count("failed"));
            let outcomes = verified + escalated + failed;
            let mut mttr: Vec<f64> = entries.iter().filter_map(|e| e.mttr_seconds).collect();
            mttr.sort_by(f64::total_cmp);
            ServiceStats {
                service: service.to_string(),
                actions,
                verified,
                escalated,
                failed,
                success_ratio: if outcomes == 0 {
                    0.0
                } else {
                    verified as f64 / outcomes as f64
                },
                mttr_p50_seconds: percentile(&mttr, 0.5),
                mttr_p90_seconds: percentile(&mttr, 0.9),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn query(&self, request: Request<AuditQueryRequest>) -> Result<Response<AuditQueryResponse>, Status> {
        selfheal_config::require(&request, selfheal_config::Role::Read)?;
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => 100,
            n if n > 1000 => return Err(Status::invalid_argument("page_size: at most 1000")),
            n => i64::from(n),
        };
        let after = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<i64>()
                .map_err(|_| Status::invalid_argument("page_token: not a token from a previous page"))?,
        };
        let filter = Filter {
            service: non_empty(request.service),
            incident: non_empty(request.incident),
            kind: non_empty(request.kind),
        };
        // One more than asked, to know whether there is a next page.
        let mut found = self
            .store
            .query(&filter, after, page_size + 1)
            .await
            .map_err(unavailable)?;
        let more = found.len() as i64 > page_size;
        found.truncate(page_size as usize);
        let next_page_token = if more {
            found.last().map(|(id, _)| id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(AuditQueryResponse {
            rows: found.into_iter().map(|(id, entry)| row(id, entry)).collect(),
            next_page_token,
        }))
    }

    async fn stats(&self, request: Request<AuditStatsRequest>) -> Result<Response<AuditStatsResponse>, Status> {
        selfheal_config::require(&request, selfheal_config::Role::Read)?;
        let filter = Filter {
            service: non_empty(request.into_inner().service),
            kind: Some("remediation".into()),
            ..Default::default()
        };
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.query(&filter, after, 1000).await.map_err(unavailable)?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            rows.extend(page.into_iter().map(|(_, entry)| entry));
        }
        Ok(Response::new(AuditStatsResponse { services: stats(&rows) }))
    }
}

/// What a caller is told when the audit log cannot be read: that it may pass, never the
/// database's own words (they can name hosts and tables); the log has them.
fn unavailable(error: crate::audit::AuditError) -> Status {
    tracing::warn!(error = %error, "audit log query failed");
    Status::unavailable("the audit log cannot be read now; try again")
}
