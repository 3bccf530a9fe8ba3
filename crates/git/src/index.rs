//! What is known of a branch's first-parent history, kept in memory.

use gix::ObjectId;
use std::collections::HashMap;

use crate::{error::RepoError, plumbing::*, repo::FileVersion};

/// The first-parent history of a branch from its tip down to `next`, as the versions of every
/// regular file changed on the way. Walked lazily (a query walks only as deep as it needs) and
/// brought forward when the branch moves (the new commits are walked once, for every file), so a
/// query costs nothing like a walk of the repository's age, nor does it grow with the number of
/// files asked about.
pub(crate) struct BranchIndex {
    pub(crate) tip: ObjectId,
    /// The next commit to walk; None when the walk reached the oldest commit.
    pub(crate) next: Option<ObjectId>,
    /// Each file's versions found so far, newest first.
    pub(crate) files: HashMap<String, Vec<IndexedVersion>>,
    /// Versions held, over all files (bounds the memory).
    pub(crate) entries: usize,
    /// The commits found marked with an incident (an `Incident: <key>` line), by incident.
    pub(crate) marks: HashMap<String, ObjectId>,
}

/// One version of a file: the commit that made it and the blob it has there; its text and the
/// commit's message once read.
pub(crate) struct IndexedVersion {
    pub(crate) commit: ObjectId,
    pub(crate) blob: ObjectId,
    pub(crate) loaded: Option<FileVersion>,
}

/// At most this many versions are kept over all branches; past it, the indexes start afresh.
pub(crate) const INDEXED_VERSIONS: usize = 1 << 20;

impl BranchIndex {
    pub(crate) fn new(tip: ObjectId) -> Self {
        Self {
            tip,
            next: Some(tip),
            files: HashMap::new(),
            entries: 0,
            marks: HashMap::new(),
        }
    }

    /// The commit marked with `incident`, walking down as far as needed (the whole history, once,
    /// when there is none).
    pub(crate) fn marked(&mut self, repo: &gix::Repository, incident: &str) -> Result<Option<ObjectId>, RepoError> {
        while !self.marks.contains_key(incident) && self.next.is_some() {
            self.walk_one(repo)?;
        }
        Ok(self.marks.get(incident).copied())
    }

    /// The newest `limit` versions of `path`, walking down as far as needed.
    pub(crate) fn versions(
        &mut self,
        repo: &gix::Repository,
        path: &str,
        limit: usize,
    ) -> Result<Vec<FileVersion>, RepoError> {
        while self.files.get(path).map_or(0, Vec::len) < limit && self.next.is_some() {
            self.walk_one(repo)?;
        }
        let Some(versions) = self.files.get_mut(path) else {
            return Ok(Vec::new());
        };
        versions
            .iter_mut()
            .take(limit)
            .map(|version| version.load(repo, path))
            .collect()
    }

    /// Walks the next commit down: its changes become the oldest versions known.
    pub(crate) fn walk_one(&mut self, repo: &gix::Repository) -> Result<(), RepoError> {
        let Some(id) = self.next else { return Ok(()) };
        let (changed, parent, mark) = changes(repo, id)?;
        if let Some(mark) = mark {
            self.marks.entry(mark).or_insert(id);
        }
        for (path, blob) in changed {
            self.files.entry(path).or_default().push(IndexedVersion {
                commit: id,
                blob,
                loaded: None,
            });
            self.entries += 1;
        }
        self.next = parent;
        Ok(())
    }

    /// Brings the index forward to `tip`: walks the first-parent commits from `tip` back to the
    /// known tip and puts their versions in front. False (and nothing changed) when the known tip
    /// is not on the branch any more.
    pub(crate) fn advance(&mut self, repo: &gix::Repository, tip: ObjectId, branch: &str) -> Result<bool, RepoError> {
        let walk = repo
            .rev_walk([tip])
            .first_parent_only()
            .all()
            .map_err(git_err(format!("cannot walk the history of {branch}")))?;
        let mut added: HashMap<String, Vec<IndexedVersion>> = HashMap::new();
        let mut marks = Vec::new();
        let mut count = 0;
        let mut reached = false;
        for info in walk {
            let info = info.map_err(git_err(format!("cannot walk the history of {branch}")))?;
            if info.id == self.tip {
                reached = true;
                break;
            }
            let (changed, _, mark) = changes(repo, info.id)?;
            marks.extend(mark.map(|mark| (mark, info.id)));
            for (path, blob) in changed {
                added.entry(path).or_default().push(IndexedVersion {
                    commit: info.id,
                    blob,
                    loaded: None,
                });
                count += 1;
            }
        }
        if !reached {
            return Ok(false);
        }
        for (path, mut versions) in added {
            let known = self.files.entry(path).or_default();
            versions.append(known);
            *known = versions;
        }
        // The newest commit with a mark wins (it is the one a redelivery must find).
        for (mark, id) in marks.into_iter().rev() {
            self.marks.insert(mark, id);
        }
        self.entries += count;
        self.tip = tip;
        Ok(true)
    }
}

impl IndexedVersion {
    /// The version with its text and message (read once).
    pub(crate) fn load(&mut self, repo: &gix::Repository, path: &str) -> Result<FileVersion, RepoError> {
        if let Some(loaded) = &self.loaded {
            return Ok(loaded.clone());
        }
        let commit = repo
            .find_commit(self.commit)
            .map_err(git_err(format!("cannot find commit {}", self.commit)))?;
        let version = file_version(repo, &commit, self.blob, path)?;
        self.loaded = Some(version.clone());
        Ok(version)
    }
}
