//! Key-value buckets with compare-and-set, for state replicas share (incidents, action history).
//!
//! [`KeyValue`] has a JetStream implementation ([`NatsKeyValue`], a KV bucket) and an in-memory
//! one ([`MemoryKeyValue`]). Both give every write a revision; `create` fails if the key exists
//! and `update` fails unless the key is still at the revision the caller read, so two replicas
//! racing on one key never overwrite each other silently.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;

/// A value and the revision it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub revision: u64,
}

/// What a key-value operation can fail with.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// `create` found the key already there.
    #[error("key {0} already exists")]
    Exists(String),
    /// `update` found the key at another revision (or gone).
    #[error("key {key} changed since revision {expected}")]
    Conflict { key: String, expected: u64 },
    #[error("key-value store: {0}")]
    Other(String),
}

/// One bucket.
#[async_trait]
pub trait KeyValue: Send + Sync + 'static {
    /// The current value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Writes `key` only if it does not exist; returns the new revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError>;
    /// Writes `key` only if it is still at `revision`; returns the new revision.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError>;
    /// Every key in the bucket.
    async fn keys(&self) -> Result<Vec<String>, KvError>;
    /// Every change made to the bucket from now on, in the order made; None when this bucket
    /// cannot be watched (then [`crate::watched::Watched`] reads it as it is).
    async fn watch(&self) -> Result<Option<Changes>, KvError> {
        Ok(None)
    }
    /// How long the bucket keeps a value (zero: forever), when it says.
    fn max_age(&self) -> Option<Duration> {
        None
    }
}

/// One change to a bucket: `key` at `revision` holds `value` (None: deleted or purged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub revision: u64,
    pub value: Option<Bytes>,
}

/// The changes a [`KeyValue::watch`] yields.
pub type Changes = futures::stream::BoxStream<'static, Result<Change, KvError>>;

/// A shared bucket.
pub type SharedKeyValue = Arc<dyn KeyValue>;

/// A JetStream key-value bucket. Each operation rides over a leader election for up to
/// `budget` ([`crate::retry`]).
#[derive(Clone)]
pub struct NatsKeyValue {
    store: kv::Store,
    budget: Duration,
}

/// How long one try of a bucket operation waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one try failed: the bucket's answer, or none in time.
enum Failure<E> {
    Answered(E),
    TimedOut,
}

impl<E: std::fmt::Display> Failure<E> {
    fn text(&self) -> String {
        match self {
            Self::Answered(error) => error.to_string(),
            Self::TimedOut => format!("no answer in {ATTEMPT_TIMEOUT:?}"),
        }
    }
}

impl NatsKeyValue {
    /// Runs `op` until it succeeds, fails for good (`settled` says so), or the budget is spent.
    async fn retried<T, E, Fut>(&self, op: impl Fn() -> Fut, settled: impl Fn(&E) -> bool) -> Result<T, Failure<E>>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        crate::retry::within(
            self.budget,
            |left| {
                let attempt = op();
                async move {
                    match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), attempt).await {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(error)) => Err(Failure::Answered(error)),
                        Err(_) => Err(Failure::TimedOut),
                    }
                }
            },
            |failure| match failure {
                Failure::Answered(error) => !settled(error),
                Failure::TimedOut => true,
            },
        )
        .await
    }
}

impl NatsKeyValue {
    /// Opens `bucket`, creating it (file storage, one value per key, `shape`'s replicas, entries
    /// expire after `max_age`; zero keeps them forever) if it does not exist. When this
    /// connection `keep`s the bucket, a bucket found with other replicas or `max_age` is updated.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        max_age: Duration,
        shape: crate::config::StreamShape,
        keep: bool,
        budget: Duration,
    ) -> Result<Self, KvError> {
        let error = |e: &dyn std::fmt::Display| KvError::Other(format!("bucket {bucket}: {e}"));
        if let Ok(store) = js.get_key_value(bucket).await {
            if !keep {
                return Ok(Self { store, budget });
            }
            let current = &store.stream.cached_info().config;
            if current.num_replicas == shape.replicas && current.max_age == max_age {
                return Ok(Self { store, budget });
            }
            tracing::info!(
                bucket,
                replicas = format!("{} -> {}", current.num_replicas, shape.replicas),
                max_age = ?(current.max_age, max_age),
                "updating the bucket's settings to this service's"
            );
            let mut wanted = current.clone();
            wanted.num_replicas = shape.replicas;
            wanted.max_age = max_age;
            js.update_stream(&wanted).await.map_err(|e| error(&e))?;
            settled(js, &wanted.name, wanted.num_replicas).await;
            let store = js.get_key_value(bucket).await.map_err(|e| error(&e))?;
            return Ok(Self { store, budget });
        }
        let store = js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                num_replicas: shape.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| error(&e))?;
        Ok(Self { store, budget })
    }
}

/// Waits (10 s at most) until every one of `stream`'s `replicas` is current, after an update
/// that changed them: a restart right after sees a settled stream.
pub(crate) async fn settled(js: &jetstream::Context, stream: &str, replicas: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut found) = js.get_stream(stream).await
            && let Ok(info) = found.info().await
        {
            let peers = info.cluster.as_ref().map(|c| c.replicas.as_slice()).unwrap_or_default();
            if peers.len() + 1 >= replicas && peers.iter().all(|p| p.current) {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(stream, replicas, "the stream's replicas are not all current yet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[async_trait]
impl KeyValue for NatsKeyValue {
    async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let entry = self
            .retried(
                || self.store.entry(key),
                |e: &kv::EntryError| e.kind() == kv::EntryErrorKind::InvalidKey,
            )
            .await
            .map_err(|e| KvError::Other(e.text()))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| Entry {
            value: e.value,
            revision: e.revision,
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.retried(
            || self.store.create(key, value.clone()),
            |e: &kv::CreateError| {
                matches!(
                    e.kind(),
                    kv::CreateErrorKind::AlreadyExists | kv::CreateErrorKind::InvalidKey
                )
            },
        )
        .await
        .map_err(|failure| match failure {
            Failure::Answered(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => KvError::Exists(key.to_string()),
            other => KvError::Other(other.text()),
        })
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.retried(
            || self.store.update(key, value.clone(), revision),
            |e: &kv::UpdateError| {
                matches!(
                    e.kind(),
                    kv::UpdateErrorKind::WrongLastRevision | kv::UpdateErrorKind::InvalidKey
                )
            },
        )
        .await
        .map_err(|failure| match failure {
            Failure::Answered(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                key: key.to_string(),
                expected: revision,
            },
            other => KvError::Other(other.text()),
        })
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.retried(
            || async {
                let keys = self.store.keys().await.map_err(|e| e.to_string())?;
                keys.try_collect::<Vec<String>>().await.map_err(|e| e.to_string())
            },
            |_: &String| false,
        )
        .await
        .map_err(|e| KvError::Other(e.text()))
    }

    fn max_age(&self) -> Option<Duration> {
        Some(self.store.stream.cached_info().config.max_age)
    }

    async fn watch(&self) -> Result<Option<Changes>, KvError> {
        use futures::StreamExt as _;
        let watch = self
            .store
            .watch_all()
            .await
            .map_err(|e| KvError::Other(format!("cannot watch the bucket: {e}")))?;
        Ok(Some(
            watch
                .map(|entry| {
                    let entry = entry.map_err(|e| KvError::Other(format!("watching the bucket: {e}")))?;
                    Ok(Change {
                        value: (entry.operation == kv::Operation::Put).then_some(entry.value),
                        key: entry.key,
                        revision: entry.revision,
                    })
                })
                .boxed(),
        ))
    }
}

/// An in-memory bucket with the same semantics.
#[derive(Clone, Debug, Default)]
pub struct MemoryKeyValue {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    entries: HashMap<String, Entry>,
    revision: u64,
}

impl MemoryKeyValue {
    fn with_state<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }
}

#[async_trait]
impl KeyValue for MemoryKeyValue {
    async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self.with_state(|state| state.entries.get(key).cloned()))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.with_state(|state| {
            if state.entries.contains_key(key) {
                return Err(KvError::Exists(key.to_string()));
            }
            state.revision += 1;
            let revision = state.revision;
            state.entries.insert(key.to_string(), Entry { value, revision });
            Ok(revision)
        })
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.with_state(|state| {
            match state.entries.get(key) {
                Some(entry) if entry.revision == revision => {}
                _ => {
                    return Err(KvError::Conflict {
                        key: key.to_string(),
                        expected: revision,
                    });
                }
            }
            state.revision += 1;
            let new_revision = state.revision;
            state.entries.insert(
                key.to_string(),
                Entry {
                    value,
                    revision: new_revision,
                },
            );
            Ok(new_revision)
        })
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        Ok(self.with_state(|state| state.entries.keys().cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_compare_and_set() -> anyhow::Result<()> {
        let kv = MemoryKeyValue::default();
        let first = kv.create("a", Bytes::from_static(b"1")).await?;
        assert_eq!(
            kv.create("a", Bytes::from_static(b"2")).await,
            Err(KvError::Exists("a".into()))
        );
        let second = kv.update("a", Bytes::from_static(b"2"), first).await?;
        assert!(second > first);
        assert_eq!(
            kv.update("a", Bytes::from_static(b"3"), first).await,
            Err(KvError::Conflict {
                key: "a".into(),
                expected: first
            })
        );
        assert_eq!(
            kv.get("a").await?,
            Some(Entry {
                value: Bytes::from_static(b"2"),
                revision: second
            })
        );
        assert_eq!(kv.keys().await?, vec!["a".to_string()]);
        Ok(())
    }
}
