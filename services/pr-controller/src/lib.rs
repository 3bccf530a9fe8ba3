//! The pr-controller: selfheal's execution layer.
//!
//! Consumes `selfheal.decisions.>` (durable `pr-controller`). For a `rollback` or `scale`
//! decision it edits the service's kustomization on a branch `selfheal/<incident>` of the GitOps
//! repository and, when the decision's approval is `auto`, merges it into the main branch (on a
//! local repository, an approved change is committed straight onto main, marked with its
//! incident; decisions are carried out in batches written at once).
//! It publishes a [`RemediationEvent`](selfheal_proto::v1::RemediationEvent) on
//! `selfheal.remediations.<service>` (message id `remediation.<incident>.<state>`) and acks the
//! decision only after that. The reconciler is idempotent per incident, so a redelivered
//! decision finds its branch and reports it instead of committing again.
//!
//! Layout: `handler` (a decision in, its event out), `batch` (decisions carried out together),
//! `reconcile` (the change itself, idempotent per incident), `lifecycle` and `verify` (what
//! happens after a merge), `grpc` (`Remediations`), `sync` (Argo CD / Flux sync-now), `slack` (approve and reject
//! from Slack), `server`
//! (the process). The git engine is `selfheal-git`, the manifest edits `selfheal-manifest`, and
//! each forge a crate of its own behind `selfheal_git::Forge`.

mod batch;
pub mod config;
pub mod grpc;
mod handler;
mod lifecycle;
pub mod reconcile;
mod server;
pub mod slack;
pub mod sync;
pub mod verify;

pub use config::PrControllerConfig;
pub use handler::{CONSUMER, CarryOutError, KILL_SWITCH_REFUSAL, RemediationHandler};
pub use lifecycle::{VERIFY_CONSUMER, VerifyHandler, sweep_once};
pub use server::{Listeners, PrController, readiness};

#[cfg(test)]
mod tests;
