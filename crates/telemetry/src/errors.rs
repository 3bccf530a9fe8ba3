//! Errors whose inside is for the log, not the caller: the detail (a path, a server's answer, a
//! panic) is logged with an id, and the caller gets the id — enough to find it, nothing to learn
//! the deployment from.

/// A fresh error id: 16 hex digits.
pub fn id() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness the time still tells ids apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bytes = nanos.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs `error` under a new id and answers `code` with `what` and the id only.
pub fn hidden(code: tonic::Code, what: &str, error: &dyn std::fmt::Display) -> tonic::Status {
    let id = id();
    tracing::error!(error.id = %id, error = %error, "{what}");
    tonic::Status::new(code, format!("{what} (error id {id} in the service's log)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_gets_the_id_not_the_detail() {
        let status = hidden(
            tonic::Code::Unavailable,
            "the repository cannot be read now",
            &"/srv/gitops/secret-team.git: permission denied",
        );
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("/srv/gitops"), "{}", status.message());
        let id = status
            .message()
            .split("error id ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_default();
        assert_eq!(id.len(), 16, "{}", status.message());
        assert_ne!(super::id(), super::id());
    }
}
