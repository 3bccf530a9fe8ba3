//! Minimal-diff edits of GitOps manifests that keep comments and formatting (yaml-edit's
//! lossless tree): the image tag and replica count of a service, and a Deployment's restart
//! annotation, in a Kustomize `kustomization.yaml`, a Helm values file, a Flux `HelmRelease` or a
//! plain Deployment ([`Kind`]); and the Flux image-automation hold ([`hold_flux_marker`]).
//!
//! Values are validated by the caller; here they are written as YAML strings (tags) or integers
//! (counts), so a tag like `1.10` stays the string "1.10" and never becomes the float 1.1.
//! Reads are remembered by the file's exact text ([`read_cache`]): parsing YAML losslessly costs
//! far more than looking a text up, and the same versions are read again and again.
//!
//! Layout: `kustomize` (images and replicas entries), `deployment` (a Deployment's containers),
//! `yaml` (the shared yaml-edit helpers), `read_cache`, `flux_hold`; this file dispatches on
//! [`Kind`].

mod deployment;
mod edit;
mod flux_hold;
mod kind;
mod kustomize;
mod read_cache;
mod yaml;

pub use edit::{read_replicas, read_tag, set_replicas, set_restarted_at, set_tag};
pub use flux_hold::{FLUX_MARKER_HELD, hold_flux_marker};
pub use kind::{EditError, Kind};
pub use kustomize::{
    image_matches, kustomize_image_tag, kustomize_replicas, set_kustomize_image_tag, set_kustomize_replicas,
};

#[cfg(test)]
use read_cache::{READS, Reads};

#[cfg(test)]
#[path = "tests/fixtures.rs"]
mod fixture_tests;
#[cfg(test)]
#[path = "tests/edits.rs"]
mod tests;
