//! The event bus between selfheal's services.
//!
//! One trait, [`Bus`], with two implementations that keep the same subjects and semantics:
//!
//! * [`nats::NatsBus`]: NATS JetStream. One stream, [`STREAM`], on `selfheal.>`; publishes carry
//!   `Nats-Msg-Id` so the stream stores a retried publish once; consumers are durable pull
//!   consumers with explicit acks.
//! * [`memory::MemoryBus`]: in-process, for `selfheal up` without a NATS URL and for unit tests.
//!
//! The contract both keep:
//!
//! * [`Bus::publish`] returns only once the message is stored; a message id seen within the
//!   duplicate window is acknowledged as a duplicate and not stored again.
//! * A durable consumer sees every stored message that matches its filter, at least once. A
//!   delivery that is not acked within `ack_wait`, or that is nak'ed, is delivered again, without
//!   end: the consumer loop ([`consumer::run`]) counts deliveries against `max_deliver` and moves
//!   a message that used them up, or that its handler rejects, to the dead letters ([`dead`]).
//!   Several subscribers to one durable share its messages (a queue group).
//! * Consumers ack *after* their side effect, so a crash means redelivery, never loss.

pub mod coalesce;
pub mod config;
pub mod consumer;
pub mod control;
pub mod dead;
pub mod kv;
pub mod memory;
pub mod nats;
mod retry;
pub mod watched;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// The JetStream stream that holds every selfheal event.
pub const STREAM: &str = "SELFHEAL";
/// The subjects [`STREAM`] stores.
pub const STREAM_SUBJECTS: &str = "selfheal.>";

/// Subject names, in one place.
pub mod subjects {
    /// Every alert, firing or resolved.
    pub const ALERTS: &str = "selfheal.alerts.>";
    /// Every decision.
    pub const DECISIONS: &str = "selfheal.decisions.>";
    /// Every remediation event.
    pub const REMEDIATIONS: &str = "selfheal.remediations.>";

    /// `selfheal.alerts.<status>.<service>`. `status` and `service` must be valid subject tokens.
    pub fn alert(status: &str, service: &str) -> String {
        format!("selfheal.alerts.{status}.{service}")
    }
    /// `selfheal.decisions.<service>`.
    pub fn decision(service: &str) -> String {
        format!("selfheal.decisions.{service}")
    }
    /// `selfheal.remediations.<service>`.
    pub fn remediation(service: &str) -> String {
        format!("selfheal.remediations.{service}")
    }

    /// Whether `token` can stand as one subject token: non-empty, no `.`, `*`, `>` or whitespace.
    pub fn is_valid_token(token: &str) -> bool {
        !token.is_empty()
            && token
                .chars()
                .all(|c| !(c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control()))
    }
}

/// Message headers (W3C trace context travels here). Keys are case-sensitive, as in NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty set of headers.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// All keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    /// Stable id for deduplication (`Nats-Msg-Id`): the same id within the duplicate window is
    /// stored once.
    pub msg_id: String,
    pub headers: Headers,
    pub payload: Bytes,
}

/// The bus's answer to a publish: the message is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// Stream sequence of the stored message (of the first copy, for a duplicate).
    pub sequence: u64,
    /// True when the message id was already stored and this publish stored nothing.
    pub duplicate: bool,
}

/// A durable consumer.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Durable name: every subscriber with this name shares one cursor.
    pub durable: String,
    /// Subjects this consumer receives (wildcards allowed).
    pub filter_subjects: Vec<String>,
    /// How long a delivery may stay unacked before it is delivered again.
    pub ack_wait: Duration,
    /// How many deliveries the handler gets before the message goes to the dead letters.
    pub max_deliver: i64,
    /// How many deliveries one subscriber handles at once (1: one after the other).
    pub concurrency: usize,
}

impl ConsumerSpec {
    /// A consumer with selfheal's defaults: 30 s ack wait, 10 deliveries.
    pub fn new(durable: impl Into<String>, filter_subjects: &[&str]) -> Self {
        Self {
            durable: durable.into(),
            filter_subjects: filter_subjects.iter().map(|s| s.to_string()).collect(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            concurrency: 1,
        }
    }
}

/// Settles one delivery; implemented by each bus.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;
    /// Never deliver this message again (a poison message).
    async fn term(&self) -> Result<(), BusError>;
}

/// One delivery of a stored message.
pub struct Delivery {
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// Stream sequence of the message.
    pub sequence: u64,
    /// How many times this message has been delivered, this one included (1 on the first).
    pub delivered: u64,
    acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("sequence", &self.sequence)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Builds a delivery; for bus implementations.
    pub fn new(
        subject: String,
        headers: Headers,
        payload: Bytes,
        sequence: u64,
        delivered: u64,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            subject,
            headers,
            payload,
            sequence,
            delivered,
            acker,
        }
    }
    /// The side effect is done: never deliver this message to this consumer again.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.acker.ack().await
    }
    /// Deliver it again after `delay`.
    pub async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.acker.nak(delay).await
    }
    /// Give up on it for good.
    pub async fn term(&self) -> Result<(), BusError> {
        self.acker.term().await
    }
}

/// A stream of deliveries for one subscriber.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BusError>>;

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    #[error("publish to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },
    #[error("publish to {subject} timed out after {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("consumer {durable}: {reason}")]
    Consumer { durable: String, reason: String },
    #[error("ack failed: {0}")]
    Ack(String),
    #[error("the bus is not ready: {0}")]
    NotReady(String),
}

/// The event bus. See the crate docs for the contract.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Stores `message` (once per message id within the duplicate window).
    async fn publish(&self, message: Outgoing) -> Result<PublishAck, BusError>;
    /// Subscribes to a durable consumer, creating it if needed.
    async fn subscribe(&self, spec: ConsumerSpec) -> Result<DeliveryStream, BusError>;
    /// Ok when the bus can take publishes now.
    async fn ready(&self) -> Result<(), BusError>;
    /// The key-value bucket `bucket`, created if missing (entries expire after `max_age`; zero
    /// keeps them).
    async fn key_value(&self, bucket: &str, max_age: Duration) -> Result<kv::SharedKeyValue, BusError>;
    /// Messages the durable consumer `durable` has not acked yet — waiting to be delivered, or
    /// delivered and in work: its lag. Zero for a consumer that does not exist yet.
    async fn pending(&self, durable: &str) -> Result<u64, BusError>;
}

/// A bus shared by the parts of a service.
pub type SharedBus = Arc<dyn Bus>;
