//! The consumer loop every service runs: take a delivery, handle it, settle it.
//!
//! Deliveries are handled one at a time per loop and settled only after the handler returns, so
//! the side effect happens before the ack. On shutdown the loop stops taking new deliveries and
//! finishes the one in hand; anything unacked is redelivered to another replica.
//!
//! The loop counts deliveries: a message whose handler failed on each of its `max_deliver`
//! deliveries, or that it rejects as unprocessable, or that comes back once more after that (the
//! service died handling it), goes to the dead letters ([`crate::dead`]) and is terminated. If
//! the dead letter cannot be written, the message is delivered again later: never dropped.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;

use crate::{BusError, ConsumerSpec, Delivery, SharedBus};

/// What to do with a delivery once handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or nothing to do): ack.
    Ack,
    /// A transient failure: deliver again after the delay.
    Retry(Duration),
    /// It can never succeed (undecodable payload): stop delivering it.
    Reject(String),
}

/// Handles deliveries of one consumer.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, delivery: &Delivery) -> Disposition;
}

/// Deliveries that were not the first, by `consumer` (a crash or a failure shows here).
pub const REDELIVERIES: &str = "selfheal_consumer_redeliveries_total";

/// Subscribes to `spec` and feeds deliveries to `handler` until `shutdown` completes.
/// A broken subscription is re-established after a pause.
pub async fn run(
    bus: SharedBus,
    spec: ConsumerSpec,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BusError> {
    tokio::pin!(shutdown);
    loop {
        let mut deliveries = tokio::select! {
            () = &mut shutdown => return Ok(()),
            subscribed = bus.subscribe(spec.clone()) => match subscribed {
                Ok(deliveries) => deliveries,
                Err(error) => {
                    tracing::warn!(consumer = %spec.durable, error = %error, "subscribe failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Up to `spec.concurrency` deliveries in work at once, each settled when its handler
        // returns. On shutdown no new one is taken and those in work are finished.
        let slots = Arc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1)));
        let mut in_work = tokio::task::JoinSet::new();
        loop {
            let slot = tokio::select! {
                () = &mut shutdown => {
                    while in_work.join_next().await.is_some() {}
                    return Ok(());
                }
                slot = slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            let next = tokio::select! {
                () = &mut shutdown => {
                    while in_work.join_next().await.is_some() {}
                    return Ok(());
                }
                next = deliveries.next() => next,
            };
            // Reap finished work so the set does not grow.
            while in_work.try_join_next().is_some() {}
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(consumer = %spec.durable, error = %error, "delivery failed");
                    continue;
                }
                None => break,
            };
            let (handler, bus, spec) = (handler.clone(), bus.clone(), spec.clone());
            in_work.spawn(async move {
                if delivery.delivered > 1 {
                    metrics::counter!(REDELIVERIES, "consumer" => spec.durable.clone()).increment(1);
                }
                let max_deliver = u64::try_from(spec.max_deliver).unwrap_or(1).max(1);
                let disposition = if delivery.delivered > max_deliver {
                    // Delivered once more than it may be: the service died handling it.
                    Disposition::Reject(format!(
                        "delivered {} times, never handled to the end (max_deliver {max_deliver})",
                        delivery.delivered
                    ))
                } else {
                    match handler.handle(&delivery).await {
                        Disposition::Retry(_) if delivery.delivered >= max_deliver => Disposition::Reject(format!(
                            "failed on each of its {max_deliver} deliveries (max_deliver); the service's log says why"
                        )),
                        disposition => disposition,
                    }
                };
                settle(&bus, &spec.durable, &delivery, disposition).await;
                drop(slot);
            });
        }
        while in_work.join_next().await.is_some() {}
        tracing::warn!(consumer = %spec.durable, "subscription ended; subscribing again");
    }
}

/// How long a message waits before it comes back when its dead letter could not be written.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// Acks, naks or terminates `delivery` as `disposition` says; a rejected one is kept as a dead
/// letter first.
async fn settle(bus: &SharedBus, durable: &str, delivery: &Delivery, disposition: Disposition) {
    let settled = match &disposition {
        Disposition::Ack => delivery.ack().await,
        Disposition::Retry(delay) => delivery.nak(*delay).await,
        Disposition::Reject(reason) => match bus.publish(crate::dead::letter(durable, delivery, reason)).await {
            Ok(_) => {
                tracing::error!(
                    consumer = %durable,
                    subject = %delivery.subject,
                    sequence = delivery.sequence,
                    deliveries = delivery.delivered,
                    reason = %reason,
                    "message moved to the dead letters"
                );
                metrics::counter!(crate::dead::METRIC, "consumer" => durable.to_string()).increment(1);
                delivery.term().await
            }
            Err(error) => {
                tracing::error!(
                    consumer = %durable,
                    sequence = delivery.sequence,
                    error = %error,
                    "the dead letter could not be written; the message comes back"
                );
                delivery.nak(DEAD_LETTER_RETRY).await
            }
        },
    };
    let result = match disposition {
        Disposition::Ack => "ack",
        Disposition::Retry(_) => "retry",
        Disposition::Reject(_) => "reject",
    };
    tracing::debug!(consumer = %durable, sequence = delivery.sequence, result, "delivery settled");
    if let Err(error) = settled {
        // The message comes back after ack_wait; handlers are idempotent.
        tracing::warn!(consumer = %durable, error = %error, "settling a delivery failed");
    }
}
