//! `/healthz` (the process is alive), `/readyz` (it can do its work now) and `/metrics`.

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

/// Answers whether the service is ready; `Err` carries the reason it is not.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The three operational endpoints.
pub fn router(ready: ReadinessCheck, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()).into_response(),
                        // The endpoint has no token: the reason (a path, a server) goes to the
                        // log, the prober gets its id.
                        Err(reason) => {
                            let id = crate::errors::id();
                            tracing::warn!(error.id = %id, reason = %reason, "not ready");
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready (error id {id} in the service's log)"),
                            )
                                .into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

/// A readiness check from the bus.
pub fn bus_ready(bus: selfheal_bus::SharedBus) -> ReadinessCheck {
    Arc::new(move || {
        let bus = bus.clone();
        Box::pin(async move { bus.ready().await.map_err(|e| e.to_string()) })
    })
}

/// For container health checks without a shell or curl (distroless images): GETs `url`
/// (`http://host:port/path`, plain HTTP) and answers success only for a 200 within 3 seconds.
/// `selfheal-gateway --probe http://127.0.0.1:9099/readyz`.
pub fn probe(url: &str) -> std::process::ExitCode {
    match probe_status(url) {
        Ok(200) => std::process::ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("probe {url}: HTTP {status}");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("probe {url}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn probe_status(url: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are probed")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let timeout = std::time::Duration::from_secs(3);
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_keeps_its_reason_for_the_log() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ready: ReadinessCheck =
            Arc::new(|| Box::pin(async { Err("the repository /srv/gitops/team.git cannot be read".to_string()) }));
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        tokio::spawn(async move { axum::serve(listener, router(ready, handle)).await });
        let answer = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read");
            answer
        })
        .join()
        .expect("join");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("not ready (error id "), "{answer}");
        assert!(!answer.contains("/srv/gitops"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_succeeds_only_on_200() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/readyz", get(|| async { StatusCode::OK }))
            .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let status = |path: &str| {
            let url = format!("http://{addr}{path}");
            std::thread::spawn(move || probe_status(&url)).join().expect("join")
        };
        assert_eq!(status("/readyz"), Ok(200));
        assert_eq!(status("/down"), Ok(503));
        assert!(probe_status("https://example.com/").is_err());
        assert!(
            probe_status("http://127.0.0.1:1/readyz").is_err(),
            "nothing listens on port 1"
        );
        assert_eq!(probe(&format!("http://{addr}/readyz")), std::process::ExitCode::SUCCESS);
    }
}
