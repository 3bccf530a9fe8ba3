#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::plumbing::{NO_BRANCH, parse_id};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

/// Runs the git CLI in `dir`, isolated from the user's and system's git configuration.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Fixture",
            "-c",
            "user.email=fixture@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn write(dir: &Path, path: &str, content: &str) {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, content).unwrap();
}

/// Stages everything in `work` and commits it; returns the new commit id.
fn commit_all(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

fn author() -> Author {
    Author {
        name: "selfheal bot".to_owned(),
        email: "bot@selfheal.example".to_owned(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    /// Commits on main, oldest first.
    main: Vec<String>,
}

/// A bare repository (cloned from a scratch work tree) whose main branch has:
/// apps/demo/kustomization.yaml, apps/demo/deploy.sh (executable), README.md.
fn gitops_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(
        &work,
        "apps/demo/kustomization.yaml",
        "# demo\nimages:\n  - name: ghcr.io/acme/demo\n    newTag: v1.0.0 # pinned\n",
    );
    write(&work, "apps/demo/deploy.sh", "#!/bin/sh\necho deploy\n");
    {
        use std::os::unix::fs::PermissionsExt;
        let script = work.join("apps/demo/deploy.sh");
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    write(&work, "README.md", "# gitops\n");
    let c1 = commit_all(&work, "init");
    let bare = dir.path().join("repo.git");
    git(
        dir.path(),
        &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()],
    );
    Fixture {
        _dir: dir,
        bare,
        main: vec![c1],
    }
}

fn ls_tree(repo: &Path, rev: &str) -> Vec<String> {
    git(repo, &["ls-tree", "-r", rev]).lines().map(str::to_owned).collect()
}

fn packs(bare: &Path) -> usize {
    std::fs::read_dir(bare.join("objects/pack"))
        .expect("pack directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack"))
        })
        .count()
}

#[test]
fn a_batch_sees_its_own_changes_and_writes_them_at_once() {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    let path = "apps/demo/kustomization.yaml";
    // The shared index knows main as it is on disk.
    assert_eq!(repo.file_history("main", path, 10).unwrap().len(), 1);
    let packs_before = packs(&f.bare);

    let batch = repo.batch();
    let mut tip = f.main[0].clone();
    let mut made = Vec::new();
    for n in 0..12 {
        let content = format!("images:\n  - name: ghcr.io/acme/demo\n    newTag: v1.0.{n}\n");
        let commit = batch
            .commit_file(
                &format!("selfheal/inc{n}"),
                None,
                &tip,
                path,
                &content,
                &format!("bump {n}"),
                &author(),
            )
            .unwrap();
        assert!(fast_forward(&batch, "main", &tip, &commit).is_ok());
        tip = commit.clone();
        made.push(commit);
    }
    // Nothing on disk yet; the batch reads its own changes.
    assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), f.main[0]);
    assert_eq!(repo.branch_tip("selfheal/inc0").unwrap(), None);
    assert_eq!(batch.branch_tip("main").unwrap().as_deref(), Some(tip.as_str()));
    assert_eq!(
        batch.branch_tip("selfheal/inc3").unwrap().as_deref(),
        Some(made[3].as_str())
    );
    assert!(batch.read_file(&tip, path).unwrap().unwrap().contains("v1.0.11"));
    let in_batch = batch.file_history("main", path, 20).unwrap();
    assert_eq!(in_batch.len(), 13, "twelve versions made in the batch, one on disk");
    assert_eq!(in_batch[0].commit, tip);
    assert_eq!(in_batch[12].commit, f.main[0]);
    assert_eq!(
        batch.file_history("selfheal/inc5", path, 2).unwrap(),
        in_batch[6..8].to_vec()
    );
    assert!(batch.is_ancestor(&made[0], &tip).unwrap());
    // A compare-and-set against a stale value is refused inside the batch too.
    let stale = batch.update_branch("main", &f.main[0], &made[0]).unwrap_err();
    assert!(matches!(stale, RepoError::Conflict { .. }), "{stale:?}");

    // Written: every ref, the objects in one pack.
    assert_eq!(batch.flush().unwrap(), 13);
    assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), tip);
    for (n, commit) in made.iter().enumerate() {
        assert_eq!(git(&f.bare, &["rev-parse", &format!("selfheal/inc{n}")]).trim(), commit);
    }
    git(&f.bare, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(packs(&f.bare), packs_before + 1, "sixty objects, one pack");
    let kept: Vec<_> = std::fs::read_dir(f.bare.join("objects/pack"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "keep"))
        .collect();
    assert!(
        kept.is_empty(),
        "the pack is referenced: no .keep left for gc to trip on"
    );
    // The same history, read from disk by the shared index and by a fresh handle.
    assert_eq!(repo.file_history("main", path, 20).unwrap(), in_batch);
    let fresh = LocalRepository::open(&f.bare).unwrap();
    assert_eq!(fresh.file_history("main", path, 20).unwrap(), in_batch);
}

#[test]
fn a_caller_with_an_older_tip_does_not_throw_the_index_away() {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    let path = "apps/demo/kustomization.yaml";
    let newer = repo
        .commit_file(
            "main",
            Some(&f.main[0]),
            &f.main[0],
            path,
            "newTag: v2\n",
            "bump",
            &author(),
        )
        .unwrap();
    assert_eq!(repo.file_history("main", path, 10).unwrap().len(), 2);
    let handle = repo.store.local().unwrap();
    let older = parse_id(&f.main[0]).unwrap();
    // Read before the move, asked after it: the index stays where main is.
    let tip = repo
        .store
        .with_index(&handle, "main", older, |index| Ok(index.tip))
        .unwrap();
    assert_eq!(tip.to_string(), newer);
}

#[test]
fn a_batch_whose_base_moved_writes_no_ref() {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    let path = "apps/demo/kustomization.yaml";
    let packs_before = packs(&f.bare);
    let batch = repo.batch();
    let commit = batch
        .commit_file("selfheal/x", None, &f.main[0], path, "newTag: v2\n", "bump", &author())
        .unwrap();
    batch.update_branch("main", &f.main[0], &commit).unwrap();
    // Meanwhile, main moves on disk.
    let moved = repo
        .commit_file(
            "main",
            Some(&f.main[0]),
            &f.main[0],
            "README.md",
            "moved\n",
            "moved",
            &author(),
        )
        .unwrap();
    let err = batch.flush().unwrap_err();
    assert!(
        matches!(&err, RepoError::Conflict { branch, found, .. } if branch == "main" && *found == moved),
        "{err:?}"
    );
    assert_eq!(repo.branch_tip("main").unwrap(), Some(moved.clone()));
    assert_eq!(repo.branch_tip("selfheal/x").unwrap(), None, "all refs or none");

    // A small batch is written loose, like a small push.
    let batch = repo.batch();
    let commit = batch
        .commit_file("selfheal/y", None, &moved, path, "newTag: v3\n", "bump", &author())
        .unwrap();
    batch.update_branch("main", &moved, &commit).unwrap();
    assert_eq!(batch.flush().unwrap(), 2);
    assert_eq!(repo.branch_tip("main").unwrap(), Some(commit));
    assert_eq!(packs(&f.bare), packs_before, "five objects, written loose");
    git(&f.bare, &["fsck", "--strict", "--no-dangling"]);
}

#[test]
fn open_fails_for_non_repository() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalRepository::open(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, RepoError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn branch_tip_and_read_file() {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    assert_eq!(repo.location(), f.bare.display().to_string());
    let tip = repo.branch_tip("main").unwrap().unwrap();
    assert_eq!(tip, f.main[0]);
    assert_eq!(repo.branch_tip("does-not-exist").unwrap(), None);
    assert!(repo.branch_tip("bad..name").is_err());

    assert_eq!(
        repo.read_file(&tip, "README.md").unwrap().as_deref(),
        Some("# gitops\n")
    );
    assert_eq!(
        repo.read_file(&tip, "apps/demo/kustomization.yaml").unwrap(),
        Some(git(&f.bare, &["show", "main:apps/demo/kustomization.yaml"]))
    );
    // Absent files (including below an existing file or directory) are None.
    assert_eq!(repo.read_file(&tip, "missing.yaml").unwrap(), None);
    assert_eq!(repo.read_file(&tip, "apps/other/kustomization.yaml").unwrap(), None);
    assert_eq!(repo.read_file(&tip, "README.md/x").unwrap(), None);
    // A directory is not a file; bad ids and paths are errors.
    assert!(repo.read_file(&tip, "apps/demo").is_err());
    assert!(repo.read_file("abc123", "README.md").is_err());
    assert!(repo.read_file(&"0".repeat(40), "README.md").is_err());
    assert!(repo.read_file(&tip, "/README.md").is_err());
    assert!(repo.read_file(&tip, "apps/../README.md").is_err());
}

#[test]
fn read_file_rejects_non_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    git(work, &["init", "-q"]);
    std::fs::write(work.join("bin.dat"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let c = commit_all(work, "binary");
    let repo = LocalRepository::open(work).unwrap();
    let err = repo.read_file(&c, "bin.dat").unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn a_cached_history_walks_only_the_new_commits_and_agrees_with_a_fresh_walk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    let f = "apps/demo/values.yaml";
    for tag in ["v1", "v2", "v3"] {
        write(&work, f, &format!("tag: {tag}\n"));
        commit_all(&work, &format!("release {tag}"));
        write(&work, "README.md", &format!("readme {tag}\n"));
        commit_all(&work, "unrelated");
    }
    let cached = LocalRepository::open(&work).expect("open");
    assert_eq!(cached.file_history("main", f, 100).expect("history").len(), 3);
    // Another file kept, cut short at a limit.
    assert_eq!(cached.file_history("main", "README.md", 2).expect("history").len(), 2);
    // New commits, some changing the file, one of them changing it back, one changing both
    // files, one only the executable bit (not a new version).
    for (tag, touch) in [("v4", true), ("", false), ("v2", true)] {
        if touch {
            write(&work, f, &format!("tag: {tag}\n"));
        } else {
            write(&work, "README.md", "readme again\n");
        }
        commit_all(&work, &format!("later {tag}"));
    }
    write(&work, f, "tag: v5\n");
    write(&work, "README.md", "readme for v5\n");
    commit_all(&work, "both");
    git(&work, &["update-index", "--chmod=+x", f]);
    git(&work, &["commit", "-q", "-m", "executable"]);
    let fresh = LocalRepository::open(&work).expect("open");
    for limit in [1, 2, 5, 100] {
        for file in [f, "README.md"] {
            assert_eq!(
                cached.file_history("main", file, limit).expect("cached"),
                fresh.file_history("main", file, limit).expect("fresh"),
                "{file}, limit {limit}"
            );
        }
    }
    assert_eq!(cached.file_history("main", f, 100).expect("history").len(), 6);
    // History rewritten (the cached tip is gone from the branch): a full walk again.
    git(&work, &["reset", "-q", "--hard", "HEAD~2"]);
    write(&work, f, "tag: v9\n");
    commit_all(&work, "rewritten");
    let fresh = LocalRepository::open(&work).expect("open");
    assert_eq!(
        cached.file_history("main", f, 100).expect("cached"),
        fresh.file_history("main", f, 100).expect("fresh")
    );
}

#[test]
fn file_history_follows_first_parent_changes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    let f = "apps/demo/values.yaml";

    write(&work, "README.md", "readme\n");
    let c0 = commit_all(&work, "readme only"); // file not there yet
    write(&work, f, "tag: v1\n");
    let c1 = commit_all(&work, "add demo\n\nwith a body\nof two lines");
    write(&work, "README.md", "readme 2\n");
    let _c2 = commit_all(&work, "touch readme");
    write(&work, f, "tag: v2\n");
    let c3 = commit_all(&work, "bump v2");
    let _c4 = commit_all(&work, "empty commit");
    write(&work, "apps/demo/other.yaml", "x\n");
    let _c5 = commit_all(&work, "sibling file");
    // A side branch changes the file twice; merged into main with a merge commit.
    git(&work, &["checkout", "-q", "-b", "side"]);
    write(&work, f, "tag: v3-rc\n");
    let side1 = commit_all(&work, "side rc");
    write(&work, f, "tag: v3\n");
    let side2 = commit_all(&work, "side final");
    git(&work, &["checkout", "-q", "main"]);
    write(&work, "README.md", "readme 3\n");
    let _c6 = commit_all(&work, "readme on main");
    git(&work, &["merge", "-q", "--no-ff", "-m", "merge side", "side"]);
    let merge = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    // Reverting to an older content still counts as a change.
    write(&work, f, "tag: v1\n");
    let c8 = commit_all(&work, "back to v1");
    // Deleted, then re-added: the deletion has no version, the re-addition is reported.
    git(&work, &["rm", "-q", f]);
    let _c9 = commit_all(&work, "remove demo");
    write(&work, f, "tag: v4\n");
    let c10 = commit_all(&work, "re-add demo");
    let _c11 = commit_all(&work, "tip, unrelated");

    let repo = LocalRepository::open(&work).unwrap();
    let history = repo.file_history("main", f, 100).unwrap();
    let ids: Vec<&str> = history.iter().map(|v| v.commit.as_str()).collect();
    assert_eq!(ids, vec![&*c10, &*c8, &*merge, &*c3, &*c1]);
    assert!(!ids.contains(&side1.as_str()) && !ids.contains(&side2.as_str()));
    assert!(!ids.contains(&c0.as_str()));

    let contents: Vec<&str> = history.iter().map(|v| v.content.as_str()).collect();
    assert_eq!(
        contents,
        vec!["tag: v4\n", "tag: v1\n", "tag: v3\n", "tag: v2\n", "tag: v1\n"]
    );
    assert_eq!(history[0].message, "re-add demo");
    assert_eq!(history[2].message, "merge side");
    assert_eq!(history[4].message, "add demo\n\nwith a body\nof two lines");
    for v in &history {
        assert_eq!(
            v.content,
            git(&work, &["show", &format!("{}:{f}", v.commit)]),
            "content of {}",
            v.commit
        );
    }

    // Cross-check with git: first-parent commits touching the path, minus the deletion.
    let git_ids: Vec<String> = git(&work, &["log", "--first-parent", "--format=%H", "main", "--", f])
        .lines()
        .filter(|c| repo.read_file(c, f).unwrap().is_some())
        .map(str::to_owned)
        .collect();
    assert_eq!(git_ids, ids);

    // The limit keeps the newest entries.
    let two = repo.file_history("main", f, 2).unwrap();
    assert_eq!(two, history[..2].to_vec());
    assert!(repo.file_history("main", f, 0).unwrap().is_empty());
    assert_eq!(repo.file_history("main", f, 5).unwrap(), history);

    // Other branches, missing files and branches.
    let side = repo.file_history("side", f, 10).unwrap();
    let side_ids: Vec<&str> = side.iter().map(|v| v.commit.as_str()).collect();
    assert_eq!(side_ids, vec![&*side2, &*side1, &*c3, &*c1]);
    assert!(repo.file_history("main", "nope.yaml", 10).unwrap().is_empty());
    assert!(repo.file_history("main", "apps/demo", 10).unwrap().is_empty());
    assert!(repo.file_history("no-such-branch", f, 10).unwrap().is_empty());
    // README: added in c0, changed in c2 and c6 (the merge doesn't change it w.r.t. c6).
    assert_eq!(repo.file_history("main", "README.md", 10).unwrap().len(), 3);
}

#[test]
fn commit_file_creates_branch_and_keeps_other_files() {
    let f = fixture_with_repo();
    let (repo, bare, base) = (&f.1, &f.0.bare, f.0.main[0].clone());
    let before = ls_tree(bare, "main");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("100755 ") && l.ends_with("apps/demo/deploy.sh"))
    );

    // Update an existing nested file on a new branch.
    let new_text = "# demo\nimages:\n  - name: ghcr.io/acme/demo\n    newTag: v1.2.3 # pinned\n";
    let c1 = repo
        .commit_file(
            "selfheal/inc-1",
            None,
            &base,
            "apps/demo/kustomization.yaml",
            new_text,
            "chore(demo): bump to v1.2.3\n\nIncident: inc-1",
            &author(),
        )
        .unwrap();
    assert_eq!(repo.branch_tip("selfheal/inc-1").unwrap().as_deref(), Some(c1.as_str()));
    assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1"]).trim(), c1);
    assert_eq!(
        git(bare, &["show", "selfheal/inc-1:apps/demo/kustomization.yaml"]),
        new_text
    );
    assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1^"]).trim(), base);
    assert_eq!(
        git(bare, &["log", "-1", "--format=%an|%ae|%cn|%ce|%B", "selfheal/inc-1"]),
        "selfheal bot|bot@selfheal.example|selfheal bot|bot@selfheal.example|chore(demo): bump to v1.2.3\n\nIncident: inc-1\n\n"
    );
    // Every other entry is unchanged (same blob, same mode: deploy.sh stays executable).
    let after = ls_tree(bare, "selfheal/inc-1");
    assert_eq!(after.len(), before.len());
    for line in &before {
        if !line.ends_with("apps/demo/kustomization.yaml") {
            assert!(after.contains(line), "{line} missing from {after:?}");
        }
    }
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("100755 ") && l.ends_with("apps/demo/deploy.sh"))
    );
    // main did not move.
    assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(base.as_str()));

    // A new file in new nested directories, on top of the branch (CAS on its tip).
    let c2 = repo
        .commit_file(
            "selfheal/inc-1",
            Some(&c1),
            &c1,
            "apps/new/overlays/prod/values.yaml",
            "replicas: 3\n",
            "feat: add new app",
            &author(),
        )
        .unwrap();
    assert_eq!(
        git(bare, &["show", "selfheal/inc-1:apps/new/overlays/prod/values.yaml"]),
        "replicas: 3\n"
    );
    assert_eq!(
        git(bare, &["show", "selfheal/inc-1:apps/demo/kustomization.yaml"]),
        new_text
    );
    assert_eq!(git(bare, &["show", "selfheal/inc-1:README.md"]), "# gitops\n");
    assert_eq!(ls_tree(bare, "selfheal/inc-1").len(), before.len() + 1);
    assert_eq!(git(bare, &["rev-parse", "selfheal/inc-1"]).trim(), c2);
    assert_eq!(
        git(bare, &["log", "--format=%s", "selfheal/inc-1"]),
        "feat: add new app\nchore(demo): bump to v1.2.3\ninit\n"
    );
    let history = repo
        .file_history("selfheal/inc-1", "apps/demo/kustomization.yaml", 10)
        .unwrap();
    assert_eq!(
        history.iter().map(|v| v.commit.as_str()).collect::<Vec<_>>(),
        vec![c1.as_str(), base.as_str()]
    );
    assert_eq!(history[0].message, "chore(demo): bump to v1.2.3\n\nIncident: inc-1");
    git(bare, &["fsck", "--strict", "--no-progress"]);
}

fn fixture_with_repo() -> (Fixture, LocalRepository) {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    (f, repo)
}

#[test]
fn commit_file_compare_and_set_conflicts() {
    let (f, repo) = fixture_with_repo();
    let base = f.main[0].clone();
    let c1 = repo
        .commit_file("fix", None, &base, "README.md", "one\n", "one", &author())
        .unwrap();

    // expected None, but the branch exists.
    let err = repo
        .commit_file("fix", None, &base, "README.md", "two\n", "two", &author())
        .unwrap_err();
    match &err {
        RepoError::Conflict {
            branch,
            expected,
            found,
        } => {
            assert_eq!(branch, "fix");
            assert_eq!(expected, NO_BRANCH);
            assert_eq!(found, &c1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(repo.branch_tip("fix").unwrap().as_deref(), Some(c1.as_str()));

    // expected a stale tip.
    let err = repo
        .commit_file("fix", Some(&base), &base, "README.md", "two\n", "two", &author())
        .unwrap_err();
    assert!(
        matches!(&err, RepoError::Conflict { expected, found, .. } if *expected == base && *found == c1),
        "{err:?}"
    );
    // expected a tip, but the branch doesn't exist.
    let err = repo
        .commit_file("other", Some(&base), &base, "README.md", "two\n", "two", &author())
        .unwrap_err();
    assert!(
        matches!(&err, RepoError::Conflict { found, .. } if found == NO_BRANCH),
        "{err:?}"
    );
    assert_eq!(repo.branch_tip("other").unwrap(), None);
    assert_eq!(repo.branch_tip("fix").unwrap().as_deref(), Some(c1.as_str()));
    assert_eq!(git(&f.bare, &["show", "fix:README.md"]), "one\n");
}

#[test]
fn commit_file_rejects_bad_input() {
    let (f, repo) = fixture_with_repo();
    let base = f.main[0].clone();
    let a = author();
    // A file where a directory would be needed, a directory where the file would be.
    let err = repo
        .commit_file("b", None, &base, "README.md/x.yaml", "x", "m", &a)
        .unwrap_err();
    assert!(err.to_string().contains("README.md is a file"), "{err}");
    let err = repo
        .commit_file("b", None, &base, "apps/demo", "x", "m", &a)
        .unwrap_err();
    assert!(err.to_string().contains("apps/demo is a directory"), "{err}");
    assert!(repo.commit_file("b", None, &base, "", "x", "m", &a).is_err());
    assert!(repo.commit_file("b", None, &base, "a//b", "x", "m", &a).is_err());
    assert!(repo.commit_file("b", None, &base, ".git/config", "x", "m", &a).is_err());
    assert!(repo.commit_file("b", None, "not-hex", "x", "x", "m", &a).is_err());
    assert!(
        repo.commit_file("refs/heads/b", None, &base, "x", "x", "m", &a)
            .is_err()
    );
    assert!(repo.commit_file("b c", None, &base, "x", "x", "m", &a).is_err());
    let bad = Author {
        name: "evil <x>".to_owned(),
        email: "e@x".to_owned(),
    };
    assert!(repo.commit_file("b", None, &base, "x", "x", "m", &bad).is_err());
    // Parent that is a blob, not a commit.
    let blob = git(&f.bare, &["rev-parse", "main:README.md"]).trim().to_owned();
    assert!(repo.commit_file("b", None, &blob, "x", "x", "m", &a).is_err());
    assert_eq!(repo.branch_tip("b").unwrap(), None);
}

#[test]
fn concurrent_commit_file_only_one_wins() {
    let (f, repo) = fixture_with_repo();
    let repo = Arc::new(repo);
    let base = f.main[0].clone();
    let n = 6;
    // Every writer expects main at base; exactly one may move it, the others see it moved.
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (repo, barrier, base) = (repo.clone(), barrier.clone(), base.clone());
            std::thread::spawn(move || {
                barrier.wait();
                repo.commit_file(
                    "main",
                    Some(&base),
                    &base,
                    "README.md",
                    &format!("writer {i}\n"),
                    "race",
                    &author(),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, RepoError::Conflict { found, .. } if found == winners[0]),
                "{e:?}"
            );
        }
    }
    assert_eq!(repo.branch_tip("main").unwrap().as_ref(), Some(winners[0]));
    git(&f.bare, &["fsck", "--no-progress"]);
}

#[test]
fn update_branch_compare_and_set() {
    let (f, repo) = fixture_with_repo();
    let base = f.main[0].clone();
    let c1 = repo
        .commit_file("feature", None, &base, "README.md", "new\n", "readme", &author())
        .unwrap();

    // Fast-forward main to the feature commit.
    repo.update_branch("main", &base, &c1).unwrap();
    assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), c1);

    // Stale expectation: conflict, ref untouched.
    let err = repo.update_branch("main", &base, &c1).unwrap_err();
    match &err {
        RepoError::Conflict {
            branch,
            expected,
            found,
        } => {
            assert_eq!(
                (branch.as_str(), expected.as_str(), found.as_str()),
                ("main", base.as_str(), c1.as_str())
            );
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(err.to_string().contains("branch main moved"), "{err}");
    assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(c1.as_str()));

    // Missing branch: conflict too.
    let err = repo.update_branch("gone", &base, &c1).unwrap_err();
    assert!(
        matches!(&err, RepoError::Conflict { found, .. } if found == NO_BRANCH),
        "{err:?}"
    );
    assert_eq!(repo.branch_tip("gone").unwrap(), None);

    // Moving backwards is allowed (it's a CAS, not a fast-forward check).
    repo.update_branch("main", &c1, &base).unwrap();
    assert_eq!(git(&f.bare, &["rev-parse", "main"]).trim(), base);

    // Unknown target commit: a plain error, nothing moved.
    let err = repo.update_branch("main", &base, &"1".repeat(40)).unwrap_err();
    assert!(matches!(err, RepoError::Git(_)), "{err:?}");
    assert_eq!(repo.branch_tip("main").unwrap().as_deref(), Some(base.as_str()));
    git(&f.bare, &["fsck", "--strict", "--no-progress"]);
}

#[test]
fn is_ancestor_walks_history() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    git(work, &["init", "-q"]);
    let a = commit_all(work, "a");
    let b = commit_all(work, "b");
    git(work, &["checkout", "-q", "-b", "side", &a]);
    let s = commit_all(work, "s");
    git(work, &["checkout", "-q", "main"]);
    let c = commit_all(work, "c");
    git(work, &["merge", "-q", "--no-ff", "-m", "merge", "side"]);
    let m = git(work, &["rev-parse", "HEAD"]).trim().to_owned();
    git(work, &["checkout", "-q", "--orphan", "unrelated"]);
    let u = commit_all(work, "unrelated root");

    let repo = LocalRepository::open(work).unwrap();
    for (x, y, want) in [
        (&a, &b, true),
        (&b, &a, false),
        (&a, &a, true),
        (&a, &m, true),
        (&s, &m, true), // through the second parent
        (&b, &m, true),
        (&c, &s, false),
        (&s, &c, false),
        (&m, &c, false),
        (&u, &m, false),
        (&a, &u, false),
    ] {
        assert_eq!(repo.is_ancestor(x, y).unwrap(), want, "is_ancestor({x}, {y})");
        let git_says = Command::new("git")
            .current_dir(work)
            .args(["merge-base", "--is-ancestor", x, y])
            .status()
            .unwrap()
            .success();
        assert_eq!(git_says, want, "git merge-base --is-ancestor {x} {y}");
    }
    assert!(repo.is_ancestor(&"2".repeat(40), &a).is_err());
    assert!(repo.is_ancestor("xyz", &a).is_err());
}

#[test]
fn init_bare_with_commits_makes_a_valid_repository() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gitops.git");
    let commits: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "initial layout",
            vec![
                ("README.md", "# example gitops\n"),
                (
                    "apps/demo/kustomization.yaml",
                    "images:\n  - name: demo\n    newTag: v1\n",
                ),
                ("apps/demo/deployment.yaml", "kind: Deployment\n"),
            ],
        ),
        (
            "bump demo to v2",
            vec![(
                "apps/demo/kustomization.yaml",
                "images:\n  - name: demo\n    newTag: v2\n",
            )],
        ),
        (
            "add api",
            vec![
                ("apps/api/kustomization.yaml", "images: []\n"),
                ("README.md", "# example\n"),
            ],
        ),
    ];
    let repo = LocalRepository::init_bare_with_commits(&path, "trunk", &commits, &author()).unwrap();

    assert_eq!(git(&path, &["rev-parse", "--is-bare-repository"]).trim(), "true");
    assert_eq!(git(&path, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/trunk");
    git(&path, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(
        git(&path, &["log", "--format=%s|%an|%ce"]),
        "add api|selfheal bot|bot@selfheal.example\nbump demo to v2|selfheal bot|bot@selfheal.example\ninitial layout|selfheal bot|bot@selfheal.example\n"
    );
    let files: Vec<String> = git(&path, &["ls-tree", "-r", "--name-only", "trunk"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        files,
        vec![
            "README.md",
            "apps/api/kustomization.yaml",
            "apps/demo/deployment.yaml",
            "apps/demo/kustomization.yaml"
        ]
    );
    assert_eq!(
        git(&path, &["show", "trunk:apps/demo/kustomization.yaml"]),
        "images:\n  - name: demo\n    newTag: v2\n"
    );
    assert_eq!(
        git(&path, &["show", "trunk~2:apps/demo/kustomization.yaml"]),
        "images:\n  - name: demo\n    newTag: v1\n"
    );
    assert_eq!(git(&path, &["show", "trunk:README.md"]), "# example\n");

    // Reflogs are kept in this bare repository, with selfheal's messages.
    let tip = repo.branch_tip("trunk").unwrap().unwrap();
    let next = repo
        .commit_file(
            "trunk",
            Some(&tip),
            &tip,
            "apps/demo/kustomization.yaml",
            "images: []\n",
            "reset demo",
            &author(),
        )
        .unwrap();
    let reflog = git(&path, &["reflog", "show", "--format=%gs", "trunk"]);
    assert_eq!(
        reflog,
        "selfheal: commit: reset demo\nselfheal: commit: add api\nselfheal: commit: bump demo to v2\nselfheal: commit (initial): initial layout\n"
    );
    assert_eq!(
        repo.file_history("trunk", "apps/demo/kustomization.yaml", 10)
            .unwrap()
            .len(),
        3
    );
    assert_eq!(repo.branch_tip("trunk").unwrap(), Some(next));

    // A clone (by the git CLI) checks out trunk.
    let clone = dir.path().join("clone");
    git(
        dir.path(),
        &["clone", "-q", path.to_str().unwrap(), clone.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("apps/api/kustomization.yaml")).unwrap(),
        "images: []\n"
    );

    // The destination must be new (or empty).
    let err = LocalRepository::init_bare_with_commits(&path, "trunk", &commits, &author()).unwrap_err();
    assert!(matches!(err, RepoError::Open { .. }), "{err:?}");
    // No commits: the branch is unborn.
    let empty = dir.path().join("empty.git");
    let repo = LocalRepository::init_bare_with_commits(&empty, "main", &[], &author()).unwrap();
    assert_eq!(repo.branch_tip("main").unwrap(), None);
    git(&empty, &["fsck", "--no-progress"]);
}

#[test]
fn non_bare_work_tree_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    git(work, &["init", "-q"]);
    write(work, "app.yaml", "v1\n");
    let c1 = commit_all(work, "v1");
    let repo = LocalRepository::open(work).unwrap();
    let c2 = repo
        .commit_file("main", Some(&c1), &c1, "app.yaml", "v2\n", "v2", &author())
        .unwrap();
    assert_eq!(git(work, &["rev-parse", "HEAD"]).trim(), c2);
    assert_eq!(git(work, &["show", "HEAD:app.yaml"]), "v2\n");
    // The checked-out file keeps its old content.
    assert_eq!(std::fs::read_to_string(work.join("app.yaml")).unwrap(), "v1\n");
    // Non-bare repositories keep reflogs by default.
    assert_eq!(
        git(work, &["reflog", "show", "-1", "--format=%gs", "main"]).trim(),
        "selfheal: commit: v2"
    );
}
