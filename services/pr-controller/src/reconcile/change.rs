//! The change a decision asks for, computed from the file on main, and its commit message.

use std::collections::HashSet;

use selfheal_manifest::{self as manifest, Place};
use selfheal_proto::{
    names,
    v1::{Action, Decision},
};

use super::labels::is_image_tag;
use super::{
    error::ReconcileError,
    pr_text::one_line,
    settings::Reconciler,
    targets::Chosen,
    trailers::{TRAILER_FROM, TRAILER_HELD_POLICY, TRAILER_ROLLBACK_FROM, TRAILER_TO, trailers},
};

/// The change to make, computed from the file on the main branch.
pub(super) struct Change {
    pub(super) content: String,
    /// Carries the from and to values as trailers, which is where they are read back from.
    pub(super) message: String,
}

impl Reconciler {
    pub(super) fn change(
        &self,
        decision: &Decision,
        target: &Chosen,
        main_tip: &str,
        trace_id: &str,
    ) -> Result<Change, ReconcileError> {
        let (path, place) = (target.path.as_str(), &target.place);
        let service = place.service.as_str();
        let text = self.git.read_file(main_tip, path)?.ok_or_else(|| {
            ReconcileError::Refused(format!("{path} does not exist on {}", self.settings.main_branch))
        })?;
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
                let current = manifest::read_tag(place, path, &text)?
                    .ok_or_else(|| ReconcileError::Refused(format!("{path} sets no image tag for {service}")))?;
                let target = if params.target_tag.is_empty() {
                    self.previous_tag(path, place, &current)?
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
                let mut content = manifest::set_tag(place, path, &text, &target)?;
                let subject = format!("selfheal: roll back {service} from {current} to {target}");
                let mut extra = format!("{TRAILER_ROLLBACK_FROM}: {current}\n");
                if self.settings.hold_image_automation
                    && let Some((held, policy)) = manifest::hold_flux_marker(&text, &content)
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
                if replicas > self.settings.max_replicas {
                    return Err(ReconcileError::Refused(format!(
                        "scale to {replicas} replicas is over the maximum of {}",
                        self.settings.max_replicas
                    )));
                }
                let current = manifest::read_replicas(place, path, &text)?
                    .ok_or_else(|| ReconcileError::Refused(format!("{path} sets no replica count for {service}")))?;
                if current == i64::from(replicas) {
                    return Err(ReconcileError::Refused(format!(
                        "{service} already has {current} replicas"
                    )));
                }
                let content = manifest::set_replicas(place, path, &text, i64::from(replicas))?;
                let subject = format!("selfheal: scale {service} from {current} to {replicas} replicas");
                (
                    content,
                    current.to_string(),
                    replicas.to_string(),
                    subject,
                    String::new(),
                )
            }
            Action::Restart => {
                let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let content = manifest::restart(place, path, &text, &at)?;
                let subject = format!("selfheal: restart {service}");
                (content, String::new(), at, subject, String::new())
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
    fn previous_tag(&self, path: &str, place: &Place, current: &str) -> Result<String, ReconcileError> {
        self.earlier_tags(path, place, current)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ReconcileError::Refused(format!(
                    "no earlier tag of {} in the history of {path} to roll back to",
                    place.service
                ))
            })
    }

    /// Earlier tags of the image at `place` in the file's history, newest first, without
    /// `current` and without tags selfheal rolled back from. Each version is read at the same
    /// place, so a change to another document or another service of the file is no earlier tag.
    pub(super) fn earlier_tags(&self, path: &str, place: &Place, current: &str) -> Result<Vec<String>, ReconcileError> {
        let history = self
            .git
            .file_history(&self.settings.main_branch, path, self.settings.history_depth)?;
        let rolled_back_from: HashSet<String> = history
            .iter()
            .filter_map(|v| trailers(&v.message).get(TRAILER_ROLLBACK_FROM).cloned())
            .collect();
        let mut tags: Vec<String> = Vec::new();
        for version in &history {
            let Some(tag) = manifest::read_tag(place, path, &version.content).ok().flatten() else {
                continue;
            };
            if tag != current && !rolled_back_from.contains(&tag) && is_image_tag(&tag) && !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(tags)
    }
}
