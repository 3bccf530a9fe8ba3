//! Every service starts the same way: a bad setting is a clear error naming it, exit code 64,
//! before anything is reached (the NATS URL here points at nothing: a service that got as far as
//! the bus would fail with 1 instead).

use std::process::{Command, Stdio};

use selfheal_e2e::{binary, free_port};

/// Runs `name` with `env` (and nothing else of this process's settings) and returns its exit
/// code and output.
fn start(name: &str, env: &[(&str, String)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = Command::new(binary(name)?);
    command.env_clear().stdin(Stdio::null()).env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), text))
}

/// A binary, its environment, and what its error must name.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

#[test]
fn a_bad_setting_exits_64_naming_it_before_the_bus_is_reached() -> anyhow::Result<()> {
    let nowhere = format!("nats://127.0.0.1:{}", free_port()?);
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("gitops.git");
    let git = Command::new("git").args(["init", "-q", "--bare"]).arg(&repo).status()?;
    assert!(git.success());
    let cases: Vec<Case> = vec![
        (
            "selfheal-gateway",
            vec![("SELFHEAL_GATEWAY_NATS_URL", nowhere.clone())],
            "token",
        ),
        (
            "selfheal-gateway",
            vec![
                ("SELFHEAL_GATEWAY_NATS_URL", nowhere.clone()),
                ("SELFHEAL_GATEWAY_TOKEN", "t".into()),
                ("SELFHEAL_GATEWAY_MAX_ALERTS", "many".into()),
            ],
            "MAX_ALERTS",
        ),
        (
            "selfheal-policy",
            vec![("SELFHEAL_POLICY_NATS_URL", nowhere.clone())],
            "SELFHEAL_POLICY_GRPC_TOKEN",
        ),
        (
            "selfheal-policy",
            vec![
                ("SELFHEAL_POLICY_NATS_URL", nowhere.clone()),
                ("SELFHEAL_POLICY_GRPC_TOKEN", "t".into()),
                (
                    "SELFHEAL_POLICY_POLICY_DIR",
                    dir.path().join("absent").display().to_string(),
                ),
            ],
            "policy_dir",
        ),
        (
            "selfheal-pr-controller",
            vec![("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone())],
            "SELFHEAL_PR_CONTROLLER_GRPC_TOKEN",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
                ("SELFHEAL_PR_CONTROLLER_VERIFY_WINDOWS", "{scale=\"soon\"}".into()),
            ],
            "VERIFY_WINDOWS",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
                ("SELFHEAL_PR_CONTROLLER_VERIFY_WINDOWS", "{scael=\"5m\"}".into()),
            ],
            "verify_windows.scael: not an action",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
                (
                    "SELFHEAL_PR_CONTROLLER_TARGETS",
                    r#"[{path="a.yaml"}, {path="b.yaml", match={cluster={regex="prod-("}}}]"#.into(),
                ),
            ],
            "targets[1].match.cluster: not a regex",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
                ("SELFHEAL_PR_CONTROLLER_TARGETS", r#"[{path="a.yaml"}]"#.into()),
                ("SELFHEAL_PR_CONTROLLER_TARGET__PATH", "b.yaml".into()),
            ],
            "set [[targets]] or the single [target], not both",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                (
                    "SELFHEAL_PR_CONTROLLER_REPOSITORY",
                    dir.path().join("mirror").display().to_string(),
                ),
                (
                    "SELFHEAL_PR_CONTROLLER_REMOTE__URL",
                    "ssh://git@127.0.0.1:1/gitops.git".into(),
                ),
                (
                    "SELFHEAL_PR_CONTROLLER_REMOTE__SSH_KEY_FILE",
                    repo.join("HEAD").display().to_string(),
                ),
            ],
            "remote.known_hosts_file: must be set with an SSH key",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                (
                    "SELFHEAL_PR_CONTROLLER_REMOTE__URL",
                    "https://ci:glpat-x@gitlab.example/gitops.git".into(),
                ),
            ],
            "must not carry a password or token",
        ),
        (
            "selfheal-pr-controller",
            vec![
                ("SELFHEAL_PR_CONTROLLER_NATS_URL", nowhere.clone()),
                ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "t".into()),
                (
                    "SELFHEAL_PR_CONTROLLER_REMOTE__URL",
                    "ssh://git@127.0.0.1:1/gitops.git".into(),
                ),
                ("SELFHEAL_PR_CONTROLLER_GITHUB__REPOSITORY", "acme/gitops".into()),
            ],
            "are all set: choose one place for the repository",
        ),
        (
            "selfheal-notifier",
            vec![("SELFHEAL_NOTIFIER_NATS_URL", nowhere.clone())],
            "SELFHEAL_NOTIFIER_GRPC_TOKEN",
        ),
    ];
    for (name, env, named) in cases {
        let (code, output) = start(name, &env)?;
        assert_eq!(code, Some(64), "{name} {env:?}:\n{output}");
        assert!(output.contains(named), "{name} names {named}:\n{output}");
        assert!(!output.contains("glpat-x"), "no secret in the output:\n{output}");
    }
    Ok(())
}
