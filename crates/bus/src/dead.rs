//! Dead letters: a message a consumer could not handle — it used up its `max_deliver`
//! deliveries, or its handler rejected it as unprocessable — is kept, never dropped.
//!
//! The consumer loop publishes a copy on `selfheal_dead.<consumer>` (stream [`STREAM`] on NATS,
//! outside [`crate::STREAM`] so no consumer of events sees it): the original payload and headers
//! (trace context included) and, in `Selfheal-Dead-*` headers, where it came from and why it is
//! here. It is then terminated on its stream. The notifier writes an audit row for each;
//! `selfheal dead-letters list` shows them and `retry` publishes one again on its subject.

use std::time::Duration;

use bytes::Bytes;

use crate::{Delivery, Headers, Outgoing};

/// The JetStream stream that keeps dead letters.
pub const STREAM: &str = "SELFHEAL_DEAD";
/// The subjects [`STREAM`] stores.
pub const SUBJECTS: &str = "selfheal_dead.>";
/// How long a dead letter is kept: long enough for someone to look at it after a holiday.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Dead letters counted by the service that wrote them, by `consumer`.
pub const METRIC: &str = "selfheal_dead_letters_total";

/// The consumer the letter was taken from.
pub const CONSUMER: &str = "Selfheal-Dead-Consumer";
/// The subject it was published on.
pub const SUBJECT: &str = "Selfheal-Dead-Subject";
/// Its sequence in [`crate::STREAM`].
pub const SEQUENCE: &str = "Selfheal-Dead-Sequence";
/// How many times it was delivered.
pub const DELIVERIES: &str = "Selfheal-Dead-Deliveries";
/// Why it is here.
pub const REASON: &str = "Selfheal-Dead-Reason";
/// When it got here (RFC 3339).
pub const AT: &str = "Selfheal-Dead-At";

/// `selfheal_dead.<consumer>`.
pub fn subject(consumer: &str) -> String {
    format!("selfheal_dead.{consumer}")
}

/// The dead letter for `delivery`, taken from `consumer` for `reason`. Its message id makes a
/// second copy of the same delivery (a crash between writing it and terminating the original)
/// stored once.
pub fn letter(consumer: &str, delivery: &Delivery, reason: &str) -> Outgoing {
    let mut headers = delivery.headers.clone();
    headers.insert(CONSUMER, consumer);
    headers.insert(SUBJECT, delivery.subject.as_str());
    headers.insert(SEQUENCE, delivery.sequence.to_string());
    headers.insert(DELIVERIES, delivery.delivered.to_string());
    // Header values are one line.
    headers.insert(REASON, reason.replace(['\r', '\n'], " "));
    headers.insert(AT, now_rfc3339());
    Outgoing {
        subject: subject(consumer),
        msg_id: format!("dead.{consumer}.{}", delivery.sequence),
        headers,
        payload: delivery.payload.clone(),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A dead letter, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence in [`STREAM`] (what `retry` names).
    pub sequence: u64,
    pub consumer: String,
    pub subject: String,
    pub original_sequence: u64,
    pub deliveries: u64,
    pub reason: String,
    pub at: String,
    /// The original headers, without the `Selfheal-Dead-*` ones.
    pub headers: Headers,
    pub payload: Bytes,
}

impl DeadLetter {
    /// Reads a letter from its stored headers and payload; `None` when they are not a letter's.
    pub fn read(sequence: u64, headers: &Headers, payload: Bytes) -> Option<Self> {
        let get = |key: &str| headers.get(key).map(str::to_string);
        let mut original = Headers::new();
        for (key, value) in headers.iter() {
            if !key.starts_with("Selfheal-Dead-") && key != "Nats-Msg-Id" {
                original.insert(key, value);
            }
        }
        Some(Self {
            sequence,
            consumer: get(CONSUMER)?,
            subject: get(SUBJECT)?,
            original_sequence: get(SEQUENCE)?.parse().ok()?,
            deliveries: get(DELIVERIES)?.parse().ok()?,
            reason: get(REASON).unwrap_or_default(),
            at: get(AT).unwrap_or_default(),
            headers: original,
            payload,
        })
    }

    /// The message that carries this letter out again: its original subject, payload and
    /// headers, with a message id of its own (retrying one letter twice stores it once).
    pub fn retry(&self) -> Outgoing {
        Outgoing {
            subject: self.subject.clone(),
            msg_id: format!("retry.{}", self.sequence),
            headers: self.headers.clone(),
            payload: self.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoAck;
    #[async_trait::async_trait]
    impl crate::Acker for NoAck {
        async fn ack(&self) -> Result<(), crate::BusError> {
            Ok(())
        }
        async fn nak(&self, _: Duration) -> Result<(), crate::BusError> {
            Ok(())
        }
        async fn term(&self) -> Result<(), crate::BusError> {
            Ok(())
        }
    }

    #[test]
    fn a_letter_keeps_the_original_and_says_why() {
        let mut headers = Headers::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let delivery = Delivery::new(
            "selfheal.decisions.shop".into(),
            headers.clone(),
            Bytes::from_static(b"decision"),
            42,
            10,
            Box::new(NoAck),
        );
        let letter = letter("pr-controller", &delivery, "remediation failed\non every try");
        assert_eq!(letter.subject, "selfheal_dead.pr-controller");
        assert_eq!(letter.msg_id, "dead.pr-controller.42");
        let read = DeadLetter::read(7, &letter.headers, letter.payload.clone()).expect("a letter");
        assert_eq!(
            (
                read.consumer.as_str(),
                read.subject.as_str(),
                read.original_sequence,
                read.deliveries,
                read.reason.as_str()
            ),
            (
                "pr-controller",
                "selfheal.decisions.shop",
                42,
                10,
                "remediation failed on every try"
            )
        );
        assert_eq!(read.headers, headers, "the original headers, as they were");
        let again = read.retry();
        assert_eq!(
            (again.subject.as_str(), again.msg_id.as_str(), &again.payload[..]),
            ("selfheal.decisions.shop", "retry.7", &b"decision"[..])
        );
        assert_eq!(DeadLetter::read(8, &headers, Bytes::new()), None, "not a letter");
    }
}
