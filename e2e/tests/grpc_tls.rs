//! gRPC over TLS on the real binaries, with certificates made here by `openssl`: every service
//! serves TLS only (the pr-controller asks for client certificates too); the policy calls the
//! pr-controller's `DescribeTarget` over mutual TLS; the `selfheal` CLI lists remediations and
//! the audit log over TLS; a client that someone else's toolchain made from `proto/` — Python's
//! grpcio-tools — ingests an alert with an `ingest` token and lists remediations with a `read`
//! token, and finds `grpc.health.v1` and server reflection on every service. Plaintext clients,
//! clients without a certificate or with a stranger's are refused; a rotated server certificate
//! is used from the next connection on, with no restart.

use std::{path::Path, process::Output};

use anyhow::{Context, ensure};
use selfheal_e2e::{
    binary,
    stack::{Stack, events, until},
    tls::{ca, leaf},
    workspace_root,
};
use selfheal_proto::v1::Action;
use serde_json::Value;

const INGEST_TOKEN: &str = "ingest-t0ken";
const READ_TOKEN: &str = "read-t0ken";

/// The Python client: `selfheal_client.py` with the stubs in `stubs`, a client certificate
/// `cert` ("-" for none), trusting `ca`.
struct Python<'a> {
    stubs: &'a Path,
    certs: &'a Path,
}

impl Python<'_> {
    async fn run(&self, ca: &str, cert: &str, args: &[&str]) -> anyhow::Result<Value> {
        let (cert_file, key_file) = match cert {
            "-" => ("-".to_string(), "-".to_string()),
            name => (
                self.certs.join(format!("{name}.pem")).display().to_string(),
                self.certs.join(format!("{name}.key")).display().to_string(),
            ),
        };
        let script = workspace_root().join("e2e/python/selfheal_client.py");
        let ca = self.certs.join(format!("{ca}.pem"));
        let output = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(self.stubs)
            .arg(&ca)
            .args([&cert_file, &key_file])
            .args(args)
            .output()
            .await?;
        ensure!(
            output.status.success(),
            "selfheal_client.py {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "selfheal_client.py {args:?}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

async fn selfheal<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(binary("selfheal")?)
        .args(args)
        .env_remove("SELFHEAL_TOKEN")
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_for_the_cli_the_policy_and_a_python_client() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let certs = temp.path().join("certs");
    std::fs::create_dir(&certs)?;
    ca(&certs, "ca")?;
    ca(&certs, "other-ca")?;
    leaf(&certs, "server", "ca", "serverAuth")?;
    leaf(&certs, "pr", "ca", "serverAuth")?;
    leaf(&certs, "client", "ca", "clientAuth")?;
    leaf(&certs, "stranger", "other-ca", "clientAuth")?;
    let cert = |name: &str| certs.join(name).display().to_string();

    // The Python stubs, made from proto/ by grpcio-tools.
    let stubs = temp.path().join("stubs");
    std::fs::create_dir(&stubs)?;
    let protos: Vec<String> = ["audit", "events", "gateway", "policy", "remediations"]
        .iter()
        .map(|p| format!("selfheal/v1/{p}.proto"))
        .collect();
    let protoc = tokio::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(workspace_root().join("proto"))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args(&protos)
        .output()
        .await
        .context("python3 must be installed")?;
    ensure!(
        protoc.status.success(),
        "grpc_tools.protoc (pip install grpcio-tools grpcio-health-checking grpcio-reflection): {}",
        String::from_utf8_lossy(&protoc.stderr)
    );

    std::fs::write(
        temp.path().join("gateway.toml"),
        format!(
            "[grpc_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[[grpc_tokens]]\nname = \"python-ingest\"\ntoken = \"{INGEST_TOKEN}\"\nroles = [\"ingest\"]\n",
            cert("server.pem"),
            cert("server.key")
        ),
    )?;
    std::fs::write(
        temp.path().join("pr-controller.toml"),
        format!(
            "[grpc_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n[[grpc_tokens]]\nname = \"python-read\"\ntoken = \"{READ_TOKEN}\"\nroles = [\"read\"]\n",
            cert("pr.pem"),
            cert("pr.key"),
            cert("ca.pem")
        ),
    )?;
    let env: Vec<(&'static str, String)> = vec![
        (
            "SELFHEAL_GATEWAY_CONFIG",
            temp.path().join("gateway.toml").display().to_string(),
        ),
        (
            "SELFHEAL_PR_CONTROLLER_CONFIG",
            temp.path().join("pr-controller.toml").display().to_string(),
        ),
        ("SELFHEAL_POLICY_GRPC_TLS__CERT_FILE", cert("server.pem")),
        ("SELFHEAL_POLICY_GRPC_TLS__KEY_FILE", cert("server.key")),
        ("SELFHEAL_POLICY_TARGET__TLS__CA_FILE", cert("ca.pem")),
        ("SELFHEAL_POLICY_TARGET__TLS__CERT_FILE", cert("client.pem")),
        ("SELFHEAL_POLICY_TARGET__TLS__KEY_FILE", cert("client.key")),
        ("SELFHEAL_NOTIFIER_GRPC_TLS__CERT_FILE", cert("server.pem")),
        ("SELFHEAL_NOTIFIER_GRPC_TLS__KEY_FILE", cert("server.key")),
    ];
    let stack = Stack::start(temp.path(), &[], &[("checkout", &[("v1", 2)])], &env).await?;
    let address = |name: &str| stack.grpc_address(name).context("no gRPC address");
    let (gateway, pr, notifier) = (address("gateway")?, address("pr-controller")?, address("notifier")?);
    let python = Python {
        stubs: &stubs,
        certs: &certs,
    };

    // Health and reflection answer on every service; plaintext is refused on each.
    for (name, service, methods) in [
        ("gateway", "selfheal.v1.Gateway", "GetIncident Ingest ListIncidents"),
        ("policy", "selfheal.v1.Policy", "Evaluate ListPolicies Reload"),
        (
            "pr-controller",
            "selfheal.v1.Remediations",
            "Approve DescribeTarget Get List Reject Retry",
        ),
        ("notifier", "selfheal.v1.Audit", "Query Stats"),
    ] {
        let addr = address(name)?;
        let health = python.run("ca", "client", &["health", &addr, service]).await?;
        ensure!(
            health["statuses"][""] == "SERVING" && health["statuses"][service] == "SERVING",
            "{name}: {health}"
        );
        let reflected = python.run("ca", "client", &["reflect", &addr, service]).await?;
        let listed: Vec<&str> = reflected["services"]
            .as_array()
            .context("services")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            listed.contains(&service) && listed.contains(&"grpc.health.v1.Health"),
            "{name}: {reflected}"
        );
        let described: Vec<&str> = reflected["methods"]
            .as_array()
            .context("methods")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(described.join(" ") == methods, "{name}: {reflected}");
        let plaintext = python.run("ca", "-", &["plaintext", &addr]).await?;
        ensure!(
            plaintext["error"] == "UNAVAILABLE",
            "{name} answered plaintext: {plaintext}"
        );
    }
    // The pr-controller asks for a client certificate, from its CA.
    for (who, cert) in [("no certificate", "-"), ("a stranger's certificate", "stranger")] {
        let refused = python.run("ca", cert, &["remediations", &pr, READ_TOKEN]).await?;
        ensure!(refused["error"] == "UNAVAILABLE", "with {who}: {refused}");
    }

    // An integrator's alert, over TLS with an ingest token (which may not read).
    let ingested = python
        .run("ca", "-", &["ingest", &gateway, INGEST_TOKEN, "checkout"])
        .await?;
    ensure!(ingested["alerts"][0]["outcome"] == "opened", "{ingested}");
    let denied = python.run("ca", "-", &["incidents", &gateway, INGEST_TOKEN]).await?;
    ensure!(
        denied["error"] == "PERMISSION_DENIED"
            && denied["details"]
                .as_str()
                .is_some_and(|d| d.contains("python-ingest") && d.contains("read")),
        "{denied}"
    );

    // The policy read the replicas from the pr-controller over mutual TLS: it scales 2 → 3.
    let nats_url = stack.nats_url.clone();
    until("the policy's decision", &stack, async || {
        events(&nats_url, "checkout")
            .await
            .is_ok_and(|(decisions, _)| !decisions.is_empty())
    })
    .await?;
    let (decisions, _) = events(&nats_url, "checkout").await?;
    ensure!(
        decisions[0].action() == Action::Scale && decisions[0].reason.contains("scale from 2 to 3"),
        "{:?}",
        decisions[0]
    );

    // The remediation, read by Python with a read token and by the CLI, both over TLS.
    until("the remediation", &stack, async || {
        python
            .run("ca", "client", &["remediations", &pr, READ_TOKEN])
            .await
            .is_ok_and(|listed| listed["remediations"].as_array().is_some_and(|r| !r.is_empty()))
    })
    .await?;
    let listed = python.run("ca", "client", &["remediations", &pr, READ_TOKEN]).await?;
    ensure!(
        listed["remediations"][0]["service"] == "checkout" && listed["remediations"][0]["to"] == "3",
        "{listed}"
    );
    let https = |addr: &str| format!("https://{addr}");
    let ca_pem = cert("ca.pem");
    let list = |addr: String, ca: String| {
        vec![
            "remediations".to_string(),
            "list".into(),
            "--json".into(),
            "--addr".into(),
            addr,
            "--tls-ca-file".into(),
            ca,
            "--tls-cert-file".into(),
            cert("client.pem"),
            "--tls-key-file".into(),
            cert("client.key"),
            "--token".into(),
            READ_TOKEN.into(),
        ]
    };
    let output = selfheal(&list(https(&pr), ca_pem.clone())).await?;
    ensure!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("checkout"),
        "selfheal remediations list over TLS: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let audit = selfheal(&[
        "audit",
        "--json",
        "--addr",
        &https(&notifier),
        "--tls-ca-file",
        &ca_pem,
        "--token",
        selfheal_e2e::TOKEN,
    ])
    .await?;
    ensure!(
        audit.status.success(),
        "selfheal audit over TLS: {}",
        String::from_utf8_lossy(&audit.stderr)
    );
    // A plaintext address to a TLS server fails, and says where it was going.
    let plain = format!("http://{pr}");
    let output = selfheal(&["remediations", "list", "--addr", &plain, "--token", READ_TOKEN]).await?;
    ensure!(
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains(&plain),
        "plaintext CLI: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The pr-controller's certificate rotates to one from another CA: the next connection uses
    // it, with no restart (clients that trust only the old CA now fail).
    ca(&certs, "new-ca")?;
    leaf(&certs, "pr-next", "new-ca", "serverAuth")?;
    std::fs::rename(certs.join("pr-next.key"), certs.join("pr.key"))?;
    std::fs::rename(certs.join("pr-next.pem"), certs.join("pr.pem"))?;
    let rotated = list(https(&pr), cert("new-ca.pem"));
    until("the rotated certificate", &stack, async || {
        selfheal(&rotated).await.is_ok_and(|o| o.status.success())
    })
    .await?;
    let output = selfheal(&list(https(&pr), ca_pem.clone())).await?;
    ensure!(
        !output.status.success(),
        "the old certificate is still served after rotation"
    );
    Ok(())
}
