//! The bus over TLS and mutual TLS, with credentials, on a real nats-server: certificates made
//! here with `openssl` (a CA, the server's for 127.0.0.1, a client's). A service with the CA, its
//! client certificate and its password connects and is ready; without credentials, without a
//! client certificate, or trusting another CA, it stops at start-up — the last naming the CA file.

use std::time::Duration;

use selfheal_e2e::{
    Nats, Process, TOKEN, binary, free_port,
    tls::{ca, leaf},
    wait_ready,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_with_credentials_and_clear_refusals() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let certs = temp.path();
    ca(certs, "ca")?;
    ca(certs, "other-ca")?;
    leaf(certs, "server", "ca", "serverAuth")?;
    leaf(certs, "gateway", "ca", "clientAuth")?;
    let password = certs.join("gateway-password");
    std::fs::write(&password, "gw-s3cret\n")?;
    let file = |name: &str| certs.join(name).display().to_string();
    let nats = Nats::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n\
         authorization {{\n  users = [ {{ user: \"gateway\", password: \"gw-s3cret\" }} ]\n}}\n",
        file("server.pem"),
        file("server.key"),
        file("ca.pem"),
    ))
    .await?;
    let url = format!("tls://127.0.0.1:{}", nats.port);

    let gateway = |name: &str, extra: &[(&'static str, String)]| -> anyhow::Result<(Process, u16)> {
        let port = free_port()?;
        let mut env = vec![
            ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
            ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
            ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
            ("SELFHEAL_GATEWAY_NATS_URL", url.clone()),
            ("RUST_LOG", "warn".to_string()),
        ];
        env.extend(extra.iter().cloned());
        Ok((
            Process::start(name, &binary("selfheal-gateway")?, &[], &env, temp.path())?,
            port,
        ))
    };
    let client_cert = [
        ("SELFHEAL_GATEWAY_NATS__TLS_CERT_FILE", file("gateway.pem")),
        ("SELFHEAL_GATEWAY_NATS__TLS_KEY_FILE", file("gateway.key")),
    ];
    let credentials = [
        ("SELFHEAL_GATEWAY_NATS__USER", "gateway".to_string()),
        ("SELFHEAL_GATEWAY_NATS__PASSWORD_FILE", password.display().to_string()),
    ];
    let ca_file = [("SELFHEAL_GATEWAY_NATS__TLS_CA_FILE", file("ca.pem"))];

    // Everything right: connected, ready.
    let all: Vec<_> = ca_file
        .iter()
        .chain(&client_cert)
        .chain(&credentials)
        .cloned()
        .collect();
    let (mut good, port) = gateway("gateway-ok", &all)?;
    wait_ready(&format!("http://127.0.0.1:{port}/readyz"), &mut good).await?;
    good.check_running()?;

    // The wrong CA: the server's certificate is not trusted; the error names the file.
    let other_ca = [("SELFHEAL_GATEWAY_NATS__TLS_CA_FILE", file("other-ca.pem"))];
    let wrong: Vec<_> = other_ca
        .iter()
        .chain(&client_cert)
        .chain(&credentials)
        .cloned()
        .collect();
    let (mut process, _) = gateway("gateway-wrong-ca", &wrong)?;
    let status = process.wait_exit(Duration::from_secs(20)).await?;
    let output = process.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("nats.tls_ca_file {}", file("other-ca.pem"))) && output.contains("UnknownIssuer"),
        "{output}"
    );

    // No client certificate (the server verifies clients), or no credentials: refused.
    for (name, env, why) in [
        (
            "gateway-no-cert",
            ca_file.iter().chain(&credentials).cloned().collect::<Vec<_>>(),
            "CertificateRequired",
        ),
        (
            "gateway-no-credentials",
            ca_file.iter().chain(&client_cert).cloned().collect(),
            "authorization violation",
        ),
    ] {
        let (mut process, _) = gateway(name, &env)?;
        let status = process.wait_exit(Duration::from_secs(20)).await?;
        let output = process.output();
        assert!(!status.success(), "{name}: {output}");
        assert!(
            output.contains("cannot connect to the bus") && output.contains(why),
            "{name} says what failed: {output}"
        );
        assert!(!output.contains("gw-s3cret"), "no secret in the output: {output}");
    }
    good.check_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_servers_is_taken_and_a_password_in_the_url_is_never_shown() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    // A port bound but not listening: connections to it are refused, and no other process of
    // the suite can take it meanwhile (a port merely found free could be).
    let dead_socket = tokio::net::TcpSocket::new_v4()?;
    dead_socket.bind("127.0.0.1:0".parse()?)?;
    let dead = dead_socket.local_addr()?.port();
    let start = |name: &str, url: String| -> anyhow::Result<(Process, u16)> {
        let port = free_port()?;
        let env = vec![
            ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
            ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
            ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
            ("SELFHEAL_GATEWAY_NATS_URL", url),
            ("RUST_LOG", "warn".to_string()),
        ];
        Ok((
            Process::start(name, &binary("selfheal-gateway")?, &[], &env, temp.path())?,
            port,
        ))
    };
    // A cluster's seeds, the first of them down: the service connects to one that is up.
    let (mut gateway, port) = start(
        "gateway-seeds",
        format!("nats://127.0.0.1:{dead}, nats://127.0.0.1:{}", nats.port),
    )?;
    wait_ready(&format!("http://127.0.0.1:{port}/readyz"), &mut gateway).await?;
    // Only a dead server, with a password in its URL: the error shows the URL without it.
    let (mut refused, _) = start("gateway-dead", format!("nats://gateway:pa55word@127.0.0.1:{dead}"))?;
    let status = refused.wait_exit(Duration::from_secs(30)).await?;
    let output = refused.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("nats://gateway:[redacted]@127.0.0.1:{dead}")),
        "{output}"
    );
    assert!(!output.contains("pa55word"), "{output}");
    gateway.check_running()?;
    Ok(())
}
