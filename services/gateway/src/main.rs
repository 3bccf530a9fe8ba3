//! `selfheal-gateway`: reads config, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

/// mimalloc: the webhook path allocates per request, and glibc's malloc was a fifth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_gateway::Gateway>().await
}
