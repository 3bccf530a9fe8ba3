//! [`Place`]: where in a file a service lives, as a target names it for one alert.

use crate::kind::Kind;

/// Where in a file the service lives: what a target names, its templates filled from one alert's
/// labels. Only `service` is required; everything else narrows the search or moves the values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Place {
    /// What the file is; `None`: read from the file ([`crate::kind_of`]).
    pub kind: Option<Kind>,
    /// The service, from the alert's `service` label.
    pub service: String,
    /// The document's `metadata.name`: the Deployment, StatefulSet or Rollout of a manifest, the
    /// HelmRelease of a release file; in a kustomization, the `replicas[].name` and the workload
    /// a restart patches. `None`: a file's only such document, else the one named `service`.
    pub name: Option<String>,
    /// The document's `metadata.namespace`, where the file holds the same name in several.
    pub namespace: Option<String>,
    /// The workload's kind (`Deployment`, `StatefulSet` or `Rollout`) where a name is shared
    /// between kinds, and what a Kustomize restart patches (`Deployment` when not given).
    pub workload_kind: Option<String>,
    /// A manifest's container: `None` is the container whose image is `image`, else the one
    /// named `service`, else the only one.
    pub container: Option<String>,
    /// The image's name: Kustomize `images[].name` (default: the entry whose last path segment
    /// is `service`), or a manifest container's image without its tag.
    pub image: Option<String>,
    /// Helm values (of a values file, or a HelmRelease's `spec.values`): the path of the image
    /// tag, e.g. `frontend.image.tag` (default `image.tag`; a literal dot in a key is `\.`).
    pub tag_path: Option<String>,
    /// Helm values: the path of the replica count (default `replicaCount`).
    pub replicas_path: Option<String>,
    /// Helm values: the chart's pod annotations key (e.g. `podAnnotations`), which a restart
    /// needs: the chart copies it onto the pod template, and a changed annotation rolls the pods.
    pub pod_annotations: Option<String>,
}

impl Place {
    /// `service` in a file of `kind`, found and edited by the defaults.
    pub fn of(kind: Kind, service: impl Into<String>) -> Self {
        Self {
            kind: Some(kind),
            service: service.into(),
            ..Self::default()
        }
    }

    /// The same place in a document named `name`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The values path of the tag in a file of `kind` (HelmRelease values sit under
    /// `spec.values`).
    pub(crate) fn tag_path(&self, kind: Kind) -> String {
        values_path(kind, self.tag_path.as_deref().unwrap_or("image.tag"))
    }

    /// The values path of the replica count in a file of `kind`.
    pub(crate) fn replicas_path(&self, kind: Kind) -> String {
        values_path(kind, self.replicas_path.as_deref().unwrap_or("replicaCount"))
    }

    /// The workload's name, as a Kustomize `replicas[].name` or restart patch names it.
    pub(crate) fn workload_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.service)
    }
}

fn values_path(kind: Kind, path: &str) -> String {
    match kind {
        Kind::HelmRelease => format!("spec.values.{path}"),
        _ => path.to_string(),
    }
}

/// Whether `path` is a values path selfheal accepts: dot-separated keys of letters, digits, `_`
/// and `-` (a literal dot escaped as `\.`, so annotation-like keys work), optionally indexed
/// `[n]`. Checked when the configuration is read, so no alert meets a bad one.
pub fn is_values_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && !path.starts_with('.')
        && !path.ends_with('.')
        && !path.contains("..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '\\' | '/' | '[' | ']'))
}
