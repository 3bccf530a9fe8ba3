//! The `selfheal.v1` protobuf package: the events on the bus and the gRPC services.
//!
//! Generated at build time from `proto/selfheal/v1/*.proto` by protox + tonic-prost-build.

/// `selfheal.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("selfheal.v1");
}

pub use prost_types::Timestamp;

/// Lowercase names of the enums, as policies, audit rows and people write them.
pub mod names {
    use super::v1::{Action, Approval, RemediationState};

    /// `rollback`, `scale`, `restart`, `none`, `escalate`.
    pub fn action(action: Action) -> &'static str {
        match action {
            Action::None | Action::Unspecified => "none",
            Action::Rollback => "rollback",
            Action::Scale => "scale",
            Action::Restart => "restart",
            Action::Escalate => "escalate",
        }
    }

    /// The inverse of [`action`]; `None` for an unknown name.
    pub fn parse_action(name: &str) -> Option<Action> {
        Some(match name {
            "none" => Action::None,
            "rollback" => Action::Rollback,
            "scale" => Action::Scale,
            "restart" => Action::Restart,
            "escalate" => Action::Escalate,
            _ => return None,
        })
    }

    /// `auto` or `required`.
    pub fn approval(approval: Approval) -> &'static str {
        match approval {
            Approval::Auto => "auto",
            Approval::Required | Approval::Unspecified => "required",
        }
    }

    /// `opened`, `merged`, `failed`, `verified`, `escalated`, `rejected`.
    pub fn state(state: RemediationState) -> &'static str {
        match state {
            RemediationState::Unspecified => "unspecified",
            RemediationState::Opened => "opened",
            RemediationState::Merged => "merged",
            RemediationState::Failed => "failed",
            RemediationState::Verified => "verified",
            RemediationState::Escalated => "escalated",
            RemediationState::Rejected => "rejected",
        }
    }
}
