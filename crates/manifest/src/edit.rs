//! The edits and reads of each [`Kind`] of file, dispatched to the module that knows its layout.

use crate::{
    deployment::{container_index, split_image},
    kind::{EditError, Kind},
    kustomize::{kustomize_image_tag, kustomize_replicas, set_kustomize_image_tag, set_kustomize_replicas},
    read_cache::{READS, ReadKey},
    yaml::{append_block, has_key, parse, scalar, set, tag_scalar},
};

/// The image tag of `service` in a file of `kind`.
pub fn read_tag(
    kind: Kind,
    file: &str,
    text: &str,
    service: &str,
    image: Option<&str>,
) -> Result<Option<String>, EditError> {
    let key = ReadKey {
        what: "tag",
        kind,
        file: file.to_owned(),
        service: service.to_owned(),
        image: image.map(str::to_owned),
        text: text.to_owned(),
    };
    READS.get_or(key, || read_tag_parsed(kind, file, text, service, image))
}

fn read_tag_parsed(
    kind: Kind,
    file: &str,
    text: &str,
    service: &str,
    image: Option<&str>,
) -> Result<Option<String>, EditError> {
    match kind {
        Kind::Kustomize => match kustomize_image_tag(file, text, service, image) {
            Err(EditError::NoImage { .. }) => Ok(None),
            other => other,
        },
        Kind::HelmValues => Ok(scalar(&parse(file, text)?, "image.tag")),
        Kind::HelmRelease => Ok(scalar(&parse(file, text)?, "spec.values.image.tag")),
        Kind::Manifest => {
            let document = parse(file, text)?;
            let index = container_index(&document, service).ok_or_else(|| EditError::NoImage {
                file: file.into(),
                image: service.into(),
            })?;
            let image = scalar(&document, &format!("spec.template.spec.containers[{index}].image"));
            Ok(image.and_then(|i| split_image(&i).1.map(str::to_string)))
        }
    }
}

/// `text` with `service`'s image tag set to `tag`, changing only that value — or, where the file
/// has no entry yet (Kustomize `images`, HelmRelease `spec.values.image`), adding a small block.
pub fn set_tag(
    kind: Kind,
    file: &str,
    text: &str,
    service: &str,
    image: Option<&str>,
    tag: &str,
) -> Result<String, EditError> {
    match kind {
        Kind::Kustomize => match set_kustomize_image_tag(file, text, service, image, tag) {
            Err(EditError::NoImage { .. }) if !has_key(&parse(file, text)?, "images") => {
                let name = image.ok_or_else(|| EditError::NoImage {
                    file: file.into(),
                    image: service.into(),
                })?;
                Ok(append_block(
                    text,
                    &format!("images:\n- name: {name}\n  newTag: {}\n", tag_scalar(tag)),
                ))
            }
            other => other,
        },
        Kind::HelmValues | Kind::HelmRelease => {
            let path = if kind == Kind::HelmValues {
                "image.tag"
            } else {
                "spec.values.image.tag"
            };
            let document = parse(file, text)?;
            set(&document, file, path, tag)?;
            Ok(document.to_string())
        }
        Kind::Manifest => {
            let document = parse(file, text)?;
            let index = container_index(&document, service).ok_or_else(|| EditError::NoImage {
                file: file.into(),
                image: service.into(),
            })?;
            let path = format!("spec.template.spec.containers[{index}].image");
            let current = scalar(&document, &path).ok_or_else(|| EditError::NoImage {
                file: file.into(),
                image: service.into(),
            })?;
            let (repository, _) = split_image(&current);
            set(&document, file, &path, format!("{repository}:{tag}").as_str())?;
            Ok(document.to_string())
        }
    }
}

/// The replica count of `service` in a file of `kind`.
pub fn read_replicas(kind: Kind, file: &str, text: &str, service: &str) -> Result<Option<i64>, EditError> {
    let key = ReadKey {
        what: "replicas",
        kind,
        file: file.to_owned(),
        service: service.to_owned(),
        image: None,
        text: text.to_owned(),
    };
    let count = READS.get_or(key, || {
        read_replicas_parsed(kind, file, text, service).map(|count| count.map(|c| c.to_string()))
    })?;
    Ok(count.and_then(|c| c.parse().ok()))
}

fn read_replicas_parsed(kind: Kind, file: &str, text: &str, service: &str) -> Result<Option<i64>, EditError> {
    let path = match kind {
        Kind::Kustomize => {
            return match kustomize_replicas(file, text, service) {
                Err(EditError::NoReplicas { .. }) => Ok(None),
                other => other,
            };
        }
        Kind::HelmValues => "replicaCount",
        Kind::HelmRelease => "spec.values.replicaCount",
        Kind::Manifest => "spec.replicas",
    };
    Ok(scalar(&parse(file, text)?, path).and_then(|c| c.parse().ok()))
}

/// `text` with `service`'s replica count set to `count` (adding the entry where there is none).
pub fn set_replicas(kind: Kind, file: &str, text: &str, service: &str, count: i64) -> Result<String, EditError> {
    let path = match kind {
        Kind::Kustomize => {
            return match set_kustomize_replicas(file, text, service, count) {
                Err(EditError::NoReplicas { .. }) if !has_key(&parse(file, text)?, "replicas") => Ok(append_block(
                    text,
                    &format!("replicas:\n- name: {service}\n  count: {count}\n"),
                )),
                other => other,
            };
        }
        Kind::HelmValues => "replicaCount",
        Kind::HelmRelease => "spec.values.replicaCount",
        Kind::Manifest => "spec.replicas",
    };
    let document = parse(file, text)?;
    set(&document, file, path, count)?;
    Ok(document.to_string())
}

/// `text` with the pod template annotation `kubectl.kubernetes.io/restartedAt` set to `at`
/// (what `kubectl rollout restart` writes), for a Deployment manifest.
pub fn set_restarted_at(file: &str, text: &str, at: &str) -> Result<String, EditError> {
    let document = parse(file, text)?;
    // Quoted: to YAML 1.1 readers an unquoted RFC 3339 time is a timestamp, and annotations are strings.
    let value = yaml_edit::ScalarValue::double_quoted(at);
    set(
        &document,
        file,
        r"spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt",
        value,
    )?;
    Ok(document.to_string())
}
