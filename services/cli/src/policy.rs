//! `selfheal policy test DIR`: runs the `test_*` rules of every policy, like `opa test`.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use selfheal_policy::engine::RegoEngine;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule in the .rego files of DIR; exit 1 if any fails.
    Test {
        /// Directory of .rego files.
        dir: PathBuf,
    },
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Test { dir } => {
            let engine = RegoEngine::load_dir(&dir, "data.selfheal.decision")?;
            let results = engine.run_tests();
            if results.is_empty() {
                println!("no test_ rules in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let failed = results.iter().filter(|(_, passed)| !passed).count();
            for (rule, passed) in &results {
                println!("{} {rule}", if *passed { "PASS" } else { "FAIL" });
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
