//! `selfheal-policy`: loads the policies, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

/// mimalloc: Rego evaluation (regorus) allocates per value, and glibc's malloc was a fifth of the
/// service's CPU under `policy-bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_policy::Policy>().await
}
