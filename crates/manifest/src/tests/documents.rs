//! Files of many documents (Istio's bookinfo: 14 of them), the kind read from the file, restarts
//! in every kind of file, and values under nested keys.

use super::*;

fn fixture(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/gitops")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

const BOOKINFO: &str = "istio-bookinfo/bookinfo.yaml";

/// The file's documents as text, cut at `---` lines (the lines kept with the document after).
fn cut(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(String::new());
        }
        docs.last_mut().expect("one").push_str(line);
    }
    docs
}

/// Every document of `after` but the one holding `Deployment` `name` is byte for byte the one of
/// `before`; that one changed only in the lines `expected` says (old, new), or grew by `added`.
fn only_document_changed(before: &str, after: &str, name: &str) -> (String, String) {
    let (old, new) = (cut(before), cut(after));
    assert_eq!(old.len(), 15, "bookinfo has 14 documents after its header");
    assert_eq!(old.len(), new.len(), "documents added or lost:\n{after}");
    let marker = format!("kind: Deployment\nmetadata:\n  name: {name}\n");
    let mut edited = None;
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        if o.contains(&marker) {
            edited = Some((o.clone(), n.clone()));
        } else {
            assert_eq!(o, n, "document {i} changed");
        }
    }
    edited.expect("the document is there")
}

fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

fn reviews(version: &str) -> Place {
    Place::of(Kind::Manifest, "reviews").named(format!("reviews-{version}"))
}

#[test]
fn bookinfo_rollback_changes_only_the_named_deployment() {
    let before = fixture(BOOKINFO);
    let place = reviews("v2");
    assert_eq!(read_tag(&place, BOOKINFO, &before), Ok(Some("1.20.1".into())));
    let after = set_tag(&place, BOOKINFO, &before, "1.19.0").expect("edit");
    let (old, new) = only_document_changed(&before, &after, "reviews-v2");
    assert_eq!(
        changed_lines(&old, &new),
        vec![(
            "image: docker.io/istio/examples-bookinfo-reviews-v2:1.20.1".into(),
            "image: docker.io/istio/examples-bookinfo-reviews-v2:1.19.0".into()
        )]
    );
    assert_eq!(read_tag(&place, BOOKINFO, &after), Ok(Some("1.19.0".into())));
    // Its neighbours in the file keep their own tags: history per target reads them apart.
    assert_eq!(read_tag(&reviews("v3"), BOOKINFO, &after), Ok(Some("1.20.1".into())));
    assert_eq!(read_tag(&reviews("v1"), BOOKINFO, &after), Ok(Some("1.20.1".into())));
}

#[test]
fn bookinfo_scale_and_restart_change_only_the_named_deployment() {
    let before = fixture(BOOKINFO);
    let place = reviews("v2");
    assert_eq!(read_replicas(&place, BOOKINFO, &before), Ok(Some(1)));
    let after = set_replicas(&place, BOOKINFO, &before, 3).expect("edit");
    let (old, new) = only_document_changed(&before, &after, "reviews-v2");
    assert_eq!(
        changed_lines(&old, &new),
        vec![("replicas: 1".into(), "replicas: 3".into())]
    );
    assert_eq!(read_replicas(&place, BOOKINFO, &after), Ok(Some(3)));
    assert_eq!(read_replicas(&reviews("v3"), BOOKINFO, &after), Ok(Some(1)));

    let after = restart(&place, BOOKINFO, &before, "2026-12-01T10:00:00Z").expect("edit");
    let (old, new) = only_document_changed(&before, &after, "reviews-v2");
    let added: Vec<&str> = new.lines().filter(|l| !old.lines().any(|o| o == *l)).collect();
    assert_eq!(
        added,
        vec![
            "      annotations:",
            "        kubectl.kubernetes.io/restartedAt: \"2026-12-01T10:00:00Z\""
        ],
        "{new}"
    );
    let parsed: serde_norway::Value = serde_norway::from_str(&new).expect("valid YAML");
    assert_eq!(
        parsed["spec"]["template"]["metadata"]["labels"]["version"],
        serde_norway::Value::String("v2".into())
    );
}

#[test]
fn a_name_that_is_no_document_is_refused_naming_the_candidates() {
    let text = fixture(BOOKINFO);
    for place in [
        Place::of(Kind::Manifest, "reviews").named("reviews"),
        // Unnamed in a file of many workloads: the one named like the service, which is none.
        Place::of(Kind::Manifest, "reviews"),
        Place {
            kind: None,
            ..Place::of(Kind::Manifest, "reviews")
        },
    ] {
        for error in [
            read_tag(&place, BOOKINFO, &text).expect_err("refused"),
            set_tag(&place, BOOKINFO, &text, "1.19.0").expect_err("refused"),
            restart(&place, BOOKINFO, &text, "2026-12-01T10:00:00Z").expect_err("refused"),
        ] {
            assert!(matches!(error, EditError::NoDocument { .. }), "{error:?}");
            let message = error.to_string();
            for candidate in ["reviews-v1", "reviews-v2", "reviews-v3"] {
                assert!(message.contains(candidate), "{message}");
            }
            assert!(!message.contains("details-v1"), "only the candidates: {message}");
        }
    }
    // One name in two namespaces: several matches, refused too.
    let twice = format!(
        "{}---\n{}",
        text.replace("  name: ratings-v1\n", "  name: ratings-v1\n  namespace: a\n"),
        text.replace("  name: ratings-v1\n", "  name: ratings-v1\n  namespace: b\n")
    );
    let ratings = Place::of(Kind::Manifest, "ratings").named("ratings-v1");
    let error = read_tag(&ratings, BOOKINFO, &twice).expect_err("ambiguous");
    assert!(matches!(error, EditError::Ambiguous { .. }), "{error:?}");
    assert!(
        error.to_string().contains("ratings-v1 in a, ratings-v1 in b"),
        "{error}"
    );
    let in_b = Place {
        namespace: Some("b".into()),
        ..ratings
    };
    let after = set_tag(&in_b, BOOKINFO, &twice, "2.0.0").expect("the namespace tells them apart");
    assert_eq!(after.matches(":2.0.0").count(), 1);
    assert!(after.starts_with(&text.replace("  name: ratings-v1\n", "  name: ratings-v1\n  namespace: a\n")));
}

#[test]
fn the_kind_comes_from_the_file() {
    for (path, kind) in [
        (BOOKINFO, Kind::Manifest),
        (
            "argocd-example-apps/kustomize-guestbook/kustomization.yaml",
            Kind::Kustomize,
        ),
        ("argocd-example-apps/sock-shop/kustomization.yaml", Kind::Kustomize),
        ("argocd-example-apps/helm-guestbook/values.yaml", Kind::HelmValues),
        (
            "argocd-example-apps/helm-guestbook/values-production.yaml",
            Kind::HelmValues,
        ),
        (
            "flux2-kustomize-helm-example/apps/base/podinfo/release.yaml",
            Kind::HelmRelease,
        ),
        ("argocd-example-apps/sock-shop/base/carts-dep.yaml", Kind::Manifest),
    ] {
        assert_eq!(kind_of(path, &fixture(path)), Ok(kind), "{path}");
    }
    for path in [
        "argocd-example-apps/kustomize-guestbook/guestbook-ui-svc.yaml",
        "argocd-example-apps/helm-guestbook/Chart.yaml",
        "flux2-kustomize-helm-example/apps/base/podinfo/repository.yaml",
    ] {
        let error = kind_of(path, &fixture(path)).expect_err("not a file selfheal edits");
        assert!(matches!(error, EditError::NotEditable { .. }), "{path}: {error:?}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{path} is not a file selfheal edits"))
        );
    }
    // A Deployment found by its kind, read unnamed: the file's only workload.
    let path = "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml";
    let place = Place {
        kind: None,
        ..Place::of(Kind::Manifest, "guestbook-ui")
    };
    assert_eq!(read_tag(&place, path, &fixture(path)), Ok(Some("v5".into())));
}

#[test]
fn umbrella_values_have_the_tag_under_a_nested_key() {
    let before = "# umbrella chart\nfrontend:\n  image:\n    repository: ghcr.io/acme/frontend\n    tag: \"2.4.0\" # by CI\n  replicaCount: 2\nbackend:\n  image:\n    tag: 9.9.9\n";
    let place = Place {
        tag_path: Some("frontend.image.tag".into()),
        replicas_path: Some("frontend.replicaCount".into()),
        pod_annotations: Some("frontend.podAnnotations".into()),
        ..Place::of(Kind::HelmValues, "frontend")
    };
    assert_eq!(read_tag(&place, "values.yaml", before), Ok(Some("2.4.0".into())));
    let after = set_tag(&place, "values.yaml", before, "2.3.9").expect("edit");
    assert_eq!(
        changed_lines(before, &after),
        vec![("tag: \"2.4.0\" # by CI".into(), "tag: 2.3.9 # by CI".into())]
    );
    assert_eq!(read_replicas(&place, "values.yaml", before), Ok(Some(2)));
    let after = set_replicas(&place, "values.yaml", before, 4).expect("edit");
    assert_eq!(
        changed_lines(before, &after),
        vec![("replicaCount: 2".into(), "replicaCount: 4".into())]
    );
    let after = restart(&place, "values.yaml", before, "2026-12-01T10:00:00Z").expect("edit");
    let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid YAML");
    assert_eq!(
        parsed["frontend"]["podAnnotations"]["kubectl.kubernetes.io/restartedAt"],
        serde_norway::Value::String("2026-12-01T10:00:00Z".into())
    );
    assert_eq!(
        parsed["backend"]["image"]["tag"],
        serde_norway::Value::String("9.9.9".into())
    );
}

/// Every line of `before` is in `after`, in order.
fn kept(before: &str, after: &str) {
    let mut next = after.lines();
    for line in before.lines() {
        assert!(next.any(|n| n == line), "line {line:?} lost or moved:\n{after}");
    }
}

fn restarted_at(value: &serde_norway::Value) -> &serde_norway::Value {
    &value["kubectl.kubernetes.io/restartedAt"]
}

#[test]
fn restart_in_helm_values_and_a_helm_release() {
    let at = "2026-12-01T10:00:00Z";
    let path = "argocd-example-apps/helm-guestbook/values.yaml";
    let before = fixture(path);
    let plain = Place::of(Kind::HelmValues, "guestbook");
    let error = restart(&plain, path, &before, at).expect_err("needs the chart's key");
    assert!(error.to_string().contains("pod_annotations"), "{error}");
    let place = Place {
        pod_annotations: Some("podAnnotations".into()),
        ..plain
    };
    let after = restart(&place, path, &before, at).expect("edit");
    kept(&before, &after);
    assert_eq!(after.lines().count(), before.lines().count() + 2, "{after}");
    let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid YAML");
    assert_eq!(
        *restarted_at(&parsed["podAnnotations"]),
        serde_norway::Value::String(at.into())
    );

    let path = "flux2-kustomize-helm-example/apps/base/podinfo/release.yaml";
    let before = fixture(path);
    let place = Place {
        kind: None,
        pod_annotations: Some("podAnnotations".into()),
        ..Place::of(Kind::HelmRelease, "podinfo")
    };
    let after = restart(&place, path, &before, at).expect("edit");
    kept(&before, &after);
    let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid YAML");
    assert_eq!(
        *restarted_at(&parsed["spec"]["values"]["podAnnotations"]),
        serde_norway::Value::String(at.into())
    );
    assert_eq!(
        parsed["spec"]["values"]["redis"]["tag"],
        serde_norway::Value::String("8.6.2".into())
    );
    // Again, later: only the time changes.
    let again = restart(&place, path, &after, "2026-12-01T11:00:00Z").expect("edit");
    assert_eq!(changed_lines(&after, &again).len(), 1);
}

#[test]
fn restart_in_a_kustomization_adds_a_patch_then_changes_its_time() {
    let first = "2026-12-01T10:00:00Z";
    let second = "2026-12-01T11:30:00Z";
    for (path, name) in [
        (
            "argocd-example-apps/kustomize-guestbook/kustomization.yaml",
            "guestbook-ui",
        ),
        // Patches already there (of the HelmRelease): the restart is one more entry.
        (
            "flux2-kustomize-helm-example/apps/production/kustomization.yaml",
            "podinfo",
        ),
    ] {
        let before = fixture(path);
        let place = Place {
            kind: None,
            ..Place::of(Kind::Kustomize, name)
        };
        let after = restart(&place, path, &before, first).unwrap_or_else(|e| panic!("{path}: {e}"));
        kept(&before, &after);
        let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid YAML");
        let patches = parsed["patches"].as_sequence().expect("patches");
        let before_patches = serde_norway::from_str::<serde_norway::Value>(&before).expect("valid")["patches"]
            .as_sequence()
            .map_or(0, Vec::len);
        assert_eq!(patches.len(), before_patches + 1, "{after}");
        let patch: serde_norway::Value =
            serde_norway::from_str(patches.last().expect("one")["patch"].as_str().expect("text")).expect("valid patch");
        assert_eq!(patch["kind"], serde_norway::Value::String("Deployment".into()));
        assert_eq!(patch["metadata"]["name"], serde_norway::Value::String(name.into()));
        assert_eq!(
            *restarted_at(&patch["spec"]["template"]["metadata"]["annotations"]),
            serde_norway::Value::String(first.into()),
            "{after}"
        );
        // The next restart changes the time in that patch, and nothing else.
        let again = restart(&place, path, &after, second).expect("edit");
        assert_eq!(
            changed_lines(&after, &again),
            vec![(
                format!("kubectl.kubernetes.io/restartedAt: \"{first}\""),
                format!("kubectl.kubernetes.io/restartedAt: \"{second}\"")
            )],
            "{path}"
        );
        // Another workload of the same kustomization gets its own patch.
        let other = Place::of(Kind::Kustomize, "redis");
        let both = restart(&other, path, &again, first).expect("edit");
        let parsed: serde_norway::Value = serde_norway::from_str(&both).expect("valid YAML");
        assert_eq!(parsed["patches"].as_sequence().map(Vec::len), Some(before_patches + 2));
    }
}

#[test]
fn a_restart_patch_goes_after_the_last_entry_whatever_follows_it() {
    let at = "2026-12-01T10:00:00Z";
    for before in [
        "patches:\n- path: a.yaml\nimages:\n- name: x\n  newTag: v1\n",
        "resources:\n  - base\npatches:\n  - path: a.yaml\n    target:\n      kind: Deployment\n\n# the prefix\nnamePrefix: p-\n",
        "patches:\n- path: a.yaml # last\n",
        "patches:\n- path: a.yaml",
    ] {
        let place = Place::of(Kind::Kustomize, "web");
        let after = restart(&place, "kustomization.yaml", before, at).unwrap_or_else(|e| panic!("{before}: {e}"));
        kept(before, &after);
        let parsed: serde_norway::Value = serde_norway::from_str(&after).unwrap_or_else(|e| panic!("{e}:\n{after}"));
        let patches = parsed["patches"].as_sequence().expect("patches");
        assert_eq!(patches.len(), 2, "{after}");
        assert_eq!(
            patches[0]["path"],
            serde_norway::Value::String("a.yaml".into()),
            "{after}"
        );
        let before_value: serde_norway::Value = serde_norway::from_str(before).expect("valid");
        for key in ["images", "namePrefix", "resources"] {
            assert_eq!(parsed[key], before_value[key], "{key} kept:\n{after}");
        }
    }
}
