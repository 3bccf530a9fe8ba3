//! The reconciler: one decision in, one git change out, idempotent per incident.
//!
//! Every step is keyed by the incident: the branch is `selfheal/<incident>`, so running the same
//! decision twice finds the branch and reports what is there instead of committing again. On a
//! repository without pull requests, an approved change goes straight onto main in a commit
//! marked `Incident: <incident>`, which is what a second run finds. Refs move only by
//! compare-and-set, so two replicas racing on one incident make one commit.
//!
//! Layout: this file holds the loop ([`Reconciler::reconcile`]) and the revert; `change` computes
//! the edit and its commit message, `pr_text` the pull request's title and description,
//! `trailers` what selfheal writes into its commits and reads back, `describe` what main says
//! about a service (`DescribeTarget`), `targets` which file and place serve an alert, `settings`
//! the reconciler and what it is given, `error` how it fails.

mod change;
mod describe;
mod error;
mod labels;
mod pr_text;
mod settings;
mod targets;
mod trailers;

use std::collections::BTreeMap;

use selfheal_git::{ChangeRequestState, MergeMessage, MergeOutcome, Proposal, RepoError};
use selfheal_proto::{
    IncidentKey, names,
    v1::{Action, Approval, Decision, RemediationEvent, RemediationState},
};

pub use describe::TargetCache;
pub use error::ReconcileError;
pub use labels::is_image_tag;
pub use pr_text::{md, pr_title, unified_diff};
pub use settings::{ReconcileSettings, Reconciler};
pub use targets::{Chosen, LabelMatch, TargetConfig, TargetError, Targets, is_label_name, render};

use trailers::{TRAILER_FROM, TRAILER_TO, trailers};

impl Reconciler {
    /// Whether the change `decision` asks for is on main already, in a commit marked with its
    /// incident (made before a crash, say): reads only. Blocking.
    pub fn already_on_main(&self, decision: &Decision) -> Result<bool, ReconcileError> {
        let Ok(key) = IncidentKey::parse(&decision.incident_key) else {
            return Ok(false);
        };
        Ok(self
            .git
            .marked_commit(&self.settings.main_branch, key.as_str())?
            .is_some())
    }

    /// Makes the change `decision` asks for (or finds it already made) and says what happened.
    /// Blocking: run it with `spawn_blocking`.
    pub fn reconcile(&self, decision: &Decision, trace_id: &str) -> Result<RemediationEvent, ReconcileError> {
        let labels: BTreeMap<String, String> = decision
            .alert
            .as_ref()
            .and_then(|event| event.alert.as_ref())
            .map(|alert| alert.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let service = labels.get("service").cloned().unwrap_or_default();
        let mut event = RemediationEvent {
            incident_key: decision.incident_key.clone(),
            action: decision.action,
            service: service.clone(),
            repository: self.git.location(),
            decision: Some(decision.clone()),
            ..Default::default()
        };
        if let Err(invalid) = IncidentKey::parse(&decision.incident_key) {
            return Err(ReconcileError::Refused(format!("incident_key: {invalid}")));
        }
        let target = self.settings.targets.choose(&labels)?;
        let path = target.path.clone();
        let branch = format!("selfheal/{}", decision.incident_key);
        event.path = path.clone();
        event.branch = branch.clone();
        let main = self.settings.main_branch.as_str();

        let auto = decision.approval() == Approval::Auto;

        // Up to a few rounds: each lost compare-and-set (main or the branch moved under us)
        // starts over from what is there now.
        for _ in 0..5 {
            let main_tip = self
                .git
                .branch_tip(main)?
                .ok_or_else(|| ReconcileError::Refused(format!("the repository has no branch {main}")))?;
            let branch_tip = self.git.branch_tip(&branch)?;
            // 0. Approved already, on a repository without pull requests: straight onto main, in
            // a commit marked with the incident, which is how a redelivery finds it again.
            if auto && self.forge.is_none() && branch_tip.is_none() {
                let (commit, message, how) = match self.git.marked_commit(main, &decision.incident_key)? {
                    Some((commit, message)) => (commit, message, "is on"),
                    None => {
                        let change = self.change(decision, &target, &main_tip, trace_id)?;
                        match self.git.commit_file(
                            main,
                            Some(&main_tip),
                            &main_tip,
                            &path,
                            &change.content,
                            &change.message,
                            self.author(),
                        ) {
                            Ok(commit) => (commit, change.message, "committed to"),
                            Err(RepoError::Conflict { .. }) => continue,
                            Err(error) => return Err(error.into()),
                        }
                    }
                };
                let recorded = trailers(&message);
                event.branch = main.to_string();
                event.commit = commit;
                event.from_value = recorded.get(TRAILER_FROM).cloned().unwrap_or_default();
                event.to_value = recorded.get(TRAILER_TO).cloned().unwrap_or_default();
                event.set_state(RemediationState::Merged);
                event.message = format!("the change {how} {main}");
                return Ok(event);
            }
            // 1. The branch: found (done before: a redelivery, or another replica) or made now.
            let (tip, message, fresh) = match branch_tip {
                Some(tip) => {
                    let made = self.git.file_history(&branch, &path, 1)?;
                    (
                        tip,
                        made.into_iter().next().map(|v| v.message).unwrap_or_default(),
                        false,
                    )
                }
                None => {
                    let change = self.change(decision, &target, &main_tip, trace_id)?;
                    match self.git.commit_file(
                        &branch,
                        None,
                        &main_tip,
                        &path,
                        &change.content,
                        &change.message,
                        self.author(),
                    ) {
                        Ok(commit) => (commit, change.message, true),
                        Err(RepoError::Conflict { .. }) => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
            };
            let recorded = trailers(&message);
            event.commit = tip.clone();
            event.from_value = recorded.get(TRAILER_FROM).cloned().unwrap_or_default();
            event.to_value = recorded.get(TRAILER_TO).cloned().unwrap_or_default();
            let title = pr_title(decision.action(), &labels, &service, &event.to_value);

            // 2. The pull request, on a forge that has them: found in any state, or opened once.
            let request = match &self.forge {
                Some(forge) => match forge.find_request(&branch)? {
                    Some(found) => Some(found),
                    None => {
                        let body = self.pr_body(decision, &event, &branch, trace_id)?;
                        Some(forge.open_request(&Proposal {
                            branch: &branch,
                            base: main,
                            title: &title,
                            body: &body,
                        })?)
                    }
                },
                None => None,
            };
            if let Some(request) = &request {
                event.pull_request_url = request.url.clone();
            }
            let merged = match &request {
                Some(request) => match request.state {
                    ChangeRequestState::Merged => {
                        if let Some(commit) = &request.merge_commit {
                            event.commit = commit.clone();
                        }
                        true
                    }
                    ChangeRequestState::Closed => {
                        event.set_state(RemediationState::Rejected);
                        event.message = format!("pull request #{} was closed without merging", request.number);
                        return Ok(event);
                    }
                    ChangeRequestState::Open => false,
                },
                // A commit made just now on top of main is not in main; asking would walk all of
                // main's history looking for it.
                None => !fresh && self.git.is_ancestor(&tip, &main_tip)?,
            };
            if merged {
                event.set_state(RemediationState::Merged);
                event.message = format!("{branch} is merged into {main}");
                return Ok(event);
            }
            if !auto {
                event.set_state(RemediationState::Opened);
                event.message = match &request {
                    Some(request) => format!("pull request #{} waits for approval", request.number),
                    None => format!("{branch} waits for approval"),
                };
                return Ok(event);
            }

            // 3. The merge, when approval is auto.
            let how = MergeMessage {
                title: &title,
                message: &message,
            };
            let merged = match (&self.forge, &request) {
                (Some(forge), Some(request)) => forge.merge(request, &tip, &how),
                _ => selfheal_git::fast_forward(self.git.as_ref(), main, &main_tip, &tip),
            };
            match merged {
                Ok(MergeOutcome::Merged(commit)) => {
                    if let Some(commit) = commit {
                        event.commit = commit;
                    }
                    event.set_state(RemediationState::Merged);
                    event.message = match &request {
                        Some(request) => format!("pull request #{} merged into {main}", request.number),
                        None => format!("{branch} merged into {main} (fast-forward)"),
                    };
                    return Ok(event);
                }
                Ok(MergeOutcome::Blocked(why)) => {
                    event.set_state(RemediationState::Opened);
                    event.message = why;
                    return Ok(event);
                }
                Ok(MergeOutcome::NeedsRebase) => {
                    // main moved past the branch's base: make the change again on top of it.
                    let change = self.change(decision, &target, &main_tip, trace_id)?;
                    match self.git.commit_file(
                        &branch,
                        Some(&tip),
                        &main_tip,
                        &path,
                        &change.content,
                        &change.message,
                        self.author(),
                    ) {
                        Ok(_) | Err(RepoError::Conflict { .. }) => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
                Err(RepoError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ReconcileError::Repo(RepoError::Git(format!(
            "{main} kept moving; will try again"
        ))))
    }

    /// Undoes selfheal's own change for an escalated remediation: the value goes back to what it
    /// was, through the same path as any change (a branch `selfheal/<incident>r`, fast-forwarded
    /// into main), so it happens once however often it is asked for. Blocking.
    pub fn revert(&self, merged: &RemediationEvent, trace_id: &str) -> Result<RemediationEvent, ReconcileError> {
        let mut decision = merged.decision.clone().unwrap_or_default();
        decision.incident_key = IncidentKey::parse(&merged.incident_key)
            .and_then(|key| key.revert())
            .map_err(|invalid| ReconcileError::Refused(format!("incident_key: {invalid}")))?
            .to_string();
        decision.reason = format!(
            "revert: the alert still fired after {} {} → {}",
            names::action(merged.action()),
            merged.from_value,
            merged.to_value
        );
        decision.set_approval(Approval::Auto);
        let mut params = decision.params.clone().unwrap_or_default();
        match merged.action() {
            Action::Rollback => params.target_tag = merged.from_value.clone(),
            Action::Scale => params.replicas = merged.from_value.parse().ok(),
            other => {
                return Err(ReconcileError::Refused(format!(
                    "a {} is not reverted",
                    names::action(other)
                )));
            }
        }
        decision.params = Some(params);
        self.reconcile(&decision, trace_id)
    }
}

#[cfg(test)]
mod tests;
