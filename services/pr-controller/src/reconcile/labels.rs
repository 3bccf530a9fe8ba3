//! Alert labels as they reach paths, branches and commit messages: checked first.

use std::collections::BTreeMap;

use selfheal_proto::names::is_dns1123_label;

use super::settings::ReconcileError;

/// Whether `tag` is a valid OCI image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_image_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Fills `{service}`, `{namespace}`, `{cluster}` in `template` from `labels`, refusing any label
/// used that is not a DNS-1123 label.
pub fn render_path(template: &str, labels: &BTreeMap<String, String>) -> Result<String, ReconcileError> {
    let mut path = template.to_string();
    for name in ["service", "namespace", "cluster"] {
        let placeholder = format!("{{{name}}}");
        if !path.contains(&placeholder) {
            continue;
        }
        let value = labels
            .get(name)
            .ok_or_else(|| ReconcileError::Refused(format!("the alert has no {name} label, needed for {template}")))?;
        if !is_dns1123_label(value) {
            return Err(ReconcileError::Refused(format!("label {name} is not a DNS-1123 label")));
        }
        path = path.replace(&placeholder, value);
    }
    Ok(path)
}
