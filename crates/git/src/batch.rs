//! [`Batch`]: changes made in memory and written together.

use gix::ObjectId;
use std::collections::{BTreeMap, HashMap};

use gix::refs::transaction::{Change, PreviousValue, RefEdit};
use gix::refs::{FullName, Target};

use crate::{
    error::RepoError,
    index::BranchIndex,
    pack::write_pack,
    plumbing::*,
    repo::{Author, Batched, FileVersion, GitRepo},
    store::Store,
};

/// see the batch's own changes. Until the flush, nothing is on disk; if the flush fails, nothing
/// the batch made is referenced (objects already written stay unreferenced until `git gc`).
///
/// On a disk where creating a file is slow, this is what keeps a burst of remediations fast: one
/// remediation written alone creates seven files (five objects, two refs); a batch writes its
/// objects as one pack (the pack and its index; its `.keep` is moved into place, not created)
/// and a lock file per ref it moves.
pub struct Batch {
    pub(crate) store: Store,
    pub(crate) state: std::sync::Mutex<BatchState>,
}

pub(crate) struct BatchState {
    /// Writes objects to memory; reads see those and the disk.
    pub(crate) repo: gix::Repository,
    /// Refs changed in the batch.
    pub(crate) refs: BTreeMap<FullName, PendingRef>,
    /// Commits made in the batch, with what each changed, its parent and its mark.
    pub(crate) made: HashMap<ObjectId, std::sync::Arc<Changes>>,
    /// Where each ref the batch read pointed on disk when it first read it (None: absent). The
    /// batch reads the disk once per ref, not once per question (a ref read is five system
    /// calls); the flush's compare-and-set is against these values, so a ref that moved on disk
    /// meanwhile fails the flush as it would have anyway.
    pub(crate) on_disk: HashMap<FullName, Option<ObjectId>>,
}

/// A ref the batch moves: from what was on disk when the batch first read it, to `new`.
pub(crate) struct PendingRef {
    pub(crate) branch: String,
    pub(crate) on_disk: Option<ObjectId>,
    pub(crate) new: ObjectId,
    pub(crate) reflog: String,
}

/// Fewer objects than this are written loose, as git does for small pushes (`unpackLimit`);
/// more go into one pack.
pub(crate) const PACK_AT: usize = 10;

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("path", &self.store.path).finish()
    }
}

impl Batch {
    /// A batch on `store`: changes made through it are kept in memory, and [`Batch::flush`]
    /// writes them all at once.
    pub(crate) fn new(store: Store) -> Self {
        let mut repo = store.shared_repo().to_thread_local().with_object_memory();
        repo.object_cache_size_if_unset(crate::store::OBJECT_CACHE_BYTES);
        Batch {
            store,
            state: std::sync::Mutex::new(BatchState {
                repo,
                refs: BTreeMap::new(),
                made: Default::default(),
                on_disk: Default::default(),
            }),
        }
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        // A panic mid-change leaves a batch that is never flushed (its caller failed).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where `name` points in the batch: its own change, or what is on disk.
    pub(crate) fn tip(state: &mut BatchState, name: &FullName) -> Result<Option<ObjectId>, RepoError> {
        match state.refs.get(name) {
            Some(pending) => Ok(Some(pending.new)),
            None => Self::on_disk(state, name),
        }
    }

    /// Where `name` pointed on disk when the batch first read it.
    fn on_disk(state: &mut BatchState, name: &FullName) -> Result<Option<ObjectId>, RepoError> {
        if let Some(known) = state.on_disk.get(name) {
            return Ok(*known);
        }
        let now = current_tip(&state.repo, name)?;
        state.on_disk.insert(name.clone(), now);
        Ok(now)
    }

    /// Moves `name` in the batch, compare-and-set against where it points in the batch.
    pub(crate) fn set(
        state: &mut BatchState,
        branch: &str,
        name: &FullName,
        expected: Option<ObjectId>,
        new: ObjectId,
        reflog: String,
    ) -> Result<(), RepoError> {
        let (now, on_disk) = match state.refs.get(name) {
            Some(pending) => (Some(pending.new), pending.on_disk),
            None => {
                let on_disk = Self::on_disk(state, name)?;
                (on_disk, on_disk)
            }
        };
        if now != expected {
            return Err(RepoError::Conflict {
                branch: branch.to_owned(),
                expected: expected.map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string()),
                found: now.map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string()),
            });
        }
        state.refs.insert(
            name.clone(),
            PendingRef {
                branch: branch.to_owned(),
                on_disk,
                new,
                reflog,
            },
        );
        Ok(())
    }
}

impl Batched for Batch {
    /// Writes what the batch made: the objects first, then every ref in one transaction, each
    /// compare-and-set against what the batch found on disk. If any ref moved meanwhile, no ref
    /// is changed and [`RepoError::Conflict`] names it.
    fn flush(&self) -> Result<usize, RepoError> {
        let mut state = self.state();
        let refs = std::mem::take(&mut state.refs);
        state.made.clear();
        state.on_disk.clear();
        let objects = state.repo.objects.take_object_memory().unwrap_or_default();
        state.repo.objects.enable_object_memory();
        drop(state);
        if refs.is_empty() {
            return Ok(0);
        }
        let disk = self.store.local()?;
        let mut kept = None;
        if objects.len() >= PACK_AT {
            kept = Some(write_pack(&disk, &objects)?);
            self.store.pack_written()?;
        } else {
            for (id, (kind, data)) in objects.iter() {
                let written = gix::objs::Write::write_buf(&disk, *kind, data)
                    .map_err(|e| RepoError::Git(format!("cannot write object {id}: {e}")))?;
                if written != *id {
                    return Err(RepoError::Git(format!("object {id} was written as {written}")));
                }
            }
        }
        let committer = selfheal_committer();
        let edits: Vec<RefEdit> = refs
            .iter()
            .map(|(name, pending)| RefEdit {
                change: Change::Update {
                    log: log_change(pending.reflog.clone()),
                    expected: match pending.on_disk {
                        Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
                        None => PreviousValue::MustNotExist,
                    },
                    new: Target::Object(pending.new),
                },
                name: name.clone(),
                deref: false,
            })
            .collect();
        let sig = signature(&committer);
        let mut time_buf = gix::date::parse::TimeBuf::default();
        let moved = disk.edit_references_as(edits, Some(sig.to_ref(&mut time_buf)));
        // Referenced now (or never will be): `git gc` may have the pack.
        if let Some(kept) = kept {
            kept.release();
        }
        if let Err(error) = moved {
            // Which ref moved: the first whose value on disk is not what the batch found.
            for (name, pending) in &refs {
                let now = current_tip(&disk, name)?;
                if now != pending.on_disk {
                    return Err(RepoError::Conflict {
                        branch: pending.branch.clone(),
                        expected: pending
                            .on_disk
                            .map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string()),
                        found: now.map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string()),
                    });
                }
            }
            return Err(RepoError::Git(format!("cannot update refs: {}", describe(&error))));
        }
        tracing::debug!(location = %self.store.location(), refs = refs.len(), objects = objects.len(), "batch written");
        Ok(refs.len())
    }
}

impl GitRepo for Batch {
    fn location(&self) -> String {
        self.store.location()
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        let name = branch_ref_name(branch)?;
        Ok(Self::tip(&mut self.state(), &name)?.map(|id| id.to_string()))
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        read_file_in(&self.state().repo, commit, path)
    }

    /// The batch's own commits on the branch first, then the shared index from where they start.
    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        path_components(path)?;
        let name = branch_ref_name(branch)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut state = self.state();
        let Some(tip) = Self::tip(&mut state, &name)? else {
            return Ok(Vec::new());
        };
        let mut versions = Vec::new();
        let mut next = Some(tip);
        while let Some((id, made)) = next.and_then(|id| Some((id, state.made.get(&id)?.clone()))) {
            let (changed, parent, _) = made.as_ref();
            if let Some(blob) = changed.get(path) {
                let commit = state
                    .repo
                    .find_commit(id)
                    .map_err(git_err(format!("cannot find commit {id}")))?;
                versions.push(file_version(&state.repo, &commit, *blob, path)?);
                if versions.len() >= limit {
                    return Ok(versions);
                }
            }
            next = *parent;
        }
        let Some(base) = next else { return Ok(versions) };
        let rest = limit - versions.len();
        let older = if Self::on_disk(&mut state, &name)? == Some(base) {
            self.store.indexed_history(&state.repo, branch, base, path, rest)?
        } else {
            // A branch the batch made, on top of another one: walk from where it starts.
            let mut index = BranchIndex::new(base);
            index.versions(&state.repo, path, rest)?
        };
        versions.extend(older);
        Ok(versions)
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
        let mut state = self.state();
        let commit = write_file_commit(&state.repo, parent, path, content, message, author)?;
        let made = changes(&state.repo, commit)?;
        state.made.insert(commit, std::sync::Arc::new(made));
        Self::set(
            &mut state,
            branch,
            &name,
            expected,
            commit,
            format!("selfheal: commit: {}", summary(message)),
        )?;
        Ok(commit.to_string())
    }

    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError> {
        let name = branch_ref_name(branch)?;
        let expected = parse_id(expected_tip)?;
        let new = parse_id(new_tip)?;
        let mut state = self.state();
        check_commit(&state.repo, branch, new)?;
        Self::set(
            &mut state,
            branch,
            &name,
            Some(expected),
            new,
            format!("selfheal: update {branch} from {expected} to {new}"),
        )
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        is_ancestor_in(&self.state().repo, ancestor, descendant)
    }

    /// The batch's own commits on the branch first, then the shared index from where they start.
    fn marked_commit(&self, branch: &str, incident: &str) -> Result<Option<(String, String)>, RepoError> {
        let name = branch_ref_name(branch)?;
        let mut state = self.state();
        let mut next = Self::tip(&mut state, &name)?;
        while let Some((id, made)) = next.and_then(|id| Some((id, state.made.get(&id)?.clone()))) {
            if made.2.as_deref() == Some(incident) {
                return Ok(Some((id.to_string(), commit_message(&state.repo, id)?)));
            }
            next = made.1;
        }
        let Some(base) = next else { return Ok(None) };
        let found = if Self::on_disk(&mut state, &name)? == Some(base) {
            self.store
                .with_index(&state.repo, branch, base, |index| index.marked(&state.repo, incident))?
        } else {
            BranchIndex::new(base).marked(&state.repo, incident)?
        };
        found
            .map(|id| commit_message(&state.repo, id).map(|m| (id.to_string(), m)))
            .transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
