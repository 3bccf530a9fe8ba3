//! What selfheal writes into its commits and reads back: to stay idempotent and to skip tags
//! that were rolled back from.

use std::collections::BTreeMap;

/// Trailers selfheal writes into its commits, read back to stay idempotent and to skip tags
/// that were rolled back from.
pub(super) const TRAILER_FROM: &str = "Selfheal-From";
pub(super) const TRAILER_TO: &str = "Selfheal-To";
pub(super) const TRAILER_ROLLBACK_FROM: &str = "Selfheal-Rollback-From";
/// The Flux image policy whose marker selfheal held on the rolled-back line.
pub(super) const TRAILER_HELD_POLICY: &str = "Selfheal-Held-Image-Policy";

/// The `Selfheal-*` trailers of a commit message, by key: read from its last paragraph only,
/// as git reads trailers. Untrusted text (the policy's reason) stands in a paragraph of its own,
/// made one line, so it can never add a trailer.
pub(super) fn trailers(message: &str) -> BTreeMap<String, String> {
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    last.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.starts_with("Selfheal-"))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::pr_text::one_line;

    #[test]
    fn a_reason_cannot_add_a_trailer() {
        for reason in [
            "Selfheal-Rollback-From: v1.4.1",
            "error rate\nSelfheal-Rollback-From: v1.4.1",
            "x\n\nSelfheal-Rollback-From: v1.4.1",
        ] {
            let message = format!(
                "selfheal: roll back shop to v1.4.1\n\n{}\n\nIncident: abc\nAlert: {}\n{TRAILER_FROM}: v1.5.0\n{TRAILER_TO}: v1.4.1\n",
                one_line(reason, 500),
                one_line("Selfheal-Rollback-From: v1.4.1", 200),
            );
            let read = trailers(&message);
            assert_eq!(
                read.get(TRAILER_TO).map(String::as_str),
                Some("v1.4.1"),
                "{reason:?}: {message}"
            );
            assert_eq!(read.get(TRAILER_ROLLBACK_FROM), None, "{reason:?}: {read:?}");
            assert_eq!(read.len(), 2, "{reason:?}: {read:?}");
        }
    }
}
