//! [`LocalRepository`]: a repository on local disk, opened with gix.

use std::path::{Path, PathBuf};

use gix::ObjectId;
use std::collections::{BTreeMap, HashMap};

use gix::refs::transaction::{PreviousValue, RefEdit};
use gix::refs::{FullName, Target};

use crate::{
    Author, Batched, FileVersion, GitRepo, RepoError,
    batch::{Batch, BatchState},
    index::{BranchIndex, INDEXED_VERSIONS},
    plumbing::*,
};

/// The repository is opened once; every call takes a thread-local handle of it (refs are read
/// from disk on every call, and objects written by other processes are found).
#[derive(Clone)]
/// A repository on local disk, bare or not, opened with gix.
///
/// For a non-bare repository whose checked-out branch is updated, the work tree and index are
/// **not** touched: selfheal treats the repository like a remote, only writing objects and refs.
/// Bare repositories are recommended.
pub struct LocalRepository {
    pub(crate) path: PathBuf,
    pub(crate) shared: std::sync::Arc<std::sync::RwLock<Shared>>,
    /// What is known of each branch's first-parent history (on disk), by branch name.
    pub(crate) histories: std::sync::Arc<std::sync::Mutex<HashMap<String, BranchIndex>>>,
}

/// The repository as opened, and how many packs this process wrote since.
pub(crate) struct Shared {
    pub(crate) repo: gix::ThreadSafeRepository,
    pub(crate) packs_written: usize,
}

/// After writing this many packs the repository is opened again: gix's object store has a fixed
/// number of slots for pack indexes, sized when it is opened (twice the packs then on disk, at
/// least [`MIN_PACK_SLOTS`]).
pub(crate) const REOPEN_AFTER_PACKS: usize = 256;
pub(crate) const MIN_PACK_SLOTS: usize = 1024;

pub(crate) fn open_shared(path: &Path) -> Result<gix::ThreadSafeRepository, RepoError> {
    let options = gix::open::Options::default().object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
        multiplier: 2.0,
        minimum: MIN_PACK_SLOTS,
    });
    gix::ThreadSafeRepository::open_opts(path, options).map_err(|e| RepoError::Open {
        path: path.display().to_string(),
        reason: describe(&e),
    })
}

impl std::fmt::Debug for LocalRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRepository").field("path", &self.path).finish()
    }
}

/// Object cache for history walks: commits and trees are read repeatedly there.
pub(crate) const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

impl LocalRepository {
    /// Opens the repository at `path`: a bare repository's directory, a work tree containing `.git`,
    /// or a `.git` directory. No discovery upwards is done.
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        let repo = open_shared(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            shared: std::sync::Arc::new(std::sync::RwLock::new(Shared { repo, packs_written: 0 })),
            histories: Default::default(),
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
        let repo = this.local()?;

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

    pub(crate) fn shared_repo(&self) -> gix::ThreadSafeRepository {
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .repo
            .clone()
    }

    /// Counts a pack written, and opens the repository again when the store's slots may run out.
    pub(crate) fn pack_written(&self) -> Result<(), RepoError> {
        let mut shared = self.shared.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.packs_written += 1;
        if shared.packs_written >= REOPEN_AFTER_PACKS {
            shared.repo = open_shared(&self.path)?;
            shared.packs_written = 0;
        }
        Ok(())
    }

    /// A handle on the repository for this thread, with an object cache for history walks.
    pub(crate) fn local(&self) -> Result<gix::Repository, RepoError> {
        let mut repo = self.shared_repo().to_thread_local();
        repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
        Ok(repo)
    }
}

impl LocalRepository {
    /// The versions of `path` on `branch` as of `tip` (the branch's tip on disk), from the
    /// shared index: walked only as deep as asked, and brought forward when the branch moved.
    pub(crate) fn indexed_history(
        &self,
        repo: &gix::Repository,
        branch: &str,
        tip: ObjectId,
        path: &str,
        limit: usize,
    ) -> Result<Vec<FileVersion>, RepoError> {
        self.with_index(repo, branch, tip, |index| index.versions(repo, path, limit))
    }

    /// Runs `query` on the shared index of `branch`, brought to `tip` (the branch's tip on disk).
    pub(crate) fn with_index<T>(
        &self,
        repo: &gix::Repository,
        branch: &str,
        tip: ObjectId,
        query: impl FnOnce(&mut BranchIndex) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        // One caller at a time walks a branch; the others then find the walk done. A poisoned
        // lock only means a panic mid-walk: start the indexes afresh.
        let mut histories = self.histories.lock().unwrap_or_else(|poisoned| {
            self.histories.clear_poison();
            let mut histories = poisoned.into_inner();
            histories.clear();
            histories
        });
        if histories.values().map(|index| index.entries).sum::<usize>() > INDEXED_VERSIONS {
            // Other branches go first; the one asked about is kept, however large.
            histories.retain(|name, _| name == branch);
        }
        let index = histories
            .entry(branch.to_string())
            .or_insert_with(|| BranchIndex::new(tip));
        if index.tip != tip && !index.advance(repo, tip, branch)? {
            // Either the caller read the branch before another caller brought the index past
            // that (the index is current: use it), or the old tip is no longer on the branch
            // (history rewritten): start afresh.
            let now = current_tip(repo, &branch_ref_name(branch)?)?;
            if now != Some(index.tip) {
                *index = BranchIndex::new(tip);
            }
        }
        query(index)
    }

    /// Starts a batch: changes made through it are kept in memory, and [`Batch::flush`] writes
    /// them all at once.
    pub fn batch(&self) -> Batch {
        let mut repo = self.shared_repo().to_thread_local().with_object_memory();
        repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
        Batch {
            local: self.clone(),
            state: std::sync::Mutex::new(BatchState {
                repo,
                refs: BTreeMap::new(),
                made: Default::default(),
            }),
        }
    }
}

impl GitRepo for LocalRepository {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        let name = branch_ref_name(branch)?;
        Ok(current_tip(&self.local()?, &name)?.map(|id| id.to_string()))
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        read_file_in(&self.local()?, commit, path)
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        path_components(path)?;
        let name = branch_ref_name(branch)?;
        let repo = self.local()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(Vec::new());
        };
        self.indexed_history(&repo, branch, tip, path, limit)
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
        let repo = self.local()?;
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
        let repo = self.local()?;
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
        is_ancestor_in(&self.local()?, ancestor, descendant)
    }

    fn marked_commit(&self, branch: &str, incident: &str) -> Result<Option<(String, String)>, RepoError> {
        let name = branch_ref_name(branch)?;
        let repo = self.local()?;
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(None);
        };
        let found = self.with_index(&repo, branch, tip, |index| index.marked(&repo, incident))?;
        found
            .map(|id| commit_message(&repo, id).map(|m| (id.to_string(), m)))
            .transpose()
    }

    /// Indexes every commit of the branch: the first change then finds in memory that no commit
    /// is marked with its incident, instead of walking the repository's age to learn it.
    fn warm(&self, branch: &str) -> Result<(), RepoError> {
        let name = branch_ref_name(branch)?;
        let repo = self.local()?;
        let Some(tip) = current_tip(&repo, &name)? else {
            return Ok(());
        };
        self.with_index(&repo, branch, tip, |index| {
            while index.next.is_some() {
                index.walk_one(&repo)?;
            }
            Ok(())
        })
    }

    fn start_batch(&self) -> Option<std::sync::Arc<dyn Batched>> {
        Some(std::sync::Arc::new(self.batch()))
    }
}
