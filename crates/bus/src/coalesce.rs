//! Reads of one key at once share one round trip.
//!
//! A burst brings many deliveries about one service at the same moment, and each used to read the
//! same key (its action history, its target, the kill switch) on its own. With [`Coalesce`], a
//! caller that asks while a read of its key is under way waits for that read's answer instead of
//! starting another. No answer outlives its read: once it is in, the next caller reads afresh.
//! So a caller may get an answer read a moment before it asked, exactly as if it had asked a
//! moment earlier, and never one older than the read in flight when it asked.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Mutex, PoisonError},
};

use futures::future::{BoxFuture, FutureExt as _, Shared};

type InFlight<K, V> = Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>;

/// Reads in flight, by key.
pub struct Coalesce<K, V> {
    in_flight: InFlight<K, V>,
}

impl<K, V> Default for Coalesce<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> Coalesce<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone + Send + Sync + 'static,
{
    /// The answer of the read of `key` in flight, or of `read()` started now.
    pub async fn read<F>(&self, key: K, read: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| read().boxed().shared())
            .clone();
        // Whoever is done first (or gives up) takes the read out, so it is never answered from
        // again; a read every caller gave up on goes with them.
        let _done = Done {
            owner: self,
            key,
            shared: shared.clone(),
        };
        shared.await
    }

    /// Reads in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Shared<BoxFuture<'static, V>>>> {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Done<'a, K: Eq + Hash + Clone, V: Clone + Send + Sync + 'static> {
    owner: &'a Coalesce<K, V>,
    key: K,
    shared: Shared<BoxFuture<'static, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone + Send + Sync + 'static> Drop for Done<'_, K, V> {
    fn drop(&mut self) {
        let mut in_flight = self.owner.lock();
        if in_flight.get(&self.key).is_some_and(|read| read.ptr_eq(&self.shared)) {
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn callers_at_once_share_a_read_and_later_ones_read_again() {
        let coalesce = Arc::new(Coalesce::<&str, usize>::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let read = |reads: Arc<AtomicUsize>, mut released: tokio::sync::watch::Receiver<bool>| {
            move || async move {
                let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = released.wait_for(|r| *r).await;
                n
            }
        };
        // Three callers of one key while its read is held open, one of another key.
        let mut waiting = Vec::new();
        for key in ["a", "a", "a", "b"] {
            let (coalesce, reads, released) = (coalesce.clone(), reads.clone(), released.clone());
            waiting.push(tokio::spawn(
                async move { coalesce.read(key, read(reads, released)).await },
            ));
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while coalesce.in_flight() < 2 || reads.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("two reads in flight");
        release.send(true).expect("released");
        let mut answers = Vec::new();
        for task in waiting {
            answers.push(task.await.expect("joined"));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one read per key");
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[1], answers[2]);
        assert_ne!(answers[0], answers[3]);
        assert_eq!(coalesce.in_flight(), 0, "nothing kept past its read");
        // Asked again after the answer came: a new read.
        let again = coalesce.read("a", read(reads.clone(), released.clone())).await;
        assert_eq!(again, 3);
    }

    #[tokio::test]
    async fn a_read_every_caller_gave_up_on_is_not_answered_from() {
        let coalesce = Coalesce::<&str, usize>::default();
        let never = coalesce.read("a", std::future::pending::<usize>);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), never)
                .await
                .is_err()
        );
        assert_eq!(coalesce.in_flight(), 0);
        assert_eq!(coalesce.read("a", || async { 7 }).await, 7);
    }
}
