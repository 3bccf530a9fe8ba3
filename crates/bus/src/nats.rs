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
    /// Credentials and TLS, checked ([`crate::auth::NatsAuth::check`]).
    pub auth: crate::auth::CheckedAuth,
    /// Name this connection shows in the server's monitoring.
    pub connection_name: String,
    /// How long the stream remembers message ids for deduplication.
    pub duplicate_window: Duration,
    /// How long a publish may wait for JetStream's acknowledgement before it fails.
    pub publish_timeout: Duration,
}

impl NatsOptions {
    /// Options with selfheal's defaults: 2 min duplicate window, 5 s publish timeout.
    pub fn new(url: impl Into<String>, connection_name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: Default::default(),
            connection_name: connection_name.into(),
            duplicate_window: Duration::from_secs(120),
            publish_timeout: Duration::from_secs(5),
        }
    }

    /// The same options, connecting with `auth`.
    pub fn with_auth(mut self, auth: crate::auth::CheckedAuth) -> Self {
        self.auth = auth;
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
        let shown = crate::auth::redacted(&options.url);
        let servers = crate::auth::servers(&options.url);
        if servers.is_empty() {
            return Err(BusError::Connect("nats_url: no server".into()));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.connection_name)
            .connection_timeout(Duration::from_secs(5));
        let auth = &options.auth;
        connect = match &auth.credentials {
            crate::auth::Credentials::None => connect,
            crate::auth::Credentials::UserPassword(user, password) => {
                connect.user_and_password(user.clone(), password.expose().to_string())
            }
            crate::auth::Credentials::Token(token) => connect.token(token.expose().to_string()),
            crate::auth::Credentials::NKey(seed) => connect.nkey(seed.expose().to_string()),
            crate::auth::Credentials::CredsFile(path) => connect
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
            BusError::Connect(format!("{shown}{tls}: {}", crate::auth::redacted(&e.to_string())))
        })?;
        let js = jetstream::new(client.clone());
        let bus = Self { client, js, options };
        bus.ensure_stream().await?;
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

    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![STREAM_SUBJECTS.into()],
                duplicate_window: self.options.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Connect(format!("stream {STREAM}: {e}")))
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
        let publish = PublishMessage::build()
            .payload(message.payload)
            .headers(to_nats_headers(&message.msg_id, &message.headers));
        let timeout = self.options.publish_timeout;
        let stored = async {
            let ack_future = self
                .js
                .send_publish(message.subject, publish)
                .await
                .map_err(|e| BusError::Publish {
                    subject: subject.clone(),
                    reason: e.to_string(),
                })?;
            ack_future.await.map_err(|e| BusError::Publish {
                subject: subject.clone(),
                reason: e.to_string(),
            })
        };
        let ack = tokio::time::timeout(timeout, stored)
            .await
            .map_err(|_| BusError::Timeout {
                subject: subject.clone(),
                timeout,
            })??;
        Ok(PublishAck {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn subscribe(&self, spec: ConsumerSpec) -> Result<DeliveryStream, BusError> {
        let consumer_error = |e: &dyn std::fmt::Display| BusError::Consumer {
            durable: spec.durable.clone(),
            reason: e.to_string(),
        };
        let stream = self.ensure_stream().await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &spec.durable,
                pull::Config {
                    durable_name: Some(spec.durable.clone()),
                    filter_subjects: spec.filter_subjects.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: spec.ack_wait,
                    max_deliver: spec.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| consumer_error(&e))?;
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
        let store = crate::kv::NatsKeyValue::open(&self.js, bucket, max_age)
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
