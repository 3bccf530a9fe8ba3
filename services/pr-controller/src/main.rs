//! `selfheal-pr-controller`: opens the GitOps repository, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_pr_controller::PrController>().await
}
