//! Which alerts a setting is for, by their labels: `match = { service = "checkout", cluster =
//! { regex = "prod-.*" } }` — every label named must be there, equal to the value or matching
//! the regex in full. The pr-controller's `[[targets]]` and the policy's `[[windows]]` take it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label the alert must carry: a value to equal, or `{ regex = "..." }` to match in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a label value, or { regex = \"...\" }")]
pub enum LabelMatch {
    Exact(String),
    Regex { regex: String },
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

/// A `match` table, checked and compiled.
#[derive(Clone, Debug, Default)]
pub struct Matchers(Vec<(String, Matcher)>);

impl Matchers {
    /// `table` compiled; a bad entry is `(field, problem)`: the field is `match` or
    /// `match.<label>`, for the caller to prefix with where the table is.
    pub fn new(table: &BTreeMap<String, LabelMatch>) -> Result<Self, (String, String)> {
        let mut matchers = Vec::new();
        for (label, wanted) in table {
            if !is_label_name(label) {
                return Err(("match".into(), format!("{label:?} is not a label name")));
            }
            let matcher = match wanted {
                LabelMatch::Exact(value) => Matcher::Exact(value.clone()),
                LabelMatch::Regex { regex } => regex::Regex::new(&format!("^(?:{regex})$"))
                    .map(Matcher::Regex)
                    .map_err(|e| (format!("match.{label}"), format!("not a regex: {e}")))?,
            };
            matchers.push((label.clone(), matcher));
        }
        Ok(Self(matchers))
    }

    /// Whether `labels` meet every entry (an empty table: every alert does).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(label, matcher)| {
            labels.get(label).is_some_and(|value| match matcher {
                Matcher::Exact(wanted) => wanted == value,
                Matcher::Regex(regex) => regex.is_match(value),
            })
        })
    }

    /// The labels named.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(label, _)| label.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_and_whole_regex_matches() {
        let table = BTreeMap::from([
            ("service".to_string(), LabelMatch::Exact("checkout".into())),
            (
                "cluster".to_string(),
                LabelMatch::Regex {
                    regex: "prod-.*".into(),
                },
            ),
        ]);
        let matchers = Matchers::new(&table).expect("compiles");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(matchers.matches(&labels(&[("service", "checkout"), ("cluster", "prod-eu")])));
        // The regex must match the whole value, and every label named must be there.
        assert!(!matchers.matches(&labels(&[("service", "checkout"), ("cluster", "preprod-eu")])));
        assert!(!matchers.matches(&labels(&[("service", "checkout")])));
        assert!(Matchers::default().matches(&labels(&[])));
        let bad = BTreeMap::from([("cluster".to_string(), LabelMatch::Regex { regex: "(".into() })]);
        assert_eq!(
            Matchers::new(&bad).err().map(|(field, _)| field).as_deref(),
            Some("match.cluster")
        );
    }
}
