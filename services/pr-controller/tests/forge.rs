//! The reconciler knows a forge only through `selfheal_git::Forge`: a test-only forge, on a real
//! bare repository, takes the proposals, and the reconciler opens, finds, merges and gives up
//! on them through it alone, once per incident.

use std::sync::{Arc, Mutex};

use selfheal_git::{
    Author, ChangeRequest, ChangeRequestState, Forge, GitRepo, LocalRepository, MergeMessage, MergeOutcome, Proposal,
    RepoError,
};
use selfheal_pr_controller::{PrControllerConfig, reconcile::Reconciler};
use selfheal_proto::v1::{Action, Alert, AlertEvent, Approval, Decision, RemediationState};

/// A forge that keeps its proposals in memory and merges them by fast-forward on `git`, the
/// repository the reconciler writes to; it counts what it is asked.
struct ReviewForge {
    git: Arc<LocalRepository>,
    requests: Mutex<Vec<(String, ChangeRequest)>>,
    calls: Mutex<Vec<String>>,
    /// Whether merges are held, as required reviews would.
    hold: Mutex<bool>,
}

impl ReviewForge {
    fn calls(&self, name: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.iter().filter(|c| *c == name).count())
            .unwrap_or(0)
    }

    fn called(&self, name: &str) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(name.to_owned());
        }
    }

    fn set_state(&self, number: u64, state: ChangeRequestState) {
        if let Ok(mut requests) = self.requests.lock()
            && let Some((_, request)) = requests.iter_mut().find(|(_, r)| r.number == number)
        {
            request.state = state;
        }
    }
}

impl Forge for ReviewForge {
    fn name(&self) -> &str {
        "review"
    }

    fn find_request(&self, branch: &str) -> Result<Option<ChangeRequest>, RepoError> {
        self.called("find");
        let requests = self.requests.lock().map_err(|_| RepoError::Git("poisoned".into()))?;
        Ok(requests.iter().find(|(b, _)| b == branch).map(|(_, r)| r.clone()))
    }

    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError> {
        self.called("open");
        assert_eq!(proposal.base, "main");
        assert!(proposal.title.starts_with("fix("), "{}", proposal.title);
        assert!(proposal.body.contains("```diff"), "{}", proposal.body);
        let head = self
            .git
            .branch_tip(proposal.branch)?
            .ok_or_else(|| RepoError::Refused(format!("{} was not pushed", proposal.branch)))?;
        let mut requests = self.requests.lock().map_err(|_| RepoError::Git("poisoned".into()))?;
        let request = ChangeRequest {
            number: requests.len() as u64 + 1,
            url: format!("https://review.example/{}", requests.len() + 1),
            state: ChangeRequestState::Open,
            head,
            merge_commit: None,
        };
        requests.push((proposal.branch.to_owned(), request.clone()));
        Ok(request)
    }

    fn withdraw(&self, _branch: &str) -> Result<(), RepoError> {
        self.called("withdraw");
        Ok(())
    }

    fn merge(
        &self,
        request: &ChangeRequest,
        branch_tip: &str,
        _message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError> {
        self.called("merge");
        if self.hold.lock().map(|h| *h).unwrap_or(false) {
            return Ok(MergeOutcome::Blocked("waiting for a review".into()));
        }
        let main = self.git.branch_tip("main")?.unwrap_or_default();
        let outcome = selfheal_git::fast_forward(self.git.as_ref(), "main", &main, branch_tip)?;
        if matches!(outcome, MergeOutcome::Merged(_)) {
            self.set_state(request.number, ChangeRequestState::Merged);
        }
        Ok(outcome)
    }
}

fn kustomization(tag: &str) -> String {
    format!("images:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag}\n")
}

fn decision(incident: &str, approval: Approval) -> Decision {
    let labels = [("alertname", "HighErrorRate"), ("service", "checkout")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut decision = Decision {
        incident_key: incident.into(),
        reason: "error rate high".into(),
        alert: Some(AlertEvent {
            incident_key: incident.into(),
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    decision.set_action(Action::Rollback);
    decision.set_approval(approval);
    decision
}

#[test]
fn the_reconciler_proposes_merges_and_finds_changes_through_the_forge_trait_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (oldest, first, second) = (
        kustomization("v1.3.0"),
        kustomization("v1.4.1"),
        kustomization("v1.5.0"),
    );
    let git = Arc::new(LocalRepository::init_bare_with_commits(
        &dir.path().join("gitops.git"),
        "main",
        &[
            (
                "release v1.3.0",
                vec![("apps/checkout/kustomization.yaml", oldest.as_str())],
            ),
            (
                "release v1.4.1",
                vec![("apps/checkout/kustomization.yaml", first.as_str())],
            ),
            (
                "release v1.5.0",
                vec![("apps/checkout/kustomization.yaml", second.as_str())],
            ),
        ],
        &Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        },
    )?);
    let forge = Arc::new(ReviewForge {
        git: git.clone(),
        requests: Mutex::default(),
        calls: Mutex::default(),
        hold: Mutex::new(false),
    });
    let settings = PrControllerConfig::default().reconcile_settings()?;
    let reconciler = Reconciler::new(git.clone(), Some(forge.clone()), settings);
    let main_file = || -> anyhow::Result<String> {
        let tip = git.branch_tip("main")?.unwrap_or_default();
        Ok(git
            .read_file(&tip, "apps/checkout/kustomization.yaml")?
            .unwrap_or_default())
    };

    // Approval required: a branch and a proposal on the forge, main untouched.
    let held = decision("aaaa", Approval::Required);
    let opened = reconciler.reconcile(&held, "trace")?;
    assert_eq!(opened.state(), RemediationState::Opened, "{}", opened.message);
    assert_eq!(opened.pull_request_url, "https://review.example/1");
    assert_eq!(opened.branch, "selfheal/aaaa");
    assert_eq!(
        (opened.from_value.as_str(), opened.to_value.as_str()),
        ("v1.5.0", "v1.4.1")
    );
    assert_eq!(main_file()?, second, "main waits for the review");
    // A redelivery finds the proposal: none opened twice.
    let again = reconciler.reconcile(&held, "trace")?;
    assert_eq!(again.state(), RemediationState::Opened);
    assert_eq!(forge.calls("open"), 1);

    // Approved while the forge holds merges: still open, with the forge's word.
    *forge.hold.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = true;
    let blocked = reconciler.reconcile(&decision("aaaa", Approval::Auto), "trace")?;
    assert_eq!(blocked.state(), RemediationState::Opened);
    assert_eq!(blocked.message, "waiting for a review");
    // Then merged through the forge, not by the reconciler moving main itself.
    *forge.hold.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = false;
    let merged = reconciler.reconcile(&decision("aaaa", Approval::Auto), "trace")?;
    assert_eq!(merged.state(), RemediationState::Merged, "{}", merged.message);
    assert_eq!(merged.message, "pull request #1 merged into main");
    assert_eq!(main_file()?, first, "the forge's merge put the rollback on main");
    assert_eq!(forge.calls("merge"), 2);
    // Merged is found as merged.
    let found = reconciler.reconcile(&decision("aaaa", Approval::Auto), "trace")?;
    assert_eq!(found.state(), RemediationState::Merged);
    assert_eq!((forge.calls("open"), forge.calls("merge")), (1, 2));

    // A proposal a person closed is a rejected remediation, and nothing is merged.
    let other = reconciler.reconcile(&decision("bbbb", Approval::Required), "trace")?;
    assert_eq!(other.pull_request_url, "https://review.example/2");
    forge.set_state(2, ChangeRequestState::Closed);
    let rejected = reconciler.reconcile(&decision("bbbb", Approval::Auto), "trace")?;
    assert_eq!(rejected.state(), RemediationState::Rejected);
    assert_eq!(forge.calls("merge"), 2);
    assert_eq!(main_file()?, first);
    Ok(())
}
