//! `selfheal up` as the README runs it: in-process bus, example repository, the README's curl body.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, ensure};
use selfheal_e2e::{Process, binary, free_port, wait_for, wait_ready, workspace_root};

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git").arg("--git-dir").arg(dir).args(args).output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_then_the_readme_curl_rolls_back_the_example_app() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let state = temp.path().join("state");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let grpc = format!("127.0.0.1:{}", free_port()?);
    // Every listener on a port handed out below the ephemeral range: a default port (50051…) can
    // be taken by any outgoing connection meanwhile, which once failed this test in CI.
    let other = |_: u8| -> anyhow::Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
    let (gateway_grpc, audit_grpc, pr_grpc) = (other(1)?, other(2)?, other(3)?);
    let args = [
        "up",
        "--dir",
        state.to_str().context("utf-8")?,
        "--listen",
        &listen,
        "--grpc-listen",
        &grpc,
        "--gateway-grpc-listen",
        &gateway_grpc,
        "--audit-grpc-listen",
        &audit_grpc,
        "--pr-controller-grpc-listen",
        &pr_grpc,
    ];
    let mut up = Process::start("selfheal-up", &binary("selfheal")?, &args, &[], temp.path())?;
    wait_ready(&format!("http://{listen}/readyz"), &mut up).await?;

    let repo = state.join("gitops.git");
    let path = "main:apps/checkout/kustomization.yaml";
    assert!(
        git(&repo, &["show", path])?.contains("newTag: v1.5.0"),
        "the example app starts on the bad release"
    );
    let token = std::fs::read_to_string(state.join("token"))?;
    // The README's curl example, with its body file.
    let out = Command::new("curl")
        .args(["-sS", "-f", "-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(format!(
            "@{}",
            workspace_root().join("examples/alertmanager-firing.json").display()
        ))
        .arg(format!("http://{listen}/v1/alerts/alertmanager"))
        .output()?;
    ensure!(
        out.status.success(),
        "curl: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    wait_for(
        Duration::from_secs(10),
        "the rollback on the example repository's main",
        || async {
            git(&repo, &["show", path])
                .ok()
                .filter(|text| text.contains("newTag: v1.4.1"))
                .map(|_| ())
        },
    )
    .await
    .with_context(|| up.output())?;
    let subject = git(&repo, &["log", "-1", "--format=%s", "main"])?;
    assert_eq!(subject, "selfheal: roll back checkout from v1.5.0 to v1.4.1");

    // The remediation, as `selfheal remediations list` shows it.
    let listed = wait_for(
        Duration::from_secs(10),
        "the merged remediation in the list",
        || async {
            let out = Command::new(binary("selfheal").ok()?)
                .args(["remediations", "list", "--json", "--state", "merged", "--addr"])
                .arg(format!("http://{pr_grpc}"))
                .arg("--token-file")
                .arg(state.join("token"))
                .output()
                .ok()?;
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (listed.as_array()?.len() == 1).then_some(listed)
        },
    )
    .await
    .with_context(|| up.output())?;
    assert_eq!(listed[0]["service"], "checkout");
    assert_eq!(
        (listed[0]["from"].as_str(), listed[0]["to"].as_str()),
        (Some("v1.5.0"), Some("v1.4.1"))
    );
    up.check_running()?;
    Ok(())
}
