//! [`RepoError`]: what can go wrong with a repository or a forge.

/// What can go wrong when working with a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository could not be opened or created.
    #[error("cannot open repository {path}: {reason}")]
    Open { path: String, reason: String },
    /// A compare-and-set on a ref failed: the branch moved (or exists / does not exist unexpectedly).
    #[error("branch {branch} moved: expected {expected}, found {found}")]
    Conflict {
        branch: String,
        expected: String,
        found: String,
    },
    /// Any other git failure (bad ids, missing objects, invalid names, I/O, non-UTF-8 content...).
    #[error("git: {0}")]
    Git(String),
    /// The forge refused the request for a reason trying again does not change (401, 404, 422...).
    #[error("{0}")]
    Refused(String),
}

impl RepoError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}
