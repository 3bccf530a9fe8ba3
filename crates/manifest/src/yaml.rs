//! The yaml-edit helpers every kind of file shares.

use std::str::FromStr;

use yaml_edit::{Document, YamlNode, path::YamlPath};

use crate::kind::EditError;

pub(crate) fn parse(file: &str, text: &str) -> Result<Document, EditError> {
    Document::from_str(text).map_err(|e| EditError::Parse {
        file: file.into(),
        reason: e.to_string(),
    })
}

pub(crate) fn scalar(document: &Document, path: &str) -> Option<String> {
    match document.try_get_path(path).ok()? {
        YamlNode::Scalar(scalar) => Some(scalar.as_string()),
        _ => None,
    }
}

/// A YAML scalar for `tag` that reads back as the string `tag`, as text (quoted when YAML would
/// read it as a number, a boolean or null). Tags are validated OCI tags before they get here.
pub(crate) fn tag_scalar(tag: &str) -> String {
    if needs_quotes(tag) {
        format!("\"{tag}\"")
    } else {
        tag.to_string()
    }
}

/// Sets the tag at `path` to `tag`, quoted when [`tag_scalar`] would quote it (otherwise as
/// yaml-edit writes a string, which keeps the value's style).
pub(crate) fn set_tag_value(document: &Document, file: &str, path: &str, tag: &str) -> Result<(), EditError> {
    if needs_quotes(tag) {
        set(document, file, path, yaml_edit::ScalarValue::double_quoted(tag))
    } else {
        set(document, file, path, tag)
    }
}

/// Whether a YAML reader would take `tag` unquoted for something else than that string: YAML
/// 1.2 (a number, `true`, `null`), or YAML 1.1 — which Helm's parser and many tools still speak —
/// where `on`, `yes`, `n` … are booleans and `1_000` a number.
fn needs_quotes(tag: &str) -> bool {
    const YAML11_WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
        "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
    ];
    let reads_as_string = |text: &str| matches!(serde_norway::from_str::<serde_norway::Value>(text), Ok(serde_norway::Value::String(s)) if s == text);
    YAML11_WORDS.contains(&tag)
        || !reads_as_string(tag)
        || (tag.contains('_') && !reads_as_string(&tag.replace('_', "")))
}

/// `text` with `block` appended as new top-level lines.
pub(crate) fn append_block(text: &str, block: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out
}

pub(crate) fn has_key(document: &Document, path: &str) -> bool {
    document.try_get_path(path).is_ok()
}

pub(crate) fn set(document: &Document, file: &str, path: &str, value: impl yaml_edit::AsYaml) -> Result<(), EditError> {
    document.try_set_path(path, value).map_err(|e| EditError::Set {
        file: file.into(),
        path: path.into(),
        reason: e.to_string(),
    })
}
