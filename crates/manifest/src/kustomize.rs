//! Kustomize: `images[].newTag` and `replicas[].count`.

use yaml_edit::{Document, path::YamlPath};

use crate::{
    kind::EditError,
    yaml::{parse, scalar},
};

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
    crate::yaml::set_tag_value(&document, file, &format!("images[{index}].newTag"), tag)?;
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
