//! The history index against git's own answer, on a history with additions, removals, a file
//! turned into a directory, and trees big enough to be stored as delta chains: in the pack
//! `git fast-import` writes (newer versions deltas on older ones) and after `git repack -adf`
//! (the other way round).

use super::*;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::Stdio;

/// A first-parent history of `commits` commits over ~200 files in nested directories, as a
/// `git fast-import` stream; and every path that ever held a file.
fn history(commits: usize) -> (Vec<u8>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut paths = BTreeSet::new();
    let mut seed: u64 = 0x5eed;
    let mut random = move |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    let path = |i: usize| format!("apps/app-{:02}/file-{i:03}.yaml", i % 7);
    for n in 0..commits {
        let message = format!("change {n}");
        let _ = write!(
            out,
            "commit refs/heads/main\ncommitter dev <dev@example.com> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + n,
            message.len()
        );
        let mut files = Vec::new();
        if n == 0 {
            files.extend((0..200).map(|i| (path(i), format!("value: {i}\n"))));
        } else {
            for _ in 0..1 + random(3) {
                let i = random(220);
                match random(10) {
                    // A removal (of a file or of nothing).
                    0 => {
                        let _ = writeln!(out, "D {}", path(i));
                    }
                    // A file where a directory was, and back.
                    1 if n % 50 == 1 => {
                        let _ = writeln!(out, "D apps/app-03");
                        files.push(("apps/app-03".to_string(), format!("flat {n}\n")));
                    }
                    1 if n % 50 == 2 => {
                        let _ = writeln!(out, "D apps/app-03");
                        files.push((path(3), format!("back {n}\n")));
                    }
                    _ => files.push((path(i), format!("value: {i}\nrevision: {n}\n"))),
                }
            }
        }
        for (path, content) in files {
            let _ = write!(out, "M 100644 inline {path}\ndata {}\n{content}\n", content.len());
            paths.insert(path);
        }
    }
    (out, paths)
}

fn import(bare: &Path, stream: &[u8]) {
    git(
        bare.parent().unwrap(),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    import.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(import.wait().unwrap().success());
}

/// For every path, the commits `git log` says added or modified it, newest first (one `git log`
/// for all paths: a pathspec would also match what is under a directory of the same name).
fn git_versions(bare: &Path) -> HashMap<String, Vec<String>> {
    let log = git(
        bare,
        &[
            "log",
            "--first-parent",
            "--no-renames",
            "--diff-filter=AM",
            "--format=commit %H",
            "--name-only",
            "main",
        ],
    );
    let mut versions: HashMap<String, Vec<String>> = HashMap::new();
    let mut commit = String::new();
    for line in log.lines().filter(|line| !line.is_empty()) {
        match line.strip_prefix("commit ") {
            Some(id) => commit = id.to_owned(),
            None => versions.entry(line.to_owned()).or_default().push(commit.clone()),
        }
    }
    versions
}

fn newest_steps(bare: &Path, count: usize) -> Vec<crate::plumbing::Step> {
    let repo = gix::open(bare).unwrap();
    let mut next = Some(repo.head_id().unwrap().detach());
    let mut steps = Vec::new();
    while let Some(id) = next.filter(|_| steps.len() < count) {
        let step = crate::plumbing::step(&repo, id).unwrap();
        next = step.parent.map(|(parent, _)| parent);
        steps.push(step);
    }
    steps
}

#[test]
fn every_files_history_agrees_with_git_log_in_either_pack_layout() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("repo.git");
    let (stream, paths) = history(400);
    import(&bare, &stream);
    let repo = gix::open(&bare).unwrap();
    let fast_import = newest_steps(&bare, 64);
    assert!(
        crate::plumbing::oldest_first(&repo, &fast_import),
        "fast-import's newer trees are deltas on older ones"
    );
    for layout in ["fast-import", "repacked"] {
        if layout == "repacked" {
            git(&bare, &["repack", "-adf", "-q"]);
            let repo = gix::open(&bare).unwrap();
            assert!(
                !crate::plumbing::oldest_first(&repo, &newest_steps(&bare, 64)),
                "a repacked pack keeps the newest whole"
            );
        }
        // One handle for every path: the walk is shared, in walks of growing length.
        let ours = LocalRepository::open(&bare).unwrap();
        let git_versions = git_versions(&bare);
        let mut versions = 0;
        for path in &paths {
            let theirs = git_versions.get(path).cloned().unwrap_or_default();
            let found: Vec<String> = ours
                .file_history("main", path, 1000)
                .unwrap()
                .into_iter()
                .map(|version| version.commit)
                .collect();
            assert_eq!(found, theirs, "{path} ({layout})");
            versions += found.len();
        }
        assert!(versions > 400, "the history has versions to compare ({versions})");
        // And a handle asked for a few recent versions only agrees with git's newest.
        let fresh = LocalRepository::open(&bare).unwrap();
        let path = "apps/app-01/file-001.yaml";
        let recent: Vec<String> = fresh
            .file_history("main", path, 2)
            .unwrap()
            .into_iter()
            .map(|version| version.commit)
            .collect();
        assert_eq!(recent, git_versions[path][..2], "{layout}");
    }
}
