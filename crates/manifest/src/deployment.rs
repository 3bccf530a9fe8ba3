//! A plain Deployment: a container's `image`.

use yaml_edit::{Document, path::YamlPath};

use crate::yaml::scalar;

/// The container of a Deployment that runs `service`: the one named so, or the only one.
pub(crate) fn container_index(document: &Document, service: &str) -> Option<usize> {
    let names: Vec<String> = (0..64)
        .map_while(|i| {
            document
                .try_get_path(&format!("spec.template.spec.containers[{i}]"))
                .ok()?;
            Some(scalar(document, &format!("spec.template.spec.containers[{i}].name")).unwrap_or_default())
        })
        .collect();
    names
        .iter()
        .position(|n| n == service)
        .or((names.len() == 1).then_some(0))
}

/// `repo[:tag][@digest]` → (`repo`, `tag`).
pub(crate) fn split_image(image: &str) -> (&str, Option<&str>) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(colon) => (
            &without_digest[..last_slash + colon],
            Some(&without_digest[last_slash + colon + 1..]),
        ),
        None => (without_digest, None),
    }
}
