//! The pull request's title and description, and untrusted text made safe for them and for
//! commit messages.

use std::collections::BTreeMap;

use selfheal_proto::{
    names::{self, is_dns1123_label},
    v1::{Action, Decision, RemediationEvent},
};

use super::{
    settings::{ReconcileError, Reconciler},
    trailers::{TRAILER_HELD_POLICY, trailers},
};

/// One line, printable, at most `max` characters: for untrusted text in commit messages.
pub(super) fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
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

impl Reconciler {
    /// The pull request's description: what changed and why, for the reviewer. Every value from
    /// the alert is untrusted and goes through [`md`].
    pub(super) fn pr_body(
        &self,
        decision: &Decision,
        event: &RemediationEvent,
        branch: &str,
        trace_id: &str,
    ) -> Result<String, ReconcileError> {
        let versions = self.git.file_history(branch, &event.path, 2)?;
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
}
