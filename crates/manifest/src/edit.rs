//! The edits and reads of each [`Kind`] of file, made on the one document the [`Place`] names
//! and spliced back into the file's text.

use std::ops::Range;

use crate::{
    deployment::{container_index, split_image},
    documents::{Doc, choose, detect, documents},
    kind::{EditError, Kind},
    kustomize::{kustomize_image_tag, kustomize_replicas, set_kustomize_image_tag, set_kustomize_replicas},
    place::Place,
    read_cache::{READS, ReadKey},
    restart as restarts,
    yaml::{append_block, has_key, parse, scalar, set, set_tag_value, tag_scalar},
};

/// The kind of `file` (the place's, or read from the file) and the bytes of the document the
/// place names.
fn locate(place: &Place, file: &str, text: &str) -> Result<(Kind, Range<usize>), EditError> {
    let docs = documents(file, text)?;
    let kind = match place.kind {
        Some(kind) => kind,
        None => detect(file, &docs)?,
    };
    Ok((kind, choose(file, kind, &docs, place)?.range.clone()))
}

/// The kind of the file at `place`: the place's, or read from the file.
pub fn kind_at(place: &Place, file: &str, text: &str) -> Result<Kind, EditError> {
    match place.kind {
        Some(kind) => Ok(kind),
        None => detect(file, &documents(file, text)?),
    }
}

/// What a file says at a place: its kind, the image tag and the replica count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceRead {
    pub kind: Kind,
    /// None: the document sets no tag for the place.
    pub tag: Option<String>,
    /// None: no replica count, or none that could be read.
    pub replicas: Option<i64>,
}

/// [`kind_at`], [`read_tag`] and [`read_replicas`] at once, the file split into its documents
/// once rather than three times (each answer is kept as those keep theirs). Fails as `kind_at`
/// or `read_tag` would; a replica count that cannot be read is None.
pub fn read_place(place: &Place, file: &str, text: &str) -> Result<PlaceRead, EditError> {
    // Split at most once, and only for what is not kept already.
    let mut split: Option<Result<Vec<Doc>, EditError>> = None;
    let kind = match place.kind {
        Some(kind) => kind,
        None => {
            let name = READS.get_or(ReadKey::new("kind", place, file, text), || {
                Ok(Some(
                    detect(file, split_once(&mut split, file, text)?)?.name().to_string(),
                ))
            })?;
            name.as_deref()
                .and_then(Kind::from_name)
                .ok_or_else(|| EditError::Parse {
                    file: file.to_string(),
                    reason: "its kind could not be read".into(),
                })?
        }
    };
    let doc = |split: &mut Option<Result<Vec<Doc>, EditError>>| -> Result<&str, EditError> {
        Ok(&text[choose(file, kind, split_once(split, file, text)?, place)?.range.clone()])
    };
    let tag = READS.get_or(ReadKey::new("tag", place, file, text), || {
        read_tag_in(kind, place, file, doc(&mut split)?)
    })?;
    let replicas = READS
        .get_or(ReadKey::new("replicas", place, file, text), || {
            read_replicas_in(kind, place, file, doc(&mut split)?).map(|count| count.map(|c| c.to_string()))
        })
        .ok()
        .flatten()
        .and_then(|count| count.parse().ok());
    Ok(PlaceRead { kind, tag, replicas })
}

/// The documents of `text`, split the first time they are asked for.
fn split_once<'a>(
    split: &'a mut Option<Result<Vec<Doc>, EditError>>,
    file: &str,
    text: &str,
) -> Result<&'a [Doc], EditError> {
    split
        .get_or_insert_with(|| documents(file, text))
        .as_deref()
        .map_err(Clone::clone)
}

/// `text` with its document at `range` edited by `edit`, every other byte as it was.
fn splice(
    text: &str,
    range: Range<usize>,
    edit: impl FnOnce(&str) -> Result<String, EditError>,
) -> Result<String, EditError> {
    let edited = edit(&text[range.clone()])?;
    Ok(format!("{}{edited}{}", &text[..range.start], &text[range.end..]))
}

/// The image tag of the service at `place` in `text`.
pub fn read_tag(place: &Place, file: &str, text: &str) -> Result<Option<String>, EditError> {
    READS.get_or(ReadKey::new("tag", place, file, text), || {
        let (kind, range) = locate(place, file, text)?;
        read_tag_in(kind, place, file, &text[range])
    })
}

fn read_tag_in(kind: Kind, place: &Place, file: &str, doc: &str) -> Result<Option<String>, EditError> {
    match kind {
        Kind::Kustomize => match kustomize_image_tag(file, doc, &place.service, place.image.as_deref()) {
            Err(EditError::NoImage { .. }) => Ok(None),
            other => other,
        },
        Kind::HelmValues | Kind::HelmRelease => Ok(scalar(&parse(file, doc)?, &place.tag_path(kind))),
        Kind::Manifest => {
            let document = parse(file, doc)?;
            let index = container(&document, file, place)?;
            let image = scalar(&document, &format!("spec.template.spec.containers[{index}].image"));
            Ok(image.and_then(|i| split_image(&i).1.map(str::to_string)))
        }
    }
}

fn container(document: &yaml_edit::Document, file: &str, place: &Place) -> Result<usize, EditError> {
    container_index(document, place).ok_or_else(|| EditError::NoImage {
        file: file.into(),
        image: place
            .container
            .clone()
            .or_else(|| place.image.clone())
            .unwrap_or_else(|| place.service.clone()),
    })
}

/// `text` with the image tag at `place` set to `tag`, changing only that value — or, where the
/// file has no entry yet (Kustomize `images`, Helm values' `image`), adding a small block.
pub fn set_tag(place: &Place, file: &str, text: &str, tag: &str) -> Result<String, EditError> {
    let (kind, range) = locate(place, file, text)?;
    splice(text, range, |doc| set_tag_in(kind, place, file, doc, tag))
}

fn set_tag_in(kind: Kind, place: &Place, file: &str, doc: &str, tag: &str) -> Result<String, EditError> {
    let image = place.image.as_deref();
    match kind {
        Kind::Kustomize => match set_kustomize_image_tag(file, doc, &place.service, image, tag) {
            Err(EditError::NoImage { .. }) if !has_key(&parse(file, doc)?, "images") => {
                let name = image.ok_or_else(|| EditError::NoImage {
                    file: file.into(),
                    image: place.service.clone(),
                })?;
                Ok(append_block(
                    doc,
                    &format!("images:\n- name: {name}\n  newTag: {}\n", tag_scalar(tag)),
                ))
            }
            other => other,
        },
        Kind::HelmValues | Kind::HelmRelease => {
            let document = parse(file, doc)?;
            set_tag_value(&document, file, &place.tag_path(kind), tag)?;
            Ok(document.to_string())
        }
        Kind::Manifest => {
            let document = parse(file, doc)?;
            let index = container(&document, file, place)?;
            let path = format!("spec.template.spec.containers[{index}].image");
            let current = scalar(&document, &path).ok_or_else(|| EditError::NoImage {
                file: file.into(),
                image: place.service.clone(),
            })?;
            let (repository, _) = split_image(&current);
            set(&document, file, &path, format!("{repository}:{tag}").as_str())?;
            Ok(document.to_string())
        }
    }
}

/// The replica count at `place` in `text`.
pub fn read_replicas(place: &Place, file: &str, text: &str) -> Result<Option<i64>, EditError> {
    let count = READS.get_or(ReadKey::new("replicas", place, file, text), || {
        let (kind, range) = locate(place, file, text)?;
        read_replicas_in(kind, place, file, &text[range]).map(|count| count.map(|c| c.to_string()))
    })?;
    Ok(count.and_then(|c| c.parse().ok()))
}

fn read_replicas_in(kind: Kind, place: &Place, file: &str, doc: &str) -> Result<Option<i64>, EditError> {
    let path = match kind {
        Kind::Kustomize => {
            return match kustomize_replicas(file, doc, place.workload_name()) {
                Err(EditError::NoReplicas { .. }) => Ok(None),
                other => other,
            };
        }
        Kind::HelmValues | Kind::HelmRelease => place.replicas_path(kind),
        Kind::Manifest => "spec.replicas".into(),
    };
    Ok(scalar(&parse(file, doc)?, &path).and_then(|c| c.parse().ok()))
}

/// `text` with the replica count at `place` set to `count` (adding the entry where there is none).
pub fn set_replicas(place: &Place, file: &str, text: &str, count: i64) -> Result<String, EditError> {
    let (kind, range) = locate(place, file, text)?;
    splice(text, range, |doc| {
        let path = match kind {
            Kind::Kustomize => {
                let name = place.workload_name();
                return match set_kustomize_replicas(file, doc, name, count) {
                    Err(EditError::NoReplicas { .. }) if !has_key(&parse(file, doc)?, "replicas") => Ok(append_block(
                        doc,
                        &format!("replicas:\n- name: {name}\n  count: {count}\n"),
                    )),
                    other => other,
                };
            }
            Kind::HelmValues | Kind::HelmRelease => place.replicas_path(kind),
            Kind::Manifest => "spec.replicas".into(),
        };
        let document = parse(file, doc)?;
        set(&document, file, &path, count)?;
        Ok(document.to_string())
    })
}

/// `text` with the workload at `place` restarted at `at` (an RFC 3339 time): the pod template
/// annotation `kubectl.kubernetes.io/restartedAt` that `kubectl rollout restart` writes, set
/// where the file's kind puts pod annotations — the Deployment itself, the chart's pod
/// annotations key in Helm values, or a patch in the kustomization.
pub fn restart(place: &Place, file: &str, text: &str, at: &str) -> Result<String, EditError> {
    let (kind, range) = locate(place, file, text)?;
    splice(text, range, |doc| match kind {
        Kind::Manifest => restarts::manifest(file, doc, at),
        Kind::HelmValues | Kind::HelmRelease => restarts::helm_values(kind, place, file, doc, at),
        Kind::Kustomize => restarts::kustomize(place, file, doc, at),
    })
}
