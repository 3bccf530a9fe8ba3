//! A bucket read from memory. [`Watched`] keeps what every key of a bucket holds current from
//! the bucket's own change stream ([`KeyValue::watch`]), so a read costs no round trip; writes go
//! to the bucket, and what they wrote is in memory as soon as they return (a reader sees its own
//! writes).
//!
//! How current a read is: a change another replica makes is in memory as soon as the watch
//! delivers it (a millisecond or so here); until then a read answers the value before it, as a
//! read sent a moment earlier would have. What decides is still the compare-and-set, made on the
//! bucket: one made on a value that was no longer current fails as it would have, and that key is
//! then read from the bucket itself until read there once. Per key the newest revision wins, and
//! "gone" counts only if nothing newer came while the bucket was asked. While the watch is not open (starting,
//! or broken and being opened again) every read goes to the bucket.
//!
//! When the watch opens every key is read once (64 at a time), and every value is held in
//! memory. JetStream announces no expiry, so for a bucket with a `max_age` a value is let go
//! `max_age` after it was last learned ([`Watched::with_max_age`]): never sooner than the bucket
//! drops it, so a key may be held a while after the bucket dropped it, and a compare-and-set on
//! it then fails and reads the bucket, as for any value no longer current.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::kv::{Change, Changes, Entry, KeyValue, KvError, SharedKeyValue};

/// A bucket whose reads are answered from memory while its watch is open.
pub struct Watched {
    bucket: SharedKeyValue,
    /// The bucket's name, for logs.
    name: Arc<str>,
    view: Arc<View>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct View {
    state: RwLock<State>,
    /// The newest revision applied (JetStream revisions count the whole bucket's writes).
    applied: tokio::sync::watch::Sender<u64>,
}

/// What is known of one key.
struct Known {
    revision: u64,
    /// None: deleted.
    value: Option<Bytes>,
    /// When it was learned here (a value is let go `max_age` after).
    learned: std::time::Instant,
}

#[derive(Default)]
struct State {
    /// The watch is open and every key was read after it opened.
    ready: bool,
    /// Counts the watch's openings: what a read or write learned from the bucket while one
    /// watch was open (or none) is not taken into the memory of the next, which starts afresh.
    epoch: u64,
    /// Each key's newest revision known, and its value then (None: deleted).
    keys: HashMap<String, Known>,
    /// Keys a compare-and-set here lost on, each with the number of that loss: read from the
    /// bucket until a read that began after the loss answered.
    doubtful: HashMap<String, u64>,
    /// Losses so far.
    losses: u64,
}

/// How long to wait before opening a watch again after it broke or could not be opened.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

impl Watched {
    /// `bucket`, read from memory once its watch is open (at once, in the background). A bucket
    /// that cannot be watched is read as it is.
    pub fn new(name: &str, bucket: SharedKeyValue) -> Self {
        Self::with_max_age(name, bucket, Duration::ZERO)
    }

    /// [`Self::new`] for a bucket whose values expire after `max_age` (zero: never).
    pub fn with_max_age(name: &str, bucket: SharedKeyValue, max_age: Duration) -> Self {
        // Never let a value go before the bucket does: the longer of the two, zero (forever)
        // when the bucket keeps values forever.
        let max_age = match bucket.max_age() {
            Some(kept) if kept.is_zero() => Duration::ZERO,
            Some(kept) => kept.max(max_age),
            None => max_age,
        };
        let view = Arc::new(View::default());
        let name: Arc<str> = name.into();
        let task = tokio::spawn(keep_current(name.clone(), bucket.clone(), view.clone(), max_age));
        Self {
            bucket,
            name,
            view,
            task,
        }
    }

    /// [`Self::with_max_age`], shared.
    pub fn shared(name: &str, bucket: SharedKeyValue, max_age: Duration) -> SharedKeyValue {
        Arc::new(Self::with_max_age(name, bucket, max_age))
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads are answered from memory now.
    pub fn ready(&self) -> bool {
        self.view.read().ready
    }

    /// Waits until reads are answered from memory and every change up to `revision` (a revision
    /// a write to the bucket returned, anywhere) is in it.
    pub async fn caught_up(&self, revision: u64) {
        let mut applied = self.view.applied.subscribe();
        loop {
            if self.ready() && *applied.borrow_and_update() >= revision {
                return;
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl View {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a read or write made now will be taken into: the watch's opening, the revision of
    /// `key` known and the number of the loss that made it doubtful.
    fn before(&self, key: &str) -> Before {
        let state = self.read();
        Before {
            epoch: state.epoch,
            revision: state.keys.get(key).map(|known| known.revision),
            doubt: state.doubtful.get(key).copied(),
        }
    }

    /// Takes `value` at `revision` for `key` (in the watch's opening `epoch`) unless a newer
    /// revision of it is known.
    fn apply(&self, epoch: u64, key: &str, revision: u64, value: Option<Bytes>) {
        {
            let mut state = self.write();
            if state.epoch != epoch {
                return;
            }
            take(&mut state, key, revision, value);
        }
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            *applied = (*applied).max(revision);
            newer
        });
    }

    /// What the bucket itself answered for `key` to a read that began at `before`.
    fn learn(&self, key: &str, before: &Before, entry: Option<&Entry>) {
        let mut state = self.write();
        if state.epoch != before.epoch {
            return;
        }
        match entry {
            Some(entry) => take(&mut state, key, entry.revision, Some(entry.value.clone())),
            // Gone, unless something newer came meanwhile (a write here, or the watch).
            None => {
                if let Some(known) = state.keys.get_mut(key)
                    && Some(known.revision) == before.revision
                {
                    known.value = None;
                }
            }
        }
        // A loss after the read began keeps the key doubtful.
        if state.doubtful.get(key).copied() == before.doubt {
            state.doubtful.remove(key);
        }
    }

    /// What a write of `value` to `key` begun in the watch's opening `epoch` came to: in memory
    /// at once when it was made; when it was refused (a lost compare-and-set) or failed, the key
    /// is read from the bucket until read there once.
    fn wrote(&self, epoch: u64, key: &str, value: Bytes, written: Result<u64, KvError>) -> Result<u64, KvError> {
        match &written {
            Ok(revision) => self.apply(epoch, key, *revision, Some(value)),
            Err(_) => {
                let mut state = self.write();
                state.losses += 1;
                let loss = state.losses;
                state.doubtful.insert(key.to_string(), loss);
            }
        }
        written
    }
}

/// What was known when a read or write to the bucket began ([`View::before`]).
struct Before {
    epoch: u64,
    revision: Option<u64>,
    doubt: Option<u64>,
}

/// Takes `value` at `revision` for `key` unless a newer revision of it is known (the same
/// revision is taken again: what the bucket answered for it is what it holds).
fn take(state: &mut State, key: &str, revision: u64, value: Option<Bytes>) {
    let learned = std::time::Instant::now();
    match state.keys.get_mut(key) {
        Some(known) if known.revision > revision => {}
        Some(known) => {
            *known = Known {
                revision,
                value,
                learned,
            }
        }
        None => {
            state.keys.insert(
                key.to_string(),
                Known {
                    revision,
                    value,
                    learned,
                },
            );
        }
    }
}

/// Opens the watch, reads every key, then applies each change as it comes; again after a pause
/// when the watch breaks.
async fn keep_current(bucket_name: Arc<str>, bucket: SharedKeyValue, view: Arc<View>, max_age: Duration) {
    let bucket_name = &*bucket_name;
    loop {
        let changes: Changes = match bucket.watch().await {
            Ok(Some(changes)) => changes,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(bucket = bucket_name, error = %error, "cannot watch the bucket; reading it directly meanwhile");
                tokio::time::sleep(REOPEN_AFTER).await;
                continue;
            }
        };
        // A memory of this opening only: what was learned before it (while reads went to the
        // bucket) may have been deleted since, and no change will say so.
        let epoch = {
            let mut state = view.write();
            state.epoch += 1;
            state.ready = false;
            state.keys.clear();
            state.doubtful.clear();
            state.epoch
        };
        // Read after the watch opened: every change made since comes through it.
        match every_key(&bucket).await {
            Ok(entries) => {
                for (key, entry) in entries {
                    view.apply(epoch, &key, entry.revision, Some(entry.value));
                }
                let keys = {
                    let mut state = view.write();
                    state.ready = true;
                    state.keys.len()
                };
                view.applied.send_modify(|_| {});
                tracing::info!(
                    bucket = bucket_name,
                    keys,
                    "watching the bucket: reading it from memory"
                );
            }
            Err(error) => {
                tracing::warn!(bucket = bucket_name, error = %error, "cannot read the bucket's keys; reading it directly meanwhile");
                tokio::time::sleep(REOPEN_AFTER).await;
                continue;
            }
        }
        let mut changes = changes;
        // Values past `max_age` are let go a quarter of it late at most.
        let sweep_every = if max_age.is_zero() {
            Duration::from_secs(3600)
        } else {
            max_age / 4
        };
        let mut sweeps = tokio::time::interval(sweep_every.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(Change { key, revision, value })) => view.apply(epoch, &key, revision, value),
                    Some(Err(error)) => {
                        tracing::warn!(bucket = bucket_name, error = %error, "the bucket's watch broke; reading it directly until it is open again");
                        break;
                    }
                    None => {
                        tracing::warn!(bucket = bucket_name, "the bucket's watch ended; reading it directly until it is open again");
                        break;
                    }
                },
                _ = sweeps.tick() => {
                    if !max_age.is_zero() {
                        view.write().keys.retain(|_, known| known.learned.elapsed() < max_age);
                    }
                }
            }
        }
        view.write().ready = false;
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

/// Every key of `bucket` and what it holds, read 64 at a time.
async fn every_key(bucket: &SharedKeyValue) -> Result<Vec<(String, Entry)>, KvError> {
    let keys = bucket.keys().await?;
    let reads = keys.into_iter().map(|key| {
        let bucket = bucket.clone();
        async move { Ok::<_, KvError>(bucket.get(&key).await?.map(|entry| (key, entry))) }
    });
    let entries: Vec<Option<(String, Entry)>> = futures::stream::iter(reads).buffered(64).try_collect().await?;
    Ok(entries.into_iter().flatten().collect())
}

#[async_trait]
impl KeyValue for Watched {
    async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        {
            let state = self.view.read();
            if state.ready && !state.doubtful.contains_key(key) {
                return Ok(state.keys.get(key).and_then(|known| {
                    known.value.clone().map(|value| Entry {
                        value,
                        revision: known.revision,
                    })
                }));
            }
        }
        let before = self.view.before(key);
        let entry = self.bucket.get(key).await?;
        self.view.learn(key, &before, entry.as_ref());
        Ok(entry)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let epoch = self.view.before(key).epoch;
        let written = self.bucket.create(key, value.clone()).await;
        self.view.wrote(epoch, key, value, written)
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        let epoch = self.view.before(key).epoch;
        let written = self.bucket.update(key, value.clone(), revision).await;
        self.view.wrote(epoch, key, value, written)
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        {
            let state = self.view.read();
            if state.ready && state.doubtful.is_empty() {
                return Ok(state
                    .keys
                    .iter()
                    .filter(|(_, known)| known.value.is_some())
                    .map(|(key, _)| key.clone())
                    .collect());
            }
        }
        self.bucket.keys().await
    }

    async fn watch(&self) -> Result<Option<Changes>, KvError> {
        self.bucket.watch().await
    }
}

#[cfg(test)]
mod tests {
    //! The races of the memory against the bucket, made to happen in a set order on a bucket
    //! whose reads can be held (the behaviour on JetStream itself is in `e2e/tests/bus.rs`).
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::kv::MemoryKeyValue;

    /// A bucket in memory with a watch, whose `get` can be held after it read.
    #[derive(Default)]
    struct Held {
        bucket: MemoryKeyValue,
        watchers: std::sync::Mutex<Vec<futures::channel::mpsc::UnboundedSender<Result<Change, KvError>>>>,
        hold: std::sync::atomic::AtomicBool,
        parked: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    impl Held {
        fn tell(&self, key: &str, revision: u64, value: &Bytes) {
            for watcher in self.watchers.lock().unwrap().iter() {
                let _ = watcher.unbounded_send(Ok(Change {
                    key: key.to_string(),
                    revision,
                    value: Some(value.clone()),
                }));
            }
        }
    }

    #[async_trait]
    impl KeyValue for Held {
        async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
            let read = self.bucket.get(key).await;
            if self.hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let released = self.release.notified();
                self.parked.notify_one();
                released.await;
            }
            read
        }
        async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
            let revision = self.bucket.create(key, value.clone()).await?;
            self.tell(key, revision, &value);
            Ok(revision)
        }
        async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
            let revision = self.bucket.update(key, value.clone(), revision).await?;
            self.tell(key, revision, &value);
            Ok(revision)
        }
        async fn keys(&self) -> Result<Vec<String>, KvError> {
            self.bucket.keys().await
        }
        async fn watch(&self) -> Result<Option<Changes>, KvError> {
            let (sender, changes) = futures::channel::mpsc::unbounded();
            self.watchers.lock().unwrap().push(sender);
            Ok(Some(changes.boxed()))
        }
    }

    /// A read that found the key absent answers after the key was written here: the memory keeps
    /// the write (it does not take "absent" over what came meanwhile), so the next read finds it.
    #[tokio::test]
    async fn an_absent_answer_does_not_hide_a_write_made_while_it_was_asked() {
        let held = Arc::new(Held::default());
        let watched = Arc::new(Watched::new("held", held.clone()));
        watched.caught_up(0).await;
        // A lost compare-and-set: the key is read from the bucket next.
        assert!(matches!(
            watched.update("k", "x".into(), 7).await,
            Err(KvError::Conflict { .. })
        ));
        held.hold.store(true, std::sync::atomic::Ordering::SeqCst);
        let parked = held.parked.notified();
        let read = tokio::spawn({
            let watched = watched.clone();
            async move { watched.get("k").await }
        });
        parked.await;
        // While the bucket's "absent" is on its way: the key is created here.
        let created = watched.create("k", "v".into()).await.unwrap();
        held.release.notify_one();
        assert_eq!(
            read.await.unwrap().unwrap(),
            None,
            "the read answers what the bucket held"
        );
        let entry = watched.get("k").await.unwrap().expect("the write is kept");
        assert_eq!((entry.value, entry.revision), (Bytes::from("v"), created));
    }

    /// The same revision from the bucket is taken: a key the memory wrongly held as absent at a
    /// revision is set right by reading that revision.
    #[tokio::test]
    async fn each_key_keeps_its_newest_revision() {
        let held = Arc::new(Held::default());
        let watched = Watched::new("held", held.clone());
        watched.caught_up(0).await;
        let first = held.create("k", "1".into()).await.unwrap();
        let second = held.update("k", "2".into(), first).await.unwrap();
        watched.caught_up(second).await;
        // An old change arriving late is ignored.
        watched
            .view
            .apply(watched.view.before("k").epoch, "k", first, Some("1".into()));
        let entry = watched.get("k").await.unwrap().unwrap();
        assert_eq!((entry.value, entry.revision), (Bytes::from("2"), second));
    }
}
