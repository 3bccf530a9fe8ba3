//! One pr-controller serving a repository of mixed layouts, on a real nats-server and a real git
//! repository: four `[[targets]]` — a Kustomize overlay per `{cluster}`, an umbrella chart's
//! values with the tag under `frontend.image.tag`, Istio's bookinfo (one file, 14 documents), and
//! a Flux HelmRelease. `DescribeTarget` answers each service from its own file and place; a
//! rollback of each changes only its own lines; an alert no target matches fails, naming its
//! labels.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context;
use prost::Message as _;
use selfheal_e2e::{Nats, Process, TOKEN, bare_repository_and_clone, binary, free_port, git, wait_for, wait_ready};
use selfheal_proto::v1::{
    Action, Approval, Decision, DescribeTargetRequest, RemediationEvent, RemediationState, Target,
    remediations_client::RemediationsClient,
};

const CONFIG: &str = r#"
[[targets]]
match = { service = "checkout" }
path = "clusters/{cluster}/{service}/kustomization.yaml"

[[targets]]
match = { service = "frontend" }
path = "charts/shop/values.yaml"
tag_path = "frontend.image.tag"
replicas_path = "frontend.replicaCount"

[[targets]]
match = { namespace = "bookinfo" }
path = "platform/bookinfo.yaml"
name = "{service}-{version}"

[[targets]]
match = { service = { regex = "podinfo(-.+)?" } }
path = "apps/podinfo/release.yaml"
"#;

fn kustomization(tag: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../../base/checkout\nimages:\n- name: ghcr.io/acme/checkout\n  newTag: {tag}\n"
    )
}

fn umbrella(frontend: &str, backend: &str) -> String {
    format!(
        "# The shop's umbrella chart.\nfrontend:\n  image:\n    repository: ghcr.io/acme/frontend\n    tag: {frontend}\n  replicaCount: 2\nbackend:\n  image:\n    tag: {backend}\n"
    )
}

fn fixture(path: &str) -> anyhow::Result<String> {
    let full = selfheal_e2e::workspace_root()
        .join("../shared/fixtures/gitops")
        .join(path);
    std::fs::read_to_string(&full).with_context(|| full.display().to_string())
}

/// Istio's bookinfo with reviews-v2 and reviews-v3 at these tags (1.20.1 in the fixture).
fn bookinfo(v2: &str, v3: &str) -> anyhow::Result<String> {
    Ok(fixture("istio-bookinfo/bookinfo.yaml")?
        .replace(
            "examples-bookinfo-reviews-v2:1.20.1",
            &format!("examples-bookinfo-reviews-v2:{v2}"),
        )
        .replace(
            "examples-bookinfo-reviews-v3:1.20.1",
            &format!("examples-bookinfo-reviews-v3:{v3}"),
        ))
}

/// Flux's podinfo HelmRelease, its chart values given an image tag.
fn release(tag: &str) -> anyhow::Result<String> {
    let text = fixture("flux2-kustomize-helm-example/apps/base/podinfo/release.yaml")?;
    Ok(text.replace("  values:\n", &format!("  values:\n    image:\n      tag: {tag}\n")))
}

fn commit(work: &Path, files: &[(&str, String)], message: &str) -> anyhow::Result<()> {
    for (path, text) in files {
        let full = work.join(path);
        std::fs::create_dir_all(full.parent().context("a folder")?)?;
        std::fs::write(full, text)?;
    }
    git(work, &["add", "-A"])?;
    git(work, &["commit", "-q", "-m", message])?;
    Ok(())
}

/// The repository: each layout with a history to roll back through.
fn mixed_repository(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let (bare, work) = bare_repository_and_clone(dir)?;
    commit(
        &work,
        &[
            ("clusters/prod/checkout/kustomization.yaml", kustomization("v1.4.1")),
            ("clusters/staging/checkout/kustomization.yaml", kustomization("v1.9.0")),
            ("charts/shop/values.yaml", umbrella("2.3.0", "9.0.0")),
            ("platform/bookinfo.yaml", bookinfo("1.19.0", "1.18.0")?),
            ("apps/podinfo/release.yaml", release("6.9.0")?),
        ],
        "first versions",
    )?;
    commit(
        &work,
        &[
            ("clusters/prod/checkout/kustomization.yaml", kustomization("v1.5.0")),
            ("clusters/staging/checkout/kustomization.yaml", kustomization("v2.0.0")),
            ("charts/shop/values.yaml", umbrella("2.4.0", "9.0.0")),
            ("platform/bookinfo.yaml", bookinfo("1.20.1", "1.18.0")?),
            ("apps/podinfo/release.yaml", release("6.9.1")?),
        ],
        "new versions",
    )?;
    // Changes to the neighbours in the same files: no earlier tag of the services above.
    commit(
        &work,
        &[
            ("charts/shop/values.yaml", umbrella("2.4.0", "9.1.0")),
            ("platform/bookinfo.yaml", bookinfo("1.20.1", "1.20.1")?),
        ],
        "backend and reviews-v3",
    )?;
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok(bare)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn rollback(incident: &str, labels: &BTreeMap<String, String>) -> Decision {
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    selfheal_e2e::decision(incident, &pairs, Action::Rollback, Approval::Auto)
}

async fn describe(
    client: &mut RemediationsClient<tonic::transport::Channel>,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<Target> {
    let mut request = tonic::Request::new(DescribeTargetRequest {
        service: labels.get("service").cloned().unwrap_or_default(),
        labels: labels.clone().into_iter().collect(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(client.describe_target(request).await?.into_inner())
}

/// The last event of each incident in the stream.
async fn remediations(js: &async_nats::jetstream::Context) -> Option<BTreeMap<String, RemediationEvent>> {
    let mut stream = js.get_stream("SELFHEAL").await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let mut found = BTreeMap::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if message.subject.starts_with("selfheal.remediations.") {
            let event = RemediationEvent::decode(message.payload).ok()?;
            found.insert(event.incident_key.clone(), event);
        }
    }
    Some(found)
}

/// The lines of `before` and `after` that differ, trimmed (same line count asserted).
fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    assert_eq!(before.lines().count(), after.lines().count(), "{after}");
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pr_controller_serves_four_layouts_and_refuses_an_alert_no_target_matches() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let bare = mixed_repository(temp.path())?;
    let before = |path: &str| git(&bare, &["show", &format!("main:{path}")]);
    let originals: BTreeMap<&str, String> = [
        "clusters/prod/checkout/kustomization.yaml",
        "clusters/staging/checkout/kustomization.yaml",
        "charts/shop/values.yaml",
        "platform/bookinfo.yaml",
        "apps/podinfo/release.yaml",
    ]
    .into_iter()
    .map(|path| Ok((path, before(path)?)))
    .collect::<anyhow::Result<_>>()?;
    let config = temp.path().join("pr-controller.toml");
    std::fs::write(&config, CONFIG)?;

    let nats = Nats::start().await?;
    let (http, grpc) = (free_port()?, free_port()?);
    let env = [
        ("SELFHEAL_PR_CONTROLLER_LISTEN", format!("127.0.0.1:{http}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", TOKEN.to_string()),
        ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats.url()),
        ("SELFHEAL_PR_CONTROLLER_REPOSITORY", bare.display().to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    let config_arg = config.to_str().context("utf-8")?;
    let mut pr_controller = Process::start(
        "pr-controller",
        &binary("selfheal-pr-controller")?,
        &["--config", config_arg],
        &env,
        temp.path(),
    )?;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz"), &mut pr_controller).await?;

    let checkout = labels(&[("service", "checkout"), ("cluster", "prod"), ("namespace", "shop")]);
    let frontend = labels(&[("service", "frontend"), ("cluster", "prod"), ("namespace", "shop")]);
    let reviews = labels(&[("service", "reviews"), ("version", "v2"), ("namespace", "bookinfo")]);
    let podinfo = labels(&[("service", "podinfo"), ("namespace", "podinfo")]);
    let unmatched = labels(&[("service", "cart"), ("cluster", "prod"), ("namespace", "web")]);

    // DescribeTarget: each service from its own file and place, with its own earlier tags.
    let mut client = RemediationsClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    for (labels, path, kind, tag, earlier, replicas) in [
        (
            &checkout,
            "clusters/prod/checkout/kustomization.yaml",
            "kustomize",
            "v1.5.0",
            vec!["v1.4.1"],
            None,
        ),
        (
            &frontend,
            "charts/shop/values.yaml",
            "helm-values",
            "2.4.0",
            vec!["2.3.0"],
            Some(2),
        ),
        (
            &reviews,
            "platform/bookinfo.yaml",
            "manifest",
            "1.20.1",
            vec!["1.19.0"],
            Some(1),
        ),
        (
            &podinfo,
            "apps/podinfo/release.yaml",
            "helm-release",
            "6.9.1",
            vec!["6.9.0"],
            None,
        ),
    ] {
        let target = describe(&mut client, labels).await?;
        assert_eq!(
            (target.path.as_str(), target.kind.as_str(), target.current_tag.as_str()),
            (path, kind, tag),
            "{labels:?}"
        );
        assert_eq!(target.earlier_tags, earlier, "{labels:?}");
        assert_eq!(target.replicas, replicas, "{labels:?}");
    }
    // reviews-v3 in the same file has its own history.
    let v3 = labels(&[("service", "reviews"), ("version", "v3"), ("namespace", "bookinfo")]);
    let target = describe(&mut client, &v3).await?;
    assert_eq!(
        (target.current_tag.as_str(), target.earlier_tags.clone()),
        ("1.20.1", vec!["1.18.0".to_string()])
    );
    let refused = describe(&mut client, &unmatched).await.expect_err("no target");
    assert!(refused.to_string().contains("no target matches"), "{refused}");
    // Labels that cannot be labels are the caller's error, named.
    let many: BTreeMap<String, String> = (0..129).map(|i| (format!("l{i}"), "x".to_string())).collect();
    for (bad, named) in [
        (
            labels(&[("service", "reviews"), ("bad-name", "x")]),
            "\"bad-name\" is not a label name",
        ),
        (
            labels(&[("service", "../reviews")]),
            "service: must be a DNS-1123 label",
        ),
        (
            labels(&[("service", "reviews"), ("version", &"v".repeat(1025))]),
            "labels.version: longer than 1024 bytes",
        ),
        (many, "labels: more than 128"),
    ] {
        let status = describe(&mut client, &bad)
            .await
            .expect_err("invalid")
            .downcast::<tonic::Status>()?;
        assert_eq!(
            (status.code(), status.message().contains(named)),
            (tonic::Code::InvalidArgument, true),
            "{status:?}"
        );
    }

    // A rollback for an alert of each, and one for an alert no target serves.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let decisions = [
        ("checkout1", &checkout),
        ("frontend1", &frontend),
        ("reviews1", &reviews),
        ("podinfo1", &podinfo),
        ("cart1", &unmatched),
    ];
    for (incident, labels) in &decisions {
        let subject = format!("selfheal.decisions.{}", labels["service"]);
        js.publish(subject, rollback(incident, labels).encode_to_vec().into())
            .await?
            .await?;
    }
    let events = wait_for(Duration::from_secs(30), "a final event for each decision", || async {
        let events = remediations(&js).await?;
        decisions
            .iter()
            .all(|(incident, _)| {
                events
                    .get(*incident)
                    .is_some_and(|e| matches!(e.state(), RemediationState::Merged | RemediationState::Failed))
            })
            .then_some(events)
    })
    .await
    .with_context(|| pr_controller.output())?;

    for (incident, path, from, to) in [
        (
            "checkout1",
            "clusters/prod/checkout/kustomization.yaml",
            "v1.5.0",
            "v1.4.1",
        ),
        ("frontend1", "charts/shop/values.yaml", "2.4.0", "2.3.0"),
        ("reviews1", "platform/bookinfo.yaml", "1.20.1", "1.19.0"),
        ("podinfo1", "apps/podinfo/release.yaml", "6.9.1", "6.9.0"),
    ] {
        let event = &events[incident];
        assert_eq!(event.state(), RemediationState::Merged, "{incident}: {}", event.message);
        assert_eq!(
            (event.path.as_str(), event.from_value.as_str(), event.to_value.as_str()),
            (path, from, to),
            "{incident}"
        );
    }
    let failed = &events["cart1"];
    assert_eq!(failed.state(), RemediationState::Failed);
    assert_eq!(
        failed.message,
        r#"no target matches the alert's labels {cluster="prod", namespace="web", service="cart"}"#
    );

    // On main: each file changed in the one line of its service, and nothing else anywhere.
    for (path, expected) in [
        (
            "clusters/prod/checkout/kustomization.yaml",
            ("newTag: v1.5.0", "newTag: v1.4.1"),
        ),
        ("charts/shop/values.yaml", ("tag: 2.4.0", "tag: 2.3.0")),
        (
            "platform/bookinfo.yaml",
            (
                "image: docker.io/istio/examples-bookinfo-reviews-v2:1.20.1",
                "image: docker.io/istio/examples-bookinfo-reviews-v2:1.19.0",
            ),
        ),
        ("apps/podinfo/release.yaml", ("tag: 6.9.1", "tag: 6.9.0")),
    ] {
        let after = before(path)?;
        assert_eq!(
            changed_lines(&originals[path], &after),
            vec![(expected.0.to_string(), expected.1.to_string())],
            "{path}"
        );
    }
    assert_eq!(
        before("clusters/staging/checkout/kustomization.yaml")?,
        originals["clusters/staging/checkout/kustomization.yaml"],
        "the other cluster's overlay is untouched"
    );
    let commits = git(&bare, &["rev-list", "--count", "main"])?;
    assert_eq!(
        commits,
        "7",
        "three commits before, one per rollback:\n{}",
        pr_controller.output()
    );
    pr_controller.check_running()?;
    Ok(())
}
