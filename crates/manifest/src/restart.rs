//! A restart in each kind of file: a new `kubectl.kubernetes.io/restartedAt` pod annotation,
//! which changes the pod template and so rolls the pods, as `kubectl rollout restart` does.

use yaml_edit::{Document, YamlNode, path::YamlPath};

use crate::{
    kind::{EditError, Kind},
    place::Place,
    yaml::{append_block, parse, set},
};

/// The annotation `kubectl rollout restart` sets.
pub(crate) const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The same, as a path segment (its dots escaped).
const RESTARTED_AT_KEY: &str = r"kubectl\.kubernetes\.io/restartedAt";

/// Quoted: to YAML 1.1 readers an unquoted RFC 3339 time is a timestamp, and annotations are
/// strings.
fn quoted(at: &str) -> yaml_edit::ScalarValue {
    yaml_edit::ScalarValue::double_quoted(at)
}

/// A Deployment, StatefulSet or Rollout: the annotation on its pod template.
pub(crate) fn manifest(file: &str, doc: &str, at: &str) -> Result<String, EditError> {
    let document = parse(file, doc)?;
    set(
        &document,
        file,
        &format!("spec.template.metadata.annotations.{RESTARTED_AT_KEY}"),
        quoted(at),
    )?;
    Ok(document.to_string())
}

/// Helm values (a file, or a HelmRelease's `spec.values`): the annotation under the chart's pod
/// annotations key, which the target must name — only the chart knows which key reaches the pod
/// template, and a key it ignores would restart nothing.
pub(crate) fn helm_values(kind: Kind, place: &Place, file: &str, doc: &str, at: &str) -> Result<String, EditError> {
    let key = place.pod_annotations.as_deref().ok_or_else(|| EditError::Unsupported {
        file: file.into(),
        reason: format!(
            "restart of a {} target needs the chart's pod annotations key (pod_annotations, e.g. \"podAnnotations\")",
            kind.name()
        ),
    })?;
    let prefix = if kind == Kind::HelmRelease { "spec.values." } else { "" };
    let document = parse(file, doc)?;
    set(
        &document,
        file,
        &format!("{prefix}{key}.{RESTARTED_AT_KEY}"),
        quoted(at),
    )?;
    Ok(document.to_string())
}

/// A kustomization: a strategic-merge patch of the workload's pod template annotation — the one
/// selfheal added before (only its time changes), or a new entry in `patches`.
pub(crate) fn kustomize(place: &Place, file: &str, doc: &str, at: &str) -> Result<String, EditError> {
    let workload_kind = place.workload_kind.as_deref().unwrap_or("Deployment");
    let name = place.workload_name();
    let document = parse(file, doc)?;
    if let Some(edited) = update_patch(&document, doc, workload_kind, name, at) {
        return Ok(edited);
    }
    let api_version = if workload_kind == "Rollout" {
        "argoproj.io/v1alpha1"
    } else {
        "apps/v1"
    };
    let patch = |indent: &str| {
        let body = format!(
            "apiVersion: {api_version}\nkind: {workload_kind}\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        {RESTARTED_AT}: \"{at}\"\n"
        );
        let mut entry = format!("{indent}- patch: |\n");
        for line in body.lines() {
            entry.push_str(&format!("{indent}    {line}\n"));
        }
        entry
    };
    match document.try_get_path("patches") {
        Ok(YamlNode::Sequence(patches)) => {
            // After the last entry, at the entries' own indentation.
            let range = patches.byte_range();
            let (start, end) = (range.start as usize, range.end as usize);
            let line_start = doc[..start].rfind('\n').map_or(0, |i| i + 1);
            let indent = &doc[line_start..start];
            if !indent.chars().all(|c| c == ' ') {
                return Err(EditError::Unsupported {
                    file: file.into(),
                    reason: "its patches are not a block list: cannot add a restart patch".into(),
                });
            }
            // The range may end on the last entry's line or after its newline (with any blank or
            // comment lines the parser gave it): the new entry starts on the next line.
            let insert_at = if end > 0 && doc.as_bytes()[end - 1] == b'\n' {
                end
            } else {
                doc[end..].find('\n').map_or(doc.len(), |i| end + i + 1)
            };
            let mut out = doc[..insert_at].to_string();
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&patch(indent));
            out.push_str(&doc[insert_at..]);
            Ok(out)
        }
        Ok(_) => Err(EditError::Unsupported {
            file: file.into(),
            reason: "its patches are not a list: cannot add a restart patch".into(),
        }),
        Err(_) => Ok(append_block(doc, &format!("patches:\n{}", patch("")))),
    }
}

/// `doc` with the restart time in the patch selfheal added for this workload changed to `at`,
/// when there is such a patch: only that line changes.
fn update_patch(document: &Document, doc: &str, workload_kind: &str, name: &str, at: &str) -> Option<String> {
    for i in 0..1000 {
        document.try_get_path(&format!("patches[{i}]")).ok()?;
        let Ok(YamlNode::Scalar(patch)) = document.try_get_path(&format!("patches[{i}].patch")) else {
            continue;
        };
        let Ok(value) = serde_norway::from_str::<serde_norway::Value>(&patch.as_string()) else {
            continue;
        };
        let restarted = value
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(RESTARTED_AT));
        if value.get("kind").and_then(|k| k.as_str()) != Some(workload_kind)
            || value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                != Some(name)
            || restarted.is_none()
        {
            continue;
        }
        // The annotation's line inside the patch's text: its value replaced, nothing else.
        let range = patch.byte_range();
        let (start, end) = (range.start as usize, range.end as usize);
        let scalar_text = &doc[start..end];
        let key = format!("{RESTARTED_AT}:");
        let offset = scalar_text.find(&key)?;
        let value_start = start + offset + key.len();
        let line_end = doc[value_start..].find('\n').map_or(doc.len(), |i| value_start + i);
        return Some(format!("{} \"{at}\"{}", &doc[..value_start], &doc[line_end..]));
    }
    None
}
