//! Who may post alerts: a bearer token (several, so tokens can rotate) or, optionally, an
//! HMAC-SHA256 signature of the time and the body (`X-Selfheal-Timestamp`, and
//! `X-Selfheal-Signature: sha256=HMAC(key, "<timestamp>.<body>")`), taken only within a window of
//! the gateway's clock, so a captured body cannot be replayed later. Every comparison is
//! constant-time.

use axum::http::HeaderMap;
use selfheal_config::{Secret, signature};

/// The accepted credentials.
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Vec<Secret>,
    hmac_keys: Vec<Secret>,
    /// How far a signature's timestamp may be from now, either way.
    window: std::time::Duration,
}

impl Auth {
    pub fn new(tokens: Vec<Secret>, hmac_keys: Vec<Secret>, window: std::time::Duration) -> Self {
        Self {
            tokens,
            hmac_keys,
            window,
        }
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

    /// Whether the signature header is a valid HMAC-SHA256 of the timestamp header and `body`
    /// under an accepted key, and the timestamp is within the window of `now` (Unix seconds).
    pub fn signature_ok(&self, headers: &HeaderMap, body: &[u8], now: i64) -> bool {
        let Some(header) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(timestamp) = headers
            .get(TIMESTAMP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        else {
            return false;
        };
        let window = i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(timestamp) > window.unsigned_abs() {
            return false;
        }
        let signed = signature::timestamped(timestamp, body);
        // Every key is tried, with no early exit.
        self.hmac_keys.iter().fold(false, |any, key| {
            any | signature::verify(key.expose().as_bytes(), &signed, header)
        })
    }
}

pub use selfheal_config::signature::{HEADER as SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The headers that sign `body` at `timestamp` under `key`: (timestamp, signature).
pub use selfheal_config::signature::sign_at as sign;

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
        let auth = Auth::new(vec![Secret::new("old"), Secret::new("new")], vec![], WINDOW);
        assert!(auth.bearer_ok(&headers(&[("authorization", "Bearer old")])));
        assert!(auth.bearer_ok(&headers(&[("authorization", "bearer new")])));
        assert!(!auth.bearer_ok(&headers(&[("authorization", "Bearer ne")])));
        assert!(!auth.bearer_ok(&headers(&[("authorization", "Basic new")])));
        assert!(!auth.bearer_ok(&headers(&[])));
    }

    const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

    #[test]
    fn signatures_cover_the_time_and_the_exact_body() {
        let auth = Auth::new(vec![], vec![Secret::new("k1")], WINDOW);
        let body = br#"{"version":"4"}"#;
        let now = 1_800_000_000;
        let signed = |key: &[u8], at: i64| {
            let (timestamp, signature) = sign(key, at, body);
            headers(&[(TIMESTAMP_HEADER, &timestamp), (SIGNATURE_HEADER, &signature)])
        };
        assert!(auth.signature_ok(&signed(b"k1", now), body, now));
        // Within the window either way (clocks differ), not past it.
        assert!(auth.signature_ok(&signed(b"k1", now - 300), body, now));
        assert!(auth.signature_ok(&signed(b"k1", now + 300), body, now));
        assert!(!auth.signature_ok(&signed(b"k1", now - 301), body, now), "a replay");
        assert!(!auth.signature_ok(&signed(b"k1", now), b"{\"version\":\"5\"}", now));
        assert!(!auth.signature_ok(&signed(b"k2", now), body, now));
        // A newer time on an old signature: the signature covers the time.
        let (_, old) = sign(b"k1", now - 3600, body);
        let moved = headers(&[(TIMESTAMP_HEADER, &now.to_string()), (SIGNATURE_HEADER, &old)]);
        assert!(!auth.signature_ok(&moved, body, now));
        // The body alone signed (no timestamp) is refused.
        let untimed = selfheal_config::signature::sign(b"k1", body);
        assert!(!auth.signature_ok(&headers(&[(SIGNATURE_HEADER, &untimed)]), body, now));
        assert!(!auth.signature_ok(&headers(&[]), body, now));
    }
}
