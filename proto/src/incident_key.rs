//! [`IncidentKey`]: the one check of an incident key, wherever one arrives.

use std::fmt;

/// An incident's key: 1 to [`IncidentKey::MAX_LEN`] ASCII letters and digits. The gateway makes
/// 16 hex digits; a revert's key adds `r`. It names a branch (`selfheal/<key>`), a message id and
/// a line in a commit message, so nothing else may pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncidentKey(String);

/// Why a text is not an incident key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidIncidentKey;

impl fmt::Display for InvalidIncidentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "must be 1 to {} letters and digits", IncidentKey::MAX_LEN)
    }
}

impl std::error::Error for InvalidIncidentKey {}

impl IncidentKey {
    /// The longest key taken.
    pub const MAX_LEN: usize = 64;

    /// `value` as a key, or why it is not one.
    pub fn parse(value: &str) -> Result<Self, InvalidIncidentKey> {
        let valid =
            !value.is_empty() && value.len() <= Self::MAX_LEN && value.bytes().all(|b| b.is_ascii_alphanumeric());
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidIncidentKey)
        }
    }

    /// The key of the revert of this incident's change.
    pub fn revert(&self) -> Result<Self, InvalidIncidentKey> {
        Self::parse(&format!("{}r", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IncidentKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for IncidentKey {
    type Err = InvalidIncidentKey;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_letters_and_digits_within_the_limit_are_keys() {
        for good in [
            "a",
            "0123456789abcdef",
            "0123456789abcdefr",
            &"a".repeat(IncidentKey::MAX_LEN),
        ] {
            assert_eq!(IncidentKey::parse(good).map(|k| k.to_string()), Ok(good.to_string()));
        }
        for bad in [
            "",
            "a/b",
            "../x",
            "a b",
            "a\nIncident: b",
            "é",
            &"a".repeat(IncidentKey::MAX_LEN + 1),
        ] {
            assert_eq!(IncidentKey::parse(bad), Err(InvalidIncidentKey), "{bad:?}");
        }
        let key = IncidentKey::parse("abc").map_err(|e| e.to_string());
        assert_eq!(
            key.and_then(|k| k.revert().map_err(|e| e.to_string()))
                .map(|k| k.to_string()),
            Ok("abcr".into())
        );
    }
}
