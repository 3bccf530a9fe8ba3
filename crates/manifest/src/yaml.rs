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

/// A YAML plain scalar for `tag` that reads back as the string `tag` (quoted when YAML would
/// read it as a number, a boolean or null). Tags are validated OCI tags before they get here.
pub(crate) fn tag_scalar(tag: &str) -> String {
    match serde_norway::from_str::<serde_norway::Value>(tag) {
        Ok(serde_norway::Value::String(s)) if s == tag => tag.to_string(),
        _ => format!("\"{tag}\""),
    }
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
