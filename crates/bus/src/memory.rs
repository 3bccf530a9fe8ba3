//! The in-process bus: the same subjects and semantics as JetStream, in memory.
//!
//! Used by `selfheal up` without a NATS URL and by unit tests. Messages live as long as the
//! process; everything else (dedup window, durable cursors shared by subscribers, ack wait,
//! nak with delay, max deliveries) behaves as the JetStream implementation does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::{sync::Notify, time::Instant};

use crate::{Acker, Bus, BusError, ConsumerSpec, Delivery, DeliveryStream, Headers, Outgoing, PublishAck};

/// A message as the in-memory stream stores it.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub msg_id: String,
    pub headers: Headers,
    pub payload: Bytes,
}

#[derive(Debug)]
struct Pending {
    /// When the delivery becomes eligible again.
    redeliver_at: Instant,
    delivered: u64,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    /// Next stream index (0-based) not yet delivered to this consumer.
    cursor: usize,
    /// Delivered but not acked, by sequence.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<StoredMessage>,
    /// Message id -> (sequence, stored at).
    dedup: HashMap<String, (u64, Instant)>,
    consumers: HashMap<String, Consumer>,
    buckets: HashMap<String, crate::kv::MemoryKeyValue>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes subscribers when a message is stored or a delivery is nak'ed.
    changed: Notify,
    duplicate_window: Duration,
}

/// The in-process bus. Cheap to clone; clones share one stream.
#[derive(Clone, Debug)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(Duration::from_secs(120))
    }
}

impl MemoryBus {
    /// A bus whose stream drops duplicate message ids seen within `duplicate_window`.
    pub fn new(duplicate_window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                duplicate_window,
            }),
        }
    }

    /// Messages `durable` has not acked yet: delivered and pending, or not delivered at all
    /// (for tests that wait until a consumer is done).
    pub fn outstanding(&self, durable: &str) -> usize {
        let state = self.inner.lock();
        let Some(consumer) = state.consumers.get(durable) else {
            return 0;
        };
        let undelivered = state.messages[consumer.cursor.min(state.messages.len())..]
            .iter()
            .filter(|m| {
                consumer
                    .spec
                    .filter_subjects
                    .iter()
                    .any(|f| subject_matches(f, &m.subject))
            })
            .count();
        consumer.pending.len() + undelivered
    }

    /// Every stored message, in order (for tests and `selfheal up`'s status).
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.inner.lock().messages.clone()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters
        // more than losing the bus, so recover the guard rather than propagate the poison.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest (one or more tokens).
pub(crate) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut filter_tokens = filter.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (filter_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => continue,
            (Some(f), Some(s)) if f == s => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, message: Outgoing) -> Result<PublishAck, BusError> {
        if !message.subject.split('.').all(crate::subjects::is_valid_token) {
            return Err(BusError::Publish {
                subject: message.subject,
                reason: "invalid subject".into(),
            });
        }
        let now = Instant::now();
        let ack = {
            let mut state = self.inner.lock();
            let window = self.inner.duplicate_window;
            state.dedup.retain(|_, (_, at)| now.duration_since(*at) < window);
            if let Some((sequence, _)) = state.dedup.get(&message.msg_id) {
                return Ok(PublishAck {
                    sequence: *sequence,
                    duplicate: true,
                });
            }
            let sequence = state.messages.len() as u64 + 1;
            if !message.msg_id.is_empty() {
                state.dedup.insert(message.msg_id.clone(), (sequence, now));
            }
            state.messages.push(StoredMessage {
                sequence,
                subject: message.subject,
                msg_id: message.msg_id,
                headers: message.headers,
                payload: message.payload,
            });
            PublishAck {
                sequence,
                duplicate: false,
            }
        };
        self.inner.changed.notify_waiters();
        Ok(ack)
    }

    async fn subscribe(&self, spec: ConsumerSpec) -> Result<DeliveryStream, BusError> {
        {
            let mut state = self.inner.lock();
            state.consumers.entry(spec.durable.clone()).or_insert_with(|| Consumer {
                spec: spec.clone(),
                cursor: 0,
                pending: BTreeMap::new(),
            });
        }
        let inner = self.inner.clone();
        let durable = spec.durable;
        let stream = futures::stream::unfold((inner, durable), |(inner, durable)| async move {
            let delivery = next_delivery(&inner, &durable).await;
            Some((delivery, (inner, durable)))
        });
        Ok(Box::pin(stream))
    }

    async fn pending(&self, durable: &str) -> Result<u64, BusError> {
        Ok(self.outstanding(durable) as u64)
    }

    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn key_value(&self, bucket: &str, _max_age: Duration) -> Result<crate::kv::SharedKeyValue, BusError> {
        // Entries live as long as the process; expiry does not matter at that scale.
        let bucket = self.inner.lock().buckets.entry(bucket.to_string()).or_default().clone();
        Ok(Arc::new(bucket))
    }
}

/// Waits for the next message this durable should get, and marks it pending.
async fn next_delivery(inner: &Arc<Inner>, durable: &str) -> Result<Delivery, BusError> {
    loop {
        // Register interest before looking, so a publish between the look and the wait wakes us.
        let notified = inner.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let wait_until = {
            let mut state = inner.lock();
            let State {
                messages, consumers, ..
            } = &mut *state;
            let consumer = consumers.get_mut(durable).ok_or_else(|| BusError::Consumer {
                durable: durable.to_string(),
                reason: "consumer vanished".into(),
            })?;
            // Redeliveries first, oldest first.
            let due = consumer
                .pending
                .iter()
                .find(|(_, p)| p.redeliver_at <= now)
                .map(|(seq, _)| *seq);
            if let Some(sequence) = due {
                let ack_wait = consumer.spec.ack_wait;
                let entry = consumer.pending.get_mut(&sequence).ok_or_else(|| BusError::Consumer {
                    durable: durable.into(),
                    reason: "lost pending".into(),
                })?;
                entry.delivered += 1;
                entry.redeliver_at = now + ack_wait;
                let delivered = entry.delivered;
                let message = &messages[(sequence - 1) as usize];
                return Ok(make_delivery(inner, durable, message, delivered));
            }
            // Then new messages past the cursor.
            while consumer.cursor < messages.len() {
                let message = &messages[consumer.cursor];
                consumer.cursor += 1;
                if consumer
                    .spec
                    .filter_subjects
                    .iter()
                    .any(|f| subject_matches(f, &message.subject))
                {
                    consumer.pending.insert(
                        message.sequence,
                        Pending {
                            redeliver_at: now + consumer.spec.ack_wait,
                            delivered: 1,
                        },
                    );
                    return Ok(make_delivery(inner, durable, message, 1));
                }
            }
            consumer.pending.values().map(|p| p.redeliver_at).min()
        };
        match wait_until {
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
            None => notified.await,
        }
    }
}

fn make_delivery(inner: &Arc<Inner>, durable: &str, message: &StoredMessage, delivered: u64) -> Delivery {
    Delivery::new(
        message.subject.clone(),
        message.headers.clone(),
        message.payload.clone(),
        message.sequence,
        delivered,
        Box::new(MemoryAcker {
            inner: inner.clone(),
            durable: durable.to_string(),
            sequence: message.sequence,
        }),
    )
}

struct MemoryAcker {
    inner: Arc<Inner>,
    durable: String,
    sequence: u64,
}

impl MemoryAcker {
    fn settle(&self, redeliver_after: Option<Duration>) {
        {
            let mut state = self.inner.lock();
            if let Some(consumer) = state.consumers.get_mut(&self.durable) {
                match redeliver_after {
                    None => {
                        consumer.pending.remove(&self.sequence);
                    }
                    Some(delay) => {
                        if let Some(pending) = consumer.pending.get_mut(&self.sequence) {
                            pending.redeliver_at = Instant::now() + delay;
                        }
                    }
                }
            }
        }
        self.inner.changed.notify_waiters();
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(None);
        Ok(())
    }
    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.settle(Some(delay));
        Ok(())
    }
    async fn term(&self) -> Result<(), BusError> {
        self.settle(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn outgoing(subject: &str, id: &str) -> Outgoing {
        Outgoing {
            subject: subject.into(),
            msg_id: id.into(),
            headers: Headers::new(),
            payload: Bytes::from(id.to_string()),
        }
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("selfheal.>", "selfheal.alerts.firing.checkout"));
        assert!(subject_matches(
            "selfheal.alerts.*.checkout",
            "selfheal.alerts.firing.checkout"
        ));
        assert!(!subject_matches("selfheal.alerts.*", "selfheal.alerts.firing.checkout"));
        assert!(!subject_matches("selfheal.decisions.>", "selfheal.decisions"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
    }

    #[tokio::test]
    async fn duplicate_ids_are_stored_once() -> anyhow::Result<()> {
        let bus = MemoryBus::default();
        let first = bus.publish(outgoing("selfheal.alerts.firing.x", "id-1")).await?;
        let second = bus.publish(outgoing("selfheal.alerts.firing.x", "id-1")).await?;
        assert!(!first.duplicate);
        assert!(second.duplicate);
        assert_eq!(first.sequence, second.sequence);
        assert_eq!(bus.messages().len(), 1);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_window_expires() -> anyhow::Result<()> {
        let bus = MemoryBus::new(Duration::from_secs(10));
        bus.publish(outgoing("selfheal.a", "id")).await?;
        tokio::time::advance(Duration::from_secs(11)).await;
        let again = bus.publish(outgoing("selfheal.a", "id")).await?;
        assert!(!again.duplicate);
        assert_eq!(bus.messages().len(), 2);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_is_redelivered_and_filters_apply() -> anyhow::Result<()> {
        let bus = MemoryBus::default();
        let mut spec = ConsumerSpec::new("c", &["selfheal.decisions.>"]);
        spec.ack_wait = Duration::from_secs(5);
        let mut sub = bus.subscribe(spec).await?;
        bus.publish(outgoing("selfheal.alerts.firing.x", "a")).await?;
        bus.publish(outgoing("selfheal.decisions.x", "d")).await?;
        let first = sub.next().await.ok_or_else(|| anyhow::anyhow!("ended"))??;
        assert_eq!(first.subject, "selfheal.decisions.x");
        assert_eq!(first.delivered, 1);
        // Not acked: after ack_wait it comes again.
        let again = sub.next().await.ok_or_else(|| anyhow::anyhow!("ended"))??;
        assert_eq!(again.sequence, first.sequence);
        assert_eq!(again.delivered, 2);
        again.ack().await?;
        let nothing = tokio::time::timeout(Duration::from_secs(60), sub.next()).await;
        assert!(nothing.is_err(), "an acked message must not come back");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn nak_redelivers_after_delay_and_shared_durable_splits_work() -> anyhow::Result<()> {
        let bus = MemoryBus::default();
        let spec = ConsumerSpec::new("shared", &["selfheal.>"]);
        let mut one = bus.subscribe(spec.clone()).await?;
        let mut two = bus.subscribe(spec).await?;
        bus.publish(outgoing("selfheal.a", "1")).await?;
        bus.publish(outgoing("selfheal.a", "2")).await?;
        let a = one.next().await.ok_or_else(|| anyhow::anyhow!("ended"))??;
        let b = two.next().await.ok_or_else(|| anyhow::anyhow!("ended"))??;
        assert_ne!(
            a.sequence, b.sequence,
            "one durable delivers each message to one subscriber"
        );
        b.ack().await?;
        a.nak(Duration::from_secs(1)).await?;
        let again = two.next().await.ok_or_else(|| anyhow::anyhow!("ended"))??;
        assert_eq!(again.sequence, a.sequence);
        assert_eq!(again.delivered, 2);
        Ok(())
    }
}
