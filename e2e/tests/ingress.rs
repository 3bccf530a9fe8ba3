//! The gateway's ingress against the real binary, as an attacker would try it: a signed body
//! sent again after its window is refused; an over-long free-text field refuses its alert alone,
//! named, while the rest of the body is stored; a connection that sends its headers a line at a
//! time is closed at the header timeout; 10,000 idle connections do not keep a normal request
//! from being answered.

use std::time::Duration;

use anyhow::Context;
use selfheal_e2e::{Nats, post_alerts, start_gateway, webhook_body};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "a-signing-key";

async fn post_signed(client: &reqwest::Client, base: &str, body: &[u8], at: i64) -> anyhow::Result<u16> {
    let (timestamp, signature) = selfheal_gateway::auth::sign(KEY.as_bytes(), at, body);
    let response = client
        .post(format!("{base}/v1/alerts/alertmanager"))
        .header("content-type", "application/json")
        .header("x-selfheal-timestamp", timestamp)
        .header("x-selfheal-signature", signature)
        .body(body.to_vec())
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_signed_body_and_an_over_long_field_are_refused() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, base) = start_gateway(
        &nats,
        "gateway",
        &[
            ("SELFHEAL_GATEWAY_HMAC_KEY", KEY.to_string()),
            ("SELFHEAL_GATEWAY_SIGNATURE_WINDOW", "5m".to_string()),
        ],
        temp.path(),
    )
    .await?;
    let client = reqwest::Client::new();

    // Signed now: taken. The same body with the signature it had an hour ago: a replay, 401.
    let labels = json!({"alertname": "Signed", "service": "checkout"});
    let body = webhook_body(labels, "2026-12-01T10:00:00Z", "5160");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(post_signed(&client, &base, &body, now).await?, 200);
    assert_eq!(post_signed(&client, &base, &body, now - 3600).await?, 401);
    assert_eq!(post_signed(&client, &base, &body, now + 3600).await?, 401);

    // Two alerts, the second with a generatorURL past the limit: it alone is refused, named.
    let mut webhook: Value = serde_json::from_slice(&webhook_body(
        json!({"alertname": "Long", "service": "cart"}),
        "2026-12-01T10:00:00Z",
        "a1",
    ))?;
    let mut long = webhook["alerts"][0].clone();
    long["fingerprint"] = json!("a2");
    long["labels"]["service"] = json!("payments");
    long["generatorURL"] = json!(format!("http://prometheus/graph?g0.expr={}", "x".repeat(5000)));
    webhook["alerts"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("alerts"))?
        .push(long);
    let response = post_alerts(&client, &base, serde_json::to_vec(&webhook)?).await?;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await?;
    assert_eq!(answer["incidents"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["incidents"][0]["service"], "cart", "{answer}");
    assert_eq!(answer["refused"][0]["field"], "alerts[1].generatorURL", "{answer}");
    assert!(
        answer["refused"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than the limit of 4096"),
        "{answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_connection_is_closed_at_the_header_timeout() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, base) = start_gateway(
        &nats,
        "gateway",
        &[("SELFHEAL_GATEWAY_HTTP__HEADER_TIMEOUT", "2s".to_string())],
        temp.path(),
    )
    .await?;
    let address = base.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&address).await?;
    let (mut read, mut write) = stream.into_split();
    let started = tokio::time::Instant::now();
    // One header line every 500 ms, for 30 s if the server let it.
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        if write
            .write_all(b"POST /v1/alerts/alertmanager HTTP/1.1\r\nHost: gateway\r\n")
            .await
            .is_err()
        {
            return sent;
        }
        while sent < 60 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if write
                .write_all(format!("X-Slow-{sent}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    // The server closes it (after answering 408, or not): the read ends.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer))
        .await
        .context("still open after 30 s")??;
    let closed = started.elapsed();
    writer.abort();
    eprintln!(
        "slow-header connection closed after {:.1} s (header timeout 2 s): {:?}",
        closed.as_secs_f64(),
        String::from_utf8_lossy(&answer).lines().next().unwrap_or("no answer")
    );
    assert!(closed < Duration::from_secs(10), "closed only after {closed:?}");
    Ok(())
}

/// Opens `count` idle connections to `address` from a child process (Python's, which may raise
/// its own open-file limit to the hard limit) and holds them until it is dropped.
async fn idle_connections(address: &str, count: usize) -> anyhow::Result<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt as _;
    let (host, port) = address.rsplit_once(':').context("host:port")?;
    let script = format!(
        "import resource, socket, sys\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
         held = [socket.create_connection(('{host}', {port})) for _ in range({count})]\n\
         print('open', len(held), flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("the connections not open in 120 s")??
        .context("python3 ended without opening them")?;
    anyhow::ensure!(line == format!("open {count}"), "{line}");
    Ok(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_keep_a_request_from_being_answered() -> anyhow::Result<()> {
    const IDLE: usize = 10_000;
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    // The gateway may keep as many files open as the hard limit allows (as a container's
    // `ulimit` would set it).
    let port = selfheal_e2e::free_port()?;
    let env = [
        ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
        (
            "SELFHEAL_GATEWAY_GRPC_LISTEN",
            format!("127.0.0.1:{}", selfheal_e2e::free_port()?),
        ),
        ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
        ("SELFHEAL_GATEWAY_TOKEN", selfheal_e2e::TOKEN.to_string()),
        // Long enough that none of them is closed for idling while the test runs.
        ("SELFHEAL_GATEWAY_HTTP__HEADER_TIMEOUT", "5m".to_string()),
    ];
    let gateway_binary = selfheal_e2e::binary("selfheal-gateway")?;
    let gateway_path = gateway_binary.to_str().context("utf-8 path")?;
    let mut gateway = selfheal_e2e::Process::start(
        "gateway",
        std::path::Path::new("sh"),
        &["-c", "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\"", gateway_path],
        &env,
        temp.path(),
    )?;
    let base = format!("http://127.0.0.1:{port}");
    selfheal_e2e::wait_ready(&format!("{base}/readyz"), &mut gateway).await?;
    let opened = tokio::time::Instant::now();
    let held = idle_connections(&format!("127.0.0.1:{port}"), IDLE).await?;
    let opened = opened.elapsed();
    // All open, none sending anything: a normal request is answered.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
    let asked = tokio::time::Instant::now();
    let labels = json!({"alertname": "Normal", "service": "checkout"});
    let response = post_alerts(&client, &base, webhook_body(labels, "2026-12-01T10:00:00Z", "n1")).await?;
    assert_eq!(response.status(), 200);
    eprintln!(
        "{IDLE} idle connections opened in {:.1} s; a request beside them answered in {:.0} ms",
        opened.as_secs_f64(),
        asked.elapsed().as_secs_f64() * 1000.0
    );
    drop(held);
    gateway.check_running()?;
    Ok(())
}
