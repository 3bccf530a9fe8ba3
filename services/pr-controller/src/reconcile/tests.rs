//! The reconciler on real repositories.

use super::*;

mod flow {
    use std::{path::Path, process::Command, sync::Arc};

    use selfheal_proto::v1::{Alert, AlertEvent, DecisionParams};

    use selfheal_git::{Author, Batched as _, LocalRepository};
    use selfheal_proto::v1::Action;

    use super::*;
    use crate::PrControllerConfig;

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

    impl Reconciler {
        fn clone_with_path(&self, path: &str) -> Reconciler {
            let mut settings = self.settings.clone();
            settings.targets = targets(path);
            Reconciler::new(self.git.clone(), self.forge.clone(), settings)
        }
    }

    fn targets(path: &str) -> crate::reconcile::Targets {
        let target = crate::reconcile::TargetConfig {
            path: path.into(),
            ..Default::default()
        };
        crate::reconcile::Targets::new(vec![target], true).expect("valid")
    }

    fn reconciler(bare: &Path) -> Reconciler {
        let repo = Arc::new(LocalRepository::open(bare).expect("open"));
        Reconciler::new(
            repo,
            None,
            PrControllerConfig::default()
                .reconcile_settings()
                .expect("valid targets"),
        )
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
        off.settings.hold_image_automation = false;
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
        let batched = self::reconciler(&bare)
            .on(batch.clone())
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
                reconciler.settings.targets = targets("apps/{service}/kustomization.yaml");
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

mod kind_tests {
    use std::sync::Arc;

    use selfheal_proto::v1::{Alert, AlertEvent};

    use super::*;
    use selfheal_git::LocalRepository;
    use selfheal_manifest::Kind;
    use selfheal_proto::v1::Action;

    use crate::{PrControllerConfig, reconcile::TargetConfig};

    use super::flow::git;

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
            target: Some(TargetConfig {
                path: "apps/{service}/deployment.yaml".into(),
                kind: Some(Kind::Manifest),
                ..Default::default()
            }),
            ..Default::default()
        };
        let repo = Arc::new(LocalRepository::open(&bare).expect("open"));
        let reconciler = Reconciler::new(repo, None, config.reconcile_settings().expect("valid targets"));

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
