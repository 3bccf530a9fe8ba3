//! [`LocalRepository`]: a repository on local disk, opened with gix.

use std::path::Path;

use gix::ObjectId;

use gix::refs::transaction::{PreviousValue, RefEdit};
use gix::refs::{FullName, Target};

use crate::{
    batch::Batch,
    error::RepoError,
    plumbing::*,
    repo::{Author, Batched, FileVersion, GitRepo},
    store::Store,
};

/// The repository is opened once; every call takes a thread-local handle of it (refs are read
/// from disk on every call, and objects written by other processes are found).
/// A repository on local disk, bare or not, opened with gix.
///
/// For a non-bare repository whose checked-out branch is updated, the work tree and index are
/// **not** touched: selfheal treats the repository like a remote, only writing objects and refs.
/// Bare repositories are recommended.
#[derive(Clone)]
pub struct LocalRepository {
    pub(crate) store: Store,
}

impl std::fmt::Debug for LocalRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRepository")
            .field("path", &self.store.path)
            .finish()
    }
}

impl LocalRepository {
    /// Opens the repository at `path`: a bare repository's directory, a work tree containing `.git`,
    /// or a `.git` directory. No discovery upwards is done.
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        Ok(Self {
            store: Store::open(path)?,
        })
    }

    /// Creates a new bare repository at `path` whose `branch` holds one commit per entry of `commits`:
    /// each commit writes the given files (path, content) on top of the previous tree, with the message. Used by
    /// `selfheal up` to create its example GitOps repository, so it must use gix only (no git binary).
    ///
    /// `path` must not exist or be an empty directory. `HEAD` points at `branch`, and
    /// `core.logAllRefUpdates` is enabled so that selfheal's later ref updates leave a reflog. With no
    /// commits, the branch is unborn (HEAD points at it, but it does not exist yet).
    pub fn init_bare_with_commits(
        path: &Path,
        branch: &str,
        commits: &[(&str, Vec<(&str, &str)>)],
        author: &Author,
    ) -> Result<Self, RepoError> {
        let open_err = |reason: String| RepoError::Open {
            path: path.display().to_string(),
            reason,
        };
        let branch_ref = branch_ref_name(branch)?;
        validate_author(author)?;
        for (_, files) in commits {
            for (file, _) in files {
                path_components(file)?;
            }
        }

        let created = gix::ThreadSafeRepository::init(path, gix::create::Kind::Bare, Default::default())
            .map_err(|e| open_err(format!("cannot create a bare repository: {}", describe(&e))))?;
        let config_path = created.git_dir().join("config");
        drop(created);
        enable_reflogs(&config_path).map_err(open_err)?;

        let this = Self::open(path)?;
        let repo = this.store.local()?;

        // HEAD -> refs/heads/<branch>, so `git log` and clones pick the branch by default.
        let head: FullName = "HEAD"
            .try_into()
            .map_err(|e| RepoError::Git(format!("invalid ref name HEAD: {e}")))?;
        let sig = signature(author);
        let mut time_buf = gix::date::parse::TimeBuf::default();
        repo.edit_references_as(
            Some(RefEdit::update_with_log(
                head,
                Target::Symbolic(branch_ref.clone()),
                PreviousValue::Any,
                log_change(format!("selfheal: init with branch {branch}")),
            )),
            Some(sig.to_ref(&mut time_buf)),
        )
        .map_err(git_err("cannot point HEAD at the new branch"))?;

        let mut tree = ObjectId::empty_tree(repo.object_hash());
        let mut tip: Option<ObjectId> = None;
        for (message, files) in commits {
            let mut editor = repo.edit_tree(tree).map_err(git_err("cannot edit the tree"))?;
            for (file, content) in files {
                let blob = repo
                    .write_blob(content.as_bytes())
                    .map_err(git_err(format!("cannot write blob for {file}")))?
                    .detach();
                let kind = checked_file_kind(&repo, tree, file)?;
                editor
                    .upsert(*file, kind, blob)
                    .map_err(git_err(format!("cannot set {file} in the tree")))?;
            }
            tree = editor.write().map_err(git_err("cannot write the tree"))?.detach();
            let commit = write_commit(&repo, tree, tip, message, author)?;
            set_ref(
                &repo,
                branch,
                &branch_ref,
                tip,
                commit,
                format!(
                    "selfheal: commit{}: {}",
                    if tip.is_none() { " (initial)" } else { "" },
                    summary(message)
                ),
                author,
            )?;
            tip = Some(commit);
        }
        Ok(this)
    }

    /// Starts a batch: changes made through it are kept in memory, and [`Batch::flush`] writes
    /// them all at once.
    /// Writes the commit that sets `path` to `content` on top of `parent`, moving no ref: what a
    /// remote's push sends. Its id.
    pub fn write_commit(
        &self,
        parent: &str,
        path: &str,
        content: &str,
        message: &str,
        author: &Author,
    ) -> Result<String, RepoError> {
        let repo = self.store.local()?;
        Ok(write_file_commit(&repo, parent, path, content, message, author)?.to_string())
    }

    pub fn batch(&self) -> Batch {
        Batch::new(self.store.clone())
    }
}

impl GitRepo for LocalRepository {
    fn location(&self) -> String {
        self.store.path.display().to_string()
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        let name = branch_ref_name(branch)?;
        Ok(current_tip(&self.store.local()?, &name)?.map(|id| id.to_string()))
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        read_file_in(&self.store.local()?, commit, path)
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        path_components(path)?;
        let name = branch_ref_name(branch)?;
        let repo = self.store.local()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(Vec::new());
        };
        self.store.indexed_history(&repo, branch, tip, path, limit)
    }

    fn commit_file(
        &self,
        branch: &str,
        expected_tip: Option<&str>,
        parent: &str,
        path: &str,
        content: &str,
        message: &str,
        author: &Author,
    ) -> Result<String, RepoError> {
        let name = branch_ref_name(branch)?;
        let expected = expected_tip.map(parse_id).transpose()?;
        let repo = self.store.local()?;
        let commit = write_file_commit(&repo, parent, path, content, message, author)?;
        set_ref(
            &repo,
            branch,
            &name,
            expected,
            commit,
            format!("selfheal: commit: {}", summary(message)),
            author,
        )?;
        tracing::debug!(location = %self.location(), branch, %commit, path, "committed file");
        Ok(commit.to_string())
    }

    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError> {
        let name = branch_ref_name(branch)?;
        let expected = parse_id(expected_tip)?;
        let new = parse_id(new_tip)?;
        let repo = self.store.local()?;
        check_commit(&repo, branch, new)?;
        set_ref(
            &repo,
            branch,
            &name,
            Some(expected),
            new,
            format!("selfheal: update {branch} from {expected} to {new}"),
            &selfheal_committer(),
        )?;
        tracing::debug!(location = %self.location(), branch, from = %expected, to = %new, "moved branch");
        Ok(())
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        is_ancestor_in(&self.store.local()?, ancestor, descendant)
    }

    fn marked_commit(&self, branch: &str, incident: &str) -> Result<Option<(String, String)>, RepoError> {
        let name = branch_ref_name(branch)?;
        let repo = self.store.local()?;
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(None);
        };
        let found = self
            .store
            .with_index(&repo, branch, tip, |index| index.marked(&repo, incident))?;
        found
            .map(|id| commit_message(&repo, id).map(|m| (id.to_string(), m)))
            .transpose()
    }

    /// Indexes every commit of the branch: the first change then finds in memory that no commit
    /// is marked with its incident, instead of walking the repository's age to learn it.
    fn warm(&self, branch: &str) -> Result<(), RepoError> {
        let name = branch_ref_name(branch)?;
        let repo = self.store.local()?;
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(());
        };
        self.store.with_index(&repo, branch, tip, |index| {
            while index.next.is_some() {
                index.walk(&repo)?;
            }
            Ok(())
        })
    }

    fn start_batch(&self) -> Option<std::sync::Arc<dyn Batched>> {
        Some(std::sync::Arc::new(self.batch()))
    }
}
