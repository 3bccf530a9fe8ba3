//! What a forge adds to a Git backend: a change proposed for review (a pull request, a merge
//! request), found again by its branch, merged through the forge so its branch protection and
//! required checks apply, or withdrawn. Each forge is one adapter behind [`Forge`].

use crate::{error::RepoError, repo::GitRepo};

/// A forge: proposes changes for review and merges them. Blocking, like [`crate::GitRepo`].
pub trait Forge: Send + Sync + 'static {
    /// The forge's name, for messages (`GitHub`).
    fn name(&self) -> &str;
    /// The proposal whose head is `branch`, in any state, if there is one.
    fn find_request(&self, branch: &str) -> Result<Option<ChangeRequest>, RepoError>;
    /// Opens a proposal. Called only when [`Self::find_request`] found none; a proposal that
    /// appeared meanwhile (another replica) is returned instead of a second one.
    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError>;
    /// Withdraws the open proposal of `branch` (a person rejected it); nothing when none is open.
    fn withdraw(&self, branch: &str) -> Result<(), RepoError>;
    /// Merges `request`, whose head the caller saw at `branch_tip`: `NeedsRebase` when it no
    /// longer applies to its base, `Blocked` while reviews or checks hold it, `Conflict` when
    /// its head moved meanwhile.
    fn merge(
        &self,
        request: &ChangeRequest,
        branch_tip: &str,
        message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError>;
}

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

impl ChangeRequestState {
    /// Which of a branch's proposals stands for it: a merged one over an open one over closed
    /// ones (`max_by_key` this).
    pub fn standing(self) -> u8 {
        match self {
            Self::Merged => 2,
            Self::Open => 1,
            Self::Closed => 0,
        }
    }
}

/// The text of `path` from the base64 `content` a forge's API sent (line breaks in it ignored).
pub fn decode_content(forge: &str, path: &str, content: &str) -> Result<String, RepoError> {
    use base64::Engine as _;
    let cleaned: String = content.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .map_err(|e| RepoError::Git(format!("{forge} sent undecodable content for {path}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| RepoError::Refused(format!("{path} is not UTF-8")))
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

/// Merges `branch_tip` into `base` without a forge: a fast-forward by compare-and-set from
/// `base_tip`, where the caller saw `base`. `NeedsRebase` when `base` has moved past the
/// branch's base, `Conflict` when it moved meanwhile.
pub fn fast_forward(
    repo: &(impl GitRepo + ?Sized),
    base: &str,
    base_tip: &str,
    branch_tip: &str,
) -> Result<MergeOutcome, RepoError> {
    if !repo.is_ancestor(base_tip, branch_tip)? {
        return Ok(MergeOutcome::NeedsRebase);
    }
    repo.update_branch(base, base_tip, branch_tip)?;
    Ok(MergeOutcome::Merged(None))
}
