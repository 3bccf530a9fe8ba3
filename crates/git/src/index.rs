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
    /// How many commits the next walk reads: a few at first, doubling up to [`LONGEST_WALK`], so
    /// a query for recent versions reads little and a walk of the whole history few times.
    pub(crate) walk_length: usize,
}

/// The first walk of a branch reads this many commits.
pub(crate) const FIRST_WALK: usize = 64;
/// And a walk at most this many: enough for a tree's versions to meet again within one walk
/// (each found as the base of the next), few enough to keep a walk's commits in memory.
pub(crate) const LONGEST_WALK: usize = 4096;

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
            walk_length: FIRST_WALK,
        }
    }

    /// The commit marked with `incident`, walking down as far as needed (the whole history, once,
    /// when there is none).
    pub(crate) fn marked(&mut self, repo: &gix::Repository, incident: &str) -> Result<Option<ObjectId>, RepoError> {
        while !self.marks.contains_key(incident) && self.next.is_some() {
            self.walk(repo)?;
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
            self.walk(repo)?;
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

    /// Walks the next commits down (`walk_length` of them): their changes become the oldest
    /// versions known. The commits are read first, newest first; their trees are then compared in
    /// the order the pack's deltas run ([`oldest_first`]), each delta's base being the tree read
    /// just before it; what they changed is recorded newest first.
    pub(crate) fn walk(&mut self, repo: &gix::Repository) -> Result<(), RepoError> {
        let mut steps = Vec::with_capacity(self.walk_length);
        let mut next = self.next;
        while let Some(id) = next.filter(|_| steps.len() < self.walk_length) {
            let step = step(repo, id)?;
            next = step.parent.map(|(parent, _)| parent);
            steps.push(step);
        }
        let mut changed = Vec::with_capacity(steps.len());
        if oldest_first(repo, &steps) {
            for step in steps.iter().rev() {
                changed.push(step_changes(repo, step)?);
            }
            changed.reverse();
        } else {
            for step in &steps {
                changed.push(step_changes(repo, step)?);
            }
        }
        for (step, changed) in steps.into_iter().zip(changed) {
            if let Some(mark) = step.mark {
                self.marks.entry(mark).or_insert(step.id);
            }
            for (path, blob) in changed {
                self.files.entry(path).or_default().push(IndexedVersion {
                    commit: step.id,
                    blob,
                    loaded: None,
                });
                self.entries += 1;
            }
        }
        self.next = next;
        self.walk_length = (self.walk_length * 2).min(LONGEST_WALK);
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
