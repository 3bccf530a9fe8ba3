//! The gix calls the repository, the batch and the index share.

use std::path::Path;

use gix::ObjectId;
use gix::bstr::{BString, ByteSlice};
use std::collections::HashMap;

use gix::objs::tree::EntryKind;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};

use crate::{
    error::RepoError,
    repo::{Author, FileVersion},
};

/// What `Conflict` reports when the branch does not exist (or must not).
pub(crate) const NO_BRANCH: &str = "no branch";

/// What a commit changed against its first parent (path → blob), that parent, and the incident
/// it is marked with.
pub(crate) type Changes = (HashMap<String, ObjectId>, Option<ObjectId>, Option<String>);

/// The full message of commit `id`, without the trailing newline(s).
pub(crate) fn commit_message(repo: &gix::Repository, id: ObjectId) -> Result<String, RepoError> {
    let commit = repo
        .find_commit(id)
        .map_err(git_err(format!("cannot find commit {id}")))?;
    let message = commit
        .message_raw()
        .map_err(git_err(format!("cannot read the message of commit {id}")))?;
    Ok(String::from_utf8_lossy(message.as_bytes())
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}

/// Changes to a [`LocalRepository`] made in memory and written together by [`Batch::flush`]:
/// every object in one pack (or loose, when there are few), every ref in one transaction. Reads
/// selfheal's own identity, for ref updates it makes on its own behalf.
pub(crate) fn selfheal_committer() -> Author {
    Author {
        name: "selfheal".to_owned(),
        email: "selfheal@localhost".to_owned(),
    }
}

pub(crate) fn read_file_in(repo: &gix::Repository, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
    let components = path_components(path)?;
    let commit_id = parse_id(commit)?;
    let tree = commit_tree(repo, commit_id)?;
    let Some(entry) = tree
        .lookup_entry(components.iter().copied())
        .map_err(git_err(format!("cannot look up {path} at {commit}")))?
    else {
        return Ok(None);
    };
    match entry.mode().kind() {
        EntryKind::Blob | EntryKind::BlobExecutable => read_text(repo, entry.object_id(), path, commit).map(Some),
        other => Err(RepoError::Git(format!(
            "{path} at {commit} is not a regular file but a {}",
            kind_name(other)
        ))),
    }
}

/// Writes the blob, trees and commit that set `path` to `content` on top of `parent`; no ref.
pub(crate) fn write_file_commit(
    repo: &gix::Repository,
    parent: &str,
    path: &str,
    content: &str,
    message: &str,
    author: &Author,
) -> Result<ObjectId, RepoError> {
    let parent_id = parse_id(parent)?;
    path_components(path)?;
    validate_author(author)?;
    let parent_tree = commit_tree(repo, parent_id)?.id;
    let kind = checked_file_kind(repo, parent_tree, path)?;
    let blob = repo
        .write_blob(content.as_bytes())
        .map_err(git_err(format!("cannot write blob for {path}")))?
        .detach();
    let mut editor = repo
        .edit_tree(parent_tree)
        .map_err(git_err(format!("cannot edit the tree of {parent}")))?;
    editor
        .upsert(path, kind, blob)
        .map_err(git_err(format!("cannot set {path} in the tree of {parent}")))?;
    let tree = editor.write().map_err(git_err("cannot write the tree"))?.detach();
    write_commit(repo, tree, Some(parent_id), message, author)
}

/// Refuses to point `branch` at something that is not a commit this repository has.
pub(crate) fn check_commit(repo: &gix::Repository, branch: &str, new: ObjectId) -> Result<(), RepoError> {
    repo.find_commit(new).map_err(git_err(format!(
        "cannot move {branch} to {new}: not a commit in this repository"
    )))?;
    Ok(())
}

pub(crate) fn is_ancestor_in(repo: &gix::Repository, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
    let ancestor_id = parse_id(ancestor)?;
    let descendant_id = parse_id(descendant)?;
    for id in [ancestor_id, descendant_id] {
        repo.find_commit(id)
            .map_err(git_err(format!("{id} is not a commit in this repository")))?;
    }
    if ancestor_id == descendant_id {
        return Ok(true);
    }
    // A plain walk of everything reachable from `descendant` (using the commit-graph file when
    // present). No time-based cutoff: clock skew between committers would make it unsafe.
    let walk = repo
        .rev_walk([descendant_id])
        .all()
        .map_err(git_err(format!("cannot walk the history of {descendant}")))?;
    for info in walk {
        let info = info.map_err(git_err(format!("cannot walk the history of {descendant}")))?;
        if info.id == ancestor_id {
            return Ok(true);
        }
    }
    Ok(false)
}

/// All messages of a gix error tree, outermost first, de-duplicated.
pub(crate) fn describe(e: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in e.iter_errors() {
        let s = err.to_string();
        if !s.is_empty() && !parts.contains(&s) {
            parts.push(s);
        }
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

pub(crate) fn git_err(context: impl std::fmt::Display) -> impl FnOnce(gix::Error) -> RepoError {
    move |e| RepoError::Git(format!("{context}: {}", describe(&e)))
}

/// `refs/heads/<branch>`, validated like git does.
pub(crate) fn branch_ref_name(branch: &str) -> Result<FullName, RepoError> {
    if branch.is_empty() || branch.starts_with("refs/") {
        return Err(RepoError::Git(format!(
            "invalid branch name {branch:?}: give the short name (without refs/heads/)"
        )));
    }
    FullName::try_from(format!("refs/heads/{branch}"))
        .map_err(|e| RepoError::Git(format!("invalid branch name {branch:?}: {e}")))
}

/// A full hexadecimal object id.
pub(crate) fn parse_id(hex: &str) -> Result<ObjectId, RepoError> {
    ObjectId::from_hex(hex.as_bytes())
        .map_err(|e| RepoError::Git(format!("invalid commit id {hex:?} (a full hex id is required): {e}")))
}

/// The `/`-separated components of a repository-relative file path.
pub(crate) fn path_components(path: &str) -> Result<Vec<&str>, RepoError> {
    let invalid = |why: &str| RepoError::Git(format!("invalid file path {path:?}: {why}"));
    if path.is_empty() {
        return Err(invalid("empty"));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(invalid("contains NUL or a backslash"));
    }
    let components: Vec<&str> = path.split('/').collect();
    for c in &components {
        match *c {
            "" => return Err(invalid("must be relative, without empty components")),
            "." | ".." => return Err(invalid("must not contain . or ..")),
            c if c.eq_ignore_ascii_case(".git") => return Err(invalid("must not contain .git")),
            _ => {}
        }
    }
    Ok(components)
}

pub(crate) fn validate_author(author: &Author) -> Result<(), RepoError> {
    let bad = |s: &str| s.contains(['<', '>', '\n', '\r', '\0']);
    if author.name.trim().is_empty() || author.email.trim().is_empty() {
        return Err(RepoError::Git("author name and email must not be empty".to_owned()));
    }
    if bad(&author.name) || bad(&author.email) {
        return Err(RepoError::Git(format!(
            "invalid author {:?} <{:?}>: must not contain '<', '>' or line breaks",
            author.name, author.email
        )));
    }
    Ok(())
}

pub(crate) fn signature(author: &Author) -> gix::actor::Signature {
    gix::actor::Signature {
        name: author.name.as_str().into(),
        email: author.email.as_str().into(),
        time: gix::date::Time::now_local_or_utc(),
    }
}

pub(crate) fn log_change(message: String) -> LogChange {
    LogChange {
        mode: RefLog::AndReference,
        force_create_reflog: false,
        message: message.into(),
    }
}

/// The first line of a commit message, for reflogs.
pub(crate) fn summary(message: &str) -> &str {
    message.lines().next().unwrap_or_default().trim()
}

pub(crate) fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Tree => "directory",
        EntryKind::Blob => "file",
        EntryKind::BlobExecutable => "executable file",
        EntryKind::Link => "symbolic link",
        EntryKind::Commit => "submodule",
    }
}

/// What a commit changed against its first parent: [`step`] then [`step_changes`].
pub(crate) fn changes(repo: &gix::Repository, id: ObjectId) -> Result<Changes, RepoError> {
    let step = step(repo, id)?;
    let changed = step_changes(repo, &step)?;
    Ok((changed, step.parent.map(|(parent, _)| parent), step.mark))
}

/// One commit of a history walk, as read from the commit and its first parent.
pub(crate) struct Step {
    pub(crate) id: ObjectId,
    pub(crate) tree: ObjectId,
    /// The first parent and its tree; None at the first commit, or when the parent is not in
    /// the repository (the edge of a shallow clone: what it has is then all new).
    pub(crate) parent: Option<(ObjectId, ObjectId)>,
    /// The incident the commit is marked with.
    pub(crate) mark: Option<String>,
}

/// Reads commit `id` and its first parent: what [`step_changes`] needs.
pub(crate) fn step(repo: &gix::Repository, id: ObjectId) -> Result<Step, RepoError> {
    let commit = repo
        .find_commit(id)
        .map_err(git_err(format!("cannot find commit {id}")))?;
    let mark = commit
        .message_raw()
        .ok()
        .and_then(|message| incident_mark(&String::from_utf8_lossy(message.as_bytes())));
    let tree = commit
        .tree_id()
        .map_err(git_err(format!("cannot read the tree of commit {id}")))?
        .detach();
    let parent = match commit.parent_ids().next().map(gix::Id::detach) {
        Some(parent) => match repo
            .try_find_object(parent)
            .map_err(git_err(format!("cannot look for commit {parent}")))?
        {
            Some(object) => {
                let tree = object
                    .try_into_commit()
                    .map_err(|e| RepoError::Git(format!("the parent {parent} of {id} is not a commit: {e}")))?
                    .tree_id()
                    .map_err(git_err(format!("cannot read the tree of commit {parent}")))?
                    .detach();
                Some((parent, tree))
            }
            None => None,
        },
        None => None,
    };
    Ok(Step { id, tree, parent, mark })
}

/// The regular files `step`'s commit changed against its first parent (path → blob).
pub(crate) fn step_changes(repo: &gix::Repository, step: &Step) -> Result<HashMap<String, ObjectId>, RepoError> {
    let mut changed = HashMap::new();
    changed_files(
        repo,
        step.tree,
        step.parent.map(|(_, tree)| tree),
        &mut String::new(),
        &mut changed,
    )?;
    Ok(changed)
}

/// Whether `steps` (newest first) are best read oldest first: true when the pack stores a newer
/// version of a tree as a delta on the older one, as `git fast-import` does. Reading newest first
/// there rebuilds each tree from the bottom of its chain again (gix's delta-base cache keeps the
/// objects read, not the bases on the way), while oldest first finds each base just read; a pack
/// as `git gc` or a clone leaves it is the other way round. Told by the delta depths of the first
/// differing trees of a few commits against their parents (newer deeper: oldest first).
pub(crate) fn oldest_first(repo: &gix::Repository, steps: &[Step]) -> bool {
    const SAMPLES: usize = 4;
    let mut votes = 0i32;
    for n in 0..SAMPLES.min(steps.len()) {
        let step = &steps[n * steps.len() / SAMPLES];
        let Some((_, parent_tree)) = step.parent else {
            continue;
        };
        if let Some((newer, older)) = delta_depths(repo, step.tree, parent_tree, 4) {
            votes += match newer.cmp(&older) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
        }
    }
    votes > 0
}

/// The delta depths of `newer` and `older` if they differ, or else of the first pair of subtrees
/// under them that differ, `levels` deep at most. None when nothing tells (loose objects, trees
/// stored whole, unreadable objects: the walk is then newest first, as it always is correct).
fn delta_depths(repo: &gix::Repository, newer: ObjectId, older: ObjectId, levels: usize) -> Option<(u32, u32)> {
    let depth = |id: ObjectId| {
        repo.find_header(id)
            .ok()
            .and_then(|header| header.num_deltas())
            .unwrap_or(0)
    };
    let depths = (depth(newer), depth(older));
    if depths.0 != depths.1 {
        return Some(depths);
    }
    if levels == 0 || newer == older {
        return None;
    }
    let older_tree = repo.find_tree(older).ok()?;
    let olds: HashMap<Vec<u8>, ObjectId> = older_tree
        .iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.inner.mode.is_tree())
        .map(|entry| (entry.inner.filename.to_vec(), entry.inner.oid.to_owned()))
        .collect();
    let newer_tree = repo.find_tree(newer).ok()?;
    let pair = newer_tree.iter().filter_map(Result::ok).find_map(|entry| {
        let old = olds.get(entry.inner.filename.as_bytes())?;
        (entry.inner.mode.is_tree() && *old != entry.inner.oid).then(|| (entry.inner.oid.to_owned(), *old))
    })?;
    delta_depths(repo, pair.0, pair.1, levels - 1)
}

/// The incident a commit message is marked with: its `Incident: <key>` line (selfheal writes one
/// in every commit it makes; keys are alphanumeric).
pub fn incident_mark(message: &str) -> Option<String> {
    message.lines().rev().find_map(|line| {
        let key = line.strip_prefix("Incident: ")?.trim();
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| key.to_string())
    })
}

/// The regular files under `tree` (at `prefix`) whose blob differs from the one at the same path
/// under `parent` (None: an empty tree), by path. Both trees' entries are in git's order, so one
/// pass over them pairs the entries; only subtrees that differ are read. The bytes the two trees
/// share at their start and at their end (all but the entries a commit changed, mostly) are
/// compared as bytes and skipped, not decoded entry by entry.
pub(crate) fn changed_files(
    repo: &gix::Repository,
    tree: ObjectId,
    parent: Option<ObjectId>,
    prefix: &mut String,
    changed: &mut HashMap<String, ObjectId>,
) -> Result<(), RepoError> {
    if Some(tree) == parent {
        return Ok(());
    }
    let read = |id: ObjectId| {
        repo.find_tree(id)
            .map(|tree| tree.detach().data)
            .map_err(git_err(format!("cannot read tree {id}")))
    };
    let new = read(tree)?;
    let old = parent.map(read).transpose()?.unwrap_or_default();
    let hash = repo.object_hash().len_in_bytes();
    let entry = |data, at, id| RawEntry::at(data, at, hash, id);
    let parent_id = parent.unwrap_or(tree);

    // The entries wholly inside the bytes both start with are the same in both.
    let shared = common_prefix(&new, &old);
    let mut at_new = 0;
    while at_new < new.len() {
        let end = entry(&new, at_new, tree)?.end;
        if end > shared {
            break;
        }
        at_new = end;
    }
    let mut at_old = at_new;
    // From an entry boundary in both inside the bytes both end with, the rest is the same too.
    let tail = common_suffix(&new[at_new..], &old[at_old..]);
    let regular = |kind: EntryKind| matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable);
    let mut next_old = (at_old < old.len())
        .then(|| entry(&old, at_old, parent_id))
        .transpose()?;
    while at_new < new.len() {
        if new.len() - at_new == old.len() - at_old && new.len() - at_new <= tail {
            break;
        }
        let this = entry(&new, at_new, tree)?;
        at_new = this.end;
        // Skip the parent's entries that sort before this one (removed here).
        let mut same_name = None;
        while let Some(candidate) = next_old {
            let order = gix::objs::tree::name_order(
                candidate.name,
                candidate.kind == EntryKind::Tree,
                this.name,
                this.kind == EntryKind::Tree,
            );
            if order == std::cmp::Ordering::Greater {
                break;
            }
            at_old = candidate.end;
            next_old = (at_old < old.len())
                .then(|| entry(&old, at_old, parent_id))
                .transpose()?;
            if order == std::cmp::Ordering::Equal {
                same_name = Some(candidate);
                break;
            }
        }
        // Unchanged: the same object as the same sort of entry (a mode change alone, such as the
        // executable bit, is not a new version of a file).
        if same_name.is_some_and(|old| old.oid == this.oid && regular(old.kind) == regular(this.kind)) {
            continue;
        }
        let length = prefix.len();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(&String::from_utf8_lossy(this.name));
        let oid = this.oid.to_owned();
        match this.kind {
            EntryKind::Tree => {
                // Equal names in git's order are both trees or both not.
                let old = same_name.map(|old| old.oid.to_owned());
                changed_files(repo, oid, old, prefix, changed)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                changed.insert(prefix.clone(), oid);
            }
            EntryKind::Link | EntryKind::Commit => {}
        }
        prefix.truncate(length);
    }
    Ok(())
}

/// One entry of a tree as git stores it: `<octal mode> <name>\0<id>`.
#[derive(Clone, Copy)]
struct RawEntry<'a> {
    kind: EntryKind,
    name: &'a [u8],
    oid: &'a gix::oid,
    /// Where the next entry starts.
    end: usize,
}

impl<'a> RawEntry<'a> {
    /// The entry at `at` in `data` (tree `id`'s), ids `hash` bytes long.
    fn at(data: &'a [u8], at: usize, hash: usize, id: ObjectId) -> Result<Self, RepoError> {
        Self::read(data, at, hash)
            .ok_or_else(|| RepoError::Git(format!("cannot decode tree {id}: a malformed entry at byte {at}")))
    }

    fn read(data: &'a [u8], at: usize, hash: usize) -> Option<Self> {
        let rest = data.get(at..)?;
        let space = rest.iter().position(|&b| b == b' ')?;
        let kind = gix::objs::tree::EntryMode::from_bytes(&rest[..space])?.kind();
        let name_start = space + 1;
        let nul = name_start + rest.get(name_start..)?.find_byte(0)?;
        let oid = gix::oid::try_from_bytes(rest.get(nul + 1..nul + 1 + hash)?).ok()?;
        Some(Self {
            kind,
            name: &rest[name_start..nul],
            oid,
            end: at + nul + 1 + hash,
        })
    }
}

/// How many bytes `a` and `b` start with in common.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.chunks(64).zip(b.chunks(64)) {
        if x == y {
            n += x.len();
        } else {
            return n + x.iter().zip(y).take_while(|(p, q)| p == q).count();
        }
    }
    n
}

/// How many bytes `a` and `b` end with in common.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.rchunks(64).zip(b.rchunks(64)) {
        if x == y {
            n += x.len();
        } else {
            return n + x.iter().rev().zip(y.iter().rev()).take_while(|(p, q)| p == q).count();
        }
    }
    n
}

/// Where `name` points now (peeled to an object), or None if it does not exist.
pub(crate) fn current_tip(repo: &gix::Repository, name: &FullName) -> Result<Option<ObjectId>, RepoError> {
    let what = || format!("cannot read {}", name.as_bstr());
    let Some(reference) = repo.try_find_reference(name.as_ref()).map_err(git_err(what()))? else {
        return Ok(None);
    };
    // A branch names its commit directly: read it as it is (peeling would look the object up to
    // see whether it is a tag). Anything else (a symbolic ref) is followed to its object.
    if let Some(id) = reference.target().try_id() {
        return Ok(Some(id.to_owned()));
    }
    let id = reference.into_fully_peeled_id().map_err(git_err(what()))?;
    Ok(Some(id.detach()))
}

/// The tree of commit `id` (which must exist and be a commit).
pub(crate) fn commit_tree(repo: &gix::Repository, id: ObjectId) -> Result<gix::Tree<'_>, RepoError> {
    let commit = repo
        .find_commit(id)
        .map_err(git_err(format!("cannot find commit {id}")))?;
    commit
        .tree()
        .map_err(git_err(format!("cannot read the tree of commit {id}")))
}

pub(crate) fn read_text(repo: &gix::Repository, blob: ObjectId, path: &str, commit: &str) -> Result<String, RepoError> {
    let mut object = repo
        .find_blob(blob)
        .map_err(git_err(format!("cannot read {path} at {commit}")))?;
    String::from_utf8(object.take_data())
        .map_err(|e| RepoError::Git(format!("{path} at {commit} is not UTF-8 text: {e}")))
}

pub(crate) fn file_version(
    repo: &gix::Repository,
    commit: &gix::Commit<'_>,
    blob: ObjectId,
    path: &str,
) -> Result<FileVersion, RepoError> {
    let id = commit.id.to_string();
    let message = commit
        .message_raw()
        .map_err(git_err(format!("cannot read the message of commit {id}")))?;
    let message = String::from_utf8_lossy(message.as_bytes())
        .trim_end_matches(['\n', '\r'])
        .to_owned();
    Ok(FileVersion {
        content: read_text(repo, blob, path, &id)?,
        commit: id,
        message,
    })
}

/// The entry kind to write `path` with on top of `tree`: an existing file keeps its mode (e.g.
/// executable); errors if `path` or one of its parent directories is something else than expected
/// (a directory where the file should be, a file where a directory should be, a symlink...).
pub(crate) fn checked_file_kind(repo: &gix::Repository, tree: ObjectId, path: &str) -> Result<EntryKind, RepoError> {
    let components = path_components(path)?;
    let tree = repo
        .find_tree(tree)
        .map_err(git_err(format!("cannot read tree {tree}")))?;
    for depth in 1..=components.len() {
        let prefix = &components[..depth];
        let Some(entry) = tree
            .lookup_entry(prefix.iter().copied())
            .map_err(git_err(format!("cannot look up {path}")))?
        else {
            // Absent: this and everything below it will be created.
            return Ok(EntryKind::Blob);
        };
        let kind = entry.mode().kind();
        let is_leaf = depth == components.len();
        match (is_leaf, kind) {
            (false, EntryKind::Tree) => {}
            (true, EntryKind::Blob | EntryKind::BlobExecutable) => return Ok(kind),
            (_, other) => {
                return Err(RepoError::Git(format!(
                    "cannot write {path}: {} is a {}",
                    prefix.join("/"),
                    kind_name(other)
                )));
            }
        }
    }
    Ok(EntryKind::Blob)
}

/// Writes a commit object (author = committer = `author`, now); does not touch any ref.
pub(crate) fn write_commit(
    repo: &gix::Repository,
    tree: ObjectId,
    parent: Option<ObjectId>,
    message: &str,
    author: &Author,
) -> Result<ObjectId, RepoError> {
    let sig = signature(author);
    let mut message = message.to_owned();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let commit = gix::objs::Commit {
        tree,
        parents: parent.into_iter().collect(),
        author: sig.clone(),
        committer: sig,
        encoding: None,
        message: BString::from(message),
        extra_headers: Vec::new(),
    };
    Ok(repo
        .write_object(&commit)
        .map_err(git_err("cannot write the commit"))?
        .detach())
}

/// Compare-and-set `name` from `expected` (None: must not exist) to `new`.
pub(crate) fn set_ref(
    repo: &gix::Repository,
    branch: &str,
    name: &FullName,
    expected: Option<ObjectId>,
    new: ObjectId,
    reflog_message: String,
    committer: &Author,
) -> Result<(), RepoError> {
    let previous = match expected {
        Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
        None => PreviousValue::MustNotExist,
    };
    let edit = RefEdit {
        change: Change::Update {
            log: log_change(reflog_message),
            expected: previous,
            new: Target::Object(new),
        },
        name: name.clone(),
        deref: false,
    };
    let sig = signature(committer);
    let mut time_buf = gix::date::parse::TimeBuf::default();
    let result = repo.edit_references_as(Some(edit), Some(sig.to_ref(&mut time_buf)));
    let Err(err) = result else {
        return Ok(());
    };

    let expected_text = expected.map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string());
    let conflict = |found: String| RepoError::Conflict {
        branch: branch.to_owned(),
        expected: expected_text.clone(),
        found,
    };
    use gix::refs::file::transaction::prepare::{MustNotExist, ReferenceOutOfDate};
    if let Some(e) = err.downcast_any_ref::<ReferenceOutOfDate>() {
        return Err(conflict(target_text(&e.actual)));
    }
    if let Some(e) = err.downcast_any_ref::<MustNotExist>() {
        return Err(conflict(target_text(&e.actual)));
    }
    // e.g. "must exist with content ..." when the branch is gone: look at what is there now.
    match current_tip(repo, name) {
        Ok(now) if now != expected => Err(conflict(now.map_or_else(|| NO_BRANCH.to_owned(), |id| id.to_string()))),
        _ => Err(RepoError::Git(format!(
            "cannot update {}: {}",
            name.as_bstr(),
            describe(&err)
        ))),
    }
}

pub(crate) fn target_text(target: &Target) -> String {
    match target {
        Target::Object(id) => id.to_string(),
        Target::Symbolic(name) => format!("symbolic ref to {}", name.as_bstr()),
    }
}

/// Sets `core.logAllRefUpdates = true` in the repository config at `config_path`, so bare
/// repositories keep reflogs (git's default for bare repositories is not to).
pub(crate) fn enable_reflogs(config_path: &Path) -> Result<(), String> {
    let mut config = gix::config::File::from_path_no_includes(config_path.to_path_buf(), gix::config::Source::Local)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    config
        .set_raw_value_by("core", None, "logAllRefUpdates", "true")
        .map_err(|e| format!("cannot set core.logAllRefUpdates: {e}"))?;
    let mut bytes = Vec::new();
    config
        .write_to(&mut bytes)
        .map_err(|e| format!("cannot serialize the config: {e}"))?;
    std::fs::write(config_path, bytes).map_err(|e| format!("cannot write {}: {e}", config_path.display()))
}
