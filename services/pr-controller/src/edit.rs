//! Minimal-diff YAML edits that keep comments and formatting (yaml-edit's lossless tree).
//!
//! Kustomize `images[].newTag` and `replicas[].count`. Values are validated by the caller; here
//! they are written as YAML strings (tags) or integers (counts), so a tag like `1.10` stays the
//! string "1.10" and never becomes the float 1.1.

use std::str::FromStr;

use yaml_edit::{Document, YamlNode, path::YamlPath};

/// Why an edit could not be made.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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

    #[test]
    fn reads_are_remembered_by_text_service_and_kind() {
        let older = KUST.replace("v1.5.0", "v1.4.1");
        for _ in 0..2 {
            for (text, tag) in [(KUST, "v1.5.0"), (older.as_str(), "v1.4.1")] {
                assert_eq!(
                    read_tag(Kind::Kustomize, "k.yaml", text, "checkout", None),
                    Ok(Some(tag.to_string()))
                );
            }
            assert_eq!(
                read_tag(Kind::Kustomize, "k.yaml", KUST, "sidecar", None),
                Ok(Some("2.3.1".to_string()))
            );
            assert_eq!(read_tag(Kind::Kustomize, "k.yaml", KUST, "payments", None), Ok(None));
            assert_eq!(read_tag(Kind::HelmValues, "k.yaml", KUST, "checkout", None), Ok(None));
            assert_eq!(read_replicas(Kind::Kustomize, "k.yaml", KUST, "checkout"), Ok(Some(2)));
            assert_eq!(
                read_replicas(
                    Kind::Kustomize,
                    "k.yaml",
                    &older.replace("count: 2", "count: 5"),
                    "checkout"
                ),
                Ok(Some(5))
            );
            assert!(matches!(
                read_tag(Kind::Kustomize, "bad.yaml", "images: [", "checkout", None),
                Err(EditError::Parse { .. })
            ));
        }
    }

    #[test]
    fn a_huge_file_is_read_but_not_kept() {
        let huge = format!("{KUST}# {}\n", "x".repeat(Reads::MAX_BYTES / 8 + 16));
        assert_eq!(
            read_tag(Kind::Kustomize, "k.yaml", &huge, "checkout", None),
            Ok(Some("v1.5.0".to_string()))
        );
        let (held, bytes) = READS.holds(&huge);
        assert!(!held && bytes <= Reads::MAX_BYTES, "{bytes} bytes kept");
        assert_eq!(
            read_tag(Kind::Kustomize, "k.yaml", KUST, "checkout", None),
            Ok(Some("v1.5.0".to_string()))
        );
        assert!(READS.holds(KUST).0, "a small one is kept");
    }

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

/// What kind of file holds a service's image tag and replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A Kustomize `kustomization.yaml`: `images[].newTag`, `replicas[].count`.
    Kustomize,
    /// A Helm values file: `image.tag`, `replicaCount`.
    HelmValues,
    /// A Flux `HelmRelease`: `spec.values.image.tag`, `spec.values.replicaCount`.
    HelmRelease,
    /// A plain Deployment: a container's `image`, `spec.replicas`.
    Manifest,
}

impl Kind {
    /// The name used in configuration and events.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kustomize => "kustomize",
            Kind::HelmValues => "helm-values",
            Kind::HelmRelease => "helm-release",
            Kind::Manifest => "manifest",
        }
    }
}

/// A YAML plain scalar for `tag` that reads back as the string `tag` (quoted when YAML would
/// read it as a number, a boolean or null). Tags are validated OCI tags before they get here.
fn tag_scalar(tag: &str) -> String {
    match serde_norway::from_str::<serde_norway::Value>(tag) {
        Ok(serde_norway::Value::String(s)) if s == tag => tag.to_string(),
        _ => format!("\"{tag}\""),
    }
}

/// `text` with `block` appended as new top-level lines.
fn append_block(text: &str, block: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out
}

fn has_key(document: &Document, path: &str) -> bool {
    document.try_get_path(path).is_ok()
}

fn set(document: &Document, file: &str, path: &str, value: impl yaml_edit::AsYaml) -> Result<(), EditError> {
    document.try_set_path(path, value).map_err(|e| EditError::Set {
        file: file.into(),
        path: path.into(),
        reason: e.to_string(),
    })
}

/// The container of a Deployment that runs `service`: the one named so, or the only one.
fn container_index(document: &Document, service: &str) -> Option<usize> {
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
fn split_image(image: &str) -> (&str, Option<&str>) {
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

/// What was read from a file's text, by what was asked: parsing YAML losslessly costs far more
/// than looking a text up, and the same versions of a file are read again and again (the current
/// one by every alert on its service, the earlier ones by every rollback's history search).
struct Reads {
    answers: std::sync::Mutex<Answers>,
}

type Answer = Result<Option<String>, EditError>;

#[derive(Default)]
struct Answers {
    by_key: std::collections::HashMap<ReadKey, Answer>,
    /// The texts' bytes held in `by_key`.
    bytes: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    what: &'static str,
    kind: Kind,
    file: String,
    service: String,
    image: Option<String>,
    text: String,
}

impl Reads {
    /// Kept at most, in answers and in the bytes of the texts they were read from; past either,
    /// the cache starts again (a burst touches one or two versions per service).
    const MAX: usize = 2048;
    const MAX_BYTES: usize = 32 << 20;

    fn get_or(&self, key: ReadKey, read: impl FnOnce() -> Answer) -> Answer {
        let lock = || self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(answer) = lock().by_key.get(&key) {
            return answer.clone();
        }
        let answer = read();
        let size = key.text.len();
        if size > Self::MAX_BYTES / 8 {
            // A file this large is read as it is, not kept.
            return answer;
        }
        let mut answers = lock();
        if answers.by_key.len() >= Self::MAX || answers.bytes + size > Self::MAX_BYTES {
            answers.by_key.clear();
            answers.bytes = 0;
        }
        if answers.by_key.insert(key, answer.clone()).is_none() {
            answers.bytes += size;
        }
        answer
    }
}

#[cfg(test)]
impl Reads {
    /// Whether an answer read from `text` is kept, and the bytes kept in all.
    fn holds(&self, text: &str) -> (bool, usize) {
        let answers = self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (answers.by_key.keys().any(|k| k.text == text), answers.bytes)
    }
}

static READS: std::sync::LazyLock<Reads> = std::sync::LazyLock::new(|| Reads {
    answers: Default::default(),
});

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

#[cfg(test)]
mod fixture_tests {
    //! Every edit on the real Argo CD and Flux example files in `shared/fixtures/gitops`.

    use super::*;

    fn fixture(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/gitops")
            .join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// Exactly one line differs, and it is `expected`.
    fn one_line_changed(before: &str, after: &str, expected: &str) {
        let (old, new): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
        assert_eq!(old.len(), new.len(), "line count changed:\n{after}");
        let changed: Vec<(&&str, &&str)> = old.iter().zip(new.iter()).filter(|(a, b)| a != b).collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].1.trim().trim_start_matches("- "), expected, "{changed:?}");
    }

    /// Every original line is still there, in order, and only `added` lines were added.
    fn block_added(before: &str, after: &str, added: usize) {
        let old: Vec<&str> = before.lines().collect();
        let new: Vec<&str> = after.lines().collect();
        assert_eq!(new.len(), old.len() + added, "{after}");
        let mut next = new.iter();
        for line in &old {
            assert!(next.any(|n| n == line), "line {line:?} lost or moved:\n{after}");
        }
    }

    fn comments(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.trim_start().starts_with('#')).collect()
    }

    fn value(text: &str, path: &[&str]) -> serde_norway::Value {
        let mut value: serde_norway::Value =
            serde_norway::from_str(text.trim_start_matches("---\n")).expect("valid YAML");
        for key in path {
            value = match key.parse::<usize>() {
                Ok(index) => value[index].clone(),
                Err(_) => value[*key].clone(),
            };
        }
        value
    }

    #[test]
    fn helm_values_change_one_line_and_keep_every_comment() {
        let before = fixture("argocd-example-apps/helm-guestbook/values.yaml");
        assert_eq!(
            read_tag(Kind::HelmValues, "v", &before, "guestbook", None),
            Ok(Some("v5".into()))
        );
        let after = set_tag(Kind::HelmValues, "v", &before, "guestbook", None, "v4").expect("edit");
        one_line_changed(&before, &after, "tag: v4");
        assert_eq!(comments(&before), comments(&after));
        assert_eq!(
            value(&after, &["image", "tag"]),
            serde_norway::Value::String("v4".into())
        );
        let after = set_replicas(Kind::HelmValues, "v", &before, "guestbook", 3).expect("edit");
        one_line_changed(&before, &after, "replicaCount: 3");
        assert_eq!(read_replicas(Kind::HelmValues, "v", &after, "guestbook"), Ok(Some(3)));
    }

    #[test]
    fn deployments_change_the_image_and_replicas_line() {
        for (path, service, expected_image) in [
            (
                "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml",
                "guestbook-ui",
                "gcr.io/google-samples/gb-frontend:v4",
            ),
            (
                "argocd-example-apps/sock-shop/base/carts-dep.yaml",
                "carts",
                "weaveworksdemos/carts:v4",
            ),
            (
                "argocd-example-apps/sock-shop/base/front-end-dep.yaml",
                "front-end",
                "weaveworksdemos/front-end:v4",
            ),
            (
                "argocd-example-apps/sock-shop/base/orders-dep.yaml",
                "orders",
                "weaveworksdemos/orders:v4",
            ),
        ] {
            let before = fixture(path);
            let after =
                set_tag(Kind::Manifest, path, &before, service, None, "v4").unwrap_or_else(|e| panic!("{path}: {e}"));
            one_line_changed(&before, &after, &format!("image: {expected_image}"));
            assert_eq!(comments(&before), comments(&after), "{path}");
            assert_eq!(
                read_tag(Kind::Manifest, path, &after, service, None),
                Ok(Some("v4".into())),
                "{path}"
            );
            let after =
                set_replicas(Kind::Manifest, path, &before, service, 4).unwrap_or_else(|e| panic!("{path}: {e}"));
            one_line_changed(&before, &after, "replicas: 4");
            assert_eq!(
                value(&after, &["spec", "replicas"]),
                serde_norway::Value::Number(4.into()),
                "{path}"
            );
        }
    }

    #[test]
    fn a_kustomization_without_images_gets_a_small_block() {
        let path = "argocd-example-apps/kustomize-guestbook/kustomization.yaml";
        let before = fixture(path);
        assert_eq!(read_tag(Kind::Kustomize, path, &before, "guestbook-ui", None), Ok(None));
        let image = Some("gcr.io/google-samples/gb-frontend");
        let after = set_tag(Kind::Kustomize, path, &before, "guestbook-ui", image, "1.10").expect("edit");
        block_added(&before, &after, 3);
        assert_eq!(
            value(&after, &["images", "0", "newTag"]),
            serde_norway::Value::String("1.10".into())
        );
        assert_eq!(
            value(&after, &["kind"]),
            serde_norway::Value::String("Kustomization".into()),
            "the rest is intact"
        );
        assert_eq!(
            read_tag(Kind::Kustomize, path, &after, "guestbook-ui", image),
            Ok(Some("1.10".into()))
        );
        let after = set_replicas(Kind::Kustomize, path, &before, "guestbook-ui", 2).expect("edit");
        block_added(&before, &after, 3);
        assert_eq!(
            value(&after, &["replicas", "0", "count"]),
            serde_norway::Value::Number(2.into())
        );
        assert!(
            set_tag(Kind::Kustomize, path, &before, "guestbook-ui", None, "v1").is_err(),
            "without a configured image name there is nothing to add"
        );
    }

    #[test]
    fn a_helm_release_keeps_its_comments() {
        let path = "flux2-kustomize-helm-example/apps/base/podinfo/release.yaml";
        let before = fixture(path);
        let after = set_replicas(Kind::HelmRelease, path, &before, "podinfo", 2).expect("edit");
        block_added(&before, &after, 1);
        assert_eq!(comments(&before), comments(&after));
        assert_eq!(
            value(&after, &["spec", "values", "replicaCount"]),
            serde_norway::Value::Number(2.into())
        );
        assert_eq!(
            value(&after, &["spec", "values", "redis", "tag"]),
            value(&before, &["spec", "values", "redis", "tag"])
        );
        let after = set_tag(Kind::HelmRelease, path, &before, "podinfo", None, "6.9.2").expect("edit");
        assert_eq!(comments(&before), comments(&after));
        assert_eq!(
            value(&after, &["spec", "values", "image", "tag"]),
            serde_norway::Value::String("6.9.2".into())
        );
        block_added(&before, &after, 2);
    }

    #[test]
    fn restart_sets_the_pod_template_annotation() {
        let path = "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml";
        let before = fixture(path);
        let after = set_restarted_at(path, &before, "2026-11-28T15:00:00Z").expect("edit");
        let annotations = value(&after, &["spec", "template", "metadata", "annotations"]);
        assert_eq!(
            annotations["kubectl.kubernetes.io/restartedAt"],
            serde_norway::Value::String("2026-11-28T15:00:00Z".into()),
            "{after}"
        );
        assert!(
            after.contains("kubectl.kubernetes.io/restartedAt: \"2026-11-28T15:00:00Z\""),
            "quoted:\n{after}"
        );
        block_added(&before, &after, 2);
        assert_eq!(
            value(&after, &["spec", "template", "metadata", "labels"]),
            value(&before, &["spec", "template", "metadata", "labels"])
        );
    }
}

/// The key of Flux's image-automation marker, `# {"$imagepolicy": "<namespace>:<policy>"}`.
const FLUX_MARKER: &str = "\"$imagepolicy\"";
/// What the marker becomes while selfheal holds the line: Flux no longer recognises it.
pub const FLUX_MARKER_HELD: &str = "\"$imagepolicy-held-by-selfheal\"";

/// After a rollback from `before` to `after`, holds Flux image automation off the line that
/// changed: the marker comment's key `"$imagepolicy"` becomes `"$imagepolicy-held-by-selfheal"`,
/// so Flux's ImageUpdateAutomation no longer rewrites that line back to the bad tag. Only the
/// comment of a line the edit changed is touched; renaming the key back resumes automation.
/// Returns the held text and the policy named by the marker, or `None` when no changed line
/// carries a marker (or the edit added lines).
pub fn hold_flux_marker(before: &str, after: &str) -> Option<(String, String)> {
    let old: Vec<&str> = before.split_inclusive('\n').collect();
    let new: Vec<&str> = after.split_inclusive('\n').collect();
    if old.len() != new.len() {
        return None;
    }
    let mut policy = None;
    let held: String = old
        .iter()
        .zip(&new)
        .map(|(was, line)| {
            if was == line {
                return line.to_string();
            }
            // The marker is a comment: after the first " #" that follows the value.
            let Some(comment) = line.find(" #") else {
                return line.to_string();
            };
            let (value, comment_text) = line.split_at(comment);
            let Some(at) = comment_text.find(FLUX_MARKER) else {
                return line.to_string();
            };
            let rest = &comment_text[at + FLUX_MARKER.len()..];
            policy = rest
                .split('"')
                .nth(1)
                .filter(|p| {
                    p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
                })
                .map(str::to_string);
            format!("{value}{}{FLUX_MARKER_HELD}{rest}", &comment_text[..at])
        })
        .collect();
    policy.map(|policy| (held, policy))
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn the_flux_marker_on_the_rolled_back_line_is_held_and_nothing_else_moves() {
        let before = "images:\n  - name: ghcr.io/acme/checkout\n    newTag: v1.5.0 # {\"$imagepolicy\": \"flux-system:checkout:tag\"}\n  - name: ghcr.io/acme/cart\n    newTag: v2.0.0 # {\"$imagepolicy\": \"flux-system:cart:tag\"}\n";
        let after = set_tag(Kind::Kustomize, "k.yaml", before, "checkout", None, "v1.4.1").expect("edit");
        let (held, policy) = hold_flux_marker(before, &after).expect("held");
        assert_eq!(policy, "flux-system:checkout:tag");
        assert_eq!(
            held,
            "images:\n  - name: ghcr.io/acme/checkout\n    newTag: v1.4.1 # {\"$imagepolicy-held-by-selfheal\": \"flux-system:checkout:tag\"}\n  - name: ghcr.io/acme/cart\n    newTag: v2.0.0 # {\"$imagepolicy\": \"flux-system:cart:tag\"}\n"
        );
        assert_eq!(
            kustomize_image_tag("k.yaml", &held, "checkout", None).expect("parses"),
            Some("v1.4.1".into())
        );
        // No marker: nothing to hold.
        let plain = "images:\n- name: checkout\n  newTag: v1 # release\n";
        let edited = set_tag(Kind::Kustomize, "k.yaml", plain, "checkout", None, "v0").expect("edit");
        assert_eq!(hold_flux_marker(plain, &edited), None);
    }
}
