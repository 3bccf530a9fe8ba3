//! Decisions carried out in batches, on a repository that writes several changes faster
//! together than one by one.

use std::sync::Arc;

use selfheal_git::RepoError;
use selfheal_proto::v1::{Decision, RemediationEvent};

use crate::reconcile::{ReconcileError, Reconciler};

/// A decision waiting for the next batch, and where its outcome goes.
pub(crate) struct BatchJob {
    pub(crate) decision: Decision,
    pub(crate) trace_id: String,
    pub(crate) outcome: tokio::sync::oneshot::Sender<Result<RemediationEvent, ReconcileError>>,
}

/// At most this many decisions are carried out in one batch.
const BATCH_MAX: usize = 64;

/// Carries out queued decisions in batches until every sender is gone: each batch takes what is
/// queued (up to [`BATCH_MAX`]), makes every change in memory, one after the other (so each sees
/// the ones before it), writes them all at once, and only then answers. If the write fails,
/// every decision of the batch that changed something fails with it, to be tried again.
pub(crate) async fn run_batches(reconciler: Arc<Reconciler>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<BatchJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let reconciler = reconciler.clone();
        let work: Vec<(Decision, String)> = batch.iter().map(|j| (j.decision.clone(), j.trace_id.clone())).collect();
        let outcomes = tokio::task::spawn_blocking(move || carry_out_together(&reconciler, &work)).await;
        match outcomes {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.outcome.send(outcome);
                }
            }
            // A panic: dropping the senders fails every decision of the batch, to be retried.
            Err(error) => tracing::error!(error = %error, "a batch panicked"),
        }
    }
}

/// Makes every change of `work` in one batch and writes it: blocking.
pub(crate) fn carry_out_together(
    reconciler: &Reconciler,
    work: &[(Decision, String)],
) -> Vec<Result<RemediationEvent, ReconcileError>> {
    let Some(batch) = reconciler.git().start_batch() else {
        return work.iter().map(|(d, t)| reconciler.reconcile(d, t)).collect();
    };
    let reconciler = reconciler.on(batch.clone());
    let started = std::time::Instant::now();
    let outcomes: Vec<_> = work.iter().map(|(d, t)| reconciler.reconcile(d, t)).collect();
    let made = started.elapsed();
    let flushed = batch.flush();
    match flushed {
        Ok(refs) => {
            tracing::debug!(
                decisions = work.len(),
                refs,
                made_us = made.as_micros() as u64,
                elapsed_us = started.elapsed().as_micros() as u64,
                "batch written"
            );
            outcomes
        }
        Err(error) => {
            tracing::warn!(error = %error, decisions = work.len(), "batch not written; its decisions will be tried again");
            // Refusals too: one may rest on a change of the batch that was never written.
            outcomes
                .iter()
                .map(|_| {
                    Err(ReconcileError::Repo(RepoError::Git(format!(
                        "the batch was not written: {error}"
                    ))))
                })
                .collect()
        }
    }
}
