//! Who may post alerts: a bearer token (several, so tokens can rotate) or, optionally, an
//! HMAC-SHA256 signature of the body. Every comparison is constant-time.

use axum::http::HeaderMap;
use selfheal_config::{Secret, signature};

/// The accepted credentials.
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Vec<Secret>,
    hmac_keys: Vec<Secret>,
}

impl Auth {
    pub fn new(tokens: Vec<Secret>, hmac_keys: Vec<Secret>) -> Self {
        Self { tokens, hmac_keys }
    }

    /// Whether `Authorization: Bearer <token>` names an accepted token.
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
        else {
            return false;
        };
        // Every token is compared, with no early exit: timing says nothing about which matched.
        self.tokens
            .iter()
            .fold(false, |any, token| any | token.matches(presented))
    }

    /// Whether signatures are accepted at all (then the body is needed to authenticate).
    pub fn accepts_signatures(&self) -> bool {
        !self.hmac_keys.is_empty()
    }

    /// Whether the signature header is a valid HMAC-SHA256 of `body` under an accepted key.
    pub fn signature_ok(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(header) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // Every key is tried, with no early exit.
        self.hmac_keys.iter().fold(false, |any, key| {
            any | signature::verify(key.expose().as_bytes(), body, header)
        })
    }
}

pub use selfheal_config::signature::{HEADER as SIGNATURE_HEADER, sign};

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn any_rotated_token_is_accepted() {
        let auth = Auth::new(vec![Secret::new("old"), Secret::new("new")], vec![]);
        assert!(auth.bearer_ok(&headers(&[("authorization", "Bearer old")])));
        assert!(auth.bearer_ok(&headers(&[("authorization", "bearer new")])));
        assert!(!auth.bearer_ok(&headers(&[("authorization", "Bearer ne")])));
        assert!(!auth.bearer_ok(&headers(&[("authorization", "Basic new")])));
        assert!(!auth.bearer_ok(&headers(&[])));
    }

    #[test]
    fn signatures_cover_the_exact_body() {
        let auth = Auth::new(vec![], vec![Secret::new("k1")]);
        let body = br#"{"version":"4"}"#;
        let good = sign(b"k1", body);
        assert!(auth.signature_ok(&headers(&[(SIGNATURE_HEADER, &good)]), body));
        assert!(!auth.signature_ok(&headers(&[(SIGNATURE_HEADER, &good)]), b"{\"version\":\"5\"}"));
        assert!(!auth.signature_ok(&headers(&[(SIGNATURE_HEADER, &sign(b"k2", body))]), body));
        assert!(!auth.signature_ok(&headers(&[(SIGNATURE_HEADER, "sha256=zz")]), body));
        assert!(!auth.signature_ok(&headers(&[]), body));
    }
}
