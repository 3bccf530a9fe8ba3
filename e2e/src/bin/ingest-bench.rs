//! Ingest load benchmark: the gateway on a real nats-server against Alertmanager's own
//! `POST /api/v2/alerts`, same load, same run, same machine.
//!
//! ```sh
//! cargo build --release -p selfheal-gateway -p selfheal-e2e
//! target/release/ingest-bench --requests 20000 --concurrency 64
//! ```
//!
//! Each request carries one distinct alert. Prints alerts/s and p50/p99 latency for both, how
//! many alerts the stream holds against how many got 200, and the ceiling: raw JetStream
//! publishes to a stream like selfheal's (file storage, a `Nats-Msg-Id` per message, its ack
//! awaited), at the same concurrency on the same nats-server, and the gateway's share of it.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use selfheal_e2e::{Nats, Process, binary, free_port, wait_ready};
use serde_json::json;

const TOKEN: &str = "bench-token";

#[derive(Parser)]
#[command(about = "selfheal gateway vs Alertmanager ingest, side by side")]
struct Args {
    /// Requests per target (each one alert).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Warm-up requests per target, not measured.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Alertmanager binary (Debian's prometheus-alertmanager); skipped if missing.
    #[arg(long, default_value = "prometheus-alertmanager")]
    alertmanager: PathBuf,
}

struct Report {
    name: &'static str,
    ok: usize,
    failed: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }
    fn print(&self) {
        println!(
            "{:<28} {:>8} ok {:>6} failed {:>10.0} alerts/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
            self.name,
            self.ok,
            self.failed,
            self.ok as f64 / self.wall.as_secs_f64(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        );
    }
}

/// Sends `count` requests, numbered from `first`, over `concurrency` connections.
async fn load<F>(name: &'static str, first: usize, count: usize, concurrency: usize, request: F) -> Report
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + count;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (request, next) = (request.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return (latencies, failed);
                }
                let sent = Instant::now();
                match request(i).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => failed += 1,
                }
            }
        });
    }
    let mut report = Report {
        name,
        ok: 0,
        failed: 0,
        wall: Duration::ZERO,
        latencies: Vec::new(),
    };
    while let Some(Ok((latencies, failed))) = workers.join_next().await {
        report.ok += latencies.len();
        report.failed += failed;
        report.latencies.extend(latencies);
    }
    report.wall = started.elapsed();
    report.latencies.sort();
    report
}

fn starts_at(i: usize) -> String {
    format!(
        "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        1 + i / 2_592_000 % 12,
        1 + i / 86_400 % 28,
        i / 3600 % 24,
        i / 60 % 60,
        i % 60
    )
}

fn webhook(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": "4", "status": "firing", "receiver": "selfheal", "groupKey": format!("{{}}:{{i=\"{i}\"}}"),
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "BenchAlert", "service": format!("svc-{}", i % 50), "namespace": "bench", "cluster": "bench", "severity": "critical"},
            "annotations": {"summary": "benchmark"},
            "startsAt": starts_at(i), "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": format!("{i:016x}"),
        }],
    }))
    .unwrap_or_default()
}

fn alertmanager_alert(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!([{
        "labels": {"alertname": "BenchAlert", "service": format!("svc-{}", i % 50), "namespace": "bench", "cluster": "bench", "severity": "critical", "i": i.to_string()},
        "annotations": {"summary": "benchmark"},
        "startsAt": starts_at(i),
        "generatorURL": "http://prometheus/graph",
    }]))
    .unwrap_or_default()
}

/// `count` raw JetStream publishes over `concurrency` tasks, each awaiting its ack before the
/// next: what the gateway's durable publish costs at best, with nothing else around it.
async fn raw_jetstream(nats_url: &str, count: usize, concurrency: usize) -> anyhow::Result<Report> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    // About the size of an AlertEvent the gateway stores.
    let payload = bytes::Bytes::from(vec![b'x'; 420]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (js, next, payload) = (js.clone(), next.clone(), payload.clone());
        workers.spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return (latencies, failed);
                }
                let sent = Instant::now();
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("raw.{i}"));
                let stored = async {
                    js.send_publish(format!("bench.raw.svc-{}", i % 50), publish)
                        .await?
                        .await
                };
                match stored.await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => failed += 1,
                }
            }
        });
    }
    let mut report = Report {
        name: "raw JetStream publish",
        ok: 0,
        failed: 0,
        wall: Duration::ZERO,
        latencies: Vec::new(),
    };
    while let Some(joined) = workers.join_next().await {
        let (latencies, failed) = joined?;
        report.ok += latencies.len();
        report.failed += failed;
        report.latencies.extend(latencies);
    }
    report.wall = started.elapsed();
    report.latencies.sort();
    Ok(report)
}

async fn stream_messages(nats_url: &str) -> anyhow::Result<u64> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SELFHEAL").await?;
    Ok(stream.info().await?.state.messages)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;

    let nats = Nats::start().await?;
    let gateway_port = free_port()?;
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    let env = [
        ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{gateway_port}")),
        ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
        ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let mut gateway = Process::start("gateway", &binary("selfheal-gateway")?, &[], &env, temp.path())?;
    wait_ready(&format!("{gateway_url}/readyz"), &mut gateway).await?;

    let mut alertmanager = None;
    let am_port = free_port()?;
    let am_url = format!("http://127.0.0.1:{am_port}");
    let config = temp.path().join("am.yml");
    std::fs::write(&config, "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")?;
    let storage = temp.path().join("am-data");
    let am_args = [
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", storage.display()),
        format!("--web.listen-address=127.0.0.1:{am_port}"),
        "--cluster.listen-address=".to_string(),
    ];
    let am_args: Vec<&str> = am_args.iter().map(String::as_str).collect();
    match Process::start("alertmanager", &args.alertmanager, &am_args, &[], temp.path()) {
        Ok(mut process) => {
            wait_ready(&format!("{am_url}/-/ready"), &mut process).await?;
            alertmanager = Some(process);
        }
        Err(error) => eprintln!("alertmanager not run ({error:#}); install Debian's prometheus-alertmanager"),
    }

    println!(
        "{} requests per target, one alert each, {} connections, after {} warm-up requests",
        args.requests, args.concurrency, args.warmup
    );
    let gateway_request = {
        let (client, url) = (client.clone(), format!("{gateway_url}/v1/alerts/alertmanager"));
        move |i: usize| {
            client
                .post(&url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(webhook(i))
        }
    };
    let am_request = {
        let (client, url) = (client.clone(), format!("{am_url}/api/v2/alerts"));
        move |i: usize| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(alertmanager_alert(i))
        }
    };

    // Interleave warm-up, then measure each target in turn.
    load(
        "warm-up",
        10_000_000,
        args.warmup,
        args.concurrency,
        gateway_request.clone(),
    )
    .await;
    if alertmanager.is_some() {
        load("warm-up", 10_000_000, args.warmup, args.concurrency, am_request.clone()).await;
    }
    let before = stream_messages(&nats.url()).await?;
    let gateway_report = load(
        "selfheal gateway (JetStream)",
        0,
        args.requests,
        args.concurrency,
        gateway_request,
    )
    .await;
    let stored = stream_messages(&nats.url()).await? - before;
    let am_report = match &alertmanager {
        Some(_) => Some(
            load(
                "alertmanager /api/v2/alerts",
                0,
                args.requests,
                args.concurrency,
                am_request,
            )
            .await,
        ),
        None => None,
    };

    let raw_report = raw_jetstream(&nats.url(), args.requests, args.concurrency).await?;

    gateway_report.print();
    raw_report.print();
    let rate = |r: &Report| r.ok as f64 / r.wall.as_secs_f64();
    println!(
        "gateway / raw JetStream throughput: {:.0} %",
        100.0 * rate(&gateway_report) / rate(&raw_report)
    );
    if let Some(report) = &am_report {
        report.print();
        let ratio = (gateway_report.ok as f64 / gateway_report.wall.as_secs_f64())
            / (report.ok as f64 / report.wall.as_secs_f64());
        println!("gateway / alertmanager throughput: {ratio:.2}x");
    }
    println!("stream holds {stored} new alerts; {} got 200", gateway_report.ok);
    if stored != gateway_report.ok as u64 {
        bail!("stored ({stored}) != acknowledged ({})", gateway_report.ok);
    }
    gateway.check_running().context("gateway")?;
    Ok(())
}
