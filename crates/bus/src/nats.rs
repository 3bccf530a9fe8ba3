//! The JetStream bus: stream [`crate::STREAM`] on `selfheal.>`, durable pull consumers.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, pull},
    message::PublishMessage,
    stream,
};
use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    Acker, Bus, BusError, ConsumerSpec, Delivery, DeliveryStream, Headers, Outgoing, PublishAck, STREAM,
    STREAM_SUBJECTS,
};

/// How to reach NATS and how to shape the stream.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// `nats://host:port`, or several separated by commas (a cluster's seeds).
    pub url: String,
    /// Credentials and TLS, checked ([`crate::config::NatsConfig::check`]).
    pub settings: crate::config::CheckedNats,
    /// Name this connection shows in the server's monitoring.
    pub connection_name: String,
    /// How long the stream remembers message ids for deduplication: the gateway's to say (its
    /// publishes carry the ids); `None` keeps the stream's (2 min when it is created).
    pub duplicate_window: Option<Duration>,
    /// How long a publish may wait for JetStream's acknowledgement before it fails.
    pub publish_timeout: Duration,
    /// The stream ([`STREAM`]) and buckets whose settings this connection keeps: found with
    /// other replicas or limits than its own, they are updated. Everything else is created with
    /// this connection's settings when missing and left as it is otherwise — one keeper each, so
    /// two services never race to change one stream (a second update while JetStream is still
    /// moving a stream to more replicas can leave it without a quorum).
    pub keeps: Vec<String>,
}

impl NatsOptions {
    /// Options with selfheal's defaults: no credentials, the stream left as it is (created with
    /// [`StreamShape::default`] and a 2 min duplicate window if missing), 5 s publish timeout.
    pub fn new(url: impl Into<String>, connection_name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            settings: Default::default(),
            connection_name: connection_name.into(),
            duplicate_window: None,
            publish_timeout: Duration::from_secs(5),
            keeps: Vec::new(),
        }
    }

    /// The same options, keeping the settings of `names` (the stream's name, or buckets').
    pub fn keeping(mut self, names: &[&str]) -> Self {
        self.keeps = names.iter().map(|n| n.to_string()).collect();
        self
    }

    fn keeps(&self, name: &str) -> bool {
        self.keeps.iter().any(|kept| kept == name)
    }

    /// The same options, connecting with `config`'s credentials and TLS, and keeping the stream
    /// and buckets in its shape.
    pub fn with_config(mut self, config: crate::config::CheckedNats) -> Self {
        self.settings = config;
        self
    }
}

/// The bus on NATS JetStream.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    options: NatsOptions,
}

impl NatsBus {
    /// Connects and makes sure the stream exists. Keeps reconnecting in the background after
    /// that; a publish while disconnected fails after `publish_timeout`.
    pub async fn connect(options: NatsOptions) -> Result<Self, BusError> {
        // Two TLS back ends are linked (other crates bring ring and aws-lc-rs); rustls will not
        // choose, so the process's is chosen here, once (a second call is a no-op).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let shown = crate::config::redacted(&options.url);
        let servers = crate::config::servers(&options.url);
        if servers.is_empty() {
            return Err(BusError::Connect("nats_url: no server".into()));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.connection_name)
            .connection_timeout(Duration::from_secs(5));
        let auth = &options.settings;
        connect = match &auth.credentials {
            crate::config::Credentials::None => connect,
            crate::config::Credentials::UserPassword(user, password) => {
                connect.user_and_password(user.clone(), password.expose().to_string())
            }
            crate::config::Credentials::Token(token) => connect.token(token.expose().to_string()),
            crate::config::Credentials::NKey(seed) => connect.nkey(seed.expose().to_string()),
            crate::config::Credentials::CredsFile(path) => connect
                .credentials_file(path)
                .await
                .map_err(|e| BusError::Connect(format!("nats.creds_file {}: {e}", path.display())))?,
        };
        if let Some(ca) = &auth.ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &auth.client_cert {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        connect = connect.require_tls(auth.tls_required);
        let client = connect.connect(servers.as_slice()).await.map_err(|e| {
            let tls = match auth.ca_file() {
                Some(ca) => format!(" (TLS with nats.tls_ca_file {})", ca.display()),
                None => String::new(),
            };
            BusError::Connect(format!("{shown}{tls}: {}", crate::config::redacted(&e.to_string())))
        })?;
        let js = jetstream::new(client.clone());
        let bus = Self { client, js, options };
        bus.ensure_stream().await?;
        bus.ensure_dead_letters().await?;
        Ok(bus)
    }

    /// The underlying client, for what the trait does not cover (key-value buckets, tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Every dead letter kept ([`crate::dead`]), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<crate::dead::DeadLetter>, BusError> {
        let error = |e: &dyn std::fmt::Display| BusError::Consumer {
            durable: crate::dead::STREAM.into(),
            reason: e.to_string(),
        };
        let mut stream = self.ensure_dead_letters().await?;
        let state = stream.info().await.map_err(|e| error(&e))?.state.clone();
        let mut letters = Vec::new();
        if state.messages == 0 {
            return Ok(letters);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            // Gaps are letters already retried (deleted).
            if let Some(letter) = letter_at(&stream, sequence).await? {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    /// The dead letter at `sequence`, if there is one.
    pub async fn dead_letter(&self, sequence: u64) -> Result<Option<crate::dead::DeadLetter>, BusError> {
        letter_at(&self.ensure_dead_letters().await?, sequence).await
    }

    /// Publishes the dead letter at `sequence` again on its subject, then removes it; the letter
    /// carried out, or `None` when there is none at `sequence`.
    pub async fn retry_dead_letter(&self, sequence: u64) -> Result<Option<crate::dead::DeadLetter>, BusError> {
        let stream = self.ensure_dead_letters().await?;
        let Some(letter) = letter_at(&stream, sequence).await? else {
            return Ok(None);
        };
        self.publish(letter.retry()).await?;
        stream.delete_message(sequence).await.map_err(|e| BusError::Consumer {
            durable: crate::dead::STREAM.into(),
            reason: format!("dead letter {sequence} published again but not removed: {e}"),
        })?;
        Ok(Some(letter))
    }

    /// The events' stream, created if missing; its replicas, limits and duplicate window brought
    /// to this connection's settings when it keeps them and they differ.
    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let shape = self.options.settings.shape().unwrap_or_default();
        self.ensure(STREAM, STREAM_SUBJECTS, shape.max_age, self.options.duplicate_window)
            .await
    }

    /// The dead letters' stream ([`crate::dead`]): the events' shape, but kept a month.
    async fn ensure_dead_letters(&self) -> Result<stream::Stream, BusError> {
        self.ensure(crate::dead::STREAM, crate::dead::SUBJECTS, crate::dead::MAX_AGE, None)
            .await
    }

    async fn ensure(
        &self,
        name: &str,
        subjects: &str,
        max_age: Duration,
        duplicate_window: Option<Duration>,
    ) -> Result<stream::Stream, BusError> {
        let error = |e: &dyn std::fmt::Display| BusError::Connect(format!("stream {name}: {e}"));
        let shape = self.options.settings.shape().unwrap_or_default();
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                duplicate_window: duplicate_window.unwrap_or(DUPLICATE_WINDOW),
                storage: stream::StorageType::File,
                num_replicas: shape.replicas,
                max_age,
                max_bytes: shape.max_bytes,
                discard: discard_policy(shape.discard),
                ..Default::default()
            })
            .await
            .map_err(|e| error(&e))?;
        if !self.options.keeps(name) {
            return Ok(stream);
        }
        let current = &stream.cached_info().config;
        let mut wanted = current.clone();
        if let Some(shape) = self.options.settings.shape() {
            wanted.num_replicas = shape.replicas;
            wanted.max_age = max_age;
            wanted.max_bytes = shape.max_bytes;
            wanted.discard = discard_policy(shape.discard);
        }
        if let Some(window) = duplicate_window {
            wanted.duplicate_window = window;
        }
        if wanted == *current {
            return Ok(stream);
        }
        tracing::info!(
            stream = name,
            replicas = format!("{} -> {}", current.num_replicas, wanted.num_replicas),
            max_age = ?(current.max_age, wanted.max_age),
            max_bytes = format!("{} -> {}", current.max_bytes, wanted.max_bytes),
            discard = ?(current.discard, wanted.discard),
            duplicate_window = ?(current.duplicate_window, wanted.duplicate_window),
            "updating the stream's settings to this service's"
        );
        self.js.update_stream(&wanted).await.map_err(|e| error(&e))?;
        crate::kv::settled(&self.js, name, wanted.num_replicas).await;
        self.js.get_stream(name).await.map_err(|e| error(&e))
    }
}

/// The dead letter at `sequence` of the dead letters' `stream`, if there is one.
async fn letter_at(stream: &stream::Stream, sequence: u64) -> Result<Option<crate::dead::DeadLetter>, BusError> {
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(crate::dead::DeadLetter::read(
            sequence,
            &from_nats_headers(Some(&message.headers)),
            message.payload,
        )),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(BusError::Consumer {
            durable: crate::dead::STREAM.into(),
            reason: e.to_string(),
        }),
    }
}

/// How long one try of a publish waits for its acknowledgement.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one try of a publish failed.
enum PublishFailure {
    Refused(jetstream::context::PublishError),
    TimedOut,
}

/// The duplicate window of a stream created by a connection that does not set one.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub(crate) fn discard_policy(discard: crate::config::Discard) -> stream::DiscardPolicy {
    match discard {
        crate::config::Discard::New => stream::DiscardPolicy::New,
        crate::config::Discard::Old => stream::DiscardPolicy::Old,
    }
}

fn to_nats_headers(msg_id: &str, headers: &Headers) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (key, value) in headers.iter() {
        map.insert(key, value);
    }
    if !msg_id.is_empty() {
        map.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    }
    map
}

fn from_nats_headers(map: Option<&async_nats::HeaderMap>) -> Headers {
    let mut headers = Headers::new();
    if let Some(map) = map {
        for (key, values) in map.iter() {
            if let Some(value) = values.first() {
                headers.insert(key.to_string(), value.as_str());
            }
        }
    }
    headers
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: Outgoing) -> Result<PublishAck, BusError> {
        let subject = message.subject.clone();
        let headers = to_nats_headers(&message.msg_id, &message.headers);
        let timeout = self.options.publish_timeout;
        // Tried again while the stream has no leader (see `retry`); each try waits for its
        // acknowledgement a while, not the whole budget, so one lost in a dying leader is sent
        // again to the next (the message id keeps it stored once).
        let attempt = |left: Duration| {
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers.clone());
            let (js, subject) = (self.js.clone(), subject.clone());
            async move {
                let wait = left.min(ATTEMPT_TIMEOUT);
                let stored = async {
                    let ack = js.send_publish(subject.clone(), publish).await?;
                    ack.await
                };
                match tokio::time::timeout(wait, stored).await {
                    Ok(Ok(ack)) => Ok(ack),
                    Ok(Err(error)) => Err(PublishFailure::Refused(error)),
                    Err(_) => Err(PublishFailure::TimedOut),
                }
            }
        };
        let transient = |failure: &PublishFailure| match failure {
            PublishFailure::TimedOut => true,
            PublishFailure::Refused(error) => !matches!(
                error.kind(),
                jetstream::context::PublishErrorKind::WrongLastMessageId
                    | jetstream::context::PublishErrorKind::WrongLastSequence
                    | jetstream::context::PublishErrorKind::MaxPayloadExceeded
            ),
        };
        match crate::retry::within(timeout, attempt, transient).await {
            Ok(ack) => Ok(PublishAck {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(PublishFailure::TimedOut) => Err(BusError::Timeout { subject, timeout }),
            Err(PublishFailure::Refused(error)) => Err(BusError::Publish {
                subject,
                reason: error.to_string(),
            }),
        }
    }

    async fn subscribe(&self, spec: ConsumerSpec) -> Result<DeliveryStream, BusError> {
        let consumer_error = |e: &dyn std::fmt::Display| BusError::Consumer {
            durable: spec.durable.clone(),
            reason: e.to_string(),
        };
        let dead_letters =
            !spec.filter_subjects.is_empty() && spec.filter_subjects.iter().all(|f| f.starts_with("selfheal_dead."));
        let stream = if dead_letters {
            self.ensure_dead_letters().await?
        } else {
            self.ensure_stream().await?
        };
        // The server redelivers without end: the consumer loop counts deliveries against
        // `spec.max_deliver` and moves a message that used them up to the dead letters
        // (`crate::dead`), so none is dropped without a trace.
        let config = pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subjects: spec.filter_subjects.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: -1,
            ..Default::default()
        };
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(&spec.durable, config.clone())
            .await
            .map_err(|e| consumer_error(&e))?;
        let current = &consumer.cached_info().config;
        let filters = match (current.filter_subjects.is_empty(), current.filter_subject.is_empty()) {
            (true, false) => vec![current.filter_subject.clone()],
            _ => current.filter_subjects.clone(),
        };
        if current.max_deliver != config.max_deliver
            || current.ack_wait != config.ack_wait
            || filters != config.filter_subjects
        {
            tracing::info!(consumer = %spec.durable, "updating the consumer's settings to this service's");
            consumer = stream.update_consumer(config).await.map_err(|e| consumer_error(&e))?;
        }
        let messages = consumer.messages().await.map_err(|e| consumer_error(&e))?;
        let durable = spec.durable.clone();
        let deliveries = messages.map(move |next| {
            let message = next.map_err(|e| BusError::Consumer {
                durable: durable.clone(),
                reason: e.to_string(),
            })?;
            let (sequence, delivered) = match message.info() {
                Ok(info) => (info.stream_sequence, u64::try_from(info.delivered).unwrap_or(1)),
                Err(e) => {
                    return Err(BusError::Consumer {
                        durable: durable.clone(),
                        reason: format!("delivery without JetStream metadata: {e}"),
                    });
                }
            };
            let (message, acker) = message.split();
            let headers = from_nats_headers(message.headers.as_ref());
            Ok(Delivery::new(
                message.subject.to_string(),
                headers,
                message.payload,
                sequence,
                delivered,
                Box::new(NatsAcker(acker)),
            ))
        });
        Ok(Box::pin(deliveries))
    }

    async fn pending(&self, durable: &str) -> Result<u64, BusError> {
        let error = |e: &dyn std::fmt::Display| BusError::Consumer {
            durable: durable.to_string(),
            reason: e.to_string(),
        };
        let stream = self.js.get_stream(STREAM).await.map_err(|e| error(&e))?;
        match stream.consumer_info(durable).await {
            Ok(info) => Ok(info.num_pending + info.num_ack_pending as u64),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                        | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                Ok(0)
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::JetStream(ref inner)
                if inner.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                Ok(0)
            }
            Err(e) => Err(error(&e)),
        }
    }

    async fn key_value(&self, bucket: &str, max_age: Duration) -> Result<crate::kv::SharedKeyValue, BusError> {
        let shape = self.options.settings.shape().unwrap_or_default();
        let keep = self.options.keeps(bucket) && self.options.settings.shape().is_some();
        let store = crate::kv::NatsKeyValue::open(&self.js, bucket, max_age, shape, keep, self.options.publish_timeout)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(std::sync::Arc::new(store))
    }

    async fn ready(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(BusError::NotReady(format!("NATS connection is {other:?}"))),
        }
    }
}

struct NatsAcker(jetstream::message::Acker);

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        // Double ack: wait for the server to confirm, so "acked" means the server knows.
        self.0.double_ack().await.map_err(|e| BusError::Ack(e.to_string()))
    }
    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::Ack(e.to_string()))
    }
    async fn term(&self) -> Result<(), BusError> {
        self.0
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| BusError::Ack(e.to_string()))
    }
}
