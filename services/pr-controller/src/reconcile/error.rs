//! How carrying out a decision fails: [`ReconcileError`].

use selfheal_git::RepoError;
use selfheal_manifest::EditError;

/// Why a decision could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The decision can never be carried out as it stands; people are told.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Edit(#[from] EditError),
    /// Git failed; the delivery is retried.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ReconcileError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Repo(error) if error.is_transient())
    }
}
