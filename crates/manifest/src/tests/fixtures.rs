//! Every edit on the real Argo CD and Flux example files in `shared/fixtures/gitops`.

use super::*;

fn fixture(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/gitops")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Exactly one line differs, and it is `expected`.
fn one_line_changed(before: &str, after: &str, expected: &str) {
    let (old, new): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_eq!(old.len(), new.len(), "line count changed:\n{after}");
    let changed: Vec<(&&str, &&str)> = old.iter().zip(new.iter()).filter(|(a, b)| a != b).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].1.trim().trim_start_matches("- "), expected, "{changed:?}");
}

/// Every original line is still there, in order, and only `added` lines were added.
fn block_added(before: &str, after: &str, added: usize) {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    assert_eq!(new.len(), old.len() + added, "{after}");
    let mut next = new.iter();
    for line in &old {
        assert!(next.any(|n| n == line), "line {line:?} lost or moved:\n{after}");
    }
}

fn comments(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.trim_start().starts_with('#')).collect()
}

fn value(text: &str, path: &[&str]) -> serde_norway::Value {
    let mut value: serde_norway::Value = serde_norway::from_str(text.trim_start_matches("---\n")).expect("valid YAML");
    for key in path {
        value = match key.parse::<usize>() {
            Ok(index) => value[index].clone(),
            Err(_) => value[*key].clone(),
        };
    }
    value
}

#[test]
fn helm_values_change_one_line_and_keep_every_comment() {
    let before = fixture("argocd-example-apps/helm-guestbook/values.yaml");
    assert_eq!(
        read_tag(&Place::of(Kind::HelmValues, "guestbook"), "v", &before),
        Ok(Some("v5".into()))
    );
    let after = set_tag(&Place::of(Kind::HelmValues, "guestbook"), "v", &before, "v4").expect("edit");
    one_line_changed(&before, &after, "tag: v4");
    assert_eq!(comments(&before), comments(&after));
    assert_eq!(
        value(&after, &["image", "tag"]),
        serde_norway::Value::String("v4".into())
    );
    let after = set_replicas(&Place::of(Kind::HelmValues, "guestbook"), "v", &before, 3).expect("edit");
    one_line_changed(&before, &after, "replicaCount: 3");
    assert_eq!(
        read_replicas(&Place::of(Kind::HelmValues, "guestbook"), "v", &after),
        Ok(Some(3))
    );
}

#[test]
fn deployments_change_the_image_and_replicas_line() {
    for (path, service, expected_image) in [
        (
            "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml",
            "guestbook-ui",
            "gcr.io/google-samples/gb-frontend:v4",
        ),
        (
            "argocd-example-apps/sock-shop/base/carts-dep.yaml",
            "carts",
            "weaveworksdemos/carts:v4",
        ),
        (
            "argocd-example-apps/sock-shop/base/front-end-dep.yaml",
            "front-end",
            "weaveworksdemos/front-end:v4",
        ),
        (
            "argocd-example-apps/sock-shop/base/orders-dep.yaml",
            "orders",
            "weaveworksdemos/orders:v4",
        ),
    ] {
        let before = fixture(path);
        let after =
            set_tag(&Place::of(Kind::Manifest, service), path, &before, "v4").unwrap_or_else(|e| panic!("{path}: {e}"));
        one_line_changed(&before, &after, &format!("image: {expected_image}"));
        assert_eq!(comments(&before), comments(&after), "{path}");
        assert_eq!(
            read_tag(&Place::of(Kind::Manifest, service), path, &after),
            Ok(Some("v4".into())),
            "{path}"
        );
        let after = set_replicas(&Place::of(Kind::Manifest, service), path, &before, 4)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        one_line_changed(&before, &after, "replicas: 4");
        assert_eq!(
            value(&after, &["spec", "replicas"]),
            serde_norway::Value::Number(4.into()),
            "{path}"
        );
    }
}

#[test]
fn a_kustomization_without_images_gets_a_small_block() {
    let path = "argocd-example-apps/kustomize-guestbook/kustomization.yaml";
    let before = fixture(path);
    assert_eq!(
        read_tag(&Place::of(Kind::Kustomize, "guestbook-ui"), path, &before),
        Ok(None)
    );
    let image = Some("gcr.io/google-samples/gb-frontend");
    let after = set_tag(
        &Place {
            image: image.map(str::to_owned),
            ..Place::of(Kind::Kustomize, "guestbook-ui")
        },
        path,
        &before,
        "1.10",
    )
    .expect("edit");
    block_added(&before, &after, 3);
    assert_eq!(
        value(&after, &["images", "0", "newTag"]),
        serde_norway::Value::String("1.10".into())
    );
    assert_eq!(
        value(&after, &["kind"]),
        serde_norway::Value::String("Kustomization".into()),
        "the rest is intact"
    );
    assert_eq!(
        read_tag(
            &Place {
                image: image.map(str::to_owned),
                ..Place::of(Kind::Kustomize, "guestbook-ui")
            },
            path,
            &after
        ),
        Ok(Some("1.10".into()))
    );
    let after = set_replicas(&Place::of(Kind::Kustomize, "guestbook-ui"), path, &before, 2).expect("edit");
    block_added(&before, &after, 3);
    assert_eq!(
        value(&after, &["replicas", "0", "count"]),
        serde_norway::Value::Number(2.into())
    );
    assert!(
        set_tag(&Place::of(Kind::Kustomize, "guestbook-ui"), path, &before, "v1").is_err(),
        "without a configured image name there is nothing to add"
    );
}

#[test]
fn a_helm_release_keeps_its_comments() {
    let path = "flux2-kustomize-helm-example/apps/base/podinfo/release.yaml";
    let before = fixture(path);
    let after = set_replicas(&Place::of(Kind::HelmRelease, "podinfo"), path, &before, 2).expect("edit");
    block_added(&before, &after, 1);
    assert_eq!(comments(&before), comments(&after));
    assert_eq!(
        value(&after, &["spec", "values", "replicaCount"]),
        serde_norway::Value::Number(2.into())
    );
    assert_eq!(
        value(&after, &["spec", "values", "redis", "tag"]),
        value(&before, &["spec", "values", "redis", "tag"])
    );
    let after = set_tag(&Place::of(Kind::HelmRelease, "podinfo"), path, &before, "6.9.2").expect("edit");
    assert_eq!(comments(&before), comments(&after));
    assert_eq!(
        value(&after, &["spec", "values", "image", "tag"]),
        serde_norway::Value::String("6.9.2".into())
    );
    block_added(&before, &after, 2);
}

#[test]
fn restart_sets_the_pod_template_annotation() {
    let path = "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml";
    let before = fixture(path);
    let after = restart(
        &Place::of(Kind::Manifest, "guestbook-ui"),
        path,
        &before,
        "2026-11-28T15:00:00Z",
    )
    .expect("edit");
    let annotations = value(&after, &["spec", "template", "metadata", "annotations"]);
    assert_eq!(
        annotations["kubectl.kubernetes.io/restartedAt"],
        serde_norway::Value::String("2026-11-28T15:00:00Z".into()),
        "{after}"
    );
    assert!(
        after.contains("kubectl.kubernetes.io/restartedAt: \"2026-11-28T15:00:00Z\""),
        "quoted:\n{after}"
    );
    block_added(&before, &after, 2);
    assert_eq!(
        value(&after, &["spec", "template", "metadata", "labels"]),
        value(&before, &["spec", "template", "metadata", "labels"])
    );
}

/// `read_place` answers what `kind_at`, `read_tag` and `read_replicas` answer one by one, on
/// every kind of real file, with the kind given or read from the file, and fails where they fail.
#[test]
fn reading_a_place_at_once_answers_as_the_reads_one_by_one() {
    let detected = |service: &str| Place {
        service: service.into(),
        ..Place::default()
    };
    // (file, service, whether it sets a tag for the service)
    for (path, service, tagged) in [
        ("argocd-example-apps/helm-guestbook/values.yaml", "guestbook", true),
        (
            "argocd-example-apps/guestbook/guestbook-ui-deployment.yaml",
            "guestbook-ui",
            true,
        ),
        ("argocd-example-apps/sock-shop/base/carts-dep.yaml", "carts", true),
        // A kustomization without `images`: no tag, no error.
        (
            "argocd-example-apps/kustomize-guestbook/kustomization.yaml",
            "guestbook-ui",
            false,
        ),
        // A HelmRelease whose values set no tag.
        (
            "flux2-kustomize-helm-example/apps/base/podinfo/release.yaml",
            "podinfo",
            false,
        ),
        // Many Deployments, one chosen by name.
        ("istio-bookinfo/bookinfo.yaml", "reviews-v2", true),
        // Many Deployments, none of the service: a refusal, the same from both.
        ("istio-bookinfo/bookinfo.yaml", "no-such-service", false),
    ] {
        let text = fixture(path);
        let kind = kind_at(&detected(service), path, &text).unwrap_or_else(|e| panic!("{path}: {e}"));
        for place in [detected(service), Place::of(kind, service)] {
            // Each read from the text itself (no answer of the one serves the other) …
            let one_by_one = uncached(|| {
                read_tag(&place, path, &text).map(|tag| PlaceRead {
                    kind,
                    tag,
                    replicas: read_replicas(&place, path, &text).ok().flatten(),
                })
            });
            assert_eq!(
                uncached(|| read_place(&place, path, &text)),
                one_by_one,
                "{path} {place:?}"
            );
            // … then through the cache: kept the first time, answered from it the second.
            assert_eq!(read_place(&place, path, &text), one_by_one, "{path} {place:?}");
            assert_eq!(read_place(&place, path, &text), one_by_one, "{path} {place:?}");
        }
        let shown = read_place(&detected(service), path, &text);
        if service == "no-such-service" {
            assert!(shown.is_err(), "{path}: {shown:?}");
        } else {
            assert_eq!(shown.map(|read| read.tag.is_some()), Ok(tagged), "{path}");
        }
    }
}
