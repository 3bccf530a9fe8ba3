//! Minimal-diff edits of GitOps manifests that keep comments and formatting (yaml-edit's
//! lossless tree): the image tag and replica count of a service, and a restart of its pods, in a
//! Kustomize `kustomization.yaml`, a Helm values file, a Flux `HelmRelease` or a plain
//! Deployment, StatefulSet or Rollout ([`Kind`], read from the file when not given); and the Flux
//! image-automation hold ([`hold_flux_marker`]). A [`Place`] says where in a file the service
//! lives; in a file of many documents, only the one it names is edited, every other byte kept.
//!
//! Values are validated by the caller; here they are written as YAML strings (tags) or integers
//! (counts), so a tag like `1.10` stays the string "1.10" and never becomes the float 1.1.
//! Reads are remembered by the file's exact text ([`read_cache`]): parsing YAML losslessly costs
//! far more than looking a text up, and the same versions are read again and again.
//!
//! Layout: `documents` (a file cut into documents, its kind, the document a place names),
//! `edit` (each read and edit, dispatched on [`Kind`] and spliced back), `place`, `kustomize`
//! (images and replicas entries), `deployment` (a workload's containers), `restart`, `yaml` (the
//! shared yaml-edit helpers), `read_cache`, `flux_hold`.

mod deployment;
mod documents;
mod edit;
mod flux_hold;
mod kind;
mod kustomize;
mod place;
mod read_cache;
mod restart;
mod yaml;

pub use documents::kind_of;
pub use edit::{PlaceRead, kind_at, read_place, read_replicas, read_tag, restart, set_replicas, set_tag};
pub use flux_hold::{FLUX_MARKER_HELD, hold_flux_marker};
pub use kind::{EditError, Kind};
pub use kustomize::{
    image_matches, kustomize_image_tag, kustomize_replicas, set_kustomize_image_tag, set_kustomize_replicas,
};
pub use place::{Place, is_values_path};

#[cfg(test)]
use read_cache::{READS, Reads, uncached};

#[cfg(test)]
#[path = "tests/documents.rs"]
mod document_tests;
#[cfg(test)]
#[path = "tests/fixtures.rs"]
mod fixture_tests;
#[cfg(test)]
#[path = "tests/edits.rs"]
mod tests;
