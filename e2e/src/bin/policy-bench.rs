//! Policy benchmark: gRPC `Evaluate` against the real policy service (default policy), and raw
//! regorus evaluation of the same input in-process, in the same run.
//!
//! ```sh
//! cargo build --release -p selfheal-policy -p selfheal-e2e --bin selfheal-policy --bin policy-bench
//! target/release/policy-bench --requests 50000 --concurrency 4
//! ```

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use selfheal_e2e::{Nats, Process, binary, free_port, wait_ready, workspace_root};
use selfheal_policy::engine::RegoEngine;
use selfheal_proto::{
    Timestamp,
    v1::{Alert, EvaluateRequest, policy_client::PolicyClient},
};
use tonic::{Request, transport::Channel};

const TOKEN: &str = "bench-token";

#[derive(Parser)]
#[command(about = "gRPC Evaluate vs raw regorus, side by side")]
struct Args {
    /// Evaluate calls.
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Concurrent calls in flight (over one HTTP/2 connection per 4 callers).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The policy service's worker threads (`TOKIO_WORKER_THREADS`). Unset: one per CPU but the
    /// one the callers run on (they share the machine; in production they are elsewhere). 0: one
    /// per CPU, the service's own default.
    #[arg(long)]
    service_workers: Option<usize>,
}

fn alert(i: usize) -> Alert {
    let labels: HashMap<String, String> = [
        ("alertname", "HighErrorRate"),
        ("service", "checkout"),
        ("namespace", "shop"),
        ("cluster", "prod"),
        ("severity", "critical"),
        ("auto_heal", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Alert {
        status: "firing".into(),
        labels,
        starts_at: Some(Timestamp {
            seconds: 1_764_000_000 + i as i64,
            nanos: 0,
        }),
        fingerprint: format!("{i:016x}"),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One thread: the callers share the machine with the service (two cores here), and a load
/// generator should take as little of it as it can.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (http, grpc) = (free_port()?, free_port()?);
    let policy_dir = workspace_root().join("deploy/policies");
    let env = [
        ("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{http}")),
        ("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("SELFHEAL_POLICY_NATS_URL", nats.url()),
        ("SELFHEAL_POLICY_POLICY_DIR", policy_dir.display().to_string()),
        ("SELFHEAL_POLICY_GRPC_TOKEN", TOKEN.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = match args.service_workers {
        Some(0) => cpus,
        Some(workers) => workers,
        None => cpus.saturating_sub(1).max(1),
    };
    let mut env = env.to_vec();
    env.push(("TOKIO_WORKER_THREADS", workers.to_string()));
    println!("policy service on {workers} worker thread(s) of {cpus} CPUs; the callers on one thread");
    let mut policy = Process::start("policy", &binary("selfheal-policy")?, &[], &env, temp.path())?;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz"), &mut policy).await?;

    let mut channels = Vec::new();
    for _ in 0..args.concurrency.div_ceil(4) {
        channels.push(
            Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
                .connect()
                .await?,
        );
    }
    let call = |client: &mut PolicyClient<Channel>, i: usize| {
        let mut request = Request::new(EvaluateRequest {
            alert: Some(alert(i)),
            dry_run: true,
        });
        let header = format!("Bearer {TOKEN}").parse();
        if let Ok(header) = header {
            request.metadata_mut().insert("authorization", header);
        }
        let mut client = client.clone();
        async move { client.evaluate(request).await }
    };
    // Warm up and check the answer once.
    let mut client = PolicyClient::new(channels[0].clone());
    let first = call(&mut client, 0).await?.into_inner();
    let action = first
        .decision
        .as_ref()
        .map(|d| d.action().as_str_name())
        .unwrap_or_default();
    println!("default policy decides {action} for a critical HighErrorRate");
    for i in 0..2_000 {
        call(&mut client, i).await?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let mut client = PolicyClient::new(channels[worker / 4].clone());
        let (next, requests) = (next.clone(), args.requests);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, tonic::Status>(latencies);
                }
                let mut request = Request::new(EvaluateRequest {
                    alert: Some(alert(i)),
                    dry_run: true,
                });
                if let Ok(header) = format!("Bearer {TOKEN}").parse() {
                    request.metadata_mut().insert("authorization", header);
                }
                let sent = Instant::now();
                client.evaluate(request).await?;
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker??);
    }
    let wall = started.elapsed();
    latencies.sort();
    let grpc_rate = latencies.len() as f64 / wall.as_secs_f64();
    println!(
        "gRPC Evaluate      {:>8} calls {:>10.0} decisions/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} in flight)",
        latencies.len(),
        grpc_rate,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        args.concurrency
    );
    println!(
        "                   p90 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );

    // The same input through regorus directly, one thread, no service around it.
    let engine = RegoEngine::load_dir(&policy_dir, "data.selfheal.decision")?;
    let input = selfheal_policy::decide::input(
        &selfheal_proto::v1::AlertEvent {
            incident_key: "k".into(),
            alert: Some(alert(0)),
            ..Default::default()
        },
        &selfheal_policy::decide::Extra::default(),
        chrono_now(),
    );
    let raw_n = args.requests.min(20_000);
    let mut raw = Vec::with_capacity(raw_n);
    let raw_started = Instant::now();
    for _ in 0..raw_n {
        let t = Instant::now();
        engine.eval(&input)?;
        raw.push(t.elapsed());
    }
    let raw_wall = raw_started.elapsed();
    raw.sort();
    let raw_rate = raw_n as f64 / raw_wall.as_secs_f64();
    println!(
        "raw regorus        {:>8} evals {:>10.0} decisions/s   p50 {:>7.3} ms   p99 {:>7.3} ms   (one thread)",
        raw_n,
        raw_rate,
        percentile(&raw, 0.5).as_secs_f64() * 1e3,
        percentile(&raw, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "service cost over raw evaluation: p50 {:.1}x latency",
        percentile(&latencies, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64()
    );
    policy.check_running()?;
    Ok(())
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
