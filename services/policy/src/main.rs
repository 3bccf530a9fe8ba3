//! `selfheal-policy`: loads the policies, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_policy::Policy>().await
}
