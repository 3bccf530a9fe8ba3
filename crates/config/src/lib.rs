//! Configuration: one typed struct per service, read from a TOML file and then from `SELFHEAL_*`
//! environment variables (env wins), plus [`Secret`], a string that never prints.
//!
//! Environment keys are the config path upper-cased with `__` between levels, after the service
//! prefix: `SELFHEAL_GATEWAY_LISTEN`, `SELFHEAL_PR_CONTROLLER_TARGET__PATH`.

pub mod labels;
pub mod slack;

use std::{fmt, path::Path};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq;

/// What can go wrong reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is missing, mistyped or unknown; figment's message names it and its source.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read secret file {path}: {reason}")]
    SecretFile { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// Reads `T` from its defaults, then the TOML file at `file` (if given), then the environment
/// variables that start with `env_prefix` (e.g. `SELFHEAL_GATEWAY_`).
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Invalid(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        figment = figment.merge(Toml::file(file));
    }
    // `<PREFIX>CONFIG` names the file itself (a command-line flag), not a setting.
    figment = figment.merge(Env::prefixed(env_prefix).ignore(&["CONFIG"]).split("__"));
    figment.extract().map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// A secret value (a token, a signing key). `Debug` and `Display` print `[redacted]`; it
/// serializes as `[redacted]` too, so a config dump never leaks it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used (a header, an HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when unset or empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison with `candidate`: no early exit on the first differing byte, and
    /// none on a differing length either — the SHA-256 digests (always 32 bytes) are compared, so
    /// the time says nothing about how long the secret is.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use sha2::Digest as _;
        let ours = sha2::Sha256::digest(self.0.as_bytes());
        let theirs = sha2::Sha256::digest(candidate);
        !self.0.is_empty() && bool::from(ours.as_slice().ct_eq(theirs.as_slice()))
    }

    /// The secret given inline, or else read from `file` (trailing newline trimmed).
    pub fn inline_or_file(inline: Option<Secret>, file: Option<&Path>) -> Result<Option<Secret>, ConfigError> {
        if let Some(secret) = inline.filter(|s| !s.is_empty()) {
            return Ok(Some(secret));
        }
        let Some(file) = file else { return Ok(None) };
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::SecretFile {
            path: file.display().to_string(),
            reason: e.kind().to_string(),
        })?;
        let value = text.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(ConfigError::SecretFile {
                path: file.display().to_string(),
                reason: "file is empty".into(),
            });
        }
        Ok(Some(Secret(value)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            serializer.serialize_str("")
        } else {
            serializer.serialize_str("[redacted]")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn named_tokens_are_checked_and_name_their_caller() {
        use tonic::service::Interceptor as _;
        let token = |name: &str, roles: Vec<super::Role>| super::NamedToken {
            name: name.into(),
            token: Some(super::Secret::new(format!("{name}-secret"))),
            token_file: None,
            roles,
        };
        let refused = |named: Vec<super::NamedToken>, shared: Option<&str>| {
            super::TokenCheck::from_settings(shared.map(super::Secret::new), None, &named, "SELFHEAL_X_")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(refused(vec![], None).contains("no gRPC token: set SELFHEAL_X_GRPC_TOKEN"));
        assert!(refused(vec![token("on call", vec![super::Role::Read])], None).contains("grpc_tokens[0].name"));
        assert!(
            refused(
                vec![token("a", vec![super::Role::Read]), token("a", vec![super::Role::Read])],
                None
            )
            .contains("twice")
        );
        assert!(refused(vec![token("a", vec![])], None).contains("grpc_tokens[0].roles"));

        let mut check = super::TokenCheck::from_settings(
            Some(super::Secret::new("shared")),
            None,
            &[token("reader", vec![super::Role::Read])],
            "SELFHEAL_X_",
        )
        .expect("tokens");
        let call = |check: &mut super::TokenCheck, bearer: &str| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {bearer}").parse().expect("header"));
            check.call(request)
        };
        let reader = call(&mut check, "reader-secret").expect("admitted");
        assert_eq!(
            super::require(&reader, super::Role::Read).map(|c| c.name).ok(),
            Some("reader".to_string())
        );
        let denied = super::require(&reader, super::Role::Operate).expect_err("a reader");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let shared = call(&mut check, "shared").expect("admitted");
        let caller = super::require(&shared, super::Role::Operate).expect("the shared token does everything");
        assert!(caller.shared);
        assert_eq!(
            call(&mut check, "nope").expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
    }

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        listen: String,
        token: Option<Secret>,
        nested: Nested,
    }
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        path: String,
    }

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&secret).ok().as_deref(), Some("\"[redacted]\""));
        assert!(secret.matches(b"hunter2"));
        assert!(!secret.matches(b"hunter3"));
        assert!(!secret.matches(b"hunter"));
        assert!(!Secret::default().matches(b""), "an empty secret matches nothing");
    }

    #[test]
    fn file_then_env_and_unknown_keys_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\n[nested]\npath = \"a\"\n")?;
        let from_file: Example = load(Some(&file), "SELFHEAL_CONFIGTEST_NONE_")?;
        assert_eq!(from_file.listen, "127.0.0.1:1");
        assert_eq!(from_file.nested.path, "a");
        std::fs::write(&file, "listne = \"x\"\n")?;
        let err = load::<Example>(Some(&file), "SELFHEAL_CONFIGTEST_NONE_")
            .err()
            .map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("listne")), "{err:?}");
        Ok(())
    }

    #[test]
    fn secret_from_file_is_trimmed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t\n")?;
        let secret = Secret::inline_or_file(None, Some(&file))?;
        assert_eq!(secret.as_ref().map(Secret::expose), Some("s3cr3t"));
        let missing = Secret::inline_or_file(None, Some(&dir.path().join("nope")));
        assert!(missing.is_err());
        Ok(())
    }
}

/// What a gRPC token may do. Every RPC names the role it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send alerts (`Gateway.Ingest`).
    Ingest,
    /// Read: incidents, remediations, the audit log, policies.
    Read,
    /// Act on remediations (`Approve`, `Reject`, `Retry`), reload policies.
    Operate,
    /// Ask the pr-controller where a service lives (`DescribeTarget`: the policy's token).
    Describe,
}

impl Role {
    /// Every role: what the one shared `grpc_token` may do.
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Read, Role::Operate, Role::Describe];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Describe => "describe",
        }
    }
}

/// A named gRPC token and what it may do (`[[grpc_tokens]]`). Its name is who acted, in the
/// audit log and the remediation, for what it does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    pub name: String,
    pub token: Option<Secret>,
    pub token_file: Option<std::path::PathBuf>,
    pub roles: Vec<Role>,
}

/// Who called: put on every admitted request by [`TokenCheck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    pub roles: Vec<Role>,
    /// The one shared `grpc_token`, which names nobody: who acted is then what the caller says.
    pub shared: bool,
}

/// The name the shared `grpc_token` goes by.
pub const SHARED_TOKEN: &str = "grpc_token";

/// A gRPC interceptor that admits calls carrying `authorization: Bearer <token>` for one of its
/// tokens (every one compared, in constant time) and answers `UNAUTHENTICATED` otherwise. The
/// admitted call carries its [`Caller`]; [`require`] checks its role.
#[derive(Clone)]
pub struct TokenCheck(std::sync::Arc<Vec<(Caller, Secret)>>);

impl TokenCheck {
    /// One shared token, with every role.
    pub fn new(token: Secret) -> Self {
        Self::with(Some(token), Vec::new())
    }

    /// The shared token (if any, every role) and named ones.
    pub fn with(shared: Option<Secret>, named: Vec<(Caller, Secret)>) -> Self {
        let mut tokens = named;
        if let Some(token) = shared.filter(|t| !t.is_empty()) {
            tokens.push((
                Caller {
                    name: SHARED_TOKEN.into(),
                    roles: Role::ALL.to_vec(),
                    shared: true,
                },
                token,
            ));
        }
        Self(std::sync::Arc::new(tokens))
    }

    /// These tokens as well.
    pub fn and(self, more: Vec<(Caller, Secret)>) -> Self {
        let mut tokens = (*self.0).clone();
        tokens.extend(more);
        Self(std::sync::Arc::new(tokens))
    }

    /// From a service's settings: `grpc_token` / `grpc_token_file` (shared) and `grpc_tokens`
    /// (named, each with its roles). At least one token; names unique and plain. `env_prefix`
    /// (`SELFHEAL_POLICY_`) names the variable to set when there is none.
    pub fn from_settings(
        shared: Option<Secret>,
        shared_file: Option<&Path>,
        named: &[NamedToken],
        env_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let shared = Secret::inline_or_file(shared, shared_file)?;
        let mut checked = Vec::new();
        for (i, entry) in named.iter().enumerate() {
            let field = |what: &str| format!("grpc_tokens[{i}].{what}");
            let plain = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !plain || entry.name == SHARED_TOKEN {
                return Err(ConfigError::Invalid(format!(
                    "{}: a name of letters, digits, '-', '_', '.' or '@' (at most 64), not {:?}",
                    field("name"),
                    entry.name
                )));
            }
            if checked.iter().any(|(c, _): &(Caller, Secret)| c.name == entry.name) {
                return Err(ConfigError::Invalid(format!(
                    "{}: {:?} twice",
                    field("name"),
                    entry.name
                )));
            }
            if entry.roles.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{}: give the token at least one of ingest, read, operate, describe",
                    field("roles")
                )));
            }
            let secret = Secret::inline_or_file(entry.token.clone(), entry.token_file.as_deref())?
                .ok_or_else(|| ConfigError::Invalid(format!("{}: set token or token_file", field("token"))))?;
            checked.push((
                Caller {
                    name: entry.name.clone(),
                    roles: entry.roles.clone(),
                    shared: false,
                },
                secret,
            ));
        }
        if shared.is_none() && checked.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "no gRPC token: set {env_prefix}GRPC_TOKEN (or grpc_token_file), or [[grpc_tokens]]"
            )));
        }
        Ok(Self::with(shared, checked))
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string())
            .unwrap_or_default();
        // Every token is compared, with no early exit: the time says nothing about which one.
        let mut found = None;
        for (caller, secret) in self.0.iter() {
            if secret.matches(presented.as_bytes()) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        match found {
            Some(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            None => Err(tonic::Status::unauthenticated("missing or invalid bearer token")),
        }
    }
}

/// The caller of `request`, if its token has `role`; `PermissionDenied` naming both otherwise.
pub fn require<T>(request: &tonic::Request<T>, role: Role) -> Result<Caller, tonic::Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| tonic::Status::unauthenticated("missing or invalid bearer token"))?;
    if caller.roles.contains(&role) {
        Ok(caller.clone())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "the token {:?} may not {}: it has {}",
            caller.name,
            role.name(),
            caller.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// HMAC-SHA256 body signatures, as `sha256=<hex>` in a header (`X-Selfheal-Signature`): the
/// gateway verifies them on ingest, the notifier signs its webhooks with them.
pub mod signature {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// The header that carries the signature.
    pub const HEADER: &str = "x-selfheal-signature";

    /// The header that carries the time a timestamped signature was made (Unix seconds).
    pub const TIMESTAMP_HEADER: &str = "x-selfheal-timestamp";

    /// What a timestamped signature covers: `<timestamp>.<body>`, as Slack and Stripe sign, so
    /// a captured body cannot be sent again with a newer time.
    pub fn timestamped(timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut signed = format!("{timestamp}.").into_bytes();
        signed.extend_from_slice(body);
        signed
    }

    /// The headers that sign `body` at `timestamp` (Unix seconds) under `key`: the values of
    /// [`TIMESTAMP_HEADER`] and [`HEADER`].
    pub fn sign_at(key: &[u8], timestamp: i64, body: &[u8]) -> (String, String) {
        (timestamp.to_string(), sign(key, &timestamped(timestamp, body)))
    }

    /// `sha256=<hex HMAC-SHA256 of body under key>`.
    pub fn sign(key: &[u8], body: &[u8]) -> String {
        match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(body);
                format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
            }
            // HMAC takes keys of any length; this arm cannot be reached.
            Err(_) => String::new(),
        }
    }

    /// Whether `header` (`sha256=<hex>`) is the signature of `body` under `key`, compared in
    /// constant time.
    pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
        let Some(signature) = header.trim().strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) else {
            return false;
        };
        Hmac::<Sha256>::new_from_slice(key)
            .map(|mut mac| {
                mac.update(body);
                mac.verify_slice(&signature).is_ok()
            })
            .unwrap_or(false)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn signatures_cover_key_and_body() {
            let signed = super::sign(b"k", b"body");
            assert!(super::verify(b"k", b"body", &signed));
            assert!(!super::verify(b"k", b"bodY", &signed));
            assert!(!super::verify(b"K", b"body", &signed));
            assert!(!super::verify(b"k", b"body", "sha256=00"));
        }
    }
}
