//! What an edit works on and how it fails: [`Kind`] and [`EditError`].

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
    /// The file holds nothing selfheal edits.
    #[error(
        "{file} is not a file selfheal edits (a Kustomization or Component, a HelmRelease, a Deployment, StatefulSet or Rollout, or Helm values); it holds {holds}"
    )]
    NotEditable { file: String, holds: String },
    /// The file holds documents of several kinds selfheal edits, and the target names none.
    #[error("{file} holds {kinds}: set the target's kind")]
    MixedKinds { file: String, kinds: String },
    /// No document is the one the target names.
    #[error("{file} has no {what}; it holds {candidates}: name one in the target")]
    NoDocument {
        file: String,
        what: String,
        candidates: String,
    },
    /// Several documents are.
    #[error("{file} has several {what} ({matches}): name one in the target (its name, namespace or workload kind)")]
    Ambiguous {
        file: String,
        what: String,
        matches: String,
    },
    /// The edit cannot be made in a file of this kind, as the target stands.
    #[error("{file}: {reason}")]
    Unsupported { file: String, reason: String },
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

    /// The kind [`Kind::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::Kustomize, Kind::HelmValues, Kind::HelmRelease, Kind::Manifest]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}
