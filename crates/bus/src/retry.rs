//! Riding over a JetStream leader election: on a cluster, a stream or bucket whose leader dies
//! answers nothing ("no responders", timeouts) until the replicas left elect another, a few
//! seconds later. An operation that failed that way is tried again, with backoff, until its
//! budget is spent; one that failed for good (a compare-and-set lost, a payload too large) is
//! not.
//!
//! Trying again is safe for what the bus does: a publish carries its message id, so the stream
//! stores it once; a key-value `create` that had in fact succeeded comes back `Exists`, an
//! `update` `Conflict`, and the caller reads the key again — as it does when it loses a race.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// First pause between tries; doubled after each, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(400);

/// Runs `attempt` (given the time left) until it succeeds, fails with an error `transient` says
/// is not worth another try, or `budget` is spent; then the last error.
pub(crate) async fn within<T, E, F, Fut>(
    budget: Duration,
    mut attempt: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + budget;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match attempt(left).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !transient(&error) || Instant::now() + pause >= deadline {
            return Err(error);
        }
        tracing::debug!(pause = ?pause, "a JetStream request failed; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_tried_again_until_the_budget_is_spent() {
        let tries = AtomicUsize::new(0);
        let ok: Result<u32, &str> = within(
            Duration::from_secs(1),
            |_| async {
                if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("no responders")
                } else {
                    Ok(7)
                }
            },
            |_| true,
        )
        .await;
        assert_eq!((ok, tries.load(Ordering::SeqCst)), (Ok(7), 4));

        let tries = AtomicUsize::new(0);
        let spent: Result<u32, &str> = within(
            Duration::from_secs(1),
            |_| async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err("no responders")
            },
            |_| true,
        )
        .await;
        assert_eq!(spent, Err("no responders"));
        // Tries at 0, 25, 75, 175, 375 and 775 ms; the next would come after the second.
        assert_eq!(tries.load(Ordering::SeqCst), 6);

        let tries = AtomicUsize::new(0);
        let lost: Result<u32, &str> = within(
            Duration::from_secs(1),
            |_| async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err("wrong last sequence")
            },
            |e| *e != "wrong last sequence",
        )
        .await;
        assert_eq!((lost, tries.load(Ordering::SeqCst)), (Err("wrong last sequence"), 1));
    }
}
