#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::plumbing::{NO_BRANCH, parse_id};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

mod batch;
mod history;
mod writes;

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
