//! GitOps benchmark: decision → commit on main on a local repository of 10,000 files and 20,000
//! commits (p50/p99), and the history search for the rollback target against
//! `git log --format=%H -- PATH` on the same repository, in the same run.
//!
//! ```sh
//! cargo build --release -p selfheal-e2e --bin gitops-bench
//! target/release/gitops-bench --files 10000 --commits 20000            # git fast-import's pack
//! target/release/gitops-bench --files 10000 --commits 20000 --repack   # as git gc leaves it
//! ```

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::Parser;
use selfheal_git::LocalRepository;
use selfheal_pr_controller::{PrControllerConfig, reconcile::Reconciler};
use selfheal_proto::v1::{Action, Alert, AlertEvent, Approval, Decision, DecisionParams, RemediationState};

#[derive(Parser)]
#[command(about = "decision → commit on a large local repository, and the rollback history search")]
struct Args {
    /// Files in the repository.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Commits on main.
    #[arg(long, default_value_t = 20_000)]
    commits: usize,
    /// Remediations to time.
    #[arg(long, default_value_t = 50)]
    remediations: usize,
    /// Repack the repository as `git gc` would (`git repack -adf`) before measuring. `git
    /// fast-import` stores each version of a tree as a delta on the one before it, the opposite
    /// of the packs `git gc` and a forge's clone make (newest whole, older ones deltas on newer),
    /// and the direction a history walk reads them in matters to a delta-base cache.
    #[arg(long)]
    repack: bool,
}

const PATH: &str = "apps/checkout/kustomization.yaml";

fn kustomization(tag: &str, replicas: usize) -> String {
    format!(
        "# checkout\nresources:\n  - deployment.yaml\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # release\nreplicas:\n  - name: checkout\n    count: {replicas}\n"
    )
}

/// A `git fast-import` stream: one commit with every file, then commits that each touch one file;
/// every 1,000th sets a new checkout release tag.
fn fast_import_stream(files: usize, commits: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let commit = |out: &mut Vec<u8>, n: usize, changes: &[(String, String)]| {
        let message = format!("change {n}");
        let _ = write!(
            out,
            "commit refs/heads/main\ncommitter dev <dev@example.com> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + n,
            message.len()
        );
        for (path, content) in changes {
            let _ = write!(out, "M 100644 inline {path}\ndata {}\n{content}\n", content.len());
        }
    };
    let mut first: Vec<(String, String)> = (0..files)
        .map(|i| {
            (
                format!("apps/app-{:03}/file-{i}.yaml", i % 500),
                format!("value: {i}\n"),
            )
        })
        .collect();
    first.push((PATH.to_string(), kustomization("v1.0.0", 2)));
    commit(&mut out, 0, &first);
    for n in 1..commits {
        let change = if n % 1000 == 0 {
            (PATH.to_string(), kustomization(&format!("v1.{}.0", n / 1000), 2))
        } else {
            let i = (n * 7919) % files;
            (
                format!("apps/app-{:03}/file-{i}.yaml", i % 500),
                format!("value: {i}\nrevision: {n}\n"),
            )
        };
        commit(&mut out, n, &[change]);
    }
    out
}

fn decision(incident: String, action: Action, replicas: Option<i32>) -> Decision {
    let labels = [("service", "checkout"), ("alertname", "Bench")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut decision = Decision {
        incident_key: incident,
        reason: "benchmark".into(),
        alert: Some(AlertEvent {
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        }),
        params: Some(DecisionParams {
            target_tag: String::new(),
            replicas,
        }),
        ..Default::default()
    };
    decision.set_action(action);
    decision.set_approval(Approval::Auto);
    decision
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let bare = temp.path().join("gitops.git");
    let status = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .status()?;
    ensure!(status.success(), "git init");
    let started = Instant::now();
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&bare)
        .stdin(Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    import
        .stdin
        .take()
        .context("stdin")?
        .write_all(&fast_import_stream(args.files, args.commits))?;
    ensure!(import.wait()?.success(), "git fast-import failed");
    if args.repack {
        let status = Command::new("git")
            .args(["repack", "-adf", "-q"])
            .current_dir(&bare)
            .status()?;
        ensure!(status.success(), "git repack");
    }
    println!(
        "repository: {} files, {} commits, built in {:.1?}{}",
        args.files + 1,
        args.commits,
        started.elapsed(),
        if args.repack {
            ", repacked as git gc does"
        } else {
            " (git fast-import's pack)"
        }
    );

    let settings = PrControllerConfig {
        history_depth: 1000,
        ..Default::default()
    }
    .reconcile_settings()?;
    let reconciler_on = |repo: LocalRepository| Reconciler::new(Arc::new(repo), None, settings.clone());

    // History search: the rollback candidates, against git log on the same path. Cold: a fresh
    // repository handle each time, so the whole history is walked (what a restarted pr-controller
    // does once per file); warm: the same handle again, which walks only commits added since.
    let labels = [("service".to_string(), "checkout".to_string())].into();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let cold = reconciler_on(LocalRepository::open(&bare)?);
        let t = Instant::now();
        let target = cold.describe(&labels)?;
        ours.push(t.elapsed());
        ensure!(!target.earlier_tags.is_empty(), "history has earlier tags");
        let t = Instant::now();
        let log = Command::new("git")
            .args(["log", "--format=%H", "--", PATH])
            .current_dir(&bare)
            .output()?;
        theirs.push(t.elapsed());
        ensure!(log.status.success(), "git log");
    }
    ours.sort();
    theirs.sort();
    let (ours, theirs) = (percentile(&ours, 0.5), percentile(&theirs, 0.5));
    println!(
        "history search, cold (DescribeTarget) median {:>9.2} ms   git log --format=%H -- PATH   median {:>9.2} ms   ratio {:.2}x",
        ours.as_secs_f64() * 1e3,
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    let reconciler = reconciler_on(LocalRepository::open(&bare)?);
    reconciler.describe(&labels)?;
    let t = Instant::now();
    reconciler.describe(&labels)?;
    println!(
        "history search, warm (same handle, no new commits)   {:>9.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // What the pr-controller does at start-up: read main's whole history into its index, so the
    // first decision does not walk it to learn that no commit is marked with its incident.
    let t = Instant::now();
    reconciler.git().warm("main")?;
    println!(
        "main's whole history read (start-up)                  {:>9.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Decision → commit on main, approved already: scales, and rollbacks while history allows.
    let mut latencies = Vec::new();
    let mut rollbacks = 0;
    for n in 0..args.remediations {
        let decision = if n % 5 == 0 {
            decision(format!("rollback{n}"), Action::Rollback, None)
        } else {
            decision(format!("scale{n}"), Action::Scale, Some(3 + (n % 5) as i32))
        };
        let t = Instant::now();
        match reconciler.reconcile(&decision, "") {
            Ok(event) => {
                latencies.push(t.elapsed());
                ensure!(event.state() == RemediationState::Merged, "{event:?}");
                rollbacks += usize::from(decision.action() == Action::Rollback);
            }
            // A scale to the count already set, or no earlier tag left: not a commit.
            Err(selfheal_pr_controller::reconcile::ReconcileError::Refused(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    latencies.sort();
    println!(
        "decision → commit on main           {:>4} commits ({rollbacks} rollbacks)   p50 {:>8.2} ms   p99 {:>8.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    let fsck = Command::new("git")
        .args(["fsck", "--no-progress", "--connectivity-only"])
        .current_dir(&bare)
        .output()?;
    ensure!(
        fsck.status.success(),
        "git fsck: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    Ok(())
}
