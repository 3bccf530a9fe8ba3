//! `selfheal-pr-controller`: opens the GitOps repository, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

/// mimalloc: a burst's reconciles and describes allocate per YAML node and git object, and
/// glibc's malloc grew a new arena (and faulted its pages in) for each thread that met another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_pr_controller::PrController>().await
}
