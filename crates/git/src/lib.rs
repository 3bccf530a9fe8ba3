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
//!
//! Layout: `repo` holds the [`GitRepo`] trait and its types, `error` [`RepoError`]; [`forge`]
//! what a forge adds (pull requests); `local` the repository on disk ([`LocalRepository`]),
//! `batch` changes written together ([`Batch`]), both over `store` (the repository as opened);
//! `index` a branch's first-parent history kept in memory, and `plumbing` the gix calls they
//! share; `remote` any Git remote through a local mirror ([`RemoteRepository`]: fetched with
//! the `git` binary, changes pushed with a lease). Modules depend on each other in that order,
//! never back.

mod batch;
mod error;
pub mod forge;
mod index;
mod local;
mod pack;
mod plumbing;
mod remote;
mod repo;
mod store;

pub use batch::Batch;
pub use error::RepoError;
pub use forge::{
    ChangeRequest, ChangeRequestState, Forge, MergeMessage, MergeOutcome, Proposal, decode_content, fast_forward,
};
pub use local::LocalRepository;
pub use plumbing::incident_mark;
pub use remote::{RemoteRepository, RemoteSettings};
pub use repo::{Author, Batched, FileVersion, GitRepo};

#[cfg(test)]
mod tests;
