//! [`GitRepo`]: what every Git backend does, and the types it speaks in.

use crate::error::RepoError;

/// One version of a file on a branch's first-parent history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileVersion {
    /// The commit that introduced this version (full hex id).
    pub commit: String,
    /// The file's text at that commit.
    pub content: String,
    /// The commit's full message, without the trailing newline(s) git conventionally stores.
    pub message: String,
}

/// Who commits.
#[derive(Clone, Debug)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// What every Git backend does: read files and history at a ref, write a change, move refs by
/// compare-and-set. Blocking (gix is blocking): async callers use `spawn_blocking`. A backend
/// reached through a forge's API (GitHub's Git Data API) implements it too; what a forge adds
/// on top — proposals for review — is [`Forge`].
pub trait GitRepo: Send + Sync + 'static {
    /// Where it is, for events and logs (a path or URL; never credentials).
    fn location(&self) -> String;
    /// The commit id at the tip of `branch` (refs/heads/<branch>), or None if no such branch.
    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError>;
    /// The text of `path` at `commit`, or None if the file is absent there.
    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError>;
    /// Versions of `path` along the first-parent history of `branch`, newest first: one entry per commit
    /// whose version of the file differs from its first parent's (i.e. commits that changed the file; the
    /// commit that added it included), at most `limit` entries. Empty if the branch or file doesn't exist.
    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError>;
    /// Writes a commit whose tree is `parent`'s tree with `path` set to `content`, parent `parent`, by `author`,
    /// and points refs/heads/<branch> at it with compare-and-set: `expected_tip` None means the branch must
    /// not exist yet, Some(id) means it must currently be at id; otherwise RepoError::Conflict and the ref is untouched.
    /// Returns the new commit id. `path` may be nested (a/b/c.yaml) and must keep every other file of the tree.
    #[allow(clippy::too_many_arguments)]
    fn commit_file(
        &self,
        branch: &str,
        expected_tip: Option<&str>,
        parent: &str,
        path: &str,
        content: &str,
        message: &str,
        author: &Author,
    ) -> Result<String, RepoError>;
    /// Moves refs/heads/<branch> from `expected_tip` to `new_tip` (compare-and-set; Conflict if it isn't at expected_tip).
    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError>;
    /// Whether commit `ancestor` is `descendant` or one of its ancestors.
    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError>;

    /// The newest commit on `branch`'s first-parent history marked with `incident` (an
    /// `Incident: <key>` line in its message), with its message: how a change committed straight
    /// to the branch is found again. None when there is none, or the backend cannot tell (a
    /// forge's API, where changes go through pull requests).
    fn marked_commit(&self, _branch: &str, _incident: &str) -> Result<Option<(String, String)>, RepoError> {
        Ok(None)
    }

    /// Reads `branch`'s whole history ahead of the first decision, where later calls need it
    /// (at start-up; a no-op where nothing is kept).
    fn warm(&self, _branch: &str) -> Result<(), RepoError> {
        Ok(())
    }

    /// A batch, on a repository that writes several changes faster together than one by one:
    /// changes made through it are written by [`Batched::flush`]. None: every change is
    /// written as it is made.
    fn start_batch(&self) -> Option<std::sync::Arc<dyn Batched>> {
        None
    }
}

/// A repository view whose changes are written together.
pub trait Batched: GitRepo {
    /// Writes every change made through the batch, all or none; the number of refs written.
    fn flush(&self) -> Result<usize, RepoError>;
}
