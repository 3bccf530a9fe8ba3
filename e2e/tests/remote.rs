//! Any Git remote, no forge API: the reconciler on a `RemoteRepository` against a real `sshd`
//! (Debian's openssh-server, on a free loopback port) and against `git http-backend` behind a
//! server that asks for a token.
//! - an auto-approved rollback lands on the remote's main, one commit;
//! - main moved by someone else between selfheal's fetch and its push: the lease refuses the
//!   push, and the change is made again on the new main — one commit of selfheal's on top;
//! - a change that needs approval waits on `selfheal/<incident>`, and approving it moves the
//!   remote's main to it;
//! - a host key that is not the one in known_hosts, and a wrong token, are refused (and the token
//!   is in no error and no file).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context;
use selfheal_e2e::{
    bare_repository_and_clone, decision, git,
    git_servers::{GitHttp, Sshd, ssh_keygen},
};
use selfheal_git::{Author, Batched, FileVersion, GitRepo, RemoteRepository, RemoteSettings, RepoError};
use selfheal_pr_controller::{PrControllerConfig, reconcile::Reconciler};
use selfheal_proto::v1::{Action, Approval, RemediationState};

const PATH: &str = "apps/checkout/kustomization.yaml";
const LABELS: &[(&str, &str)] = &[("service", "checkout"), ("alertname", "HighErrorRate")];

fn kustomization(tag: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- deployment.yaml\nimages:\n- name: ghcr.io/acme/checkout\n  newTag: {tag}\nreplicas:\n- name: checkout\n  count: 2\n"
    )
}

/// The remote's bare repository with checkout at v1.4.1 then v1.5.0, and the clone it was pushed
/// from (someone else's).
fn remote_repository(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (bare, work) = bare_repository_and_clone(dir)?;
    std::fs::create_dir_all(work.join("apps/checkout"))?;
    for tag in ["v1.4.1", "v1.5.0"] {
        std::fs::write(work.join(PATH), kustomization(tag))?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", &format!("checkout {tag}")])?;
    }
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok((bare, work))
}

fn scale(incident: &str, replicas: i32, approval: Approval) -> selfheal_proto::v1::Decision {
    let mut scale = decision(incident, LABELS, Action::Scale, approval);
    scale.params = Some(selfheal_proto::v1::DecisionParams {
        replicas: Some(replicas),
        ..Default::default()
    });
    scale
}

fn reconciler(repo: Arc<dyn GitRepo>) -> anyhow::Result<Reconciler> {
    Ok(Reconciler::new(
        repo,
        None,
        PrControllerConfig::default().reconcile_settings()?,
    ))
}

/// The subjects of the remote's main, newest first.
fn subjects(bare: &Path) -> anyhow::Result<Vec<String>> {
    Ok(git(bare, &["log", "--format=%s", "main"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// What someone else does to the remote.
type OtherPush = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// A remote that someone else pushes to just before selfheal's first push: the race a lease is
/// for, made to happen every time.
struct PushedMeanwhile {
    inner: RemoteRepository,
    someone_else: Mutex<Option<OtherPush>>,
}

impl GitRepo for PushedMeanwhile {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        self.inner.branch_tip(branch)
    }
    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        self.inner.read_file(commit, path)
    }
    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        self.inner.file_history(branch, path, limit)
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
        let push = self.someone_else.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(push) = push {
            push().map_err(|e| RepoError::Git(format!("the other push failed: {e}")))?;
        }
        self.inner
            .commit_file(branch, expected_tip, parent, path, content, message, author)
    }
    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError> {
        self.inner.update_branch(branch, expected_tip, new_tip)
    }
    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        self.inner.is_ancestor(ancestor, descendant)
    }
    fn marked_commit(&self, branch: &str, incident: &str) -> Result<Option<(String, String)>, RepoError> {
        self.inner.marked_commit(branch, incident)
    }
    fn start_batch(&self) -> Option<Arc<dyn Batched>> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ssh_a_change_lands_once_even_when_main_moves_and_a_wrong_host_key_is_refused() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let (bare, work) = remote_repository(temp.path())?;
    let sshd_dir = temp.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir)?;
    let (key, public) = ssh_keygen(&temp.path().join("id_ed25519"))?;
    let mut sshd = Sshd::start(&sshd_dir, &public).await?;
    let known_hosts = temp.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line))?;
    let settings = RemoteSettings {
        url: sshd.url(&bare),
        ssh_key_file: Some(key.clone()),
        known_hosts_file: Some(known_hosts.clone()),
        ..Default::default()
    };
    let mirror = temp.path().join("mirror.git");

    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let remote = RemoteRepository::open(settings.clone(), &mirror).with_context(|| sshd.process.output())?;
        // An approved rollback: one commit on the remote's main.
        let reconciler = reconciler(Arc::new(remote))?;
        let event = reconciler.reconcile(&decision("remote1", LABELS, Action::Rollback, Approval::Auto), "trace")?;
        assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
        assert_eq!(
            git(&bare, &["show", &format!("main:{PATH}")])?,
            kustomization("v1.4.1").trim_end()
        );
        assert_eq!(
            subjects(&bare)?[0],
            "selfheal: roll back checkout from v1.5.0 to v1.4.1"
        );
        // Asked again (a redelivery): found on the remote, not made twice.
        let again = reconciler.reconcile(&decision("remote1", LABELS, Action::Rollback, Approval::Auto), "trace")?;
        assert_eq!(again.commit, event.commit);
        assert_eq!(subjects(&bare)?.len(), 3);

        // Someone pushes to main between selfheal's fetch and its push.
        let other = work.clone();
        let raced = PushedMeanwhile {
            inner: RemoteRepository::open(settings.clone(), &mirror)?,
            someone_else: Mutex::new(Some(Box::new(move || {
                git(&other, &["pull", "-q", "--rebase", "origin", "main"])?;
                std::fs::write(other.join("README.md"), "the GitOps repository\n")?;
                git(&other, &["add", "-A"])?;
                git(&other, &["commit", "-q", "-m", "docs: a README"])?;
                git(&other, &["push", "-q", "origin", "main"])?;
                Ok(())
            }))),
        };
        let scale_up = scale("remote2", 3, Approval::Auto);
        let event = reconciler.on(Arc::new(raced)).reconcile(&scale_up, "trace")?;
        assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
        let log = subjects(&bare)?;
        assert_eq!(
            &log[..3],
            [
                "selfheal: scale checkout from 2 to 3 replicas".to_string(),
                "docs: a README".to_string(),
                "selfheal: roll back checkout from v1.5.0 to v1.4.1".to_string(),
            ]
            .as_slice(),
            "selfheal's change on top of the other push, once: {log:?}"
        );

        // A change that needs approval waits on its branch; approving it moves main to it.
        let waiting = reconciler.reconcile(&scale("remote3", 4, Approval::Required), "trace")?;
        assert_eq!(waiting.state(), RemediationState::Opened, "{}", waiting.message);
        let branch = git(&bare, &["rev-parse", "refs/heads/selfheal/remote3"])?;
        assert_ne!(git(&bare, &["rev-parse", "main"])?, branch, "main waits");
        let approved = reconciler.reconcile(&scale("remote3", 4, Approval::Auto), "trace")?;
        assert_eq!(approved.state(), RemediationState::Merged, "{}", approved.message);
        assert_eq!(
            git(&bare, &["rev-parse", "main"])?,
            branch,
            "main is the approved branch"
        );
        Ok(())
    })?;

    // A host key that is not the server's: refused, never accepted.
    let (_, impostor) = ssh_keygen(&temp.path().join("impostor"))?;
    let key_type_and_body: Vec<&str> = impostor.split_whitespace().take(2).collect();
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", sshd.port, key_type_and_body.join(" ")),
    )?;
    let refused = tokio::task::block_in_place(|| RemoteRepository::open(settings, &temp.path().join("mirror2.git")))
        .expect_err("a wrong host key is refused");
    assert!(
        matches!(&refused, RepoError::Refused(message) if message.contains("host key")),
        "{refused}"
    );
    sshd.process.check_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_with_a_token_a_change_lands_and_a_wrong_token_is_refused_without_showing_it() -> anyhow::Result<()> {
    const SECRET: &str = "glpat-0123456789abcdef";
    let temp = tempfile::tempdir()?;
    let (bare, _work) = remote_repository(temp.path())?;
    let server = GitHttp::start(temp.path(), SECRET).await?;
    let url = server.url(bare.file_name().and_then(|n| n.to_str()).context("a name")?);
    let settings = RemoteSettings {
        url: url.clone(),
        username: Some("selfheal".into()),
        token: Some(SECRET.into()),
        ..Default::default()
    };
    let mirror = temp.path().join("mirror.git");
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let remote = RemoteRepository::open(settings.clone(), &mirror)?;
        let reconciler = reconciler(Arc::new(remote))?;
        let event = reconciler.reconcile(&decision("http1", LABELS, Action::Rollback, Approval::Auto), "trace")?;
        assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
        assert_eq!(event.repository, url, "the location is the URL, no credentials");
        assert_eq!(
            git(&bare, &["show", &format!("main:{PATH}")])?,
            kustomization("v1.4.1").trim_end()
        );

        let wrong = RemoteSettings {
            token: Some("glpat-wrong-token-000".into()),
            ..settings
        };
        let refused = RemoteRepository::open(wrong, &temp.path().join("mirror2.git")).expect_err("refused");
        assert!(matches!(refused, RepoError::Refused(_)), "{refused}");
        assert!(!refused.to_string().contains("glpat-wrong-token-000"), "{refused}");
        Ok(())
    })?;
    // The token is in no file of the mirror (it travels in the environment of each git call).
    for entry in walk(&mirror)? {
        let bytes = std::fs::read(&entry)?;
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the token",
            entry.display()
        );
    }
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}
