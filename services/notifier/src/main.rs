//! `selfheal-notifier`: opens the audit log, connects to NATS, serves until SIGTERM.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    selfheal_runtime::main::<selfheal_notifier::Notifier>().await
}
