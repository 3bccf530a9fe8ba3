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
}

/// A shared bucket.
pub type SharedKeyValue = Arc<dyn KeyValue>;

/// A JetStream key-value bucket.
#[derive(Clone)]
pub struct NatsKeyValue {
    store: kv::Store,
}

impl NatsKeyValue {
    /// Opens `bucket`, creating it (file storage, `history` values per key, entries expire after
    /// `max_age`; zero keeps them forever) if it does not exist.
    pub async fn open(js: &jetstream::Context, bucket: &str, max_age: Duration) -> Result<Self, KvError> {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Ok(Self { store });
        }
        let store = js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| KvError::Other(format!("bucket {bucket}: {e}")))?;
        Ok(Self { store })
    }
}

#[async_trait]
impl KeyValue for NatsKeyValue {
    async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let entry = self.store.entry(key).await.map_err(|e| KvError::Other(e.to_string()))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| Entry {
            value: e.value,
            revision: e.revision,
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.store.create(key, value).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => KvError::Exists(key.to_string()),
            _ => KvError::Other(e.to_string()),
        })
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.store
            .update(key, value, revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    key: key.to_string(),
                    expected: revision,
                },
                _ => KvError::Other(e.to_string()),
            })
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let keys = self.store.keys().await.map_err(|e| KvError::Other(e.to_string()))?;
        keys.try_collect().await.map_err(|e| KvError::Other(e.to_string()))
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
