use super::*;

const KUST: &str = r#"# Kustomization for checkout — managed by GitOps
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml   # the app
images:
  - name: ghcr.io/acme/sidecar
    newTag: 2.3.1
  - name: ghcr.io/acme/checkout
    newTag: "v1.5.0"  # pinned by release bot
replicas:
  - name: checkout
    count: 2 # baseline
"#;

#[test]
fn reads_are_remembered_by_text_service_and_kind() {
    let older = KUST.replace("v1.5.0", "v1.4.1");
    for _ in 0..2 {
        for (text, tag) in [(KUST, "v1.5.0"), (older.as_str(), "v1.4.1")] {
            assert_eq!(
                read_tag(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", text),
                Ok(Some(tag.to_string()))
            );
        }
        assert_eq!(
            read_tag(&Place::of(Kind::Kustomize, "sidecar"), "k.yaml", KUST),
            Ok(Some("2.3.1".to_string()))
        );
        assert_eq!(
            read_tag(&Place::of(Kind::Kustomize, "payments"), "k.yaml", KUST),
            Ok(None)
        );
        assert!(
            matches!(
                read_tag(&Place::of(Kind::HelmValues, "checkout"), "k.yaml", KUST),
                Err(EditError::NoDocument { .. })
            ),
            "a kustomization is not a values file"
        );
        assert_eq!(
            read_replicas(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", KUST),
            Ok(Some(2))
        );
        assert_eq!(
            read_replicas(
                &Place::of(Kind::Kustomize, "checkout"),
                "k.yaml",
                &older.replace("count: 2", "count: 5")
            ),
            Ok(Some(5))
        );
        assert!(matches!(
            read_tag(&Place::of(Kind::Kustomize, "checkout"), "bad.yaml", "images: ["),
            Err(EditError::Parse { .. })
        ));
    }
}

#[test]
fn a_huge_file_is_read_but_not_kept() {
    let huge = format!("{KUST}# {}\n", "x".repeat(Reads::MAX_BYTES / 8 + 16));
    assert_eq!(
        read_tag(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", &huge),
        Ok(Some("v1.5.0".to_string()))
    );
    let (held, bytes) = READS.holds(&huge);
    assert!(!held && bytes <= Reads::MAX_BYTES, "{bytes} bytes kept");
    assert_eq!(
        read_tag(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", KUST),
        Ok(Some("v1.5.0".to_string()))
    );
    assert!(READS.holds(KUST).0, "a small one is kept");
}

fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "line count changed:\n{after}"
    );
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn reads_and_sets_the_service_image_tag_only() {
    assert_eq!(
        kustomize_image_tag("k", KUST, "checkout", None),
        Ok(Some("v1.5.0".into()))
    );
    assert_eq!(
        kustomize_image_tag("k", KUST, "sidecar", None),
        Ok(Some("2.3.1".into()))
    );
    let after = set_kustomize_image_tag("k", KUST, "checkout", None, "v1.4.1").expect("edit");
    let changed = changed_lines(KUST, &after);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(
        changed[0].1.contains("v1.4.1") && changed[0].1.contains("# pinned by release bot"),
        "{changed:?}"
    );
    assert_eq!(
        kustomize_image_tag("k", &after, "checkout", None),
        Ok(Some("v1.4.1".into()))
    );
}

#[test]
fn ambiguous_tags_stay_strings() {
    for tag in ["1.10", "true", "2", "null", "1e3"] {
        let after = set_kustomize_image_tag("k", KUST, "sidecar", None, tag).expect("edit");
        let parsed: serde_norway::Value = serde_norway::from_str(&after).expect("valid yaml");
        assert_eq!(
            parsed["images"][0]["newTag"],
            serde_norway::Value::String(tag.into()),
            "{after}"
        );
    }
}

#[test]
fn replicas_are_integers_and_comments_stay() {
    assert_eq!(kustomize_replicas("k", KUST, "checkout"), Ok(Some(2)));
    let after = set_kustomize_replicas("k", KUST, "checkout", 3).expect("edit");
    let changed = changed_lines(KUST, &after);
    assert_eq!(
        changed,
        vec![("    count: 2 # baseline".into(), "    count: 3 # baseline".into())]
    );
}

#[test]
fn missing_entries_are_named() {
    assert_eq!(
        kustomize_image_tag("apps/x/kustomization.yaml", KUST, "cart", None),
        Err(EditError::NoImage {
            file: "apps/x/kustomization.yaml".into(),
            image: "cart".into()
        })
    );
    assert!(matches!(
        kustomize_replicas("k", KUST, "cart"),
        Err(EditError::NoReplicas { .. })
    ));
    assert!(image_matches("ghcr.io/acme/checkout:v1", "checkout", None));
    assert!(image_matches("checkout", "checkout", None));
    assert!(!image_matches("ghcr.io/checkout/api", "checkout", None));
    assert!(image_matches(
        "ghcr.io/checkout/api",
        "checkout",
        Some("ghcr.io/checkout/api")
    ));
}

/// What a YAML 1.1 reader (PyYAML, as Helm's go-yaml v2 reads values) makes of `text`'s
/// `image.tag`: its type and value.
fn yaml11_tag(text: &str) -> (String, String) {
    use std::io::Write as _;
    let mut python = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; t = yaml.safe_load(sys.stdin)['image']['tag']; print(type(t).__name__, t)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (scripts/test installs it)");
    if let Some(stdin) = python.stdin.as_mut() {
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = python.wait_with_output().expect("python3 ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (kind, value) = out.split_once(' ').unwrap_or((out.as_str(), ""));
    (kind.to_string(), value.to_string())
}

#[test]
fn tags_yaml_1_1_reads_as_booleans_or_numbers_stay_strings() {
    let values = "image:\n  repository: ghcr.io/acme/checkout\n  tag: v1.5.0 # release bot\n";
    let place = Place::of(Kind::HelmValues, "checkout");
    for tag in ["on", "yes", "y", "No", "off", "1_000", "1.10", "v1.4.1"] {
        let after = set_tag(&place, "values.yaml", values, tag).expect("edit");
        assert_eq!(yaml11_tag(&after), ("str".to_string(), tag.to_string()), "{after}");
        assert_eq!(read_tag(&place, "values.yaml", &after), Ok(Some(tag.to_string())));
        assert!(after.contains("# release bot"), "{after}");
    }
    // A tag that needs no quotes gets none.
    let after = set_tag(&place, "values.yaml", values, "v1.4.1").expect("edit");
    assert!(after.contains("tag: v1.4.1 # release bot"), "{after}");
}
