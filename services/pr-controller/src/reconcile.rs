//! The reconciler: one decision in, one git change out, idempotent per incident.
//!
//! Every step is keyed by the incident: the branch is `selfheal/<incident>`, so running the same
//! decision twice finds the branch and reports what is there instead of committing again. On a
//! repository without pull requests, an approved change goes straight onto main in a commit
//! marked `Incident: <incident>`, which is what a second run finds. Refs move only by
//! compare-and-set, so two replicas racing on one incident make one commit.

use std::collections::{BTreeMap, HashSet};

use selfheal_proto::{
    names,
    v1::{Action, Approval, Decision, RemediationEvent, RemediationState, Target},
};

use crate::{
    config::PrControllerConfig,
    edit::{self, EditError},
    repo::{Author, ChangeRequestState, MergeMessage, MergeOutcome, Proposal, RepoError, Repository},
};

/// Why a decision could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The decision can never be carried out as it stands; people are told.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Edit(#[from] EditError),
    /// Git failed; the delivery is retried.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ReconcileError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Repo(error) if error.is_transient())
    }
}

/// Trailers selfheal writes into its commits, read back to stay idempotent and to skip tags
/// that were rolled back from.
const TRAILER_FROM: &str = "Selfheal-From";
const TRAILER_TO: &str = "Selfheal-To";
const TRAILER_ROLLBACK_FROM: &str = "Selfheal-Rollback-From";
/// The Flux image policy whose marker selfheal held on the rolled-back line.
const TRAILER_HELD_POLICY: &str = "Selfheal-Held-Image-Policy";

pub use selfheal_proto::names::is_dns1123_label;

/// Whether `tag` is a valid OCI image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_image_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One line, printable, at most `max` characters: for untrusted text in commit messages.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Fills `{service}`, `{namespace}`, `{cluster}` in `template` from `labels`, refusing any label
/// used that is not a DNS-1123 label.
pub fn render_path(template: &str, labels: &BTreeMap<String, String>) -> Result<String, ReconcileError> {
    let mut path = template.to_string();
    for name in ["service", "namespace", "cluster"] {
        let placeholder = format!("{{{name}}}");
        if !path.contains(&placeholder) {
            continue;
        }
        let value = labels
            .get(name)
            .ok_or_else(|| ReconcileError::Refused(format!("the alert has no {name} label, needed for {template}")))?;
        if !is_dns1123_label(value) {
            return Err(ReconcileError::Refused(format!("label {name} is not a DNS-1123 label")));
        }
        path = path.replace(&placeholder, value);
    }
    Ok(path)
}

/// A conventional-commit title: `fix(prod): roll back checkout to v1.1.0`. The scope is the
/// cluster, else the namespace, else the service (DNS-1123 labels only).
pub fn pr_title(action: Action, labels: &BTreeMap<String, String>, service: &str, to: &str) -> String {
    let scope = ["cluster", "namespace"]
        .iter()
        .filter_map(|name| labels.get(*name))
        .find(|value| is_dns1123_label(value))
        .map(String::as_str)
        .unwrap_or(service);
    match action {
        Action::Rollback => format!("fix({scope}): roll back {service} to {to}"),
        Action::Scale => format!("fix({scope}): scale {service} to {to} replicas"),
        _ => format!("fix({scope}): restart {service}"),
    }
}

/// Untrusted text made inert in Markdown: one line, at most `max` characters, with Markdown's
/// and HTML's special characters escaped.
pub fn md(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in one_line(text, max).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' | '~' | '(' | ')' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// An http(s) URL with nothing that could end a Markdown link, or None.
fn safe_url(url: &str) -> Option<&str> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2000
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '<' | '>' | '"' | '`'));
    ok.then_some(url)
}

/// A unified diff of one file's two versions: one hunk around the lines that differ, with
/// three lines of context.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let prefix = old_lines.iter().zip(&new_lines).take_while(|(a, b)| a == b).count();
    let suffix = old_lines[prefix..]
        .iter()
        .rev()
        .zip(new_lines[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if prefix == old_lines.len() && prefix == new_lines.len() {
        return String::new();
    }
    let start = prefix.saturating_sub(3);
    let old_end = (old_lines.len() - suffix + 3).min(old_lines.len());
    let new_end = (new_lines.len() - suffix + 3).min(new_lines.len());
    let mut out = format!(
        "--- a/{path}\n+++ b/{path}\n@@ -{},{} +{},{} @@\n",
        start + 1,
        old_end - start,
        start + 1,
        new_end - start
    );
    for line in &old_lines[start..prefix] {
        out.push_str(&format!(" {line}\n"));
    }
    for line in &old_lines[prefix..old_lines.len() - suffix] {
        out.push_str(&format!("-{line}\n"));
    }
    for line in &new_lines[prefix..new_lines.len() - suffix] {
        out.push_str(&format!("+{line}\n"));
    }
    for line in &new_lines[new_lines.len() - suffix..new_end] {
        out.push_str(&format!(" {line}\n"));
    }
    out
}

fn trailers(message: &str) -> BTreeMap<String, String> {
    message
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.starts_with("Selfheal-"))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

/// The change to make, computed from the file on the main branch.
struct Change {
    content: String,
    /// Carries the from and to values as trailers, which is where they are read back from.
    message: String,
}

/// Carries out decisions on one repository.
pub struct Reconciler<R: Repository + ?Sized> {
    pub repo: std::sync::Arc<R>,
    pub config: PrControllerConfig,
}

impl<R: Repository + ?Sized> Reconciler<R> {
    fn author(&self) -> Author {
        Author {
            name: self.config.author_name.clone(),
            email: self.config.author_email.clone(),
        }
    }

    /// Whether the change `decision` asks for is on main already, in a commit marked with its
    /// incident (made before a crash, say): reads only. Blocking.
    pub fn already_on_main(&self, decision: &Decision) -> Result<bool, ReconcileError> {
        let key = &decision.incident_key;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(false);
        }
        Ok(self.repo.marked_commit(&self.config.main_branch, key)?.is_some())
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
            repository: self.repo.location(),
            decision: Some(decision.clone()),
            ..Default::default()
        };
        if !decision.incident_key.bytes().all(|b| b.is_ascii_alphanumeric()) || decision.incident_key.is_empty() {
            return Err(ReconcileError::Refused("the incident key is not alphanumeric".into()));
        }
        if !is_dns1123_label(&service) {
            return Err(ReconcileError::Refused(
                "the alert's service label is missing or not a DNS-1123 label".into(),
            ));
        }
        let path = render_path(&self.config.target.path, &labels)?;
        let image = self
            .config
            .target
            .image
            .as_deref()
            .map(|image| image.replace("{service}", &service));
        let branch = format!("selfheal/{}", decision.incident_key);
        event.path = path.clone();
        event.branch = branch.clone();
        let main = self.config.main_branch.as_str();

        let auto = decision.approval() == Approval::Auto;

        // Up to a few rounds: each lost compare-and-set (main or the branch moved under us)
        // starts over from what is there now.
        for _ in 0..5 {
            let main_tip = self
                .repo
                .branch_tip(main)?
                .ok_or_else(|| ReconcileError::Refused(format!("the repository has no branch {main}")))?;
            let branch_tip = self.repo.branch_tip(&branch)?;
            // 0. Approved already, on a repository without pull requests: straight onto main, in
            // a commit marked with the incident, which is how a redelivery finds it again.
            if auto && !self.repo.proposes() && branch_tip.is_none() {
                let (commit, message, how) = match self.repo.marked_commit(main, &decision.incident_key)? {
                    Some((commit, message)) => (commit, message, "is on"),
                    None => {
                        let change = self.change(decision, &service, image.as_deref(), &path, &main_tip, trace_id)?;
                        match self.repo.commit_file(
                            main,
                            Some(&main_tip),
                            &main_tip,
                            &path,
                            &change.content,
                            &change.message,
                            &self.author(),
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
                    let made = self.repo.file_history(&branch, &path, 1)?;
                    (
                        tip,
                        made.into_iter().next().map(|v| v.message).unwrap_or_default(),
                        false,
                    )
                }
                None => {
                    let change = self.change(decision, &service, image.as_deref(), &path, &main_tip, trace_id)?;
                    match self.repo.commit_file(
                        &branch,
                        None,
                        &main_tip,
                        &path,
                        &change.content,
                        &change.message,
                        &self.author(),
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
            let request = if self.repo.proposes() {
                match self.repo.find_request(&branch)? {
                    Some(found) => Some(found),
                    None => {
                        let body = self.pr_body(decision, &event, &branch, trace_id)?;
                        Some(self.repo.open_request(&Proposal {
                            branch: &branch,
                            base: main,
                            title: &title,
                            body: &body,
                        })?)
                    }
                }
            } else {
                None
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
                None => !fresh && self.repo.is_ancestor(&tip, &main_tip)?,
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
            match self.repo.merge(main, &main_tip, &tip, request.as_ref(), &how) {
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
                    let change = self.change(decision, &service, image.as_deref(), &path, &main_tip, trace_id)?;
                    match self.repo.commit_file(
                        &branch,
                        Some(&tip),
                        &main_tip,
                        &path,
                        &change.content,
                        &change.message,
                        &self.author(),
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

    /// The pull request's description: what changed and why, for the reviewer. Every value from
    /// the alert is untrusted and goes through [`md`].
    fn pr_body(
        &self,
        decision: &Decision,
        event: &RemediationEvent,
        branch: &str,
        trace_id: &str,
    ) -> Result<String, ReconcileError> {
        let versions = self.repo.file_history(branch, &event.path, 2)?;
        let diff = match versions.as_slice() {
            [new, old, ..] => unified_diff(&event.path, &old.content, &new.content),
            _ => String::new(),
        };
        let alert = decision.alert.as_ref().and_then(|e| e.alert.as_ref());
        let label = |name: &str| {
            alert
                .and_then(|a| a.labels.get(name))
                .map(|v| md(v, 100))
                .unwrap_or_default()
        };
        let annotation = |name: &str| {
            alert
                .and_then(|a| a.annotations.get(name))
                .map(|v| md(v, 500))
                .unwrap_or_default()
        };
        let what = match decision.action() {
            Action::Rollback => format!(
                "rolls **{}** back from `{}` to `{}`",
                event.service, event.from_value, event.to_value
            ),
            Action::Scale => format!(
                "scales **{}** from {} to {} replicas",
                event.service, event.from_value, event.to_value
            ),
            _ => format!("restarts **{}**", event.service),
        };
        let mut body = format!(
            "selfheal {what} in `{path}`.\n\n**Why:** {reason}\n\n| | |\n|---|---|\n\
             | Alert | {alertname} ({severity}) |\n{summary}| Incident | `{incident}` |\n\
             | Decision | {action}, approval {approval} |\n| Policy | {policy} ({rule}) |\n| Trace | `{trace_id}` |\n",
            path = event.path,
            reason = md(&decision.reason, 500),
            alertname = label("alertname"),
            severity = label("severity"),
            summary = Some(annotation("summary"))
                .filter(|summary| !summary.is_empty())
                .map(|summary| format!("| Summary | {summary} |\n"))
                .unwrap_or_default(),
            incident = decision.incident_key,
            action = names::action(decision.action()),
            approval = names::approval(decision.approval()),
            policy = md(&decision.policy, 200),
            rule = md(&decision.rule, 200),
        );
        if !decision.metrics.is_empty() {
            body.push_str("\n**Metrics at decision time**\n\n| metric | value |\n|---|---|\n");
            for (name, value) in &decision.metrics {
                body.push_str(&format!("| {} | {value} |\n", md(name, 100)));
            }
        }
        if !diff.is_empty() {
            body.push_str(&format!("\n```diff\n{diff}```\n"));
        }
        let made = versions.first().map(|v| trailers(&v.message)).unwrap_or_default();
        if let Some(policy) = made.get(TRAILER_HELD_POLICY) {
            body.push_str(&format!(
                "\n**Image automation is held** on this line: the Flux marker `$imagepolicy` ({policy}) is renamed \
                 `$imagepolicy-held-by-selfheal`, so ImageUpdateAutomation does not write `{}` back. Rename it back \
                 once a fixed release exists.\n",
                event.from_value
            ));
        }
        let links: Vec<String> = [
            ("Alert source", alert.map(|a| a.generator_url.as_str()).unwrap_or("")),
            (
                "Runbook",
                alert
                    .and_then(|a| a.annotations.get("runbook_url"))
                    .map(String::as_str)
                    .unwrap_or(""),
            ),
        ]
        .into_iter()
        .filter_map(|(name, url)| safe_url(url).map(|url| format!("[{name}]({url})")))
        .collect();
        if !links.is_empty() {
            body.push_str(&format!("\n{}\n", links.join(" · ")));
        }
        body.push_str(
            "\n---\nOpened by selfheal. Merging applies it through Argo CD or Flux; closing it without \
             merging rejects the remediation.\n",
        );
        Ok(body)
    }

    fn change(
        &self,
        decision: &Decision,
        service: &str,
        image: Option<&str>,
        path: &str,
        main_tip: &str,
        trace_id: &str,
    ) -> Result<Change, ReconcileError> {
        let text = self
            .repo
            .read_file(main_tip, path)?
            .ok_or_else(|| ReconcileError::Refused(format!("{path} does not exist on {}", self.config.main_branch)))?;
        let params = decision.params.clone().unwrap_or_default();
        let alert = decision.alert.as_ref().and_then(|e| e.alert.as_ref());
        let alertname = one_line(
            alert
                .and_then(|a| a.labels.get("alertname"))
                .map(String::as_str)
                .unwrap_or(""),
            100,
        );
        let (content, from, to, subject, extra) = match decision.action() {
            Action::Rollback => {
                let current = edit::read_tag(self.config.target.kind, path, &text, service, image)?
                    .ok_or_else(|| ReconcileError::Refused(format!("{path} sets no image tag for {service}")))?;
                let target = if params.target_tag.is_empty() {
                    self.previous_tag(path, service, image, &current)?
                } else if is_image_tag(&params.target_tag) {
                    params.target_tag.clone()
                } else {
                    return Err(ReconcileError::Refused(
                        "the decision's target_tag is not a valid image tag".into(),
                    ));
                };
                if target == current {
                    return Err(ReconcileError::Refused(format!("{service} already runs {current}")));
                }
                let mut content = edit::set_tag(self.config.target.kind, path, &text, service, image, &target)?;
                let subject = format!("selfheal: roll back {service} from {current} to {target}");
                let mut extra = format!("{TRAILER_ROLLBACK_FROM}: {current}\n");
                if self.config.hold_image_automation
                    && let Some((held, policy)) = edit::hold_flux_marker(&text, &content)
                {
                    content = held;
                    extra.push_str(&format!("{TRAILER_HELD_POLICY}: {policy}\n"));
                }
                (content, current, target, subject, extra)
            }
            Action::Scale => {
                let replicas = params
                    .replicas
                    .filter(|r| *r >= 0)
                    .ok_or_else(|| ReconcileError::Refused("scale needs params.replicas".into()))?;
                if replicas > self.config.max_replicas {
                    return Err(ReconcileError::Refused(format!(
                        "scale to {replicas} replicas is over the maximum of {}",
                        self.config.max_replicas
                    )));
                }
                let current = edit::read_replicas(self.config.target.kind, path, &text, service)?
                    .ok_or_else(|| ReconcileError::Refused(format!("{path} sets no replica count for {service}")))?;
                if current == i64::from(replicas) {
                    return Err(ReconcileError::Refused(format!(
                        "{service} already has {current} replicas"
                    )));
                }
                let content = edit::set_replicas(self.config.target.kind, path, &text, service, i64::from(replicas))?;
                let subject = format!("selfheal: scale {service} from {current} to {replicas} replicas");
                (
                    content,
                    current.to_string(),
                    replicas.to_string(),
                    subject,
                    String::new(),
                )
            }
            Action::Restart if self.config.target.kind == edit::Kind::Manifest => {
                let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let content = edit::set_restarted_at(path, &text, &at)?;
                let subject = format!("selfheal: restart {service}");
                (content, String::new(), at, subject, String::new())
            }
            Action::Restart => {
                return Err(ReconcileError::Refused(format!(
                    "restart needs a manifest target (a Deployment); {path} is {}",
                    self.config.target.kind.name()
                )));
            }
            other => {
                return Err(ReconcileError::Refused(format!(
                    "{} is not a change the pr-controller makes",
                    names::action(other)
                )));
            }
        };
        let message = format!(
            "{subject}\n\n{reason}\n\nIncident: {incident}\nAlert: {alertname}\nPolicy: {policy} ({rule})\nTrace-Id: {trace_id}\n\
             {TRAILER_FROM}: {from}\n{TRAILER_TO}: {to}\n{extra}",
            reason = one_line(&decision.reason, 500),
            incident = decision.incident_key,
            policy = one_line(&decision.policy, 200),
            rule = one_line(&decision.rule, 200),
        );
        Ok(Change { content, message })
    }

    /// The last earlier tag in the file's history that differs from `current` and was not itself
    /// rolled back from by selfheal.
    fn previous_tag(
        &self,
        path: &str,
        service: &str,
        image: Option<&str>,
        current: &str,
    ) -> Result<String, ReconcileError> {
        self.earlier_tags(path, service, image, current)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ReconcileError::Refused(format!(
                    "no earlier tag of {service} in the history of {path} to roll back to"
                ))
            })
    }

    /// Earlier tags of the image in the file's history, newest first, without `current` and
    /// without tags selfheal rolled back from.
    fn earlier_tags(
        &self,
        path: &str,
        service: &str,
        image: Option<&str>,
        current: &str,
    ) -> Result<Vec<String>, ReconcileError> {
        let history = self
            .repo
            .file_history(&self.config.main_branch, path, self.config.history_depth)?;
        let rolled_back_from: HashSet<String> = history
            .iter()
            .filter_map(|v| trailers(&v.message).get(TRAILER_ROLLBACK_FROM).cloned())
            .collect();
        let mut tags: Vec<String> = Vec::new();
        for version in &history {
            let Some(tag) = edit::read_tag(self.config.target.kind, path, &version.content, service, image)
                .ok()
                .flatten()
            else {
                continue;
            };
            if tag != current && !rolled_back_from.contains(&tag) && is_image_tag(&tag) && !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(tags)
    }

    /// Undoes selfheal's own change for an escalated remediation: the value goes back to what it
    /// was, through the same path as any change (a branch `selfheal/<incident>r`, fast-forwarded
    /// into main), so it happens once however often it is asked for. Blocking.
    pub fn revert(&self, merged: &RemediationEvent, trace_id: &str) -> Result<RemediationEvent, ReconcileError> {
        let mut decision = merged.decision.clone().unwrap_or_default();
        decision.incident_key = format!("{}r", merged.incident_key);
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

    /// What the main branch says about the service the labels name. Blocking.
    pub fn describe(&self, labels: &BTreeMap<String, String>) -> Result<Target, ReconcileError> {
        self.describe_with(labels, &TargetCache::default())
    }

    /// [`Self::describe`], answered from `cache` when the same target was described at the same
    /// tip of main (a burst of alerts on one service asks for it once per commit, not per alert).
    /// Blocking.
    pub fn describe_with(
        &self,
        labels: &BTreeMap<String, String>,
        cache: &TargetCache,
    ) -> Result<Target, ReconcileError> {
        let service = labels.get("service").cloned().unwrap_or_default();
        if !is_dns1123_label(&service) {
            return Err(ReconcileError::Refused("service: must be a DNS-1123 label".into()));
        }
        let path = render_path(&self.config.target.path, labels)?;
        let image = self
            .config
            .target
            .image
            .as_deref()
            .map(|image| image.replace("{service}", &service));
        let main = self.config.main_branch.as_str();
        let tip = self
            .repo
            .branch_tip(main)?
            .ok_or_else(|| ReconcileError::Refused(format!("the repository has no branch {main}")))?;
        if let Some(target) = cache.get(&tip, &path, &service) {
            return Ok(target);
        }
        let text = self
            .repo
            .read_file(&tip, &path)?
            .ok_or_else(|| ReconcileError::Refused(format!("{path} does not exist on {main}")))?;
        let current_tag = edit::read_tag(self.config.target.kind, &path, &text, &service, image.as_deref())
            .ok()
            .flatten()
            .unwrap_or_default();
        let replicas = edit::read_replicas(self.config.target.kind, &path, &text, &service)
            .ok()
            .flatten()
            .and_then(|r| i32::try_from(r).ok());
        let earlier_tags = self.earlier_tags(&path, &service, image.as_deref(), &current_tag)?;
        let target = Target {
            repository: self.repo.location(),
            path,
            kind: self.config.target.kind.name().into(),
            current_tag,
            earlier_tags,
            replicas,
            max_replicas: self.config.max_replicas,
        };
        cache.put(&tip, &service, &target);
        Ok(target)
    }
}

/// Targets described at one tip of main. A target is the file at that tip and the history
/// behind it, so while main stays where it is, describing it again gives the same answer; when
/// main moves, everything described before is dropped.
#[derive(Default)]
pub struct TargetCache {
    at: std::sync::Mutex<CachedTargets>,
}

#[derive(Default)]
struct CachedTargets {
    tip: String,
    /// By path and service.
    targets: std::collections::HashMap<(String, String), Target>,
}

impl TargetCache {
    /// At most this many targets are kept (one tip's worth; more only with more services).
    const MAX: usize = 4096;

    fn get(&self, tip: &str, path: &str, service: &str) -> Option<Target> {
        let cached = self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.tip != tip {
            return None;
        }
        cached.targets.get(&(path.to_owned(), service.to_owned())).cloned()
    }

    fn put(&self, tip: &str, service: &str, target: &Target) {
        let mut cached = self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.tip != tip || cached.targets.len() >= Self::MAX {
            // Described at another tip (main moved): what was described before is stale. A
            // describe that read main just before it moved only puts back an entry that no later
            // reader asks for, since they read the newer tip.
            cached.tip = tip.to_owned();
            cached.targets.clear();
        }
        cached
            .targets
            .insert((target.path.clone(), service.to_owned()), target.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command, sync::Arc};

    use selfheal_proto::v1::{Alert, AlertEvent, DecisionParams};

    use super::*;
    use crate::repo::{Author, Batched as _, LocalRepository};

    const PATH: &str = "apps/checkout/kustomization.yaml";

    /// The git CLI in `dir` (shared with `kind_tests`).
    pub(super) fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=dev", "-c", "user.email=dev@example.com"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn kustomization(tag: &str) -> String {
        format!(
            "# checkout\nresources:\n  - deployment.yaml\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # release\nreplicas:\n  - name: checkout\n    count: 2\n"
        )
    }

    /// A bare repository whose main branch set the checkout tag to each of `tags` in turn.
    fn repo_with_tags(dir: &Path, tags: &[&str]) -> std::path::PathBuf {
        let bare = dir.join("gitops.git");
        let work = dir.join("work");
        git(
            dir,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().expect("utf-8")],
        );
        git(
            dir,
            &[
                "clone",
                "-q",
                bare.to_str().expect("utf-8"),
                work.to_str().expect("utf-8"),
            ],
        );
        std::fs::create_dir_all(work.join("apps/checkout")).expect("mkdir");
        std::fs::write(work.join("apps/checkout/deployment.yaml"), "kind: Deployment\n").expect("write");
        for tag in tags {
            std::fs::write(work.join(PATH), kustomization(tag)).expect("write");
            git(&work, &["add", "."]);
            git(&work, &["commit", "-q", "-m", &format!("release {tag}")]);
            // An unrelated commit in between must not count as a version.
            std::fs::write(work.join("README.md"), format!("after {tag}\n")).expect("write");
            git(&work, &["add", "."]);
            git(&work, &["commit", "-q", "-m", "docs"]);
        }
        git(&work, &["push", "-q", "origin", "main"]);
        bare
    }

    fn decision(incident: &str, action: Action, approval: Approval) -> Decision {
        let labels = [
            ("alertname", "HighErrorRate"),
            ("service", "checkout"),
            ("namespace", "shop"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut decision = Decision {
            incident_key: incident.into(),
            reason: "error rate high\nInjected: trailer".into(),
            alert: Some(AlertEvent {
                incident_key: incident.into(),
                alert: Some(Alert {
                    status: "firing".into(),
                    labels,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            params: Some(DecisionParams {
                target_tag: String::new(),
                replicas: Some(3),
            }),
            ..Default::default()
        };
        decision.set_action(action);
        decision.set_approval(approval);
        decision
    }

    impl Reconciler<dyn Repository> {
        fn clone_with_path(&self, path: &str) -> Reconciler<dyn Repository> {
            let mut config = self.config.clone();
            config.target.path = path.into();
            Reconciler {
                repo: self.repo.clone(),
                config,
            }
        }
    }

    fn reconciler(bare: &Path) -> Reconciler<dyn Repository> {
        let repo: Arc<dyn Repository> = Arc::new(LocalRepository::open(bare).expect("open"));
        Reconciler {
            repo,
            config: PrControllerConfig::default(),
        }
    }

    fn main_tag(bare: &Path) -> String {
        git(bare, &["show", &format!("main:{PATH}")])
    }

    #[test]
    fn a_rollback_holds_flux_image_automation_on_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("gitops.git");
        let marked = |tag: &str| {
            format!("images:\n- name: checkout\n  newTag: {tag} # {{\"$imagepolicy\": \"flux-system:checkout:tag\"}}\n")
        };
        let (v1, v2) = (marked("v1"), marked("v2"));
        let author = Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        };
        LocalRepository::init_bare_with_commits(
            &bare,
            "main",
            &[("v1", vec![(PATH, v1.as_str())]), ("v2", vec![(PATH, v2.as_str())])],
            &author,
        )
        .expect("repo");
        let held = reconciler(&bare);
        let event = held
            .reconcile(&decision("held1", Action::Rollback, Approval::Auto), "t")
            .expect("reconcile");
        assert_eq!(event.state(), RemediationState::Merged);
        assert_eq!(
            main_tag(&bare),
            "images:\n- name: checkout\n  newTag: v1 # {\"$imagepolicy-held-by-selfheal\": \"flux-system:checkout:tag\"}"
        );
        let message = git(&bare, &["log", "-1", "--format=%B", "main"]);
        assert!(
            message.contains("Selfheal-Held-Image-Policy: flux-system:checkout:tag"),
            "{message}"
        );
        // Off by configuration: the marker stays.
        let mut off = reconciler(&bare);
        off.config.hold_image_automation = false;
        let back = off
            .reconcile(
                &Decision {
                    params: Some(DecisionParams {
                        target_tag: "v2".into(),
                        replicas: None,
                    }),
                    ..decision("held2", Action::Rollback, Approval::Auto)
                },
                "t",
            )
            .expect("reconcile");
        assert_eq!(back.to_value, "v2");
        assert!(main_tag(&bare).contains("newTag: v2 # {\"$imagepolicy-held-by-selfheal\""));
    }

    #[test]
    fn a_described_target_is_kept_only_while_main_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = repo_with_tags(dir.path(), &["v1.3.0", "v1.4.1", "v1.5.0"]);
        let reconciler = reconciler(&bare);
        let cache = TargetCache::default();
        let labels: BTreeMap<String, String> = [("service".to_string(), "checkout".to_string())].into();
        let before = reconciler.describe_with(&labels, &cache).expect("describe");
        assert_eq!(before.current_tag, "v1.5.0");
        assert_eq!(reconciler.describe_with(&labels, &cache).expect("again"), before);
        // Main moves (here by selfheal; a person's push is the same): the next answer is new.
        reconciler
            .reconcile(&decision("cach", Action::Rollback, Approval::Auto), "t")
            .expect("reconcile");
        let after = reconciler.describe_with(&labels, &cache).expect("after the commit");
        assert_eq!(
            (after.current_tag.as_str(), after.earlier_tags.as_slice()),
            ("v1.4.1", ["v1.3.0".to_string()].as_slice())
        );
        // Another service's file at the same tip is its own entry.
        let other: BTreeMap<String, String> = [("service".to_string(), "payments".to_string())].into();
        assert!(
            reconciler.describe_with(&other, &cache).is_err(),
            "payments has no file"
        );
        assert_eq!(reconciler.describe_with(&labels, &cache).expect("still"), after);
    }

    #[test]
    fn rollback_goes_to_the_previous_tag_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = repo_with_tags(dir.path(), &["v1.3.0", "v1.4.1", "v1.5.0"]);
        let reconciler = reconciler(&bare);
        let labels: BTreeMap<String, String> = [("service".to_string(), "checkout".to_string())].into();
        let before = reconciler.describe(&labels).expect("describe");
        assert_eq!(before.current_tag, "v1.5.0");
        assert_eq!(before.earlier_tags, ["v1.4.1", "v1.3.0"]);
        assert_eq!(before.replicas, Some(2));
        let first = reconciler
            .reconcile(&decision("aaaa", Action::Rollback, Approval::Auto), "trace1")
            .expect("reconcile");
        assert_eq!(first.state(), RemediationState::Merged);
        assert_eq!(
            (first.from_value.as_str(), first.to_value.as_str()),
            ("v1.5.0", "v1.4.1")
        );
        assert_eq!(
            main_tag(&bare),
            kustomization("v1.4.1").trim_end(),
            "only the tag line changes"
        );
        assert_eq!(git(&bare, &["rev-parse", "main"]), first.commit);
        let message = git(&bare, &["log", "-1", "--format=%B", "main"]);
        assert!(message.contains("Trace-Id: trace1"), "{message}");
        assert!(
            !message.lines().any(|l| l.starts_with("Injected:")),
            "reason stays on one line: {message}"
        );

        let after = reconciler.describe(&labels).expect("describe");
        assert_eq!(
            (after.current_tag.as_str(), after.earlier_tags.as_slice()),
            ("v1.4.1", ["v1.3.0".to_string()].as_slice())
        );

        // The same decision again (a redelivery) changes nothing and reports the same commit.
        let again = reconciler
            .reconcile(&decision("aaaa", Action::Rollback, Approval::Auto), "trace1")
            .expect("again");
        assert_eq!(
            (again.state(), again.commit.as_str()),
            (RemediationState::Merged, first.commit.as_str())
        );
        assert_eq!(again.to_value, "v1.4.1");
        assert_eq!(git(&bare, &["rev-list", "--count", "main"]), "7");
        // Straight onto main, no branch: the commit's Incident line is what is found again, also
        // by a replica that has read nothing yet, and inside a batch.
        assert_eq!(first.branch, "main");
        assert!(message.contains("\nIncident: aaaa\n"), "{message}");
        assert_eq!(git(&bare, &["for-each-ref", "refs/heads/selfheal/"]), "");
        let fresh = self::reconciler(&bare);
        let found = fresh
            .reconcile(&decision("aaaa", Action::Rollback, Approval::Auto), "trace1")
            .expect("fresh");
        assert_eq!(found.commit, first.commit);
        let local = LocalRepository::open(&bare).expect("open");
        let batch = Arc::new(local.batch());
        let batched = Reconciler {
            repo: batch.clone() as Arc<dyn Repository>,
            config: PrControllerConfig::default(),
        }
        .reconcile(&decision("aaaa", Action::Rollback, Approval::Auto), "trace1")
        .expect("batched");
        assert_eq!(batched.commit, first.commit);
        assert_eq!(batch.flush().expect("flush"), 0, "nothing to write");

        // A new incident rolls back further, skipping v1.5.0 which was rolled back from.
        let second = reconciler
            .reconcile(&decision("bbbb", Action::Rollback, Approval::Auto), "trace2")
            .expect("second");
        assert_eq!(
            (second.from_value.as_str(), second.to_value.as_str()),
            ("v1.4.1", "v1.3.0")
        );
        git(&bare, &["fsck", "--no-progress"]);
    }

    #[test]
    fn approval_required_leaves_a_branch_and_main_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = repo_with_tags(dir.path(), &["v1", "v2"]);
        let main_before = git(&bare, &["rev-parse", "main"]);
        let event = reconciler(&bare)
            .reconcile(&decision("cccc", Action::Rollback, Approval::Required), "t")
            .expect("ok");
        assert_eq!(event.state(), RemediationState::Opened);
        assert_eq!(git(&bare, &["rev-parse", "main"]), main_before);
        assert_eq!(
            git(&bare, &["show", &format!("selfheal/cccc:{PATH}")]),
            kustomization("v1").trim_end()
        );
    }

    #[test]
    fn scale_sets_the_count_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = repo_with_tags(dir.path(), &["v1"]);
        let reconciler = reconciler(&bare);
        let event = reconciler
            .reconcile(&decision("dddd", Action::Scale, Approval::Auto), "t")
            .expect("scale");
        assert_eq!((event.from_value.as_str(), event.to_value.as_str()), ("2", "3"));
        assert!(main_tag(&bare).contains("count: 3"));

        let no_history = reconciler.reconcile(&decision("eeee", Action::Rollback, Approval::Auto), "t");
        assert!(
            matches!(no_history, Err(ReconcileError::Refused(ref m)) if m.contains("no earlier tag")),
            "{no_history:?}"
        );

        let refs_before = git(&bare, &["for-each-ref"]);
        for (label, value) in [
            ("service", "../../etc".to_string()),
            ("service", "a\nb: c".to_string()),
            ("service", "a".repeat(300)),
            ("namespace", "../x".to_string()),
        ] {
            let mut hostile = decision("ffff", Action::Rollback, Approval::Auto);
            if let Some(alert) = hostile.alert.as_mut().and_then(|e| e.alert.as_mut()) {
                alert.labels.insert(label.into(), value.clone());
            }
            let mut reconciler = reconciler.clone_with_path("apps/{namespace}/{service}/kustomization.yaml");
            if label == "service" {
                reconciler.config.target.path = "apps/{service}/kustomization.yaml".into();
            }
            let refused = reconciler.reconcile(&hostile, "t");
            assert!(
                matches!(&refused, Err(ReconcileError::Refused(reason)) if reason.contains(label) && !reason.contains(&value)),
                "{label}={value:?}: {refused:?}"
            );
        }
        assert_eq!(git(&bare, &["for-each-ref"]), refs_before, "nothing was written");
        let mut bad_tag = decision("abab", Action::Rollback, Approval::Auto);
        bad_tag.params = Some(DecisionParams {
            target_tag: "v1\nmalicious: yes".into(),
            replicas: None,
        });
        assert!(matches!(
            reconciler.reconcile(&bad_tag, "t"),
            Err(ReconcileError::Refused(_))
        ));
        assert!(matches!(
            reconciler.reconcile(&decision("../x", Action::Rollback, Approval::Auto), "t"),
            Err(ReconcileError::Refused(_))
        ));
    }
}

#[cfg(test)]
mod kind_tests {
    use std::sync::Arc;

    use selfheal_proto::v1::{Alert, AlertEvent};

    use super::*;
    use crate::{config::TargetConfig, edit::Kind, repo::LocalRepository};

    use super::tests::git;

    fn deployment(tag: &str) -> String {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: checkout\nspec:\n  replicas: 2 # HPA min\n  template:\n    metadata:\n      labels:\n        app: checkout\n    spec:\n      containers:\n      - name: checkout\n        image: ghcr.io/acme/checkout:{tag}\n      - name: sidecar\n        image: ghcr.io/acme/sidecar:9\n"
        )
    }

    fn decision(incident: &str, action: Action) -> Decision {
        let labels = [("service", "checkout"), ("alertname", "HighErrorRate")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut decision = Decision {
            incident_key: incident.into(),
            reason: "test".into(),
            alert: Some(AlertEvent {
                alert: Some(Alert {
                    status: "firing".into(),
                    labels,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        decision.set_action(action);
        decision.set_approval(Approval::Auto);
        decision
    }

    #[test]
    fn a_deployment_manifest_rolls_back_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("gitops.git");
        let work = dir.path().join("work");
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().expect("utf-8")],
        );
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                bare.to_str().expect("utf-8"),
                work.to_str().expect("utf-8"),
            ],
        );
        std::fs::create_dir_all(work.join("apps/checkout")).expect("mkdir");
        for tag in ["v1", "v2"] {
            std::fs::write(work.join("apps/checkout/deployment.yaml"), deployment(tag)).expect("write");
            git(&work, &["add", "."]);
            git(&work, &["commit", "-q", "-m", tag]);
        }
        git(&work, &["push", "-q", "origin", "main"]);
        let config = PrControllerConfig {
            target: TargetConfig {
                path: "apps/{service}/deployment.yaml".into(),
                kind: Kind::Manifest,
                image: None,
            },
            ..Default::default()
        };
        let repo: Arc<dyn Repository> = Arc::new(LocalRepository::open(&bare).expect("open"));
        let reconciler = Reconciler { repo, config };

        let rollback = reconciler
            .reconcile(&decision("aaaa", Action::Rollback), "t")
            .expect("rollback");
        assert_eq!((rollback.from_value.as_str(), rollback.to_value.as_str()), ("v2", "v1"));
        let on_main = git(&bare, &["show", "main:apps/checkout/deployment.yaml"]);
        assert_eq!(
            on_main,
            deployment("v1").trim_end(),
            "only the checkout image line changes"
        );

        let restart = reconciler
            .reconcile(&decision("bbbb", Action::Restart), "t")
            .expect("restart");
        assert_eq!(restart.state(), RemediationState::Merged);
        let on_main = git(&bare, &["show", "main:apps/checkout/deployment.yaml"]);
        assert!(on_main.contains("kubectl.kubernetes.io/restartedAt: \""), "{on_main}");
        assert!(on_main.contains("replicas: 2 # HPA min"), "{on_main}");
    }
}
