//! Any Git remote, with no forge API: a local bare mirror, fetched before each read of a branch,
//! and changes pushed with a lease.
//!
//! gix cannot push (gitoxide's tracking issue #306), so fetches and pushes run the `git` binary,
//! which every image that has selfheal's git also has, and which speaks every transport the
//! remote may (SSH through OpenSSH, HTTPS with a token). Reads, history and the commits
//! themselves stay on gix, in the mirror ([`LocalRepository`]): a change is written there as a
//! commit object, then pushed as `<commit>:refs/heads/<branch>` with
//! `--force-with-lease=refs/heads/<branch>:<expected>` — the compare-and-set the local repository
//! does on its refs, done by the remote under its ref lock (an empty lease: the branch must not
//! exist). A push refused because the branch moved is [`RepoError::Conflict`], and the
//! reconciler makes the change again on the new tip, as it does locally.
//!
//! Credentials never reach a command line, a URL or an error: the SSH key and known-hosts file
//! are named in `GIT_SSH_COMMAND` (host keys checked strictly against that file alone, never
//! "accept any"); an HTTPS token is sent as an `Authorization` header set through git's
//! `GIT_CONFIG_*` environment, and scrubbed from anything git prints.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use base64::Engine as _;

use crate::{
    error::RepoError,
    local::LocalRepository,
    repo::{Author, Batched, FileVersion, GitRepo},
};

/// How to reach the remote.
#[derive(Clone, Default)]
pub struct RemoteSettings {
    /// `ssh://git@host[:port]/path.git`, `git@host:path.git`, `https://host/path.git` (no
    /// credentials in it), `git://` or `file://`.
    pub url: String,
    /// SSH: the private key (a file readable only by selfheal).
    pub ssh_key_file: Option<PathBuf>,
    /// SSH: the known_hosts file the remote's host key must be in.
    pub known_hosts_file: Option<PathBuf>,
    /// HTTPS: the user name sent with the token (`git` when unset; GitLab and Gitea accept any,
    /// GitHub wants `x-access-token`).
    pub username: Option<String>,
    /// HTTPS: the token, sent as the password of HTTP basic authentication.
    pub token: Option<String>,
}

impl std::fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("url", &self.url)
            .field("ssh_key_file", &self.ssh_key_file)
            .field("known_hosts_file", &self.known_hosts_file)
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A Git remote, through a local bare mirror.
pub struct RemoteRepository {
    mirror: LocalRepository,
    mirror_path: PathBuf,
    settings: RemoteSettings,
    /// The environment every `git` call gets (transport, credentials, no prompts).
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for RemoteRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRepository")
            .field("url", &self.settings.url)
            .field("mirror", &self.mirror_path)
            .finish_non_exhaustive()
    }
}

/// Whether `url` carries a password or token (`https://user:secret@host`), which must come from
/// `token` instead.
fn has_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `url` with any password in it replaced, for messages.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:[redacted]@{host}{}", &rest[authority_end..])
        }
        _ => url.to_string(),
    }
}

/// `path` in single quotes for the shell `GIT_SSH_COMMAND` is run by.
fn shell_quoted(path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or("is not UTF-8")?;
    if text.contains('\'') {
        return Err("contains a single quote".into());
    }
    Ok(format!("'{text}'"))
}

impl RemoteRepository {
    /// Opens the mirror at `mirror_path` (created, and the remote's branches fetched, when it is
    /// not there yet). Checks the settings first: a URL with credentials in it, an SSH key without
    /// a known-hosts file, or files that are not there are refused.
    pub fn open(settings: RemoteSettings, mirror_path: &Path) -> Result<Self, RepoError> {
        let shown = redacted_url(&settings.url);
        let bad = |reason: String| RepoError::Open {
            path: shown.clone(),
            reason,
        };
        if settings.url.trim().is_empty() {
            return Err(bad("remote.url: must be set".into()));
        }
        if settings.url.starts_with('-') || settings.url.chars().any(char::is_control) {
            return Err(bad("remote.url: is not a URL".into()));
        }
        if has_credentials(&settings.url) {
            return Err(bad(
                "remote.url: must not carry a password or token (set remote.token or remote.token_file)".into(),
            ));
        }
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("GIT_ASKPASS".to_string(), "true".to_string()),
            ("SSH_ASKPASS".to_string(), "true".to_string()),
        ];
        match (&settings.ssh_key_file, &settings.known_hosts_file) {
            (Some(key), Some(known_hosts)) => {
                for (field, path) in [("ssh_key_file", key), ("known_hosts_file", known_hosts)] {
                    if !path.is_file() {
                        return Err(bad(format!("remote.{field}: {} is not a file", path.display())));
                    }
                }
                let key = shell_quoted(key).map_err(|e| bad(format!("remote.ssh_key_file: {e}")))?;
                let known = shell_quoted(known_hosts).map_err(|e| bad(format!("remote.known_hosts_file: {e}")))?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -i {key} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes \
                         -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null"
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "remote.known_hosts_file: must be set with an SSH key (host keys are always checked)".into(),
                ));
            }
            (None, Some(known_hosts)) => {
                let known = shell_quoted(known_hosts).map_err(|e| bad(format!("remote.known_hosts_file: {e}")))?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known} \
                         -o GlobalKnownHostsFile=/dev/null"
                    ),
                ));
            }
            (None, None) => {}
        }
        if let Some(token) = settings.token.as_ref().filter(|t| !t.is_empty()) {
            let user = settings.username.as_deref().unwrap_or("git");
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
            env.extend([
                ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
                ("GIT_CONFIG_KEY_0".to_string(), "http.extraHeader".to_string()),
                (
                    "GIT_CONFIG_VALUE_0".to_string(),
                    format!("Authorization: Basic {basic}"),
                ),
            ]);
        }
        if !mirror_path.join("HEAD").exists() {
            std::fs::create_dir_all(mirror_path)
                .map_err(|e| bad(format!("cannot create the mirror {}: {e}", mirror_path.display())))?;
            run_git(&env, mirror_path, &["init", "-q", "--bare"], &settings)?;
        }
        let mirror = LocalRepository::open(mirror_path)?;
        let remote = Self {
            mirror,
            mirror_path: mirror_path.to_path_buf(),
            settings,
            env,
        };
        remote.fetch(None)?;
        Ok(remote)
    }

    /// Brings the mirror's branches to the remote's: `branch` alone, or all of them.
    fn fetch(&self, branch: Option<&str>) -> Result<(), RepoError> {
        let refspec = match branch {
            Some(branch) => format!("+refs/heads/{branch}:refs/heads/{branch}"),
            None => "+refs/heads/*:refs/heads/*".to_string(),
        };
        let output = self.git(&[
            "fetch",
            "-q",
            "--no-tags",
            "--prune",
            "--",
            &self.settings.url,
            &refspec,
        ]);
        match output {
            Ok(_) => Ok(()),
            // The branch is not on the remote (any more): neither is it here.
            Err(RepoError::Git(message)) if branch.is_some() && message.contains("couldn't find remote ref") => {
                let branch = branch.unwrap_or_default();
                let name = format!("refs/heads/{branch}");
                if self.mirror.branch_tip(branch)?.is_some() {
                    self.git(&["update-ref", "-d", &name])?;
                }
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Pushes `commit` to `branch` if the remote's branch is at `expected` (None: absent).
    fn push(&self, branch: &str, expected: Option<&str>, commit: &str) -> Result<(), RepoError> {
        let lease = format!("--force-with-lease=refs/heads/{branch}:{}", expected.unwrap_or(""));
        let refspec = format!("{commit}:refs/heads/{branch}");
        match self.git(&["push", "--porcelain", "-q", &lease, "--", &self.settings.url, &refspec]) {
            Ok(_) => {
                // The mirror follows, so reads before the next fetch see it.
                self.git(&["update-ref", &format!("refs/heads/{branch}"), commit])?;
                Ok(())
            }
            Err(RepoError::Git(message)) if is_moved(&message) => Err(RepoError::Conflict {
                branch: branch.to_string(),
                expected: expected.unwrap_or("no branch").to_string(),
                found: "another commit on the remote".into(),
            }),
            Err(error) => Err(error),
        }
    }

    fn git(&self, args: &[&str]) -> Result<String, RepoError> {
        run_git(&self.env, &self.mirror_path, args, &self.settings)
    }
}

/// Whether git's refusal of a push says the branch moved (the lease did not hold, or the
/// remote's ref changed under its lock).
fn is_moved(message: &str) -> bool {
    [
        "stale info",
        "fetch first",
        "non-fast-forward",
        "failed to update ref",
        "cannot lock ref",
        "already exists",
    ]
    .iter()
    .any(|sign| message.contains(sign))
}

/// Runs `git args` in `dir` with `env`; its error output, scrubbed of the token, on failure.
fn run_git(
    env: &[(String, String)],
    dir: &Path,
    args: &[&str],
    settings: &RemoteSettings,
) -> Result<String, RepoError> {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_DIR", dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .output()
        .map_err(|e| RepoError::Git(format!("cannot run git: {e}")))?;
    let scrub = |text: &[u8]| -> String {
        let mut text = String::from_utf8_lossy(text).trim().to_string();
        if let Some(token) = settings.token.as_ref().filter(|t| !t.is_empty()) {
            text = text.replace(token.as_str(), "[redacted]");
        }
        for (_, value) in env {
            if value.starts_with("Authorization:") {
                text = text.replace(value.as_str(), "Authorization: [redacted]");
            }
        }
        text.chars().take(600).collect()
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }
    let stderr = scrub(&output.stderr);
    let stdout = scrub(&output.stdout);
    let what = args.first().copied().unwrap_or("git");
    let message = format!("git {what} {}: {stderr} {stdout}", settings.url);
    if stderr.contains("Host key verification failed") || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return Err(RepoError::Refused(format!(
            "git {what} {}: the remote's host key is not the one in known_hosts_file (refused)",
            settings.url
        )));
    }
    // git's own words for credentials the remote refused (SSH's, and HTTP's 401 and 403).
    if stderr.contains("Authentication failed")
        || stderr.contains("Permission denied (publickey")
        || stderr.contains("returned error: 401")
        || stderr.contains("returned error: 403")
    {
        return Err(RepoError::Refused(message));
    }
    Err(RepoError::Git(message))
}

impl GitRepo for RemoteRepository {
    fn location(&self) -> String {
        self.settings.url.clone()
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        self.fetch(Some(branch))?;
        self.mirror.branch_tip(branch)
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        self.mirror.read_file(commit, path)
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        self.mirror.file_history(branch, path, limit)
    }

    fn commit_file(
        &self,
        branch: &str,
        expected_tip: Option<&str>,
        parent: &str,
        path: &str,
        content: &str,
        message: &str,
        author: &Author,
    ) -> Result<String, RepoError> {
        let commit = self.mirror.write_commit(parent, path, content, message, author)?;
        self.push(branch, expected_tip, &commit)?;
        tracing::debug!(location = %self.location(), branch, %commit, path, "pushed commit");
        Ok(commit)
    }

    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError> {
        self.push(branch, Some(expected_tip), new_tip)
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        self.mirror.is_ancestor(ancestor, descendant)
    }

    fn marked_commit(&self, branch: &str, incident: &str) -> Result<Option<(String, String)>, RepoError> {
        self.mirror.marked_commit(branch, incident)
    }

    fn warm(&self, branch: &str) -> Result<(), RepoError> {
        self.mirror.warm(branch)
    }

    fn start_batch(&self) -> Option<Arc<dyn Batched>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_refused() {
        assert!(has_credentials("https://user:ghp_secret@github.com/acme/gitops.git"));
        assert!(!has_credentials("https://github.com/acme/gitops.git"));
        assert!(!has_credentials("ssh://git@host:2222/gitops.git"));
        assert!(!has_credentials("git@host:gitops.git"));
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = RemoteSettings {
            url: "https://user:s3cret@example.com/gitops.git".into(),
            ..Default::default()
        };
        let error = RemoteRepository::open(settings, &dir.path().join("mirror")).expect_err("refused");
        assert!(error.to_string().contains("remote.token"), "{error}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn a_key_without_known_hosts_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("id");
        std::fs::write(&key, "key").expect("write");
        let settings = RemoteSettings {
            url: "ssh://git@127.0.0.1:1/gitops.git".into(),
            ssh_key_file: Some(key),
            ..Default::default()
        };
        let error = RemoteRepository::open(settings, &dir.path().join("mirror")).expect_err("refused");
        assert!(error.to_string().contains("known_hosts_file"), "{error}");
    }
}
