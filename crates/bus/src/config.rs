//! How a service uses NATS: [`NatsConfig`] (`[nats]` in every service's file,
//! `SELFHEAL_<SERVICE>_NATS__*` in the environment) — how it proves who it is, how the connection
//! is encrypted, and the shape of the stream and buckets it keeps ([`StreamShape`]) — and the
//! server list of a `nats_url`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use selfheal_config::Secret;
use serde::{Deserialize, Serialize};

/// Credentials and TLS for the NATS connection, and the stream's replicas and limits. At most one
/// way to authenticate: user and password, a token, an NKey seed file, or a `.creds` file (JWT and
/// seed). Secrets come inline or from files, like every other secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// User name (with `password` or `password_file`).
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// A token the server's `authorization { token }` accepts.
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (decentralized JWT auth, e.g. from `nsc`).
    pub creds_file: Option<PathBuf>,
    /// The CA that signed the server's certificate (PEM); TLS is then required.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even without a CA file of our own (the system roots are used).
    pub tls_required: bool,
    /// Copies JetStream keeps of the stream and of every bucket: 1 on one server, 3 on a
    /// cluster (at most 5). Give every service the same value; a service that finds the stream
    /// or a bucket it keeps with other settings updates them.
    pub replicas: usize,
    /// The stream forgets an event this old.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The stream holds at most this many bytes.
    pub max_bytes: i64,
    /// What a full stream does: `new` refuses new events (the gateway answers 503 and
    /// Alertmanager sends again; nothing stored goes before `max_age`), `old` drops the oldest.
    pub discard: Discard,
}

impl Default for NatsConfig {
    fn default() -> Self {
        let shape = StreamShape::default();
        Self {
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed_file: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            replicas: shape.replicas,
            max_age: shape.max_age,
            max_bytes: shape.max_bytes,
            discard: shape.discard,
        }
    }
}

/// What a full stream does (`discard` in `[nats]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Refuse new events: back pressure, never silent loss of what was accepted.
    #[default]
    New,
    /// Drop the oldest events to make room.
    Old,
}

/// The replicas and limits of the stream and buckets a service keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamShape {
    pub replicas: usize,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub discard: Discard,
}

impl Default for StreamShape {
    /// One replica; seven days or 1 GiB, whichever comes first; a full stream refuses new events.
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            discard: Discard::New,
        }
    }
}

/// A `[nats]` setting that cannot work, named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("nats.{field}: {problem}")]
pub struct NatsConfigError {
    pub field: &'static str,
    pub problem: String,
}

/// How the connection authenticates, secrets read.
#[derive(Clone, Debug, Default)]
pub(crate) enum Credentials {
    #[default]
    None,
    UserPassword(String, Secret),
    Token(Secret),
    NKey(Secret),
    CredsFile(PathBuf),
}

/// [`NatsConfig`], checked: secrets read, files there, limits possible.
#[derive(Clone, Debug, Default)]
pub struct CheckedNats {
    pub(crate) credentials: Credentials,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    pub(crate) tls_required: bool,
    /// The shape this connection keeps the stream and its buckets in; `None` creates what is
    /// missing with the defaults and changes nothing that exists (the CLI's tools).
    pub(crate) shape: Option<StreamShape>,
}

impl CheckedNats {
    /// The CA file, when TLS uses one (named in connection errors).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The shape this connection keeps the stream and buckets in, if it keeps one.
    pub fn shape(&self) -> Option<StreamShape> {
        self.shape
    }

    /// The same connection, leaving the stream and buckets as they are: for an operator's tool,
    /// which must not undo the replicas the services keep.
    pub fn leaving_stream_as_is(mut self) -> Self {
        self.shape = None;
        self
    }
}

fn file(field: &'static str, path: &Path) -> Result<PathBuf, NatsConfigError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(NatsConfigError {
            field,
            problem: format!("{} is not a readable file", path.display()),
        })
    }
}

fn secret(
    field: &'static str,
    inline: &Option<Secret>,
    path: &Option<PathBuf>,
) -> Result<Option<Secret>, NatsConfigError> {
    Secret::inline_or_file(inline.clone(), path.as_deref()).map_err(|e| NatsConfigError {
        field,
        problem: e.to_string(),
    })
}

impl NatsConfig {
    /// Checks the settings and reads the secrets: one way to authenticate at most, every file
    /// there, a client certificate with its key.
    pub fn check(&self) -> Result<CheckedNats, NatsConfigError> {
        let password = secret("password_file", &self.password, &self.password_file)?;
        let token = secret("token_file", &self.token, &self.token_file)?;
        let nkey = match &self.nkey_seed_file {
            Some(path) => {
                let seed = secret("nkey_seed_file", &None, &Some(path.clone()))?;
                if !seed.as_ref().is_some_and(|s| s.expose().starts_with('S')) {
                    return Err(NatsConfigError {
                        field: "nkey_seed_file",
                        problem: format!("{} does not hold an NKey seed (S…)", path.display()),
                    });
                }
                seed
            }
            None => None,
        };
        let creds = self.creds_file.as_deref().map(|p| file("creds_file", p)).transpose()?;
        let user = self.user.clone().filter(|u| !u.is_empty());
        let ways = [
            user.is_some() || password.is_some(),
            token.is_some(),
            nkey.is_some(),
            creds.is_some(),
        ];
        if ways.iter().filter(|set| **set).count() > 1 {
            return Err(NatsConfigError {
                field: "user",
                problem: "set one way to authenticate: user and password, token, nkey_seed_file or creds_file".into(),
            });
        }
        let credentials = match (user, password, token, nkey, creds) {
            (Some(user), Some(password), ..) => Credentials::UserPassword(user, password),
            (Some(_), None, ..) => {
                return Err(NatsConfigError {
                    field: "password",
                    problem: "must be set with user (password or password_file)".into(),
                });
            }
            (None, Some(_), ..) => {
                return Err(NatsConfigError {
                    field: "user",
                    problem: "must be set with a password".into(),
                });
            }
            (None, None, Some(token), ..) => Credentials::Token(token),
            (None, None, None, Some(seed), _) => Credentials::NKey(seed),
            (None, None, None, None, Some(creds)) => Credentials::CredsFile(creds),
            _ => Credentials::None,
        };
        let ca = self
            .tls_ca_file
            .as_deref()
            .map(|p| file("tls_ca_file", p))
            .transpose()?;
        let client_cert = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((file("tls_cert_file", cert)?, file("tls_key_file", key)?)),
            (Some(_), None) => {
                return Err(NatsConfigError {
                    field: "tls_key_file",
                    problem: "must be set with tls_cert_file".into(),
                });
            }
            (None, Some(_)) => {
                return Err(NatsConfigError {
                    field: "tls_cert_file",
                    problem: "must be set with tls_key_file".into(),
                });
            }
            (None, None) => None,
        };
        Ok(CheckedNats {
            tls_required: self.tls_required || ca.is_some() || client_cert.is_some(),
            credentials,
            ca,
            client_cert,
            shape: Some(self.shape()?),
        })
    }

    /// The stream's replicas and limits, checked.
    fn shape(&self) -> Result<StreamShape, NatsConfigError> {
        if !(1..=5).contains(&self.replicas) {
            return Err(NatsConfigError {
                field: "replicas",
                problem: format!("{} is not a replica count JetStream keeps (1 to 5)", self.replicas),
            });
        }
        if self.max_age < Duration::from_secs(3600) {
            return Err(NatsConfigError {
                field: "max_age",
                problem: format!(
                    "{} is shorter than an hour: events must outlive their incident's handling",
                    humantime::format_duration(self.max_age)
                ),
            });
        }
        if self.max_bytes < 1 << 20 {
            return Err(NatsConfigError {
                field: "max_bytes",
                problem: format!("{} is less than 1 MiB (1048576)", self.max_bytes),
            });
        }
        Ok(StreamShape {
            replicas: self.replicas,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            discard: self.discard,
        })
    }
}

/// The servers of a `nats_url`: one URL, or several separated by commas (a cluster's seeds).
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `url` (one server or a list) with any password or token in it replaced, for messages.
pub fn redacted(url: &str) -> String {
    servers(url)
        .iter()
        .map(|server| {
            let Some((scheme, rest)) = server.split_once("://") else {
                return server.clone();
            };
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    if userinfo.contains(':') {
                        format!("{scheme}://{user}:[redacted]@{host}")
                    } else {
                        // A bare token in the user part.
                        format!("{scheme}://[redacted]@{host}")
                    }
                }
                None => server.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_lists_and_their_secrets_are_redacted() {
        assert_eq!(
            servers("nats://a:4222, nats://b:4222,"),
            ["nats://a:4222", "nats://b:4222"]
        );
        assert_eq!(
            redacted("nats://gateway:s3cret@a:4222,nats://tok3n@b:4222,nats://c:4222"),
            "nats://gateway:[redacted]@a:4222,nats://[redacted]@b:4222,nats://c:4222"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let seed = dir.path().join("seed");
        std::fs::write(&seed, "not a seed\n")?;
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n")?;
        for (auth, field) in [
            (
                NatsConfig {
                    user: Some("gateway".into()),
                    ..Default::default()
                },
                "password",
            ),
            (
                NatsConfig {
                    password: Some(Secret::new("p")),
                    ..Default::default()
                },
                "user",
            ),
            (
                NatsConfig {
                    token: Some(Secret::new("t")),
                    creds_file: Some(pem.clone()),
                    ..Default::default()
                },
                "user",
            ),
            (
                NatsConfig {
                    nkey_seed_file: Some(seed.clone()),
                    ..Default::default()
                },
                "nkey_seed_file",
            ),
            (
                NatsConfig {
                    tls_ca_file: Some(dir.path().join("missing.pem")),
                    ..Default::default()
                },
                "tls_ca_file",
            ),
            (
                NatsConfig {
                    tls_cert_file: Some(pem.clone()),
                    ..Default::default()
                },
                "tls_key_file",
            ),
            (
                NatsConfig {
                    token_file: Some(dir.path().join("missing")),
                    ..Default::default()
                },
                "token_file",
            ),
            (
                NatsConfig {
                    replicas: 0,
                    ..Default::default()
                },
                "replicas",
            ),
            (
                NatsConfig {
                    max_age: Duration::from_secs(60),
                    ..Default::default()
                },
                "max_age",
            ),
            (
                NatsConfig {
                    max_bytes: -1,
                    ..Default::default()
                },
                "max_bytes",
            ),
        ] {
            let error = auth.check().expect_err("refused");
            assert_eq!(error.field, field, "{error}");
        }
        let checked = NatsConfig {
            user: Some("gateway".into()),
            password: Some(Secret::new("p")),
            tls_ca_file: Some(pem.clone()),
            ..Default::default()
        }
        .check()?;
        assert!(checked.tls_required && checked.ca_file() == Some(pem.as_path()));
        assert!(!format!("{checked:?}").contains("\"p\""), "{checked:?}");
        assert_eq!(checked.shape(), Some(StreamShape::default()));
        assert_eq!(checked.leaving_stream_as_is().shape(), None);
        Ok(())
    }
}
