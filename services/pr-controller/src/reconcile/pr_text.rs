//! The pull request's title and description, and untrusted text made safe for them and for
//! commit messages.

use std::collections::BTreeMap;

use selfheal_proto::{
    names::{self, is_dns1123_label},
    v1::{Action, Decision, RemediationEvent},
};

use super::{
    error::ReconcileError,
    settings::Reconciler,
    trailers::{TRAILER_HELD_POLICY, trailers},
};

/// One line, printable, at most `max` characters: for untrusted text in commit messages.
/// Bidirectional controls (which make text read otherwise than it is) are dropped.
pub(super) fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
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
/// and HTML's special characters escaped and `@` kept from mentioning anyone (a word joiner
/// after it).
pub fn md(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in one_line(text, max).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '@' => out.push_str("@\u{2060}"),
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

/// A unified diff of one file's two versions (three lines of context), for the reviewer.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_mentions_nobody_and_reads_as_it_is() {
        let text = md("ping @acme/oncall \u{202e}evil\u{202c} <b>", 500);
        assert_eq!(text, "ping @\u{2060}acme/oncall evil &lt;b&gt;");
        assert_eq!(one_line("a\u{2066}b\u{2069}\nc", 50), "ab c");
    }

    #[test]
    fn the_diff_shows_the_changed_line_with_three_lines_around_it() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let new = old.replace("e\n", "E\n");
        assert_eq!(
            unified_diff("k.yaml", old, &new),
            "--- a/k.yaml\n+++ b/k.yaml\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified_diff("k.yaml", old, old), "", "no change, no diff");
        // An appended block is one hunk at the end.
        let appended = format!("{old}images:\n- name: x\n");
        assert_eq!(
            unified_diff("k.yaml", old, &appended),
            "--- a/k.yaml\n+++ b/k.yaml\n@@ -7,3 +7,5 @@\n g\n h\n i\n+images:\n+- name: x\n"
        );
    }
}
