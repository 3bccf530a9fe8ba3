//! The command line as a person uses it: `selfheal policy test` and `selfheal policy eval`.

use std::{process::Command, time::Duration};

use selfheal_e2e::{binary, workspace_root};

#[test]
fn policy_test_names_failures_and_exits_non_zero() -> anyhow::Result<()> {
    let selfheal = binary("selfheal")?;
    let passing = Command::new(&selfheal)
        .args(["policy", "test"])
        .arg(workspace_root().join("deploy/policies"))
        .output()?;
    let stdout = String::from_utf8_lossy(&passing.stdout);
    assert!(
        passing.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&passing.stderr)
    );
    assert!(
        stdout.contains("PASS data.selfheal.test_escalate_when_prometheus_is_down"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("p.rego"),
        "package p\nimport rego.v1\nanswer := 41\ntest_answer if answer == 42\ntest_ok if answer == 41\n",
    )?;
    let failing = Command::new(&selfheal)
        .args(["policy", "test"])
        .arg(dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&failing.stdout);
    assert_eq!(failing.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL data.p.test_answer"), "{stdout}");
    assert!(stdout.contains("PASS data.p.test_ok"), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    Ok(())
}

#[test]
fn policy_eval_prints_the_input_and_the_decision() -> anyhow::Result<()> {
    let output = Command::new(binary("selfheal")?)
        .current_dir(workspace_root())
        .args(["policy", "eval", "--alert", "examples/alertmanager-firing.json"])
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(printed["input"]["alert"]["labels"]["service"], "checkout");
    assert_eq!(printed["decision"]["action"], "rollback");
    assert!(
        printed["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("checkout"))
    );
    Ok(())
}

/// `selfheal policy eval` with arguments; its printed JSON, or its error.
fn eval(args: &[&str]) -> anyhow::Result<Result<serde_json::Value, String>> {
    let output = Command::new(binary("selfheal")?)
        .current_dir(workspace_root())
        .args(["policy", "eval"])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Ok(Err(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(Ok(serde_json::from_slice(&output.stdout)?))
}

#[test]
fn policy_eval_takes_metrics_and_a_whole_input() -> anyhow::Result<()> {
    let alert = ["--alert", "examples/alertmanager-firing.json"];
    // The metrics confirm the alert: rollback, saying so; they do not: nothing.
    let confirmed = eval(&[&alert[..], &["--metric", "error_rate=0.12", "--metric", "restarts=5"]].concat())?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        confirmed["input"]["metrics"],
        serde_json::json!({"error_rate": 0.12, "restarts": 5.0})
    );
    assert_eq!(confirmed["decision"]["action"], "rollback");
    assert!(
        confirmed["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error rate 12%")),
        "{confirmed}"
    );
    let calm = eval(&[&alert[..], &["--metric", "error_rate=0.01", "--metric", "restarts=5"]].concat())?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(calm["decision"]["action"], "none", "{calm}");
    // The input it printed, given whole, is decided the same.
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.json");
    std::fs::write(&input, serde_json::to_vec(&confirmed["input"])?)?;
    let whole = eval(&["--input", &input.display().to_string()])?.map_err(anyhow::Error::msg)?;
    assert_eq!(whole["decision"], confirmed["decision"]);
    // A metric without a value is refused, saying how to write one.
    let refused = eval(&[&alert[..], &["--metric", "error_rate"]].concat())?;
    assert!(refused.as_ref().is_err_and(|e| e.contains("NAME=VALUE")), "{refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_flips_the_shared_bucket() -> anyhow::Result<()> {
    let nats = selfheal_e2e::Nats::start().await?;
    let selfheal = binary("selfheal")?;
    for (state, expected) in [
        ("on", "kill switch is on"),
        ("status", "kill switch is on"),
        ("off", "kill switch is off"),
    ] {
        let output = Command::new(&selfheal)
            .args(["kill-switch", state, "--nats-url", &nats.url()])
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with(expected), "{state}: {stdout}");
    }
    // What the policy replicas read.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let value = js.get_key_value("selfheal_control").await?.get("kill_switch").await?;
    assert_eq!(value.as_deref(), Some(&b"off"[..]));
    Ok(())
}

/// The reservations' bucket ages its entries out (twice the longest limit window); the kill switch
/// must not age out with them: on stays on until somebody turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_outlives_the_reservations() -> anyhow::Result<()> {
    let nats = selfheal_e2e::Nats::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    // As a policy replica with one-second windows opens it.
    let actions = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "selfheal_actions".into(),
            history: 1,
            max_age: Duration::from_secs(2),
            ..Default::default()
        })
        .await?;
    let selfheal = binary("selfheal")?;
    let switch = |state: &str| -> anyhow::Result<String> {
        let output = Command::new(&selfheal)
            .args(["kill-switch", state, "--nats-url", &nats.url()])
            .output()?;
        anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    assert!(switch("on")?.starts_with("kill switch is on"));
    // A reservation written after the switch, then aged out.
    actions.put("service.checkout", "[]".into()).await?;
    selfheal_e2e::wait_for(Duration::from_secs(30), "the reservation to age out", || {
        let actions = actions.clone();
        async move { matches!(actions.get("service.checkout").await, Ok(None)).then_some(()) }
    })
    .await?;
    let status = switch("status")?;
    assert!(status.starts_with("kill switch is on"), "{status}");
    Ok(())
}
