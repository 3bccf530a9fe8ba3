//! Configuration: one typed struct per service, read from a TOML file and then from `SELFHEAL_*`
//! environment variables (env wins), plus [`Secret`], a string that never prints.
//!
//! Environment keys are the config path upper-cased with `__` between levels, after the service
//! prefix: `SELFHEAL_GATEWAY_LISTEN`, `SELFHEAL_PR_CONTROLLER_TARGET__PATH`.

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

/// A gRPC interceptor that admits calls carrying `authorization: Bearer <token>` for this
/// secret (constant-time comparison) and answers `UNAUTHENTICATED` otherwise.
#[derive(Clone)]
pub struct TokenCheck(std::sync::Arc<Secret>);

impl TokenCheck {
    pub fn new(token: Secret) -> Self {
        Self(std::sync::Arc::new(token))
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or_default();
        if self.0.matches(presented.as_bytes()) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated("missing or invalid bearer token"))
        }
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
