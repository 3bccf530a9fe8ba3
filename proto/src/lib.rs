//! The `selfheal.v1` protobuf package: the events on the bus and the gRPC services.
//!
//! Generated at build time from `proto/selfheal/v1/*.proto` by protox + tonic-prost-build.

/// `selfheal.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("selfheal.v1");
}

pub use prost_types::Timestamp;

/// The encoded `FileDescriptorSet` of `selfheal/v1/*.proto` and their imports, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/selfheal_v1.fds"));

mod incident_key;
pub mod time;
pub use incident_key::{IncidentKey, InvalidIncidentKey};

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

    /// Whether `value` is a DNS-1123 label: 1–63 of `a-z0-9-`, starting and ending alphanumeric.
    /// Label values that reach a subject, a path, a branch name or a commit must be one.
    pub fn is_dns1123_label(value: &str) -> bool {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    }

    /// The inverse of [`state`]; `None` for an unknown name.
    pub fn parse_state(name: &str) -> Option<RemediationState> {
        Some(match name {
            "opened" => RemediationState::Opened,
            "merged" => RemediationState::Merged,
            "failed" => RemediationState::Failed,
            "verified" => RemediationState::Verified,
            "escalated" => RemediationState::Escalated,
            "rejected" => RemediationState::Rejected,
            _ => return None,
        })
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
