//! What the notifier (which posts approval messages) and the pr-controller (which serves Slack's
//! interactivity endpoint) must agree on: the buttons' action ids, Slack's request signature,
//! and mrkdwn escaping.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The Approve button's `action_id`; its `value` is the incident key.
pub const APPROVE_ACTION: &str = "selfheal.approve";
/// The Reject button's `action_id`; its `value` is the incident key.
pub const REJECT_ACTION: &str = "selfheal.reject";
/// The `block_id` of the actions block that holds both buttons.
pub const APPROVAL_BLOCK: &str = "selfheal.approval";

/// The header with the time Slack signed a request (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// The header with Slack's signature, `v0=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// How far a request's timestamp may be from the clock: Slack's own advice, 5 minutes.
pub const MAX_AGE_SECONDS: i64 = 300;

/// Slack's request signature of `body` sent at `timestamp`: `v0=` and the hex HMAC-SHA256,
/// under the app's signing secret, of `v0:<timestamp>:<body>` ("Verifying requests from
/// Slack").
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    match mac(secret, timestamp, body) {
        Some(mac) => format!("v0={}", hex::encode(mac.finalize().into_bytes())),
        None => String::new(),
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    Some(mac)
}

/// Why a request is not taken as Slack's.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    #[error("{TIMESTAMP_HEADER}: missing")]
    NoTimestamp,
    #[error("{TIMESTAMP_HEADER}: not a Unix time in seconds")]
    BadTimestamp,
    #[error("{TIMESTAMP_HEADER}: more than 5 minutes from this server's clock")]
    Stale,
    #[error("{SIGNATURE_HEADER}: missing")]
    NoSignature,
    #[error("{SIGNATURE_HEADER}: does not match the body")]
    Mismatch,
}

/// Checks a request as Slack asks: the timestamp within [`MAX_AGE_SECONDS`] of `now` (so a
/// captured request cannot be sent again later), then the signature, compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Unsigned> {
    let timestamp = timestamp.ok_or(Unsigned::NoTimestamp)?.trim();
    let at: i64 = timestamp.parse().map_err(|_| Unsigned::BadTimestamp)?;
    if now.abs_diff(at) > MAX_AGE_SECONDS as u64 {
        return Err(Unsigned::Stale);
    }
    let signature = signature.ok_or(Unsigned::NoSignature)?.trim();
    let given = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Unsigned::Mismatch)?;
    let mac = mac(secret, timestamp, body).ok_or(Unsigned::Mismatch)?;
    mac.verify_slice(&given).map_err(|_| Unsigned::Mismatch)
}

/// `text` as Slack's mrkdwn shows it literally: `&`, `<` and `>` escaped, as Slack asks
/// ("Escaping text"), so no mention, channel ping or link can come from it.
pub fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Whether `id` looks like a Slack id (`U0123ABCD`, `W…`, `S…`): upper-case letters and digits.
/// Only such ids are put in a mention (`<@U0123ABCD>`).
pub fn is_id(id: &str) -> bool {
    (2..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slacks_documented_example_verifies() {
        // The example of "Verifying requests from Slack".
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(secret, "1531420618", body), expected);
        assert_eq!(
            verify(secret, Some("1531420618"), Some(expected), body, 1531420618 + 299),
            Ok(())
        );
        assert_eq!(
            verify(secret, Some("1531420618"), Some(expected), body, 1531420618 + 301),
            Err(Unsigned::Stale)
        );
        let mut tampered = body.to_vec();
        tampered[0] = b'T';
        assert_eq!(
            verify(secret, Some("1531420618"), Some(expected), &tampered, 1531420618),
            Err(Unsigned::Mismatch)
        );
        // The timestamp is signed too: a newer one on the old signature fails.
        assert_eq!(
            verify(secret, Some("1531420619"), Some(expected), body, 1531420618),
            Err(Unsigned::Mismatch)
        );
        assert_eq!(
            verify(secret, None, Some(expected), body, 0),
            Err(Unsigned::NoTimestamp)
        );
        assert_eq!(
            verify(secret, Some("1531420618"), None, body, 1531420618),
            Err(Unsigned::NoSignature)
        );
        assert_eq!(
            verify(secret, Some("soon"), Some(expected), body, 1531420618),
            Err(Unsigned::BadTimestamp)
        );
    }

    #[test]
    fn ids_and_escaping() {
        assert!(is_id("U0123ABCD") && is_id("S0604QSJC"));
        assert!(!is_id("u123") && !is_id("U12>") && !is_id(""));
        assert_eq!(mrkdwn("<!here> & <@U1>"), "&lt;!here&gt; &amp; &lt;@U1&gt;");
    }
}
