//! Packaging that Rust can check: the Dockerfile builds with the very cargo command CI runs, and
//! every configuration file shipped for docker compose and in the Helm charts' default values is
//! one the services accept. (deploy/tests/check_packaging.py checks the compose file and the
//! charts themselves with docker-compose, Helm and the Kubernetes schemas.)

use std::process::Command;

use anyhow::{Context, bail, ensure};
use selfheal_e2e::workspace_root;

/// The `cargo build` line of a file: the Dockerfile's `RUN cargo build ...`, or scripts/test's.
fn cargo_build_line(text: &str) -> Option<String> {
    text.lines()
        .map(|line| line.trim().trim_start_matches("RUN ").trim())
        .find(|line| line.starts_with("cargo build"))
        .map(str::to_string)
}

#[test]
fn the_dockerfile_builds_with_the_command_ci_runs() -> anyhow::Result<()> {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    let ci = std::fs::read_to_string(root.join("scripts/test"))?;
    let image_build = cargo_build_line(&dockerfile).context("the Dockerfile runs no cargo build")?;
    let ci_build = cargo_build_line(&ci).context("scripts/test runs no cargo build")?;
    assert_eq!(image_build, ci_build, "the image must ship what CI builds and tests");

    // Run it (after CI's own build this only confirms it is up to date).
    let args: Vec<&str> = image_build.split_whitespace().skip(1).collect();
    // With the environment a shell would give it: the variables cargo sets for this test
    // (CARGO_PKG_*, ...) would make build scripts rerun and the build differ from CI's.
    let keep = [
        "PATH",
        "HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        // scripts/test turns incremental builds off and builds through clippy's driver;
        // cargo's fingerprint includes both, so without them here every workspace crate would
        // be built a second time.
        "CARGO_INCREMENTAL",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
    ];
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(&root)
        .env_clear()
        .envs(std::env::vars().filter(|(key, _)| keep.contains(&key.as_str())))
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "`{image_build}` failed");

    // Every binary the Dockerfile can put in an image is one that command builds.
    let target = selfheal_e2e::target_dir()?;
    let mut binaries = 0;
    for line in dockerfile.lines().filter(|l| l.contains(") bin=")) {
        let bin = line
            .split("bin=")
            .nth(1)
            .map(|b| b.trim_end_matches([' ', ';', '\\']).trim())
            .context("a bin= without a name")?;
        let names: Vec<String> = if bin.contains("$SERVICE") {
            ["gateway", "policy", "pr-controller", "notifier"]
                .iter()
                .map(|s| bin.replace("\"", "").replace("$SERVICE", s))
                .collect()
        } else {
            vec![bin.to_string()]
        };
        for name in names {
            ensure!(target.join(&name).is_file(), "{name} is not built by `{image_build}`");
            binaries += 1;
        }
    }
    assert_eq!(
        binaries, 6,
        "gateway, policy, pr-controller, notifier, cli and demo-app"
    );
    Ok(())
}

fn load<T: serde::de::DeserializeOwned + serde::Serialize + Default>(text: &str, prefix: &str) -> anyhow::Result<T> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text)?;
    selfheal_config::load::<T>(Some(&path), prefix).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check(service: &str, text: &str) -> anyhow::Result<()> {
    match service {
        "gateway" => load::<selfheal_gateway::GatewayConfig>(text, "SELFHEAL_GATEWAY_").map(|_| ()),
        "policy" => load::<selfheal_policy::PolicyConfig>(text, "SELFHEAL_POLICY_").map(|_| ()),
        "pr-controller" => {
            let config = load::<selfheal_pr_controller::PrControllerConfig>(text, "SELFHEAL_PR_CONTROLLER_")?;
            config.targets().map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
        }
        "notifier" => load::<selfheal_notifier::NotifierConfig>(text, "SELFHEAL_NOTIFIER_").map(|_| ()),
        other => bail!("unknown service {other}"),
    }
}

#[test]
fn shipped_configuration_is_accepted_by_the_services() -> anyhow::Result<()> {
    let root = workspace_root();
    for service in ["gateway", "policy", "pr-controller", "notifier"] {
        let compose = std::fs::read_to_string(root.join(format!("deploy/compose/{service}.toml")))?;
        check(service, &compose).with_context(|| format!("deploy/compose/{service}.toml"))?;
        let values: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
            root.join(format!("deploy/helm/{service}/values.yaml")),
        )?)?;
        let config = values["config"].as_str().context("values.yaml has no config")?;
        check(service, config).with_context(|| format!("deploy/helm/{service}/values.yaml config"))?;
    }
    // The forge configurations docker-compose.yml can run instead of the local repository.
    let forges = root.join("deploy/compose/forges");
    let mut checked = 0;
    for entry in std::fs::read_dir(&forges)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)?;
            check("pr-controller", &text).with_context(|| path.display().to_string())?;
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "gitlab, gitea, github and remote");
    // And a wrong key is refused, so the checks above can fail.
    assert!(check("gateway", "no_such_key = 1").is_err());
    Ok(())
}
