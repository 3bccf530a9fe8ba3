//! The shipped least-privilege nats-server configuration (`deploy/nats/nats-server.conf`) on a
//! real nats-server: the whole loop works with one user per service — an Alertmanager alert
//! becomes a rollback on main and, resolved, a verified remediation — while a connection without
//! credentials is refused, the gateway's user cannot publish a decision, and the policy's cannot
//! change the kill switch (the server refuses; nothing reaches the stream or the bucket).

use std::{path::Path, time::Duration};

use anyhow::Context;
use prost::Message as _;
use selfheal_e2e::{
    Nats, Process, TOKEN, bare_repository_and_clone, binary, free_port, git, post_alerts, wait_for, wait_ready,
    workspace_root,
};
use selfheal_proto::v1::{
    Action, Approval, GetRemediationRequest, RemediationState, remediations_client::RemediationsClient,
};

const PATH: &str = "apps/checkout/kustomization.yaml";
const USERS: [&str; 5] = ["gateway", "policy", "pr-controller", "notifier", "operator"];

fn password(user: &str) -> String {
    format!("{user}-pa55")
}

fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = workspace_root().join("../shared/fixtures/alertmanager-0.25").join(name);
    std::fs::read(&path).with_context(|| path.display().to_string())
}

fn gitops_repo(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let (bare, work) = bare_repository_and_clone(dir)?;
    std::fs::create_dir_all(work.join("apps/checkout"))?;
    for tag in ["v1.4.1", "v1.5.0"] {
        std::fs::write(
            work.join(PATH),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag}\n"
            ),
        )?;
        git(&work, &["add", "."])?;
        git(&work, &["commit", "-q", "-m", &format!("checkout {tag}")])?;
    }
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok(bare)
}

async fn connect_as(url: &str, user: &str) -> anyhow::Result<async_nats::Client> {
    Ok(
        async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
            .connect(url)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_on_least_privilege_users_and_the_server_refuses_the_rest() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let logs = temp.path();
    let config = std::fs::read_to_string(workspace_root().join("deploy/nats/nats-server.conf"))?;
    let env = USERS
        .iter()
        .map(|user| {
            (
                format!("{}_PASSWORD", user.to_uppercase().replace('-', "_")),
                password(user),
            )
        })
        .collect();
    let nats = Nats::start_with_config_env(&config, env).await?;
    let url = nats.url();

    // No credentials: refused.
    let anonymous = async_nats::connect(url.as_str()).await;
    assert!(anonymous.is_err(), "an anonymous connection is refused");

    let repo = gitops_repo(temp.path())?;
    let main_before = git(&repo, &["rev-parse", "main"])?;
    let auth = |service: &str, prefix: &str| {
        vec![
            (format!("{prefix}NATS_URL"), url.clone()),
            (format!("{prefix}NATS__USER"), service.to_string()),
            (format!("{prefix}NATS__PASSWORD"), password(service)),
        ]
    };
    let (gateway_port, policy_port, policy_grpc, pr_port, pr_grpc, notifier_port, audit_grpc) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let mut services: Vec<(Process, u16)> = Vec::new();
    let start = |name: &str, binary_name: &str, env: Vec<(String, String)>| -> anyhow::Result<Process> {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Process::start(name, &binary(binary_name)?, &[], &env, logs)
    };
    let mut gateway_env = auth("gateway", "SELFHEAL_GATEWAY_");
    gateway_env.extend([
        ("SELFHEAL_GATEWAY_LISTEN".into(), format!("127.0.0.1:{gateway_port}")),
        (
            "SELFHEAL_GATEWAY_GRPC_LISTEN".into(),
            format!("127.0.0.1:{}", free_port()?),
        ),
        ("SELFHEAL_GATEWAY_TOKEN".into(), TOKEN.into()),
    ]);
    services.push((start("gateway", "selfheal-gateway", gateway_env)?, gateway_port));
    let mut policy_env = auth("policy", "SELFHEAL_POLICY_");
    policy_env.extend([
        ("SELFHEAL_POLICY_LISTEN".into(), format!("127.0.0.1:{policy_port}")),
        ("SELFHEAL_POLICY_GRPC_LISTEN".into(), format!("127.0.0.1:{policy_grpc}")),
        (
            "SELFHEAL_POLICY_POLICY_DIR".into(),
            workspace_root().join("deploy/policies").display().to_string(),
        ),
        ("SELFHEAL_POLICY_GRPC_TOKEN".into(), TOKEN.into()),
        (
            "SELFHEAL_POLICY_TARGET__URL".into(),
            format!("http://127.0.0.1:{pr_grpc}"),
        ),
        ("SELFHEAL_POLICY_TARGET__TOKEN".into(), TOKEN.into()),
    ]);
    services.push((start("policy", "selfheal-policy", policy_env)?, policy_port));
    let mut pr_env = auth("pr-controller", "SELFHEAL_PR_CONTROLLER_");
    pr_env.extend([
        ("SELFHEAL_PR_CONTROLLER_LISTEN".into(), format!("127.0.0.1:{pr_port}")),
        ("SELFHEAL_PR_CONTROLLER_REPOSITORY".into(), repo.display().to_string()),
        (
            "SELFHEAL_PR_CONTROLLER_GRPC_LISTEN".into(),
            format!("127.0.0.1:{pr_grpc}"),
        ),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN".into(), TOKEN.into()),
    ]);
    services.push((start("pr-controller", "selfheal-pr-controller", pr_env)?, pr_port));
    let mut notifier_env = auth("notifier", "SELFHEAL_NOTIFIER_");
    notifier_env.extend([
        ("SELFHEAL_NOTIFIER_LISTEN".into(), format!("127.0.0.1:{notifier_port}")),
        (
            "SELFHEAL_NOTIFIER_DATABASE_URL".into(),
            format!("sqlite://{}", temp.path().join("audit.db").display()),
        ),
        (
            "SELFHEAL_NOTIFIER_GRPC_LISTEN".into(),
            format!("127.0.0.1:{audit_grpc}"),
        ),
        ("SELFHEAL_NOTIFIER_GRPC_TOKEN".into(), TOKEN.into()),
    ]);
    services.push((start("notifier", "selfheal-notifier", notifier_env)?, notifier_port));
    for (process, port) in &mut services {
        wait_ready(&format!("http://127.0.0.1:{port}/readyz"), process).await?;
    }
    let dump = |services: &[(Process, u16)]| {
        services
            .iter()
            .map(|(p, _)| format!("--- {}\n{}", p.name, p.output()))
            .collect::<Vec<_>>()
            .join("\n")
            + &format!("--- nats-server\n{}", nats.process.output())
    };

    // The whole loop, each service as its own user.
    let client = reqwest::Client::new();
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    let accepted = post_alerts(&client, &gateway_url, fixture("02-firing-1alerts.json")?).await?;
    anyhow::ensure!(accepted.status() == 200, "POST answered {}", accepted.status());
    let accepted: serde_json::Value = accepted.json().await?;
    let incident = accepted["incidents"][0]["key"]
        .as_str()
        .context("incident key")?
        .to_string();
    wait_for(Duration::from_secs(30), "the rollback commit on main", || async {
        let tip = git(&repo, &["rev-parse", "main"]).ok()?;
        (tip != main_before).then_some(())
    })
    .await
    .with_context(|| dump(&services))?;
    let resolved = post_alerts(&client, &gateway_url, fixture("03-resolved-1alerts.json")?).await?;
    anyhow::ensure!(resolved.status() == 200, "POST answered {}", resolved.status());
    let mut remediations = RemediationsClient::connect(format!("http://127.0.0.1:{pr_grpc}")).await?;
    let get = |key: &str| {
        let mut request = tonic::Request::new(GetRemediationRequest {
            incident_key: key.to_string(),
        });
        if let Ok(value) = format!("Bearer {TOKEN}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    wait_for(Duration::from_secs(30), "the verified remediation", || {
        let mut remediations = remediations.clone();
        let request = get(&incident);
        async move {
            let event = remediations.get(request).await.ok()?.into_inner();
            (event.state() == RemediationState::Verified).then_some(())
        }
    })
    .await
    .with_context(|| dump(&services))?;
    // The gateway and the policy keep their buckets in memory through a watch, which their users
    // may open (and answer the flow control of).
    for (service, bucket) in [
        ("gateway", "selfheal_incidents"),
        ("policy", "selfheal_actions"),
        ("policy", "selfheal_control"),
    ] {
        let (process, _) = services
            .iter()
            .find(|(p, _)| p.name == service)
            .context("the service")?;
        let output = process.output();
        anyhow::ensure!(
            output
                .lines()
                .any(|l| l.contains("watching the bucket") && l.contains(bucket)),
            "{service} does not read {bucket} from memory:\n{output}"
        );
        anyhow::ensure!(
            !output.contains("cannot watch the bucket") && !output.contains("watch broke"),
            "{service}'s watch of {bucket} failed:\n{output}"
        );
    }

    // The gateway's user publishing a decision: the server refuses it, nothing is stored, and the
    // pr-controller never hears of it.
    let gateway_js = async_nats::jetstream::new(connect_as(&url, "gateway").await?);
    let mut forged = selfheal_e2e::decision("forged1", &[("service", "checkout")], Action::Scale, Approval::Auto);
    forged.params = Some(selfheal_proto::v1::DecisionParams {
        replicas: Some(0),
        ..Default::default()
    });
    let published = tokio::time::timeout(Duration::from_secs(10), async {
        gateway_js
            .publish("selfheal.decisions.checkout", forged.encode_to_vec().into())
            .await?
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    assert!(
        !matches!(published, Ok(Ok(_))),
        "the decision was refused: {published:?}"
    );

    // The policy's user setting the kill switch: refused; the operator's switch stays as it was.
    let operator = async_nats::jetstream::new(connect_as(&url, "operator").await?);
    let control = operator.get_key_value("selfheal_control").await?;
    control.put("kill_switch", "off".into()).await?;
    let policy_js = async_nats::jetstream::new(connect_as(&url, "policy").await?);
    let policy_view = policy_js.get_key_value("selfheal_control").await?;
    let set = tokio::time::timeout(Duration::from_secs(10), policy_view.put("kill_switch", "on".into())).await;
    assert!(
        !matches!(set, Ok(Ok(_))),
        "the policy may not set the kill switch: {set:?}"
    );
    let switch = control.get("kill_switch").await?.context("the switch")?;
    assert_eq!(switch.as_ref(), b"off");
    assert!(
        policy_view
            .get("kill_switch")
            .await?
            .is_some_and(|v| v.as_ref() == b"off"),
        "the policy still reads it"
    );

    // `selfheal kill-switch` as the operator sets it; as the policy's user it cannot.
    let password_file = temp.path().join("operator-password");
    std::fs::write(&password_file, password("operator"))?;
    let policy_password_file = temp.path().join("policy-password");
    std::fs::write(&policy_password_file, password("policy"))?;
    for (user, file, state, succeeds) in [
        ("operator", &password_file, "on", true),
        ("policy", &policy_password_file, "off", false),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(binary("selfheal")?)
                .args(["kill-switch", state, "--nats-url", url.as_str(), "--nats-user", user])
                .arg("--nats-password-file")
                .arg(file)
                .output(),
        )
        .await??;
        assert_eq!(
            out.status.success(),
            succeeds,
            "{user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let switch = control.get("kill_switch").await?.context("the switch")?;
        assert_eq!(switch.as_ref(), b"on", "{user}: the operator's word stands");
    }
    control.put("kill_switch", "off".into()).await?;

    // Nothing forged reached the pr-controller.
    let forged = remediations.get(get("forged1")).await;
    assert_eq!(
        forged.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound),
        "{forged:?}"
    );
    for (process, _) in &mut services {
        process.check_running()?;
    }
    Ok(())
}
