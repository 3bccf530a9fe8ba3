//! [`Store`]: a repository on disk as opened, shared by a [`crate::LocalRepository`] and its
//! batches — the gix handle, the packs written since it was opened, and the branches' history
//! indexes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gix::ObjectId;

use crate::{
    error::RepoError,
    index::{BranchIndex, INDEXED_VERSIONS},
    plumbing::{branch_ref_name, current_tip, describe},
    repo::FileVersion,
};

/// The repository as opened; clones share everything.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) path: PathBuf,
    shared: std::sync::Arc<std::sync::RwLock<Shared>>,
    /// What is known of each branch's first-parent history (on disk), by branch name.
    histories: std::sync::Arc<std::sync::Mutex<HashMap<String, BranchIndex>>>,
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

/// Object cache for history walks: commits and trees are read repeatedly there.
pub(crate) const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Delta-base cache of a handle that reads: a tree stored as a delta is rebuilt from its base,
/// itself often a delta, and without a cache each read inflates the whole chain again. gix keeps
/// the objects it read, not the bases on the way, so a walk must read each tree after its base:
/// newest first in a pack as `git gc` or a forge's clone leave it, oldest first in the one
/// `git fast-import` writes; the history index reads in the pack's direction
/// ([`crate::plumbing::oldest_first`]). git keeps 96 MiB (`core.deltaBaseCacheLimit`).
pub(crate) const PACK_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Gives `repo` its object cache and its delta-base cache. gix sets the latter only with its
/// `max-performance` feature (which builds zlib-ng, C): set here, in Rust, the same way.
pub(crate) fn with_caches(mut repo: gix::Repository) -> gix::Repository {
    repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
    repo.objects
        .set_pack_cache(|| Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(PACK_CACHE_BYTES)));
    repo
}

impl Store {
    /// Opens the repository at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, RepoError> {
        let repo = open_shared(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            shared: std::sync::Arc::new(std::sync::RwLock::new(Shared { repo, packs_written: 0 })),
            histories: Default::default(),
        })
    }

    /// Where it is, for events and logs.
    pub(crate) fn location(&self) -> String {
        self.path.display().to_string()
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
        Ok(with_caches(self.shared_repo().to_thread_local()))
    }

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
}
