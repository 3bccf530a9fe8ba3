//! A file of one or many YAML documents: where each begins and ends, what each is, and which one
//! a [`Place`] names.
//!
//! Documents are cut at their `---` lines by text, not by a parser: an edit changes the bytes of
//! one document and splices them back, so every other document, separator, banner comment and
//! blank line stays byte for byte. (A line starting `---` and then a space or nothing is a
//! document marker wherever it stands; YAML forbids one inside a scalar.)

use std::ops::Range;

use crate::{kind::EditError, kind::Kind, place::Place};

/// The kinds of a workload whose pod template a manifest edit changes.
pub(crate) const WORKLOAD_KINDS: [&str; 3] = ["Deployment", "StatefulSet", "Rollout"];

/// One document of a file: its bytes (without the `---` line before it) and what it says it is.
#[derive(Clone, Debug)]
pub(crate) struct Doc {
    pub(crate) range: Range<usize>,
    /// The document's `kind`; `None` for a mapping without one (Helm values).
    pub(crate) kind: Option<String>,
    /// Whether it has an `apiVersion` (a values file has none; a `Chart.yaml` has one).
    pub(crate) api_version: bool,
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    /// The names of its pod template's containers.
    pub(crate) containers: Vec<String>,
}

impl Doc {
    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("(unnamed)");
        match &self.namespace {
            Some(namespace) => format!("{name} in {namespace}"),
            None => name.to_string(),
        }
    }
}

/// The documents of `text` that hold something (comment-only and empty ones are left out).
pub(crate) fn documents(file: &str, text: &str) -> Result<Vec<Doc>, EditError> {
    let mut docs = Vec::new();
    for (index, range) in split(text).into_iter().enumerate() {
        let body = &text[range.clone()];
        let value: serde_norway::Value = serde_norway::from_str(body).map_err(|e| EditError::Parse {
            file: file.into(),
            reason: format!("document {}: {e}", index + 1),
        })?;
        let serde_norway::Value::Mapping(_) = &value else {
            if value.is_null() {
                continue;
            }
            return Err(EditError::Parse {
                file: file.into(),
                reason: format!("document {} is not a mapping", index + 1),
            });
        };
        let text_at = |path: &[&str]| {
            let mut at = &value;
            for key in path {
                at = at.get(key)?;
            }
            at.as_str().map(str::to_owned)
        };
        let containers = value
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("containers"))
            .and_then(|c| c.as_sequence())
            .map(|c| {
                c.iter()
                    .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        docs.push(Doc {
            range,
            kind: text_at(&["kind"]),
            api_version: value.get("apiVersion").is_some(),
            name: text_at(&["metadata", "name"]),
            namespace: text_at(&["metadata", "namespace"]),
            containers,
        });
    }
    Ok(docs)
}

/// The byte ranges of the documents of `text`, the `---` lines left out.
fn split(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < text.len() {
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
        let line = &text[at..end];
        if is_marker(line) {
            ranges.push(start..at);
            start = end;
        }
        at = end;
    }
    ranges.push(start..text.len());
    ranges
}

fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// What `file` holds, from its name and documents: `Kustomization`/`Component` (or a file named
/// `kustomization.yaml`) → Kustomize, `HelmRelease` → HelmRelease, `Deployment`/`StatefulSet`/
/// `Rollout` → a manifest, a mapping with neither `kind` nor `apiVersion` → Helm values; anything
/// else (a Service, a `Chart.yaml`) is refused.
pub fn kind_of(file: &str, text: &str) -> Result<Kind, EditError> {
    detect(file, &documents(file, text)?)
}

pub(crate) fn detect(file: &str, docs: &[Doc]) -> Result<Kind, EditError> {
    let base = file.rsplit('/').next().unwrap_or(file);
    if matches!(base, "kustomization.yaml" | "kustomization.yml" | "Kustomization") {
        return Ok(Kind::Kustomize);
    }
    let mut kinds: Vec<Kind> = docs.iter().filter_map(kind_of_doc).collect();
    kinds.sort_by_key(|k| k.name());
    kinds.dedup();
    match kinds.as_slice() {
        [kind] => Ok(*kind),
        [] => Err(EditError::NotEditable {
            file: file.into(),
            holds: holds(docs),
        }),
        several => Err(EditError::MixedKinds {
            file: file.into(),
            kinds: several.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        }),
    }
}

fn kind_of_doc(doc: &Doc) -> Option<Kind> {
    match doc.kind.as_deref() {
        Some("Kustomization" | "Component") => Some(Kind::Kustomize),
        Some("HelmRelease") => Some(Kind::HelmRelease),
        Some(kind) if WORKLOAD_KINDS.contains(&kind) => Some(Kind::Manifest),
        Some(_) => None,
        None if doc.api_version => None,
        None => Some(Kind::HelmValues),
    }
}

fn holds(docs: &[Doc]) -> String {
    if docs.is_empty() {
        return "nothing".into();
    }
    let mut kinds: Vec<&str> = docs
        .iter()
        .map(|d| d.kind.as_deref().unwrap_or("a mapping with an apiVersion and no kind"))
        .collect();
    kinds.dedup();
    kinds.join(", ")
}

/// The document of `docs` that `place` names in a file of `kind`, or why there is none.
pub(crate) fn choose<'a>(file: &str, kind: Kind, docs: &'a [Doc], place: &Place) -> Result<&'a Doc, EditError> {
    let what = match kind {
        Kind::Manifest => match &place.workload_kind {
            Some(workload_kind) => workload_kind.clone(),
            None => "Deployment, StatefulSet or Rollout".into(),
        },
        Kind::HelmRelease => "HelmRelease".into(),
        Kind::Kustomize => "Kustomization".into(),
        Kind::HelmValues => "values document".into(),
    };
    let of_kind: Vec<&Doc> = docs
        .iter()
        .filter(|doc| match kind {
            Kind::Manifest => match &place.workload_kind {
                Some(wanted) => doc.kind.as_deref() == Some(wanted.as_str()),
                None => doc.kind.as_deref().is_some_and(|k| WORKLOAD_KINDS.contains(&k)),
            },
            Kind::HelmRelease => doc.kind.as_deref() == Some("HelmRelease"),
            // A kustomization may leave out its kind; a values file has none.
            Kind::Kustomize => matches!(doc.kind.as_deref(), None | Some("Kustomization" | "Component")),
            Kind::HelmValues => doc.kind.is_none() && !doc.api_version,
        })
        .filter(|doc| place.namespace.is_none() || doc.namespace == place.namespace)
        .collect();
    let named = |name: &str| -> Vec<&Doc> {
        of_kind
            .iter()
            .copied()
            .filter(|doc| doc.name.as_deref() == Some(name))
            .collect()
    };
    let (found, wanted): (Vec<&Doc>, Option<&str>) = match (kind, place.name.as_deref()) {
        // A kustomization or a values file is the whole of what it configures: one per file.
        (Kind::Kustomize | Kind::HelmValues, _) => (of_kind.clone(), None),
        (_, Some(name)) => (named(name), Some(name)),
        (_, None) if of_kind.len() == 1 => (of_kind.clone(), None),
        (_, None) => (named(&place.service), Some(place.service.as_str())),
    };
    let in_namespace = match &place.namespace {
        Some(namespace) => format!(" in namespace {namespace}"),
        None => String::new(),
    };
    match found.as_slice() {
        [doc] => Ok(doc),
        [] => {
            let what = match wanted {
                Some(name) => format!("{what} named {name}{in_namespace}"),
                None => format!("{what}{in_namespace}"),
            };
            // Those running the service's container first: they are what the target meant.
            let container = place.container.as_deref().unwrap_or(&place.service);
            let running: Vec<String> = of_kind
                .iter()
                .filter(|d| d.containers.iter().any(|c| c == container))
                .map(|d| d.describe())
                .collect();
            let candidates = if running.is_empty() {
                of_kind.iter().map(|d| d.describe()).collect::<Vec<_>>().join(", ")
            } else {
                format!("{} (running container {container})", running.join(", "))
            };
            Err(EditError::NoDocument {
                file: file.into(),
                what,
                candidates: if candidates.is_empty() {
                    "none".into()
                } else {
                    candidates
                },
            })
        }
        several => Err(EditError::Ambiguous {
            file: file.into(),
            what: format!("{what}{}", wanted.map(|n| format!(" named {n}")).unwrap_or_default()),
            matches: several.iter().map(|d| d.describe()).collect::<Vec<_>>().join(", "),
        }),
    }
}
