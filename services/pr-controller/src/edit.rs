//! Minimal-diff YAML edits that keep comments and formatting (yaml-edit's lossless tree).
//!
//! Kustomize `images[].newTag` and `replicas[].count`. Values are validated by the caller; here
//! they are written as YAML strings (tags) or integers (counts), so a tag like `1.10` stays the
//! string "1.10" and never becomes the float 1.1.

use std::str::FromStr;

use yaml_edit::{Document, YamlNode, path::YamlPath};

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{file} is not valid YAML: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file} has no images entry for {image}")]
    NoImage { file: String, image: String },
    #[error("{file} has no replicas entry named {name}")]
    NoReplicas { file: String, name: String },
    #[error("cannot set {path} in {file}: {reason}")]
    Set { file: String, path: String, reason: String },
}

fn parse(file: &str, text: &str) -> Result<Document, EditError> {
    Document::from_str(text).map_err(|e| EditError::Parse {
        file: file.into(),
        reason: e.to_string(),
    })
}

fn scalar(document: &Document, path: &str) -> Option<String> {
    match document.try_get_path(path).ok()? {
        YamlNode::Scalar(scalar) => Some(scalar.as_string()),
        _ => None,
    }
}

/// Whether a Kustomize `images[].name` is the image of `service`: equal to `image` when one is
/// configured, else the last path segment of the name (without tag or digest) equals `service`.
pub fn image_matches(name: &str, service: &str, image: Option<&str>) -> bool {
    if let Some(image) = image {
        return name == image;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split(['@', ':']).next().unwrap_or(last);
    last == service
}

/// The index of the `images` entry for `service` in a kustomization.
fn image_index(document: &Document, service: &str, image: Option<&str>) -> Option<usize> {
    (0..1000)
        .map_while(|i| scalar(document, &format!("images[{i}].name")).map(|name| (i, name)))
        .find(|(_, name)| image_matches(name, service, image))
        .map(|(i, _)| i)
}

/// The `newTag` of `service`'s image in kustomization `text` (None when the entry has no tag).
pub fn kustomize_image_tag(
    file: &str,
    text: &str,
    service: &str,
    image: Option<&str>,
) -> Result<Option<String>, EditError> {
    let document = parse(file, text)?;
    let index = image_index(&document, service, image).ok_or_else(|| EditError::NoImage {
        file: file.into(),
        image: image.unwrap_or(service).into(),
    })?;
    Ok(scalar(&document, &format!("images[{index}].newTag")))
}

/// `text` with `service`'s `images[].newTag` set to `tag`; everything else byte for byte.
pub fn set_kustomize_image_tag(
    file: &str,
    text: &str,
    service: &str,
    image: Option<&str>,
    tag: &str,
) -> Result<String, EditError> {
    let document = parse(file, text)?;
    let index = image_index(&document, service, image).ok_or_else(|| EditError::NoImage {
        file: file.into(),
        image: image.unwrap_or(service).into(),
    })?;
    let path = format!("images[{index}].newTag");
    document.try_set_path(&path, tag).map_err(|e| EditError::Set {
        file: file.into(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(document.to_string())
}

fn replicas_index(document: &Document, name: &str) -> Option<usize> {
    (0..1000)
        .map_while(|i| scalar(document, &format!("replicas[{i}].name")).map(|n| (i, n)))
        .find(|(_, n)| n == name)
        .map(|(i, _)| i)
}

/// The `replicas[].count` named `name` in kustomization `text`.
pub fn kustomize_replicas(file: &str, text: &str, name: &str) -> Result<Option<i64>, EditError> {
    let document = parse(file, text)?;
    let index = replicas_index(&document, name).ok_or_else(|| EditError::NoReplicas {
        file: file.into(),
        name: name.into(),
    })?;
    Ok(scalar(&document, &format!("replicas[{index}].count")).and_then(|c| c.parse().ok()))
}

/// `text` with `replicas[].count` named `name` set to `count`.
pub fn set_kustomize_replicas(file: &str, text: &str, name: &str, count: i64) -> Result<String, EditError> {
    let document = parse(file, text)?;
    let index = replicas_index(&document, name).ok_or_else(|| EditError::NoReplicas {
        file: file.into(),
        name: name.into(),
    })?;
    let path = format!("replicas[{index}].count");
    document.try_set_path(&path, count).map_err(|e| EditError::Set {
        file: file.into(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUST: &str = r#"# Kustomization for checkout — managed by GitOps
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml   # the app
images:
  - name: ghcr.io/acme/sidecar
    newTag: 2.3.1
  - name: ghcr.io/acme/checkout
    newTag: "v1.5.0"  # pinned by release bot
replicas:
  - name: checkout
    count: 2 # baseline
"#;

    fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
        assert_eq!(
            before.lines().count(),
            after.lines().count(),
            "line count changed:\n{after}"
        );
        before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn reads_and_sets_the_service_image_tag_only() {
        assert_eq!(
            kustomize_image_tag("k", KUST, "checkout", None),
            Ok(Some("v1.5.0".into()))
        );
        assert_eq!(
            kustomize_image_tag("k", KUST, "sidecar", None),
            Ok(Some("2.3.1".into()))
        );
        let after = set_kustomize_image_tag("k", KUST, "checkout", None, "v1.4.1").expect("edit");
        let changed = changed_lines(KUST, &after);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(
            changed[0].1.contains("v1.4.1") && changed[0].1.contains("# pinned by release bot"),
            "{changed:?}"
        );
        assert_eq!(
            kustomize_image_tag("k", &after, "checkout", None),
            Ok(Some("v1.4.1".into()))
        );
    }

    #[test]
    fn ambiguous_tags_stay_strings() {
        for tag in ["1.10", "true", "2", "null", "1e3"] {
            let after = set_kustomize_image_tag("k", KUST, "sidecar", None, tag).expect("edit");
            let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid yaml");
            assert_eq!(
                parsed["images"][0]["newTag"],
                serde_norway::Value::String(tag.into()),
                "{after}"
            );
        }
    }

    #[test]
    fn replicas_are_integers_and_comments_stay() {
        assert_eq!(kustomize_replicas("k", KUST, "checkout"), Ok(Some(2)));
        let after = set_kustomize_replicas("k", KUST, "checkout", 3).expect("edit");
        let changed = changed_lines(KUST, &after);
        assert_eq!(
            changed,
            vec![("    count: 2 # baseline".into(), "    count: 3 # baseline".into())]
        );
    }

    #[test]
    fn missing_entries_are_named() {
        assert_eq!(
            kustomize_image_tag("apps/x/kustomization.yaml", KUST, "cart", None),
            Err(EditError::NoImage {
                file: "apps/x/kustomization.yaml".into(),
                image: "cart".into()
            })
        );
        assert!(matches!(
            kustomize_replicas("k", KUST, "cart"),
            Err(EditError::NoReplicas { .. })
        ));
        assert!(image_matches("ghcr.io/acme/checkout:v1", "checkout", None));
        assert!(image_matches("checkout", "checkout", None));
        assert!(!image_matches("ghcr.io/checkout/api", "checkout", None));
        assert!(image_matches(
            "ghcr.io/checkout/api",
            "checkout",
            Some("ghcr.io/checkout/api")
        ));
    }
}
