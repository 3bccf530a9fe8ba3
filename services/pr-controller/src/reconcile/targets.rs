//! Targets: which file, and where in it, serves an alert. An ordered list, each entry matching
//! alert labels and naming a file (a template over those labels), its kind and the place of the
//! service in it; the first entry that matches wins, and an alert no entry matches is refused,
//! never guessed at.

use std::collections::{BTreeMap, BTreeSet};

use selfheal_manifest::{Kind, Place, is_values_path};
use selfheal_proto::names::is_dns1123_label;
use serde::{Deserialize, Serialize};

use super::error::ReconcileError;

use selfheal_config::labels::Matchers;
pub use selfheal_config::labels::{LabelMatch, is_label_name};

/// One target (`[[targets]]`, or the single `[target]`). Templates (`path`, `name`,
/// `namespace`, `container`, `image`) fill `{label}` from the alert's labels; each label used must
/// be a DNS-1123 label, or the decision is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// The labels an alert must carry for this target to serve it, e.g.
    /// `{ service = "reviews", cluster = { regex = "prod-.*" } }`. Empty: every alert.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, LabelMatch>,
    /// The file, e.g. `overlays/{cluster}/{service}/kustomization.yaml`.
    pub path: String,
    /// What the file is: `kustomize`, `helm-values`, `helm-release` or `manifest`. Unset: read
    /// from the file (`Kustomization`/`Component` → kustomize, `HelmRelease` → helm-release,
    /// `Deployment`/`StatefulSet`/`Rollout` → manifest, a mapping without `kind` → helm-values).
    pub kind: Option<Kind>,
    /// The document's `metadata.name`: the Deployment, StatefulSet or Rollout in a manifest (in
    /// a file of many, e.g. `reviews-{version}`), the HelmRelease; in a kustomization, the
    /// `replicas[].name` and the workload a restart patches. Unset: the file's only one, else
    /// the one named like the service.
    pub name: Option<String>,
    /// The document's `metadata.namespace`, where one name is in several namespaces.
    pub namespace: Option<String>,
    /// `Deployment`, `StatefulSet` or `Rollout`: where a name is shared between kinds, and what a
    /// Kustomize restart patches (default `Deployment`).
    pub workload_kind: Option<String>,
    /// A manifest's container. Unset: the one running `image`, else named like the service,
    /// else the only one.
    pub container: Option<String>,
    /// The image name (`images[].name` in a kustomization; a manifest container's image without
    /// its tag). Unset in a kustomization: the entry whose last path segment is the service.
    pub image: Option<String>,
    /// Helm values (a file or a HelmRelease's `spec.values`): where the tag is, e.g.
    /// `frontend.image.tag` in an umbrella chart. Default `image.tag`.
    pub tag_path: Option<String>,
    /// Helm values: where the replica count is. Default `replicaCount`.
    pub replicas_path: Option<String>,
    /// Helm values: the chart's pod annotations key (e.g. `podAnnotations`); restart needs it.
    pub pod_annotations: Option<String>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            matches: BTreeMap::new(),
            path: "apps/{service}/kustomization.yaml".into(),
            kind: None,
            name: None,
            namespace: None,
            workload_kind: None,
            container: None,
            image: None,
            tag_path: None,
            replicas_path: None,
            pod_annotations: None,
        }
    }
}

/// A target setting that cannot work, named by its place in the list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct TargetError {
    pub field: String,
    pub problem: String,
}

/// The targets, checked and compiled: what [`Targets::choose`] picks from.
#[derive(Clone, Debug)]
pub struct Targets {
    entries: Vec<(TargetConfig, Matchers)>,
    /// How the entries are called in errors: `targets[i]`, or `target` for the single one.
    names: Vec<String>,
}

/// A target chosen for one alert, its templates filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Which entry: `targets[i]` or `target`.
    pub target: String,
    pub path: String,
    pub place: Place,
}

const WORKLOAD_KINDS: [&str; 3] = ["Deployment", "StatefulSet", "Rollout"];

impl Targets {
    /// Checks every entry: templates name labels and close their braces, regexes compile, paths
    /// of values are paths. `single` says the list is the old `[target]`.
    pub fn new(configs: Vec<TargetConfig>, single: bool) -> Result<Self, TargetError> {
        if configs.is_empty() {
            return Err(TargetError {
                field: "targets".into(),
                problem: "no target: set [[targets]] (or the single [target])".into(),
            });
        }
        let mut entries = Vec::new();
        let mut names = Vec::new();
        for (index, config) in configs.into_iter().enumerate() {
            let name = if single {
                "target".to_string()
            } else {
                format!("targets[{index}]")
            };
            let error = |field: &str, problem: String| TargetError {
                field: format!("{name}.{field}"),
                problem,
            };
            if config.path.trim().is_empty() {
                return Err(error("path", "must name a file".into()));
            }
            if config.path.starts_with('/') || config.path.split('/').any(|part| part == "..") {
                return Err(error("path", "must be relative to the repository, without `..`".into()));
            }
            for (field, template) in [
                ("path", Some(&config.path)),
                ("name", config.name.as_ref()),
                ("namespace", config.namespace.as_ref()),
                ("container", config.container.as_ref()),
                ("image", config.image.as_ref()),
            ] {
                if let Some(template) = template {
                    placeholders(template).map_err(|problem| error(field, problem))?;
                }
            }
            if let Some(kind) = &config.workload_kind
                && !WORKLOAD_KINDS.contains(&kind.as_str())
            {
                return Err(error(
                    "workload_kind",
                    format!("{kind:?} is not Deployment, StatefulSet or Rollout"),
                ));
            }
            for (field, path) in [
                ("tag_path", &config.tag_path),
                ("replicas_path", &config.replicas_path),
                ("pod_annotations", &config.pod_annotations),
            ] {
                if let Some(path) = path
                    && !is_values_path(path)
                {
                    return Err(error(
                        field,
                        format!("{path:?} is not a values path (keys joined by dots, e.g. frontend.image.tag)"),
                    ));
                }
            }
            let matchers = Matchers::new(&config.matches).map_err(|(field, problem)| error(&field, problem))?;
            entries.push((config, matchers));
            names.push(name);
        }
        Ok(Self { entries, names })
    }

    /// The target that serves an alert with `labels`: the first that matches, its templates
    /// filled. None matching, or a label a template uses missing or not a DNS-1123 label, is a
    /// refusal that says which.
    pub fn choose(&self, labels: &BTreeMap<String, String>) -> Result<Chosen, ReconcileError> {
        let service = labels.get("service").map(String::as_str).unwrap_or_default();
        if !is_dns1123_label(service) {
            return Err(ReconcileError::Refused(
                "the alert's service label is missing or not a DNS-1123 label".into(),
            ));
        }
        let Some(index) = self.entries.iter().position(|(_, matchers)| matchers.matches(labels)) else {
            return Err(ReconcileError::Refused(format!(
                "no target matches the alert's labels {}",
                self.shown(labels)
            )));
        };
        let (config, _) = &self.entries[index];
        let target = self.names[index].clone();
        let fill = |template: &Option<String>| template.as_deref().map(|t| render(t, labels)).transpose();
        let place = Place {
            kind: config.kind,
            service: service.to_string(),
            name: fill(&config.name)?,
            namespace: fill(&config.namespace)?,
            workload_kind: config.workload_kind.clone(),
            container: fill(&config.container)?,
            image: fill(&config.image)?,
            tag_path: config.tag_path.clone(),
            replicas_path: config.replicas_path.clone(),
            pod_annotations: config.pod_annotations.clone(),
        };
        Ok(Chosen {
            target,
            path: render(&config.path, labels)?,
            place,
        })
    }

    /// The labels the targets match on (and `service`, `namespace`, `cluster`), as the alert has
    /// them: what a refusal shows. Values are quoted and cut short; they are untrusted.
    fn shown(&self, labels: &BTreeMap<String, String>) -> String {
        let mut names: BTreeSet<&str> = ["service", "namespace", "cluster"].into();
        for (_, matchers) in &self.entries {
            names.extend(matchers.labels());
        }
        let shown: Vec<String> = names
            .into_iter()
            .map(|name| match labels.get(name) {
                Some(value) => {
                    let value: String = value.chars().take(64).collect();
                    format!("{name}={value:?}")
                }
                None => format!("{name} (none)"),
            })
            .collect();
        format!("{{{}}}", shown.join(", "))
    }
}

/// The labels `template` uses, or why it is not a template.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("{template:?} has a `}}` without its `{{`"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} has a `{{` without its `}}`"))?;
        let name = &after[..close];
        if !is_label_name(name) {
            return Err(format!("{template:?}: {{{name}}} is not a label name"));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
}

/// Fills each `{label}` in `template` from `labels`, refusing any label used that is missing or
/// not a DNS-1123 label (so no value can add a path segment, a `..`, or YAML of its own).
pub fn render(template: &str, labels: &BTreeMap<String, String>) -> Result<String, ReconcileError> {
    let names = placeholders(template).map_err(ReconcileError::Refused)?;
    let mut filled = template.to_string();
    for name in names {
        let value = labels
            .get(name)
            .ok_or_else(|| ReconcileError::Refused(format!("the alert has no {name} label, needed for {template}")))?;
        if !is_dns1123_label(value) {
            return Err(ReconcileError::Refused(format!("label {name} is not a DNS-1123 label")));
        }
        filled = filled.replace(&format!("{{{name}}}"), value);
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn target(path: &str, matches: &[(&str, LabelMatch)]) -> TargetConfig {
        TargetConfig {
            path: path.into(),
            matches: matches.iter().map(|(k, m)| (k.to_string(), m.clone())).collect(),
            ..TargetConfig::default()
        }
    }

    #[test]
    fn the_first_match_wins_and_no_match_names_the_labels() {
        let targets = Targets::new(
            vec![
                target(
                    "clusters/{cluster}/{service}/kustomization.yaml",
                    &[
                        ("service", LabelMatch::Exact("checkout".into())),
                        (
                            "cluster",
                            LabelMatch::Regex {
                                regex: "prod-[a-z]+".into(),
                            },
                        ),
                    ],
                ),
                target(
                    "charts/shop/values.yaml",
                    &[("namespace", LabelMatch::Exact("shop".into()))],
                ),
            ],
            false,
        )
        .expect("valid");
        let chosen = targets
            .choose(&labels(&[
                ("service", "checkout"),
                ("cluster", "prod-eu"),
                ("namespace", "shop"),
            ]))
            .expect("a target");
        assert_eq!(
            (chosen.target.as_str(), chosen.path.as_str()),
            ("targets[0]", "clusters/prod-eu/checkout/kustomization.yaml")
        );
        // The regex matches in full: `prod-eu-2` is not `prod-[a-z]+`.
        let chosen = targets
            .choose(&labels(&[
                ("service", "checkout"),
                ("cluster", "prod-eu-2"),
                ("namespace", "shop"),
            ]))
            .expect("a target");
        assert_eq!(chosen.target, "targets[1]");
        let refused = targets
            .choose(&labels(&[
                ("service", "cart"),
                ("cluster", "staging"),
                ("namespace", "web"),
            ]))
            .expect_err("no target");
        assert_eq!(
            refused.to_string(),
            r#"no target matches the alert's labels {cluster="staging", namespace="web", service="cart"}"#
        );
    }

    #[test]
    fn templates_fill_any_label_and_refuse_unsafe_values() {
        let targets = Targets::new(
            vec![TargetConfig {
                name: Some("{service}-{version}".into()),
                ..target("platform/bookinfo.yaml", &[])
            }],
            false,
        )
        .expect("valid");
        let chosen = targets
            .choose(&labels(&[("service", "reviews"), ("version", "v2")]))
            .expect("a target");
        assert_eq!(chosen.place.name.as_deref(), Some("reviews-v2"));
        for bad in ["../v2", "v2\nkind: Secret", ""] {
            let refused = targets
                .choose(&labels(&[("service", "reviews"), ("version", bad)]))
                .expect_err("refused");
            assert_eq!(refused.to_string(), "label version is not a DNS-1123 label");
        }
        let refused = targets.choose(&labels(&[("service", "reviews")])).expect_err("refused");
        assert!(refused.to_string().contains("no version label"), "{refused}");
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        for (config, field) in [
            (target("", &[]), "targets[0].path"),
            (target("../etc/{service}.yaml", &[]), "targets[0].path"),
            (target("apps/{service/k.yaml", &[]), "targets[0].path"),
            (target("apps/{ser vice}/k.yaml", &[]), "targets[0].path"),
            (
                target("a.yaml", &[("cluster", LabelMatch::Regex { regex: "(".into() })]),
                "targets[0].match.cluster",
            ),
            (
                TargetConfig {
                    workload_kind: Some("Pod".into()),
                    ..target("a.yaml", &[])
                },
                "targets[0].workload_kind",
            ),
            (
                TargetConfig {
                    tag_path: Some("image tag".into()),
                    ..target("a.yaml", &[])
                },
                "targets[0].tag_path",
            ),
        ] {
            let error = Targets::new(vec![config], false).expect_err("invalid");
            assert_eq!(error.field, field, "{error}");
        }
        assert_eq!(
            Targets::new(vec![target("", &[])], true).expect_err("invalid").field,
            "target.path"
        );
        assert!(Targets::new(vec![], false).is_err());
    }
}
