//! A real bare repository behind the fake forges' APIs, worked with the `git` binary (not
//! selfheal's own gix code, so a fake never agrees with the code under test by sharing it).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};

/// A bare repository and the git calls a forge's API makes on it.
#[derive(Clone, Debug)]
pub struct GitBackend {
    pub path: PathBuf,
}

/// Someone who commits.
pub struct Who<'a> {
    pub name: &'a str,
    pub email: &'a str,
}

impl GitBackend {
    /// A new bare repository at `path` whose main holds `files`, one commit per entry of
    /// `history` (each a list of (path, content)).
    pub fn create(path: &Path, history: &[Vec<(&str, String)>]) -> anyhow::Result<Self> {
        let status = Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(path)
            .status()?;
        ensure!(status.success(), "git init failed");
        let backend = Self {
            path: path.to_path_buf(),
        };
        let mut parent: Option<String> = None;
        for (i, files) in history.iter().enumerate() {
            let commit = backend.commit(
                parent.as_deref(),
                files,
                &format!("version {}", i + 1),
                &Who {
                    name: "dev",
                    email: "dev@example.com",
                },
            )?;
            backend.set_ref("main", &commit, parent.as_deref())?;
            parent = Some(commit);
        }
        Ok(backend)
    }

    fn git(&self, args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> anyhow::Result<String> {
        Ok(self.git_exact(args, input, env)?.trim_end_matches('\n').to_string())
    }

    /// `git args`, its output exactly as printed.
    fn git_exact(&self, args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut command = Command::new("git");
        command
            .env("GIT_DIR", &self.path)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        if let Some(input) = input {
            child.stdin.take().context("stdin")?.write_all(input)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The tip of `branch`, if it exists.
    pub fn tip(&self, branch: &str) -> Option<String> {
        self.git(
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
            None,
            &[],
        )
        .ok()
        .filter(|s| !s.is_empty())
    }

    /// Whether `rev` names a commit here.
    pub fn has_commit(&self, rev: &str) -> bool {
        self.git(&["cat-file", "-e", &format!("{rev}^{{commit}}")], None, &[])
            .is_ok()
    }

    /// The text of `path` at `rev`, if it is there.
    pub fn read(&self, rev: &str, path: &str) -> Option<String> {
        self.git_exact(&["cat-file", "-p", &format!("{rev}:{path}")], None, &[])
            .ok()
    }

    /// The blob id of `path` at `rev`.
    pub fn blob(&self, rev: &str, path: &str) -> Option<String> {
        self.git(&["rev-parse", "--verify", "-q", &format!("{rev}:{path}")], None, &[])
            .ok()
    }

    /// Commits of `rev` that changed `path` (first parents), newest first: (id, full message).
    pub fn log(&self, rev: &str, path: &str, limit: usize) -> anyhow::Result<Vec<(String, String)>> {
        let text = self.git(
            &[
                "log",
                "--first-parent",
                "--format=%H%x00%B%x1e",
                &format!("-n{limit}"),
                rev,
                "--",
                path,
            ],
            None,
            &[],
        )?;
        Ok(text
            .split('\u{1e}')
            .filter_map(|entry| {
                let (id, message) = entry.trim_start_matches('\n').split_once('\0')?;
                Some((id.to_string(), message.trim_end().to_string()))
            })
            .collect())
    }

    /// The full message of `commit`.
    pub fn message(&self, commit: &str) -> anyhow::Result<String> {
        self.git(&["log", "-1", "--format=%B", commit], None, &[])
            .map(|m| m.trim_end().to_string())
    }

    /// A commit of `parent`'s tree with `files` set (a root commit without a parent); no ref moves.
    pub fn commit(
        &self,
        parent: Option<&str>,
        files: &[(&str, String)],
        message: &str,
        who: &Who<'_>,
    ) -> anyhow::Result<String> {
        let index = tempfile::NamedTempFile::new()?;
        let index_path = index.path().to_str().context("utf-8")?.to_string();
        let env = [
            ("GIT_INDEX_FILE", index_path.as_str()),
            ("GIT_AUTHOR_NAME", who.name),
            ("GIT_AUTHOR_EMAIL", who.email),
            ("GIT_COMMITTER_NAME", who.name),
            ("GIT_COMMITTER_EMAIL", who.email),
        ];
        std::fs::remove_file(index.path()).ok();
        match parent {
            Some(parent) => self.git(&["read-tree", parent], None, &env)?,
            None => self.git(&["read-tree", "--empty"], None, &env)?,
        };
        for (path, content) in files {
            let blob = self.git(&["hash-object", "-w", "--stdin"], Some(content.as_bytes()), &env)?;
            self.git(
                &["update-index", "--add", "--cacheinfo", &format!("100644,{blob},{path}")],
                None,
                &env,
            )?;
        }
        let tree = self.git(&["write-tree"], None, &env)?;
        self.commit_tree(&tree, parent, message, who)
    }

    /// A commit of `tree` on `parent` (e.g. a squash: the head's tree on the base's tip).
    pub fn commit_tree(
        &self,
        tree: &str,
        parent: Option<&str>,
        message: &str,
        who: &Who<'_>,
    ) -> anyhow::Result<String> {
        let env = [
            ("GIT_AUTHOR_NAME", who.name),
            ("GIT_AUTHOR_EMAIL", who.email),
            ("GIT_COMMITTER_NAME", who.name),
            ("GIT_COMMITTER_EMAIL", who.email),
        ];
        let mut args = vec!["commit-tree", tree];
        if let Some(parent) = parent {
            args.extend(["-p", parent]);
        }
        self.git(&args, Some(message.as_bytes()), &env)
    }

    /// The tree of `commit`.
    pub fn tree(&self, commit: &str) -> anyhow::Result<String> {
        self.git(&["rev-parse", &format!("{commit}^{{tree}}")], None, &[])
    }

    /// Points `branch` at `new` if it is at `old` (None: must not exist) — git's own
    /// compare-and-set.
    pub fn set_ref(&self, branch: &str, new: &str, old: Option<&str>) -> anyhow::Result<()> {
        let zero = "0000000000000000000000000000000000000000";
        self.git(
            &["update-ref", &format!("refs/heads/{branch}"), new, old.unwrap_or(zero)],
            None,
            &[],
        )
        .map(|_| ())
    }

    pub fn delete_ref(&self, branch: &str) -> anyhow::Result<()> {
        self.git(&["update-ref", "-d", &format!("refs/heads/{branch}")], None, &[])
            .map(|_| ())
    }

    /// Whether `ancestor` is `descendant` or behind it.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> bool {
        self.git(&["merge-base", "--is-ancestor", ancestor, descendant], None, &[])
            .is_ok()
    }

    /// How many commits `to` has that `from` lacks (`git rev-list --count from..to`).
    pub fn count_between(&self, from: &str, to: &str) -> anyhow::Result<usize> {
        Ok(self
            .git(&["rev-list", "--count", &format!("{from}..{to}")], None, &[])?
            .trim()
            .parse()?)
    }

    /// The merge base of two commits.
    pub fn merge_base(&self, a: &str, b: &str) -> Option<String> {
        self.git(&["merge-base", a, b], None, &[]).ok()
    }
}
