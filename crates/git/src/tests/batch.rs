//! Changes made in memory and written together.

use super::*;

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
    // The index selfheal wrote is the one git would: every entry's offset, CRC and id check out.
    let newest = std::fs::read_dir(f.bare.join("objects/pack"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).unwrap())
        .unwrap();
    let verified = git(&f.bare, &["verify-pack", "-v", newest.to_str().unwrap()]);
    assert!(verified.contains(&tip), "{verified}");
    assert!(
        f.bare.join("selfheal-pack.keep").exists(),
        "the .keep waits for the next pack, moved back rather than deleted"
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

/// Moves main on disk, from `tip`, behind a batch's back: the new tip.
fn move_main(repo: &LocalRepository, tip: &str) -> String {
    repo.commit_file("main", Some(tip), tip, "README.md", "moved\n", "moved", &author())
        .unwrap()
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
    let moved = move_main(&repo, &f.main[0]);
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

/// A batch reads each ref from disk once: what it reads later is what it read first (its own
/// changes aside), and a ref that moved on disk meanwhile fails the flush, whatever was read.
#[test]
fn a_batch_reads_a_ref_once_and_a_ref_moved_since_fails_its_flush() {
    let f = gitops_fixture();
    let repo = LocalRepository::open(&f.bare).unwrap();
    let path = "apps/demo/kustomization.yaml";
    let batch = repo.batch();
    assert_eq!(batch.branch_tip("main").unwrap(), Some(f.main[0].clone()));
    assert_eq!(batch.branch_tip("selfheal/z").unwrap(), None);
    let moved = move_main(&repo, &f.main[0]);
    repo.commit_file("selfheal/z", None, &moved, "README.md", "z\n", "z", &author())
        .unwrap();
    // The batch still answers what it read first.
    assert_eq!(batch.branch_tip("main").unwrap(), Some(f.main[0].clone()));
    assert_eq!(batch.branch_tip("selfheal/z").unwrap(), None);
    assert!(batch.marked_commit("main", "nobody").unwrap().is_none());
    let commit = batch
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
    assert_eq!(
        batch.branch_tip("main").unwrap(),
        Some(commit.clone()),
        "its own change"
    );
    let err = batch.flush().unwrap_err();
    assert!(
        matches!(&err, RepoError::Conflict { branch, found, .. } if branch == "main" && *found == moved),
        "{err:?}"
    );
    assert_eq!(repo.branch_tip("main").unwrap(), Some(moved));
}
