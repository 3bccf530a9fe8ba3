//! The reconciler and what it is given: its settings, its repository and forge.

use std::sync::Arc;

use selfheal_git::{Author, Forge, GitRepo};

/// What the reconciler needs to know of the pr-controller's settings (built from its config).
#[derive(Clone, Debug)]
pub struct ReconcileSettings {
    /// The branch Argo CD or Flux deploys from.
    pub main_branch: String,
    /// Which file, and where in it, serves each alert.
    pub targets: super::targets::Targets,
    /// Who commits.
    pub author: Author,
    /// How many changes of a file's history to search for the previous image tag.
    pub history_depth: usize,
    /// The most replicas a scale may set.
    pub max_replicas: i32,
    /// On a rollback, hold Flux image automation off the rolled-back line.
    pub hold_image_automation: bool,
}

/// Carries out decisions on one repository: changes are written through `git`, and proposed
/// and merged through `forge` when there is one (without one, an approved change goes straight
/// onto main and a branch is merged by fast-forward).
#[derive(Clone)]
pub struct Reconciler {
    pub(super) git: Arc<dyn GitRepo>,
    pub(super) forge: Option<Arc<dyn Forge>>,
    pub(super) settings: ReconcileSettings,
}

impl Reconciler {
    pub fn new(git: Arc<dyn GitRepo>, forge: Option<Arc<dyn Forge>>, settings: ReconcileSettings) -> Self {
        Self { git, forge, settings }
    }

    /// The same reconciler writing through `git` instead (a batch of the same repository).
    pub fn on(&self, git: Arc<dyn GitRepo>) -> Self {
        Self {
            git,
            forge: self.forge.clone(),
            settings: self.settings.clone(),
        }
    }

    /// Where changes are written.
    pub fn git(&self) -> &Arc<dyn GitRepo> {
        &self.git
    }

    /// Where changes are proposed, when they are.
    pub fn forge(&self) -> Option<&Arc<dyn Forge>> {
        self.forge.as_ref()
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    pub(super) fn author(&self) -> &Author {
        &self.settings.author
    }
}
