//! Git repositories the pr-controller edits.
//!
//! The pr-controller changes GitOps repositories by writing git objects directly (blob → tree →
//! commit) and then moving a branch ref; it never checks anything out. It therefore works best on
//! **bare** repositories (`git init --bare`, or `gix::prepare_clone_bare`), which have no work tree
//! or index that could get out of sync with the refs. A non-bare repository works too, but selfheal
//! treats it like a remote: when the branch that is checked out is moved, neither the work tree nor
//! the index are touched, so `git status` there will show the change reversed until someone runs
//! `git reset --hard` (or similar).
//!
//! Every ref update is a **compare-and-set**: the caller says what it believes the branch currently
//! points at (or that it must not exist), gix takes the ref's lock file, re-reads the ref under the
//! lock and only writes the new value if it matches ([`PreviousValue::MustExistAndMatch`] /
//! [`PreviousValue::MustNotExist`]). If it doesn't, the ref is left untouched and
//! [`RepoError::Conflict`] reports what was found, so concurrent writers (another controller
//! replica, a human pushing) never silently overwrite each other. Objects written before a failed
//! compare-and-set stay in the object database unreferenced until `git gc` prunes them.
//!
//! Reflog entries written by this module start with `selfheal: `. Note that git (and gix) only keep
//! reflogs in bare repositories when `core.logAllRefUpdates` is set;
//! [`LocalRepository::init_bare_with_commits`] sets it.
//!
//! Everything here is blocking (gix is); async callers use `tokio::task::spawn_blocking`.
//! Only SHA-1 repositories are supported (the workspace builds gix with the `sha1` feature only).

use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::bstr::{BString, ByteSlice};
use std::collections::{BTreeMap, HashMap};

use gix::objs::tree::EntryKind;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};

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

/// Who commits.
#[derive(Clone, Debug)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// The effects the pr-controller has on a repository. Blocking (gix is blocking): callers use spawn_blocking.
pub trait Repository: Send + Sync + 'static {
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

    /// Whether changes are proposed as pull requests (GitHub) rather than merged as branches.
    fn proposes(&self) -> bool {
        false
    }
    /// The pull request whose head is `branch`, in any state, if there is one.
    fn find_request(&self, _branch: &str) -> Result<Option<ChangeRequest>, RepoError> {
        Ok(None)
    }
    /// Opens a pull request. Called only when `proposes()` and `find_request` found none; a
    /// request that appeared meanwhile (another replica) is returned instead of a second one.
    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError> {
        Err(RepoError::Git(format!(
            "{} cannot open a pull request for {}",
            self.location(),
            proposal.branch
        )))
    }
    /// Withdraws the proposal of `branch` (a person rejected it): GitHub closes its open pull
    /// request. A local branch is left as it is, for the record.
    fn withdraw(&self, _branch: &str) -> Result<(), RepoError> {
        Ok(())
    }
    /// Merges `branch_tip` into `base`, which the caller saw at `base_tip`. The default, for a
    /// repository without pull requests, is a fast-forward by compare-and-set; `NeedsRebase` when
    /// `base` has moved past the branch's base, `Conflict` when it moved meanwhile.
    fn merge(
        &self,
        base: &str,
        base_tip: &str,
        branch_tip: &str,
        _request: Option<&ChangeRequest>,
        _message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError> {
        if !self.is_ancestor(base_tip, branch_tip)? {
            return Ok(MergeOutcome::NeedsRebase);
        }
        self.update_branch(base, base_tip, branch_tip)?;
        Ok(MergeOutcome::Merged(None))
    }

    /// The newest commit on `branch`'s first-parent history marked with `incident` (an
    /// `Incident: <key>` line in its message), with its message: how a change committed straight
    /// to the branch is found again. None when there is none, or the repository cannot tell (a
    /// forge, where changes go through pull requests).
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
pub trait Batched: Repository {
    /// Writes every change made through the batch, all or none; the number of refs written.
    fn flush(&self) -> Result<usize, RepoError>;
}

/// A pull request (or a forge's equivalent) proposing a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRequest {
    pub number: u64,
    /// Its web page, for people.
    pub url: String,
    pub state: ChangeRequestState,
    /// The commit the request's head is at.
    pub head: String,
    /// When merged: the commit on the base branch that holds the change, if the forge says.
    pub merge_commit: Option<String>,
}

/// Where a pull request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeRequestState {
    Open,
    Merged,
    /// Closed without merging: a person said no.
    Closed,
}

/// What a pull request is opened with.
#[derive(Clone, Debug)]
pub struct Proposal<'a> {
    pub branch: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
}

/// The title and message of a merge (or squash) commit.
#[derive(Clone, Copy, Debug)]
pub struct MergeMessage<'a> {
    pub title: &'a str,
    pub message: &'a str,
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Merged; the commit on the base branch when it is not the branch's tip (squash, merge commit).
    Merged(Option<String>),
    /// The forge will not merge it yet (required reviews or checks): it stays open.
    Blocked(String),
    /// The base moved so that the branch no longer applies as it is: make the change again on
    /// top of the base, then merge.
    NeedsRebase,
}

/// A repository on local disk, bare or not, opened with gix.
///
/// For a non-bare repository whose checked-out branch is updated, the work tree and index are
/// **not** touched: selfheal treats the repository like a remote, only writing objects and refs.
/// Bare repositories are recommended.
///
/// The repository is opened once; every call takes a thread-local handle of it (refs are read
/// from disk on every call, and objects written by other processes are found).
#[derive(Clone)]
pub struct LocalRepository {
    path: PathBuf,
    shared: std::sync::Arc<std::sync::RwLock<Shared>>,
    /// What is known of each branch's first-parent history (on disk), by branch name.
    histories: std::sync::Arc<std::sync::Mutex<HashMap<String, BranchIndex>>>,
}

/// The repository as opened, and how many packs this process wrote since.
struct Shared {
    repo: gix::ThreadSafeRepository,
    packs_written: usize,
}

/// After writing this many packs the repository is opened again: gix's object store has a fixed
/// number of slots for pack indexes, sized when it is opened (twice the packs then on disk, at
/// least [`MIN_PACK_SLOTS`]).
const REOPEN_AFTER_PACKS: usize = 256;
const MIN_PACK_SLOTS: usize = 1024;

fn open_shared(path: &Path) -> Result<gix::ThreadSafeRepository, RepoError> {
    let options = gix::open::Options::default().object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
        multiplier: 2.0,
        minimum: MIN_PACK_SLOTS,
    });
    gix::ThreadSafeRepository::open_opts(path, options).map_err(|e| RepoError::Open {
        path: path.display().to_string(),
        reason: describe(&e),
    })
}

/// The first-parent history of a branch from its tip down to `next`, as the versions of every
/// regular file changed on the way. Walked lazily (a query walks only as deep as it needs) and
/// brought forward when the branch moves (the new commits are walked once, for every file), so a
/// query costs nothing like a walk of the repository's age, nor does it grow with the number of
/// files asked about.
struct BranchIndex {
    tip: ObjectId,
    /// The next commit to walk; None when the walk reached the oldest commit.
    next: Option<ObjectId>,
    /// Each file's versions found so far, newest first.
    files: HashMap<String, Vec<IndexedVersion>>,
    /// Versions held, over all files (bounds the memory).
    entries: usize,
    /// The commits found marked with an incident (an `Incident: <key>` line), by incident.
    marks: HashMap<String, ObjectId>,
}

/// One version of a file: the commit that made it and the blob it has there; its text and the
/// commit's message once read.
struct IndexedVersion {
    commit: ObjectId,
    blob: ObjectId,
    loaded: Option<FileVersion>,
}

/// At most this many versions are kept over all branches; past it, the indexes start afresh.
const INDEXED_VERSIONS: usize = 1 << 20;

impl std::fmt::Debug for LocalRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRepository").field("path", &self.path).finish()
    }
}

/// Object cache for history walks: commits and trees are read repeatedly there.
const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// What `Conflict` reports when the branch does not exist (or must not).
const NO_BRANCH: &str = "no branch";

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

    fn shared_repo(&self) -> gix::ThreadSafeRepository {
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .repo
            .clone()
    }

    /// Counts a pack written, and opens the repository again when the store's slots may run out.
    fn pack_written(&self) -> Result<(), RepoError> {
        let mut shared = self.shared.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.packs_written += 1;
        if shared.packs_written >= REOPEN_AFTER_PACKS {
            shared.repo = open_shared(&self.path)?;
            shared.packs_written = 0;
        }
        Ok(())
    }

    /// A handle on the repository for this thread, with an object cache for history walks.
    fn local(&self) -> Result<gix::Repository, RepoError> {
        let mut repo = self.shared_repo().to_thread_local();
        repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
        Ok(repo)
    }
}

impl LocalRepository {
    /// The versions of `path` on `branch` as of `tip` (the branch's tip on disk), from the
    /// shared index: walked only as deep as asked, and brought forward when the branch moved.
    fn indexed_history(
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
    fn with_index<T>(
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

impl Repository for LocalRepository {
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

/// The full message of commit `id`, without the trailing newline(s).
fn commit_message(repo: &gix::Repository, id: ObjectId) -> Result<String, RepoError> {
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
/// see the batch's own changes. Until the flush, nothing is on disk; if the flush fails, nothing
/// the batch made is referenced (objects already written stay unreferenced until `git gc`).
///
/// On a disk where creating a file is slow, this is what keeps a burst of remediations fast: one
/// remediation written alone creates seven files (five objects, two refs), a batch of fifty
/// creates about fifty-three.
pub struct Batch {
    local: LocalRepository,
    state: std::sync::Mutex<BatchState>,
}

struct BatchState {
    /// Writes objects to memory; reads see those and the disk.
    repo: gix::Repository,
    /// Refs changed in the batch.
    refs: BTreeMap<FullName, PendingRef>,
    /// Commits made in the batch, with what each changed, its parent and its mark.
    made: HashMap<ObjectId, std::sync::Arc<Changes>>,
}

/// What a commit changed against its first parent (path → blob), that parent, and the incident
/// it is marked with.
type Changes = (HashMap<String, ObjectId>, Option<ObjectId>, Option<String>);

/// A ref the batch moves: from what was on disk when the batch first read it, to `new`.
struct PendingRef {
    branch: String,
    on_disk: Option<ObjectId>,
    new: ObjectId,
    reflog: String,
}

/// Fewer objects than this are written loose, as git does for small pushes (`unpackLimit`);
/// more go into one pack.
const PACK_AT: usize = 10;

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("path", &self.local.path).finish()
    }
}

impl Batch {
    fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        // A panic mid-change leaves a batch that is never flushed (its caller failed).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where `name` points in the batch: its own change, or what is on disk.
    fn tip(state: &BatchState, name: &FullName) -> Result<Option<ObjectId>, RepoError> {
        match state.refs.get(name) {
            Some(pending) => Ok(Some(pending.new)),
            None => current_tip(&state.repo, name),
        }
    }

    /// Moves `name` in the batch, compare-and-set against where it points in the batch.
    fn set(
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
                let on_disk = current_tip(&state.repo, name)?;
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
        let objects = state.repo.objects.take_object_memory().unwrap_or_default();
        state.repo.objects.enable_object_memory();
        drop(state);
        if refs.is_empty() {
            return Ok(0);
        }
        let disk = self.local.local()?;
        let mut keep = None;
        if objects.len() >= PACK_AT {
            keep = write_pack(&disk, &objects)?;
            self.local.pack_written()?;
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
        if let Some(keep) = keep
            && let Err(error) = std::fs::remove_file(&keep)
        {
            tracing::warn!(path = %keep.display(), error = %error, "could not remove a pack's .keep file");
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
        tracing::debug!(location = %self.local.location(), refs = refs.len(), objects = objects.len(), "batch written");
        Ok(refs.len())
    }
}

impl Repository for Batch {
    fn location(&self) -> String {
        self.local.location()
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        let name = branch_ref_name(branch)?;
        Ok(Self::tip(&self.state(), &name)?.map(|id| id.to_string()))
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
        let state = self.state();
        let Some(tip) = Self::tip(&state, &name)? else {
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
        let older = if current_tip(&state.repo, &name)? == Some(base) {
            self.local.indexed_history(&state.repo, branch, base, path, rest)?
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
        let state = self.state();
        let mut next = Self::tip(&state, &name)?;
        while let Some((id, made)) = next.and_then(|id| Some((id, state.made.get(&id)?.clone()))) {
            if made.2.as_deref() == Some(incident) {
                return Ok(Some((id.to_string(), commit_message(&state.repo, id)?)));
            }
            next = made.1;
        }
        let Some(base) = next else { return Ok(None) };
        let found = if current_tip(&state.repo, &name)? == Some(base) {
            self.local
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

/// selfheal's own identity, for ref updates it makes on its own behalf.
fn selfheal_committer() -> Author {
    Author {
        name: "selfheal".to_owned(),
        email: "selfheal@localhost".to_owned(),
    }
}

fn read_file_in(repo: &gix::Repository, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
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
fn write_file_commit(
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
fn check_commit(repo: &gix::Repository, branch: &str, new: ObjectId) -> Result<(), RepoError> {
    repo.find_commit(new).map_err(git_err(format!(
        "cannot move {branch} to {new}: not a commit in this repository"
    )))?;
    Ok(())
}

fn is_ancestor_in(repo: &gix::Repository, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
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

/// Writes `objects` as one pack (and its index) in the repository's pack directory.
/// Returns the pack's `.keep` file, which protects it from `git gc` until refs point into it: the
/// caller removes it then.
fn write_pack(repo: &gix::Repository, objects: &gix::odb::memory::Storage) -> Result<Option<PathBuf>, RepoError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| RepoError::Git(format!("cannot write a pack: {e}"));
    let count = u32::try_from(objects.len()).map_err(|_| RepoError::Git("too many objects for one pack".into()))?;
    let mut pack = Vec::with_capacity(64 + objects.values().map(|(_, data)| data.len()).sum::<usize>());
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&count.to_be_bytes());
    for (kind, data) in objects.values() {
        // The entry header: type and size, seven bits at a time after the first four.
        let type_id: usize = match kind {
            gix::object::Kind::Commit => 1,
            gix::object::Kind::Tree => 2,
            gix::object::Kind::Blob => 3,
            gix::object::Kind::Tag => 4,
        };
        let mut size = data.len();
        let mut byte = ((type_id << 4) | (size & 0x0f)) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        let mut deflate = gix::zlib::stream::deflate::Write::new(&mut pack, gix::zlib::Compression::BEST_SPEED);
        deflate.write_all(data).map_err(io)?;
        deflate.flush().map_err(io)?;
    }
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(&pack);
    let digest = hasher
        .try_finalize()
        .map_err(|e| RepoError::Git(format!("cannot hash a pack: {e}")))?;
    pack.extend_from_slice(digest.as_slice());
    let directory = repo.objects.store_ref().path().join("pack");
    let written = gix_pack::Bundle::write_to_directory(
        &mut std::io::Cursor::new(pack),
        Some(&directory),
        &mut gix::progress::Discard,
        &std::sync::atomic::AtomicBool::new(false),
        None::<gix::odb::Cache<gix::odb::store::Handle<std::sync::Arc<gix::odb::Store>>>>,
        gix::hash::Kind::Sha1,
        gix_pack::bundle::write::Options {
            thread_limit: Some(1),
            ..Default::default()
        },
    )
    .map_err(|e| RepoError::Git(format!("cannot write a pack: {e}")))?;
    Ok(written.keep_path)
}

/// All messages of a gix error tree, outermost first, de-duplicated.
fn describe(e: &gix::Error) -> String {
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

fn git_err(context: impl std::fmt::Display) -> impl FnOnce(gix::Error) -> RepoError {
    move |e| RepoError::Git(format!("{context}: {}", describe(&e)))
}

/// `refs/heads/<branch>`, validated like git does.
fn branch_ref_name(branch: &str) -> Result<FullName, RepoError> {
    if branch.is_empty() || branch.starts_with("refs/") {
        return Err(RepoError::Git(format!(
            "invalid branch name {branch:?}: give the short name (without refs/heads/)"
        )));
    }
    FullName::try_from(format!("refs/heads/{branch}"))
        .map_err(|e| RepoError::Git(format!("invalid branch name {branch:?}: {e}")))
}

/// A full hexadecimal object id.
fn parse_id(hex: &str) -> Result<ObjectId, RepoError> {
    ObjectId::from_hex(hex.as_bytes())
        .map_err(|e| RepoError::Git(format!("invalid commit id {hex:?} (a full hex id is required): {e}")))
}

/// The `/`-separated components of a repository-relative file path.
fn path_components(path: &str) -> Result<Vec<&str>, RepoError> {
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

fn validate_author(author: &Author) -> Result<(), RepoError> {
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

fn signature(author: &Author) -> gix::actor::Signature {
    gix::actor::Signature {
        name: author.name.as_str().into(),
        email: author.email.as_str().into(),
        time: gix::date::Time::now_local_or_utc(),
    }
}

fn log_change(message: String) -> LogChange {
    LogChange {
        mode: RefLog::AndReference,
        force_create_reflog: false,
        message: message.into(),
    }
}

/// The first line of a commit message, for reflogs.
fn summary(message: &str) -> &str {
    message.lines().next().unwrap_or_default().trim()
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Tree => "directory",
        EntryKind::Blob => "file",
        EntryKind::BlobExecutable => "executable file",
        EntryKind::Link => "symbolic link",
        EntryKind::Commit => "submodule",
    }
}

impl BranchIndex {
    fn new(tip: ObjectId) -> Self {
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
    fn marked(&mut self, repo: &gix::Repository, incident: &str) -> Result<Option<ObjectId>, RepoError> {
        while !self.marks.contains_key(incident) && self.next.is_some() {
            self.walk_one(repo)?;
        }
        Ok(self.marks.get(incident).copied())
    }

    /// The newest `limit` versions of `path`, walking down as far as needed.
    fn versions(&mut self, repo: &gix::Repository, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
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
    fn walk_one(&mut self, repo: &gix::Repository) -> Result<(), RepoError> {
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
    fn advance(&mut self, repo: &gix::Repository, tip: ObjectId, branch: &str) -> Result<bool, RepoError> {
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
    fn load(&mut self, repo: &gix::Repository, path: &str) -> Result<FileVersion, RepoError> {
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

/// What commit `id` changed against its first parent (the regular files whose blob is new there,
/// by path), and that parent: None for a root commit, or a shallow clone's boundary (whose parent
/// is absent), where every file counts as added.
fn changes(repo: &gix::Repository, id: ObjectId) -> Result<Changes, RepoError> {
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
    let mut changed = HashMap::new();
    changed_files(
        repo,
        tree,
        parent.map(|(_, tree)| tree),
        &mut String::new(),
        &mut changed,
    )?;
    Ok((changed, parent.map(|(parent, _)| parent), mark))
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
/// pass over them pairs the entries; only subtrees that differ are read.
fn changed_files(
    repo: &gix::Repository,
    tree: ObjectId,
    parent: Option<ObjectId>,
    prefix: &mut String,
    changed: &mut HashMap<String, ObjectId>,
) -> Result<(), RepoError> {
    if Some(tree) == parent {
        return Ok(());
    }
    let read = |id: ObjectId| repo.find_tree(id).map_err(git_err(format!("cannot read tree {id}")));
    let new_tree = read(tree)?;
    let old_tree = parent.map(read).transpose()?;
    let mut old_entries = old_tree.iter().flat_map(|t| t.iter()).peekable();
    let regular = |kind: EntryKind| matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable);
    for entry in new_tree.iter() {
        let entry = entry
            .map_err(|e| RepoError::Git(format!("cannot decode tree {tree}: {e}")))?
            .inner;
        // Skip the parent's entries that sort before this one (removed here).
        let mut old = None;
        while let Some(next) = old_entries.peek() {
            let next = match next {
                Ok(next) => next.inner,
                Err(_) => {
                    let error = old_entries.next().and_then(Result::err);
                    return Err(RepoError::Git(format!(
                        "cannot decode tree {}: {}",
                        parent.unwrap_or(tree),
                        error.map(|e| e.to_string()).unwrap_or_default()
                    )));
                }
            };
            match next.cmp(&entry) {
                std::cmp::Ordering::Less => {
                    old_entries.next();
                }
                std::cmp::Ordering::Equal => {
                    old = Some(next);
                    old_entries.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let kind = entry.mode.kind();
        // Unchanged: the same object as the same sort of entry (a mode change alone, such as the
        // executable bit, is not a new version of a file).
        if old.is_some_and(|old| old.oid == entry.oid && regular(old.mode.kind()) == regular(kind)) {
            continue;
        }
        let length = prefix.len();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(&String::from_utf8_lossy(entry.filename));
        match kind {
            EntryKind::Tree => {
                // Equal names in git's order are both trees or both not.
                let old = old.map(|old| old.oid.to_owned());
                changed_files(repo, entry.oid.to_owned(), old, prefix, changed)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                changed.insert(prefix.clone(), entry.oid.to_owned());
            }
            EntryKind::Link | EntryKind::Commit => {}
        }
        prefix.truncate(length);
    }
    Ok(())
}

/// Where `name` points now (peeled to an object), or None if it does not exist.
fn current_tip(repo: &gix::Repository, name: &FullName) -> Result<Option<ObjectId>, RepoError> {
    let what = || format!("cannot read {}", name.as_bstr());
    let Some(reference) = repo.try_find_reference(name.as_ref()).map_err(git_err(what()))? else {
        return Ok(None);
    };
    let id = reference.into_fully_peeled_id().map_err(git_err(what()))?;
    Ok(Some(id.detach()))
}

/// The tree of commit `id` (which must exist and be a commit).
fn commit_tree(repo: &gix::Repository, id: ObjectId) -> Result<gix::Tree<'_>, RepoError> {
    let commit = repo
        .find_commit(id)
        .map_err(git_err(format!("cannot find commit {id}")))?;
    commit
        .tree()
        .map_err(git_err(format!("cannot read the tree of commit {id}")))
}

fn read_text(repo: &gix::Repository, blob: ObjectId, path: &str, commit: &str) -> Result<String, RepoError> {
    let mut object = repo
        .find_blob(blob)
        .map_err(git_err(format!("cannot read {path} at {commit}")))?;
    String::from_utf8(object.take_data())
        .map_err(|e| RepoError::Git(format!("{path} at {commit} is not UTF-8 text: {e}")))
}

fn file_version(
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
fn checked_file_kind(repo: &gix::Repository, tree: ObjectId, path: &str) -> Result<EntryKind, RepoError> {
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
fn write_commit(
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
fn set_ref(
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

fn target_text(target: &Target) -> String {
    match target {
        Target::Object(id) => id.to_string(),
        Target::Symbolic(name) => format!("symbolic ref to {}", name.as_bstr()),
    }
}

/// Sets `core.logAllRefUpdates = true` in the repository config at `config_path`, so bare
/// repositories keep reflogs (git's default for bare repositories is not to).
fn enable_reflogs(config_path: &Path) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::process::Command;
    use std::sync::{Arc, Barrier};

    /// Runs the git CLI in `dir`, isolated from the user's and system's git configuration.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "user.name=Fixture",
                "-c",
                "user.email=fixture@example.com",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn write(dir: &Path, path: &str, content: &str) {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    /// Stages everything in `work` and commits it; returns the new commit id.
    fn commit_all(work: &Path, message: &str) -> String {
        git(work, &["add", "-A"]);
        git(work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn author() -> Author {
        Author {
            name: "selfheal bot".to_owned(),
            email: "bot@selfheal.example".to_owned(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        bare: PathBuf,
        /// Commits on main, oldest first.
        main: Vec<String>,
    }

    /// A bare repository (cloned from a scratch work tree) whose main branch has:
    /// apps/demo/kustomization.yaml, apps/demo/deploy.sh (executable), README.md.
    fn gitops_fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        write(
            &work,
            "apps/demo/kustomization.yaml",
            "# demo\nimages:\n  - name: ghcr.io/acme/demo\n    newTag: v1.0.0 # pinned\n",
        );
        write(&work, "apps/demo/deploy.sh", "#!/bin/sh\necho deploy\n");
        {
            use std::os::unix::fs::PermissionsExt;
            let script = work.join("apps/demo/deploy.sh");
            std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        write(&work, "README.md", "# gitops\n");
        let c1 = commit_all(&work, "init");
        let bare = dir.path().join("repo.git");
        git(
            dir.path(),
            &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()],
        );
        Fixture {
            _dir: dir,
            bare,
            main: vec![c1],
        }
    }

    fn ls_tree(repo: &Path, rev: &str) -> Vec<String> {
        git(repo, &["ls-tree", "-r", rev]).lines().map(str::to_owned).collect()
    }

    fn packs(bare: &Path) -> usize {
        std::fs::read_dir(bare.join("objects/pack"))
            .expect("pack directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack"))
            })
            .count()
    }

    #[test]
    fn a_batch_sees_its_own_changes_and_writes_them_at_once() {
        let f = gitops_fixture();
        let repo = LocalRepository::open(&f.bare).unwrap();
        let path = "apps/demo/kustomization.yaml";
        // The shared index knows main as it is on disk.
        assert_eq!(repo.file_history("main", path, 10).unwrap().len(), 1);
        let packs_before = packs(&f.bare);

        let batch = repo.batch();
        let mut tip = f.main[0].clone();
        let mut made = Vec::new();
        for n in 0..12 {
            let content = format!("images:\n  - name: ghcr.io/acme/demo\n    newTag: v1.0.{n}\n");
            let commit = batch
                .commit_file(
                    &format!("selfheal/inc{n}"),
                    None,
                    &tip,
                    path,
                    &content,
                    &format!("bump {n}"),
                    &author(),
                )
                .unwrap();
            assert!(
                batch
                    .merge(
                        "main",
                        &tip,
                        &commit,
                        None,
                        &MergeMessage {
                            title: "t",
                            message: "m"
                        }
                    )
                    .is_ok()
            );
            tip = commit.clone();
            made.push(commit);
        }
        // Nothing on disk yet; the batch reads its own changes.
        assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), f.main[0]);
        assert_eq!(repo.branch_tip("selfheal/inc0").unwrap(), None);
        assert_eq!(batch.branch_tip("main").unwrap().as_deref(), Some(tip.as_str()));
        assert_eq!(
            batch.branch_tip("selfheal/inc3").unwrap().as_deref(),
            Some(made[3].as_str())
        );
        assert!(batch.read_file(&tip, path).unwrap().unwrap().contains("v1.0.11"));
        let in_batch = batch.file_history("main", path, 20).unwrap();
        assert_eq!(in_batch.len(), 13, "twelve versions made in the batch, one on disk");
        assert_eq!(in_batch[0].commit, tip);
        assert_eq!(in_batch[12].commit, f.main[0]);
        assert_eq!(
            batch.file_history("selfheal/inc5", path, 2).unwrap(),
            in_batch[6..8].to_vec()
        );
        assert!(batch.is_ancestor(&made[0], &tip).unwrap());
        // A compare-and-set against a stale value is refused inside the batch too.
        let stale = batch.update_branch("main", &f.main[0], &made[0]).unwrap_err();
        assert!(matches!(stale, RepoError::Conflict { .. }), "{stale:?}");

        // Written: every ref, the objects in one pack.
        assert_eq!(batch.flush().unwrap(), 13);
        assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), tip);
        for (n, commit) in made.iter().enumerate() {
            assert_eq!(git(&f.bare, &["rev-parse", &format!("selfheal/inc{n}")]).trim(), commit);
        }
        git(&f.bare, &["fsck", "--strict", "--no-dangling"]);
        assert_eq!(packs(&f.bare), packs_before + 1, "sixty objects, one pack");
        let kept: Vec<_> = std::fs::read_dir(f.bare.join("objects/pack"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "keep"))
            .collect();
        assert!(
            kept.is_empty(),
            "the pack is referenced: no .keep left for gc to trip on"
        );
        // The same history, read from disk by the shared index and by a fresh handle.
        assert_eq!(repo.file_history("main", path, 20).unwrap(), in_batch);
        let fresh = LocalRepository::open(&f.bare).unwrap();
        assert_eq!(fresh.file_history("main", path, 20).unwrap(), in_batch);
    }

    #[test]
    fn a_caller_with_an_older_tip_does_not_throw_the_index_away() {
        let f = gitops_fixture();
        let repo = LocalRepository::open(&f.bare).unwrap();
        let path = "apps/demo/kustomization.yaml";
        let newer = repo
            .commit_file(
                "main",
                Some(&f.main[0]),
                &f.main[0],
                path,
                "newTag: v2\n",
                "bump",
                &author(),
            )
            .unwrap();
        assert_eq!(repo.file_history("main", path, 10).unwrap().len(), 2);
        let handle = repo.local().unwrap();
        let older = parse_id(&f.main[0]).unwrap();
        // Read before the move, asked after it: the index stays where main is.
        let tip = repo.with_index(&handle, "main", older, |index| Ok(index.tip)).unwrap();
        assert_eq!(tip.to_string(), newer);
    }

    #[test]
    fn a_batch_whose_base_moved_writes_no_ref() {
        let f = gitops_fixture();
        let repo = LocalRepository::open(&f.bare).unwrap();
        let path = "apps/demo/kustomization.yaml";
        let packs_before = packs(&f.bare);
        let batch = repo.batch();
        let commit = batch
            .commit_file("selfheal/x", None, &f.main[0], path, "newTag: v2\n", "bump", &author())
            .unwrap();
        batch.update_branch("main", &f.main[0], &commit).unwrap();
        // Meanwhile, main moves on disk.
        let moved = repo
            .commit_file(
                "main",
                Some(&f.main[0]),
                &f.main[0],
                "README.md",
                "moved\n",
                "moved",
                &author(),
            )
            .unwrap();
        let err = batch.flush().unwrap_err();
        assert!(
            matches!(&err, RepoError::Conflict { branch, found, .. } if branch == "main" && *found == moved),
            "{err:?}"
        );
        assert_eq!(repo.branch_tip("main").unwrap(), Some(moved.clone()));
        assert_eq!(repo.branch_tip("selfheal/x").unwrap(), None, "all refs or none");

        // A small batch is written loose, like a small push.
        let batch = repo.batch();
        let commit = batch
            .commit_file("selfheal/y", None, &moved, path, "newTag: v3\n", "bump", &author())
            .unwrap();
        batch.update_branch("main", &moved, &commit).unwrap();
        assert_eq!(batch.flush().unwrap(), 2);
        assert_eq!(repo.branch_tip("main").unwrap(), Some(commit));
        assert_eq!(packs(&f.bare), packs_before, "five objects, written loose");
        git(&f.bare, &["fsck", "--strict", "--no-dangling"]);
    }

    #[test]
    fn open_fails_for_non_repository() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalRepository::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, RepoError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn branch_tip_and_read_file() {
        let f = gitops_fixture();
        let repo = LocalRepository::open(&f.bare).unwrap();
        assert_eq!(repo.location(), f.bare.display().to_string());
        let tip = repo.branch_tip("main").unwrap().unwrap();
        assert_eq!(tip, f.main[0]);
        assert_eq!(repo.branch_tip("does-not-exist").unwrap(), None);
        assert!(repo.branch_tip("bad..name").is_err());

        assert_eq!(
            repo.read_file(&tip, "README.md").unwrap().as_deref(),
            Some("# gitops\n")
        );
        assert_eq!(
            repo.read_file(&tip, "apps/demo/kustomization.yaml").unwrap(),
            Some(git(&f.bare, &["show", "main:apps/demo/kustomization.yaml"]))
        );
        // Absent files (including below an existing file or directory) are None.
        assert_eq!(repo.read_file(&tip, "missing.yaml").unwrap(), None);
        assert_eq!(repo.read_file(&tip, "apps/other/kustomization.yaml").unwrap(), None);
        assert_eq!(repo.read_file(&tip, "README.md/x").unwrap(), None);
        // A directory is not a file; bad ids and paths are errors.
        assert!(repo.read_file(&tip, "apps/demo").is_err());
        assert!(repo.read_file("abc123", "README.md").is_err());
        assert!(repo.read_file(&"0".repeat(40), "README.md").is_err());
        assert!(repo.read_file(&tip, "/README.md").is_err());
        assert!(repo.read_file(&tip, "apps/../README.md").is_err());
    }

    #[test]
    fn read_file_rejects_non_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        git(work, &["init", "-q"]);
        std::fs::write(work.join("bin.dat"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let c = commit_all(work, "binary");
        let repo = LocalRepository::open(work).unwrap();
        let err = repo.read_file(&c, "bin.dat").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_cached_history_walks_only_the_new_commits_and_agrees_with_a_fresh_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        let f = "apps/demo/values.yaml";
        for tag in ["v1", "v2", "v3"] {
            write(&work, f, &format!("tag: {tag}\n"));
            commit_all(&work, &format!("release {tag}"));
            write(&work, "README.md", &format!("readme {tag}\n"));
            commit_all(&work, "unrelated");
        }
        let cached = LocalRepository::open(&work).expect("open");
        assert_eq!(cached.file_history("main", f, 100).expect("history").len(), 3);
        // Another file kept, cut short at a limit.
        assert_eq!(cached.file_history("main", "README.md", 2).expect("history").len(), 2);
        // New commits, some changing the file, one of them changing it back, one changing both
        // files, one only the executable bit (not a new version).
        for (tag, touch) in [("v4", true), ("", false), ("v2", true)] {
            if touch {
                write(&work, f, &format!("tag: {tag}\n"));
            } else {
                write(&work, "README.md", "readme again\n");
            }
            commit_all(&work, &format!("later {tag}"));
        }
        write(&work, f, "tag: v5\n");
        write(&work, "README.md", "readme for v5\n");
        commit_all(&work, "both");
        git(&work, &["update-index", "--chmod=+x", f]);
        git(&work, &["commit", "-q", "-m", "executable"]);
        let fresh = LocalRepository::open(&work).expect("open");
        for limit in [1, 2, 5, 100] {
            for file in [f, "README.md"] {
                assert_eq!(
                    cached.file_history("main", file, limit).expect("cached"),
                    fresh.file_history("main", file, limit).expect("fresh"),
                    "{file}, limit {limit}"
                );
            }
        }
        assert_eq!(cached.file_history("main", f, 100).expect("history").len(), 6);
        // History rewritten (the cached tip is gone from the branch): a full walk again.
        git(&work, &["reset", "-q", "--hard", "HEAD~2"]);
        write(&work, f, "tag: v9\n");
        commit_all(&work, "rewritten");
        let fresh = LocalRepository::open(&work).expect("open");
        assert_eq!(
            cached.file_history("main", f, 100).expect("cached"),
            fresh.file_history("main", f, 100).expect("fresh")
        );
    }

    #[test]
    fn file_history_follows_first_parent_changes() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        let f = "apps/demo/values.yaml";

        write(&work, "README.md", "readme\n");
        let c0 = commit_all(&work, "readme only"); // file not there yet
        write(&work, f, "tag: v1\n");
        let c1 = commit_all(&work, "add demo\n\nwith a body\nof two lines");
        write(&work, "README.md", "readme 2\n");
        let _c2 = commit_all(&work, "touch readme");
        write(&work, f, "tag: v2\n");
        let c3 = commit_all(&work, "bump v2");
        let _c4 = commit_all(&work, "empty commit");
        write(&work, "apps/demo/other.yaml", "x\n");
        let _c5 = commit_all(&work, "sibling file");
        // A side branch changes the file twice; merged into main with a merge commit.
        git(&work, &["checkout", "-q", "-b", "side"]);
        write(&work, f, "tag: v3-rc\n");
        let side1 = commit_all(&work, "side rc");
        write(&work, f, "tag: v3\n");
        let side2 = commit_all(&work, "side final");
        git(&work, &["checkout", "-q", "main"]);
        write(&work, "README.md", "readme 3\n");
        let _c6 = commit_all(&work, "readme on main");
        git(&work, &["merge", "-q", "--no-ff", "-m", "merge side", "side"]);
        let merge = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
        // Reverting to an older content still counts as a change.
        write(&work, f, "tag: v1\n");
        let c8 = commit_all(&work, "back to v1");
        // Deleted, then re-added: the deletion has no version, the re-addition is reported.
        git(&work, &["rm", "-q", f]);
        let _c9 = commit_all(&work, "remove demo");
        write(&work, f, "tag: v4\n");
        let c10 = commit_all(&work, "re-add demo");
        let _c11 = commit_all(&work, "tip, unrelated");

        let repo = LocalRepository::open(&work).unwrap();
        let history = repo.file_history("main", f, 100).unwrap();
        let ids: Vec<&str> = history.iter().map(|v| v.commit.as_str()).collect();
        assert_eq!(ids, vec![&*c10, &*c8, &*merge, &*c3, &*c1]);
        assert!(!ids.contains(&side1.as_str()) && !ids.contains(&side2.as_str()));
        assert!(!ids.contains(&c0.as_str()));

        let contents: Vec<&str> = history.iter().map(|v| v.content.as_str()).collect();
        assert_eq!(
            contents,
            vec!["tag: v4\n", "tag: v1\n", "tag: v3\n", "tag: v2\n", "tag: v1\n"]
        );
        assert_eq!(history[0].message, "re-add demo");
        assert_eq!(history[2].message, "merge side");
        assert_eq!(history[4].message, "add demo\n\nwith a body\nof two lines");
        for v in &history {
            assert_eq!(
                v.content,
                git(&work, &["show", &format!("{}:{f}", v.commit)]),
                "content of {}",
                v.commit
            );
        }

        // Cross-check with git: first-parent commits touching the path, minus the deletion.
        let git_ids: Vec<String> = git(&work, &["log", "--first-parent", "--format=%H", "main", "--", f])
            .lines()
            .filter(|c| repo.read_file(c, f).unwrap().is_some())
            .map(str::to_owned)
            .collect();
        assert_eq!(git_ids, ids);

        // The limit keeps the newest entries.
        let two = repo.file_history("main", f, 2).unwrap();
        assert_eq!(two, history[..2].to_vec());
        assert!(repo.file_history("main", f, 0).unwrap().is_empty());
        assert_eq!(repo.file_history("main", f, 5).unwrap(), history);

        // Other branches, missing files and branches.
        let side = repo.file_history("side", f, 10).unwrap();
        let side_ids: Vec<&str> = side.iter().map(|v| v.commit.as_str()).collect();
        assert_eq!(side_ids, vec![&*side2, &*side1, &*c3, &*c1]);
        assert!(repo.file_history("main", "nope.yaml", 10).unwrap().is_empty());
        assert!(repo.file_history("main", "apps/demo", 10).unwrap().is_empty());
        assert!(repo.file_history("no-such-branch", f, 10).unwrap().is_empty());
        // README: added in c0, changed in c2 and c6 (the merge doesn't change it w.r.t. c6).
        assert_eq!(repo.file_history("main", "README.md", 10).unwrap().len(), 3);
    }

    #[test]
    fn commit_file_creates_branch_and_keeps_other_files() {
        let f = fixture_with_repo();
        let (repo, bare, base) = (&f.1, &f.0.bare, f.0.main[0].clone());
        let before = ls_tree(bare, "main");
        assert!(
            before
                .iter()
                .any(|l| l.starts_with("100755 ") && l.ends_with("apps/demo/deploy.sh"))
        );

        // Update an existing nested file on a new branch.
        let new_text = "# demo\nimages:\n  - name: ghcr.io/acme/demo\n    newTag: v1.2.3 # pinned\n";
        let c1 = repo
            .commit_file(
                "selfheal/inc-1",
                None,
                &base,
                "apps/demo/kustomization.yaml",
                new_text,
                "chore(demo): bump to v1.2.3\n\nIncident: inc-1",
                &author(),
            )
            .unwrap();
        assert_eq!(repo.branch_tip("selfheal/inc-1").unwrap().as_deref(), Some(c1.as_str()));
        assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1"]).trim(), c1);
        assert_eq!(
            git(bare, &["show", "selfheal/inc-1:apps/demo/kustomization.yaml"]),
            new_text
        );
        assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1^"]).trim(), base);
        assert_eq!(
            git(bare, &["log", "-1", "--format=%an|%ae|%cn|%ce|%B", "selfheal/inc-1"]),
            "selfheal bot|bot@selfheal.example|selfheal bot|bot@selfheal.example|chore(demo): bump to v1.2.3\n\nIncident: inc-1\n\n"
        );
        // Every other entry is unchanged (same blob, same mode: deploy.sh stays executable).
        let after = ls_tree(bare, "selfheal/inc-1");
        assert_eq!(after.len(), before.len());
        for line in &before {
            if !line.ends_with("apps/demo/kustomization.yaml") {
                assert!(after.contains(line), "{line} missing from {after:?}");
            }
        }
        assert!(
            after
                .iter()
                .any(|l| l.starts_with("100755 ") && l.ends_with("apps/demo/deploy.sh"))
        );
        // main did not move.
        assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(base.as_str()));

        // A new file in new nested directories, on top of the branch (CAS on its tip).
        let c2 = repo
            .commit_file(
                "selfheal/inc-1",
                Some(&c1),
                &c1,
                "apps/new/overlays/prod/values.yaml",
                "replicas: 3\n",
                "feat: add new app",
                &author(),
            )
            .unwrap();
        assert_eq!(
            git(bare, &["show", "selfheal/inc-1:apps/new/overlays/prod/values.yaml"]),
            "replicas: 3\n"
        );
        assert_eq!(
            git(bare, &["show", "selfheal/inc-1:apps/demo/kustomization.yaml"]),
            new_text
        );
        assert_eq!(git(bare, &["show", "selfheal/inc-1:README.md"]), "# gitops\n");
        assert_eq!(ls_tree(bare, "selfheal/inc-1").len(), before.len() + 1);
        assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1"]).trim(), c2);
        assert_eq!(
            git(bare, &["log", "--format=%s", "selfheal/inc-1"]),
            "feat: add new app\nchore(demo): bump to v1.2.3\ninit\n"
        );
        let history = repo
            .file_history("selfheal/inc-1", "apps/demo/kustomization.yaml", 10)
            .unwrap();
        assert_eq!(
            history.iter().map(|v| v.commit.as_str()).collect::<Vec<_>>(),
            vec![c1.as_str(), base.as_str()]
        );
        assert_eq!(history[0].message, "chore(demo): bump to v1.2.3\n\nIncident: inc-1");
        git(bare, &["fsck", "--strict", "--no-progress"]);
    }

    fn fixture_with_repo() -> (Fixture, LocalRepository) {
        let f = gitops_fixture();
        let repo = LocalRepository::open(&f.bare).unwrap();
        (f, repo)
    }

    #[test]
    fn commit_file_compare_and_set_conflicts() {
        let (f, repo) = fixture_with_repo();
        let base = f.main[0].clone();
        let c1 = repo
            .commit_file("fix", None, &base, "README.md", "one\n", "one", &author())
            .unwrap();

        // expected None, but the branch exists.
        let err = repo
            .commit_file("fix", None, &base, "README.md", "two\n", "two", &author())
            .unwrap_err();
        match &err {
            RepoError::Conflict {
                branch,
                expected,
                found,
            } => {
                assert_eq!(branch, "fix");
                assert_eq!(expected, NO_BRANCH);
                assert_eq!(found, &c1);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(repo.branch_tip("fix").unwrap().as_deref(), Some(c1.as_str()));

        // expected a stale tip.
        let err = repo
            .commit_file("fix", Some(&base), &base, "README.md", "two\n", "two", &author())
            .unwrap_err();
        assert!(
            matches!(&err, RepoError::Conflict { expected, found, .. } if *expected == base && *found == c1),
            "{err:?}"
        );
        // expected a tip, but the branch doesn't exist.
        let err = repo
            .commit_file("other", Some(&base), &base, "README.md", "two\n", "two", &author())
            .unwrap_err();
        assert!(
            matches!(&err, RepoError::Conflict { found, .. } if found == NO_BRANCH),
            "{err:?}"
        );
        assert_eq!(repo.branch_tip("other").unwrap(), None);
        assert_eq!(repo.branch_tip("fix").unwrap().as_deref(), Some(c1.as_str()));
        assert_eq!(git(&f.bare, &["show", "fix:README.md"]), "one\n");
    }

    #[test]
    fn commit_file_rejects_bad_input() {
        let (f, repo) = fixture_with_repo();
        let base = f.main[0].clone();
        let a = author();
        // A file where a directory would be needed, a directory where the file would be.
        let err = repo
            .commit_file("b", None, &base, "README.md/x.yaml", "x", "m", &a)
            .unwrap_err();
        assert!(err.to_string().contains("README.md is a file"), "{err}");
        let err = repo
            .commit_file("b", None, &base, "apps/demo", "x", "m", &a)
            .unwrap_err();
        assert!(err.to_string().contains("apps/demo is a directory"), "{err}");
        assert!(repo.commit_file("b", None, &base, "", "x", "m", &a).is_err());
        assert!(repo.commit_file("b", None, &base, "a//b", "x", "m", &a).is_err());
        assert!(repo.commit_file("b", None, &base, ".git/config", "x", "m", &a).is_err());
        assert!(repo.commit_file("b", None, "not-hex", "x", "x", "m", &a).is_err());
        assert!(
            repo.commit_file("refs/heads/b", None, &base, "x", "x", "m", &a)
                .is_err()
        );
        assert!(repo.commit_file("b c", None, &base, "x", "x", "m", &a).is_err());
        let bad = Author {
            name: "evil <x>".to_owned(),
            email: "e@x".to_owned(),
        };
        assert!(repo.commit_file("b", None, &base, "x", "x", "m", &bad).is_err());
        // Parent that is a blob, not a commit.
        let blob = git(&f.bare, &["rev-parse", "main:README.md"]).trim().to_owned();
        assert!(repo.commit_file("b", None, &blob, "x", "x", "m", &a).is_err());
        assert_eq!(repo.branch_tip("b").unwrap(), None);
    }

    #[test]
    fn concurrent_commit_file_only_one_wins() {
        let (f, repo) = fixture_with_repo();
        let repo = Arc::new(repo);
        let base = f.main[0].clone();
        let n = 6;
        // Every writer expects main at base; exactly one may move it, the others see it moved.
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (repo, barrier, base) = (repo.clone(), barrier.clone(), base.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    repo.commit_file(
                        "main",
                        Some(&base),
                        &base,
                        "README.md",
                        &format!("writer {i}\n"),
                        "race",
                        &author(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, RepoError::Conflict { found, .. } if found == winners[0]),
                    "{e:?}"
                );
            }
        }
        assert_eq!(repo.branch_tip("main").unwrap().as_ref(), Some(winners[0]));
        git(&f.bare, &["fsck", "--no-progress"]);
    }

    #[test]
    fn update_branch_compare_and_set() {
        let (f, repo) = fixture_with_repo();
        let base = f.main[0].clone();
        let c1 = repo
            .commit_file("feature", None, &base, "README.md", "new\n", "readme", &author())
            .unwrap();

        // Fast-forward main to the feature commit.
        repo.update_branch("main", &base, &c1).unwrap();
        assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), c1);

        // Stale expectation: conflict, ref untouched.
        let err = repo.update_branch("main", &base, &c1).unwrap_err();
        match &err {
            RepoError::Conflict {
                branch,
                expected,
                found,
            } => {
                assert_eq!(
                    (branch.as_str(), expected.as_str(), found.as_str()),
                    ("main", base.as_str(), c1.as_str())
                );
            }
            other => panic!("expected conflict, got {other:?}"),
        }
        assert!(err.to_string().contains("branch main moved"), "{err}");
        assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(c1.as_str()));

        // Missing branch: conflict too.
        let err = repo.update_branch("gone", &base, &c1).unwrap_err();
        assert!(
            matches!(&err, RepoError::Conflict { found, .. } if found == NO_BRANCH),
            "{err:?}"
        );
        assert_eq!(repo.branch_tip("gone").unwrap(), None);

        // Moving backwards is allowed (it's a CAS, not a fast-forward check).
        repo.update_branch("main", &c1, &base).unwrap();
        assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), base);

        // Unknown target commit: a plain error, nothing moved.
        let err = repo.update_branch("main", &base, &"1".repeat(40)).unwrap_err();
        assert!(matches!(err, RepoError::Git(_)), "{err:?}");
        assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(base.as_str()));
        git(&f.bare, &["fsck", "--strict", "--no-progress"]);
    }

    #[test]
    fn is_ancestor_walks_history() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        git(work, &["init", "-q"]);
        let a = commit_all(work, "a");
        let b = commit_all(work, "b");
        git(work, &["checkout", "-q", "-b", "side", &a]);
        let s = commit_all(work, "s");
        git(work, &["checkout", "-q", "main"]);
        let c = commit_all(work, "c");
        git(work, &["merge", "-q", "--no-ff", "-m", "merge", "side"]);
        let m = git(work, &["rev-parse", "HEAD"]).trim().to_owned();
        git(work, &["checkout", "-q", "--orphan", "unrelated"]);
        let u = commit_all(work, "unrelated root");

        let repo = LocalRepository::open(work).unwrap();
        for (x, y, want) in [
            (&a, &b, true),
            (&b, &a, false),
            (&a, &a, true),
            (&a, &m, true),
            (&s, &m, true), // through the second parent
            (&b, &m, true),
            (&c, &s, false),
            (&s, &c, false),
            (&m, &c, false),
            (&u, &m, false),
            (&a, &u, false),
        ] {
            assert_eq!(repo.is_ancestor(x, y).unwrap(), want, "is_ancestor({x}, {y})");
            let git_says = Command::new("git")
                .current_dir(work)
                .args(["merge-base", "--is-ancestor", x, y])
                .status()
                .unwrap()
                .success();
            assert_eq!(git_says, want, "git merge-base --is-ancestor {x} {y}");
        }
        assert!(repo.is_ancestor(&"2".repeat(40), &a).is_err());
        assert!(repo.is_ancestor("xyz", &a).is_err());
    }

    #[test]
    fn init_bare_with_commits_makes_a_valid_repository() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitops.git");
        let commits: Vec<(&str, Vec<(&str, &str)>)> = vec![
            (
                "initial layout",
                vec![
                    ("README.md", "# example gitops\n"),
                    (
                        "apps/demo/kustomization.yaml",
                        "images:\n  - name: demo\n    newTag: v1\n",
                    ),
                    ("apps/demo/deployment.yaml", "kind: Deployment\n"),
                ],
            ),
            (
                "bump demo to v2",
                vec![(
                    "apps/demo/kustomization.yaml",
                    "images:\n  - name: demo\n    newTag: v2\n",
                )],
            ),
            (
                "add api",
                vec![
                    ("apps/api/kustomization.yaml", "images: []\n"),
                    ("README.md", "# example\n"),
                ],
            ),
        ];
        let repo = LocalRepository::init_bare_with_commits(&path, "trunk", &commits, &author()).unwrap();

        assert_eq!(git(&path, &["rev-parse", "--is-bare-repository"]).trim(), "true");
        assert_eq!(git(&path, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/trunk");
        git(&path, &["fsck", "--strict", "--no-progress"]);
        assert_eq!(
            git(&path, &["log", "--format=%s|%an|%ce"]),
            "add api|selfheal bot|bot@selfheal.example\nbump demo to v2|selfheal bot|bot@selfheal.example\ninitial layout|selfheal bot|bot@selfheal.example\n"
        );
        let files: Vec<String> = git(&path, &["ls-tree", "-r", "--name-only", "trunk"])
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            files,
            vec![
                "README.md",
                "apps/api/kustomization.yaml",
                "apps/demo/deployment.yaml",
                "apps/demo/kustomization.yaml"
            ]
        );
        assert_eq!(
            git(&path, &["show", "trunk:apps/demo/kustomization.yaml"]),
            "images:\n  - name: demo\n    newTag: v2\n"
        );
        assert_eq!(
            git(&path, &["show", "trunk~2:apps/demo/kustomization.yaml"]),
            "images:\n  - name: demo\n    newTag: v1\n"
        );
        assert_eq!(git(&path, &["show", "trunk:README.md"]), "# example\n");

        // Reflogs are kept in this bare repository, with selfheal's messages.
        let tip = repo.branch_tip("trunk").unwrap().unwrap();
        let next = repo
            .commit_file(
                "trunk",
                Some(&tip),
                &tip,
                "apps/demo/kustomization.yaml",
                "images: []\n",
                "reset demo",
                &author(),
            )
            .unwrap();
        let reflog = git(&path, &["reflog", "show", "--format=%gs", "trunk"]);
        assert_eq!(
            reflog,
            "selfheal: commit: reset demo\nselfheal: commit: add api\nselfheal: commit: bump demo to v2\nselfheal: commit (initial): initial layout\n"
        );
        assert_eq!(
            repo.file_history("trunk", "apps/demo/kustomization.yaml", 10)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(repo.branch_tip("trunk").unwrap(), Some(next));

        // A clone (by the git CLI) checks out trunk.
        let clone = dir.path().join("clone");
        git(
            dir.path(),
            &["clone", "-q", path.to_str().unwrap(), clone.to_str().unwrap()],
        );
        assert_eq!(
            std::fs::read_to_string(clone.join("apps/api/kustomization.yaml")).unwrap(),
            "images: []\n"
        );

        // The destination must be new (or empty).
        let err = LocalRepository::init_bare_with_commits(&path, "trunk", &commits, &author()).unwrap_err();
        assert!(matches!(err, RepoError::Open { .. }), "{err:?}");
        // No commits: the branch is unborn.
        let empty = dir.path().join("empty.git");
        let repo = LocalRepository::init_bare_with_commits(&empty, "main", &[], &author()).unwrap();
        assert_eq!(repo.branch_tip("main").unwrap(), None);
        git(&empty, &["fsck", "--no-progress"]);
    }

    #[test]
    fn non_bare_work_tree_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        git(work, &["init", "-q"]);
        write(work, "app.yaml", "v1\n");
        let c1 = commit_all(work, "v1");
        let repo = LocalRepository::open(work).unwrap();
        let c2 = repo
            .commit_file("main", Some(&c1), &c1, "app.yaml", "v2\n", "v2", &author())
            .unwrap();
        assert_eq!(git(work, &["rev-parse", "HEAD"]).trim(), c2);
        assert_eq!(git(work, &["show", "HEAD:app.yaml"]), "v2\n");
        // The checked-out file keeps its old content.
        assert_eq!(std::fs::read_to_string(work.join("app.yaml")).unwrap(), "v1\n");
        // Non-bare repositories keep reflogs by default.
        assert_eq!(
            git(work, &["reflog", "show", "-1", "--format=%gs", "main"]).trim(),
            "selfheal: commit: v2"
        );
    }
}
