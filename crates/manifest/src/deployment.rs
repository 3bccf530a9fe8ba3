//! A workload's pod template (Deployment, StatefulSet, Argo Rollouts `Rollout`): its containers.

use yaml_edit::{Document, path::YamlPath};

use crate::{place::Place, yaml::scalar};

/// The container of the workload that runs the place's service: the one the place names, else
/// the one whose image is the place's image, else the one named like the service, else the only
/// one.
pub(crate) fn container_index(document: &Document, place: &Place) -> Option<usize> {
    let containers: Vec<(String, String)> = (0..64)
        .map_while(|i| {
            document
                .try_get_path(&format!("spec.template.spec.containers[{i}]"))
                .ok()?;
            let field =
                |f: &str| scalar(document, &format!("spec.template.spec.containers[{i}].{f}")).unwrap_or_default();
            Some((field("name"), field("image")))
        })
        .collect();
    if let Some(wanted) = &place.container {
        return containers.iter().position(|(name, _)| name == wanted);
    }
    if let Some(image) = &place.image
        && let Some(index) = containers.iter().position(|(_, i)| split_image(i).0 == image)
    {
        return Some(index);
    }
    containers
        .iter()
        .position(|(name, _)| *name == place.service)
        .or((containers.len() == 1).then_some(0))
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
