//! Real Git servers for the remote tests: OpenSSH's `sshd` (Debian's openssh-server, started on
//! a free loopback port with its own host key and an authorized key made here, no systemd), and
//! `git http-backend` behind a small HTTP server that asks for a token (HTTP basic auth), as a
//! forge's Git endpoint does.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;

use crate::{Process, free_port, wait_for};

/// Runs `ssh-keygen` for a new ed25519 key at `path` (no passphrase): the private key's path and
/// the public key's line.
pub fn ssh_keygen(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "selfheal-test", "-f"])
        .arg(path)
        .output()
        .context("ssh-keygen must be installed (openssh-client)")?;
    ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok((path.to_path_buf(), public.trim().to_string()))
}

/// An `sshd` on 127.0.0.1 that lets in one key, as the user running the test.
pub struct Sshd {
    pub process: Process,
    pub port: u16,
    /// The server's host key, as a known_hosts line for `[127.0.0.1]:port`.
    pub known_hosts_line: String,
}

impl Sshd {
    /// Starts `sshd` in `dir`, admitting `authorized_key` (a public key line).
    pub async fn start(dir: &Path, authorized_key: &str) -> anyhow::Result<Self> {
        let program = std::env::var_os("SSHD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"));
        if !program.exists() {
            bail!(
                "{} is missing: install openssh-server (scripts/test does) or name it by $SSHD",
                program.display()
            );
        }
        let (host_key, host_public) = ssh_keygen(&dir.join("ssh_host_ed25519_key"))?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("{authorized_key}\n"))?;
        // sshd refuses a privilege-separation directory that is missing.
        std::fs::create_dir_all("/run/sshd").ok();
        let port = free_port()?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display(),
            ),
        )?;
        let config_arg = config.to_str().context("utf-8 path")?;
        let mut process = Process::start("sshd", &program, &["-D", "-e", "-f", config_arg], &[], dir)?;
        wait_for(Duration::from_secs(10), "sshd to accept connections", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await
        .with_context(|| process.output())?;
        process.check_running()?;
        Ok(Self {
            process,
            port,
            known_hosts_line: format!("[127.0.0.1]:{port} {host_public}"),
        })
    }

    /// The URL of a repository on this server, by its absolute path.
    pub fn url(&self, repository: &Path) -> String {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        format!("ssh://{user}@127.0.0.1:{}{}", self.port, repository.display())
    }
}

/// `git http-backend` serving the repositories under a root, to clients sending
/// `Authorization: Basic base64(<any user>:<token>)`.
pub struct GitHttp {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Backend {
    root: PathBuf,
    token: String,
}

impl GitHttp {
    pub async fn start(root: &Path, token: &str) -> anyhow::Result<Self> {
        let backend = Arc::new(Backend {
            root: root.to_path_buf(),
            token: token.to_string(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let app = axum::Router::new().fallback(serve).with_state(backend);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        Ok(Self { port, task })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    String::from_utf8_lossy(&decoded)
        .split_once(':')
        .is_some_and(|(_, password)| password == token)
}

/// One request, through `git http-backend` as a CGI program.
async fn serve(State(backend): State<Arc<Backend>>, request: Request) -> Response {
    if !authorized(request.headers(), &backend.token) {
        let mut response = (StatusCode::UNAUTHORIZED, "token required").into_response();
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Basic realm=\"git\""));
        return response;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "body").into_response();
    };
    match cgi(&backend, &parts, body).await {
        Ok(response) => response,
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn cgi(backend: &Backend, parts: &axum::http::request::Parts, body: Bytes) -> anyhow::Result<Response> {
    use tokio::io::AsyncWriteExt as _;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &backend.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "selfheal")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&body).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let text = &out.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2)))
        .with_context(|| format!("http-backend: {}", String::from_utf8_lossy(&out.stderr)))?;
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&text[..split.0]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next().unwrap_or("200").parse()?;
            builder = builder.status(code);
        } else {
            builder = builder.header(name, value);
        }
    }
    Ok(builder.body(Body::from(text[split.1..].to_vec()))?)
}
