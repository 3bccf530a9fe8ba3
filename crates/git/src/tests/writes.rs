//! Writing: commits, refs moved by compare-and-set, ancestry.

use super::*;

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
