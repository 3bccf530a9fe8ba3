//! The consumer loop every service runs: take a delivery, handle it, settle it.
//!
//! Deliveries are handled one at a time per loop and settled only after the handler returns, so
//! the side effect happens before the ack. On shutdown the loop stops taking new deliveries and
//! finishes the one in hand; anything unacked is redelivered to another replica.

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
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return Ok(()),
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(consumer = %spec.durable, error = %error, "delivery failed");
                    continue;
                }
                None => break,
            };
            let disposition = handler.handle(&delivery).await;
            let settled = match &disposition {
                Disposition::Ack => delivery.ack().await,
                Disposition::Retry(delay) => delivery.nak(*delay).await,
                Disposition::Reject(reason) => {
                    tracing::error!(consumer = %spec.durable, subject = %delivery.subject, reason = %reason, "message rejected");
                    delivery.term().await
                }
            };
            let result = match disposition {
                Disposition::Ack => "ack",
                Disposition::Retry(_) => "retry",
                Disposition::Reject(_) => "reject",
            };
            tracing::debug!(consumer = %spec.durable, sequence = delivery.sequence, result, "delivery settled");
            if let Err(error) = settled {
                // The message comes back after ack_wait; handlers are idempotent.
                tracing::warn!(consumer = %spec.durable, error = %error, "settling a delivery failed");
            }
        }
        tracing::warn!(consumer = %spec.durable, "subscription ended; subscribing again");
    }
}
