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

/// The `Selfheal-*` trailers of a commit message, by key.
pub(super) fn trailers(message: &str) -> BTreeMap<String, String> {
    message
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.starts_with("Selfheal-"))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}
