//! `demo-app`: a small service for demos and tests that selfheal can heal. FOR DEMOS AND TESTS
//! ONLY — it also plays Argo CD's part, which nothing in production should.
//!
//! * It "deploys" what the GitOps repository's main branch says: every `--sync-interval` it reads
//!   the service's image tag and replica count from `--path` in the bare repository
//!   `--repository` (the sync stand-in).
//! * It serves simulated traffic as Prometheus metrics on `/metrics`: `http_requests_total` by
//!   `status` grows by `--rps` a second, with 12 % errors while it runs one of `--bad-tags` (0.1 %
//!   otherwise), and `demo_cpu_utilization` is `--cpu-load` divided by the replicas (at most 1).
//! * `/healthz` answers 200; `--probe URL` checks another instance (container health checks).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, routing::get};
use clap::Parser;
use selfheal_git::{GitRepo, LocalRepository};
use selfheal_manifest::{self as edit, Kind, Place};

#[derive(Parser, Clone)]
#[command(about = "A demo service selfheal can heal (demos and tests only).")]
struct Args {
    /// Where to serve /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The GitOps repository (bare) whose main branch says what runs.
    #[arg(long)]
    repository: Option<PathBuf>,
    /// The file in it (Kustomize) with the service's image tag and replicas.
    #[arg(long, default_value = "apps/demo/kustomization.yaml")]
    path: String,
    /// The service's name (the `service` label, and the image name's last segment).
    #[arg(long, default_value = "demo")]
    service: String,
    /// How often to read the repository.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    sync_interval: Duration,
    /// Tags that fail 12 % of requests.
    #[arg(long, value_delimiter = ',', default_value = "v1.5.0")]
    bad_tags: Vec<String>,
    /// Requests a second.
    #[arg(long, default_value_t = 50.0)]
    rps: f64,
    /// CPU demand in replicas' worth: utilization is this over the replica count.
    #[arg(long, default_value_t = 0.5)]
    cpu_load: f64,
    /// Check the health endpoint at URL and exit 0 on a 200.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
}

#[derive(Default)]
struct Traffic {
    tag: String,
    replicas: i64,
    ok: f64,
    errors: f64,
    synced_at: Option<Instant>,
}

#[derive(Clone)]
struct App {
    args: Args,
    traffic: Arc<Mutex<Traffic>>,
}

async fn metrics(State(app): State<App>) -> String {
    let traffic = match app.traffic.lock() {
        Ok(traffic) => traffic,
        Err(poisoned) => poisoned.into_inner(),
    };
    let service = &app.args.service;
    let replicas = traffic.replicas.max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE http_requests_total counter");
    let _ = writeln!(
        out,
        "http_requests_total{{service=\"{service}\",status=\"200\"}} {}",
        traffic.ok.floor()
    );
    let _ = writeln!(
        out,
        "http_requests_total{{service=\"{service}\",status=\"500\"}} {}",
        traffic.errors.floor()
    );
    let _ = writeln!(out, "# TYPE demo_cpu_utilization gauge");
    let _ = writeln!(
        out,
        "demo_cpu_utilization{{service=\"{service}\"}} {}",
        (app.args.cpu_load / replicas).min(1.0)
    );
    let _ = writeln!(out, "# TYPE demo_deployed_info gauge");
    let _ = writeln!(
        out,
        "demo_deployed_info{{service=\"{service}\",tag=\"{}\",replicas=\"{}\"}} 1",
        traffic.tag, traffic.replicas
    );
    out
}

/// Reads what main says runs, when there is a repository.
fn sync(args: &Args) -> Option<(String, i64)> {
    let repository = LocalRepository::open(args.repository.as_ref()?).ok()?;
    let tip = repository.branch_tip("main").ok()??;
    let text = repository.read_file(&tip, &args.path).ok()??;
    let tag = edit::read_tag(&Place::of(Kind::Kustomize, &args.service), &args.path, &text).ok()??;
    let replicas = edit::read_replicas(&Place::of(Kind::Kustomize, &args.service), &args.path, &text)
        .ok()
        .flatten()
        .unwrap_or(1);
    Some((tag, replicas))
}

async fn run(app: App) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut last = Instant::now();
    loop {
        ticks.tick().await;
        let due = {
            let traffic = app.traffic.lock().map(|t| t.synced_at).unwrap_or(None);
            traffic.is_none_or(|at| at.elapsed() >= app.args.sync_interval)
        };
        let synced = if due {
            let args = app.args.clone();
            tokio::task::spawn_blocking(move || sync(&args)).await.ok().flatten()
        } else {
            None
        };
        let Ok(mut traffic) = app.traffic.lock() else { return };
        if due {
            traffic.synced_at = Some(Instant::now());
            if let Some((tag, replicas)) = synced
                && (tag != traffic.tag || replicas != traffic.replicas)
            {
                eprintln!("demo-app: now running {tag} with {replicas} replicas");
                traffic.tag = tag;
                traffic.replicas = replicas;
            }
        }
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        let requests = app.args.rps * elapsed;
        let error_ratio = if app.args.bad_tags.contains(&traffic.tag) {
            0.12
        } else {
            0.001
        };
        traffic.errors += requests * error_ratio;
        traffic.ok += requests * (1.0 - error_ratio);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        return selfheal_telemetry::health::probe(url);
    }
    let app = App {
        args: args.clone(),
        traffic: Arc::new(Mutex::new(Traffic {
            replicas: 1,
            ..Default::default()
        })),
    };
    tokio::spawn(run(app.clone()));
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: cannot listen on {}: {error}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("demo-app: serving on {}", args.listen);
    let serve = axum::serve(listener, router).with_graceful_shutdown(selfheal_telemetry::shutdown_signal());
    match serve.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-app: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
