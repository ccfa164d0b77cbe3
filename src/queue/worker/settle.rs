//! Settling a delivery as its handler decided: acknowledged, requeued,
//! moved to a retry queue, or dead-lettered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::types::AMQPValue;
use futures::FutureExt;
use serde::de::DeserializeOwned;

use super::super::outcome::{Message, Outcome};
use super::super::{with_header, Format, Retry, ERROR_HEADER, QUEUE_HEADER, RETRIES_HEADER};
use super::Shared;
use crate::rpc::panic_message;
use crate::transport::{header_count, Delivery, Outgoing};

/// How long a message whose settling failed (its retry or dead-letter
/// queue refused it) waits before going back to its queue, so a lasting
/// failure is not a busy loop.
const SETTLE_PAUSE: Duration = Duration::from_secs(1);

/// Longest reason carried in the `x-warren-error` header.
const REASON_MAX: usize = 1024;

/// Decodes a delivery, runs the handler, settles the message.
pub(super) async fn handle<T: DeserializeOwned + Send + 'static>(
    shared: &Shared<T>,
    queue: &Arc<str>,
    delivery: Delivery,
) {
    let retries = header_count(delivery.properties.as_amqp(), RETRIES_HEADER).unwrap_or(0);
    let body = match Format::decode_as::<T>(
        delivery.properties.content_type(),
        shared.format,
        &delivery.body,
    ) {
        Ok(body) => body,
        Err(e) => {
            let reason = format!("undecodable: {e}");
            tracing::warn!(%queue, %reason, "rejecting a message that cannot be decoded");
            shared.stats.undecodable.fetch_add(1, Ordering::Relaxed);
            dead_letter(shared, queue, delivery, &reason).await;
            return;
        }
    };
    let message = Message {
        body,
        queue: queue.clone(),
        routing_key: delivery.routing_key.to_string(),
        properties: delivery.properties.clone(),
        redelivered: delivery.redelivered,
        retries,
    };
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(message))) {
        Ok(future) => AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Outcome::Retry(format!("handler panicked: {}", panic_message(&panic)))
            }),
        Err(panic) => Outcome::Retry(format!("handler panicked: {}", panic_message(&panic))),
    };
    match outcome {
        Outcome::Ack => match delivery.acker.ack().await {
            Ok(()) => {
                shared.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                %queue,
                error = %e,
                "cannot acknowledge: the broker will deliver the message again"
            ),
        },
        Outcome::Requeue => {
            if let Err(e) = delivery.acker.reject(true).await {
                tracing::warn!(%queue, error = %e, "cannot requeue");
            } else {
                shared.stats.requeued.fetch_add(1, Ordering::Relaxed);
            }
        }
        Outcome::Retry(reason) => match shared.plan.retry {
            Some(retry) if retries < retry.retries() => {
                retry_later(shared, queue, delivery, retry, retries + 1, &reason).await;
            }
            Some(retry) => {
                let reason = format!("gave up after {} retries: {reason}", retry.retries());
                tracing::warn!(%queue, %reason, "dead-lettering a message");
                dead_letter(shared, queue, delivery, &reason).await;
            }
            None => {
                tracing::warn!(%queue, %reason, "handler failed (no retries): dead-lettering");
                dead_letter(shared, queue, delivery, &reason).await;
            }
        },
        Outcome::Reject(reason) => {
            tracing::warn!(%queue, %reason, "handler rejected a message");
            dead_letter(shared, queue, delivery, &reason).await;
        }
    }
}

fn reason_value(reason: &str) -> AMQPValue {
    let mut cut = reason.len().min(REASON_MAX);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    AMQPValue::LongString(reason[..cut].into())
}

/// Publishes a copy of `delivery` to `target` through the default
/// exchange, confirmed, then acknowledges the original; `true` if done.
/// On failure the original goes back to its queue after a pause.
async fn move_to<T>(
    shared: &Shared<T>,
    queue: &str,
    delivery: &Delivery,
    target: &str,
    properties: crate::transport::Properties,
) -> bool {
    let published = shared
        .connection
        .transport()
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: target.to_owned(),
            mandatory: true,
            confirm: true,
            properties,
            body: delivery.body.clone(),
        })
        .await;
    if let Err(e) = published {
        tracing::error!(
            %queue,
            %target,
            error = %e,
            "cannot move a message: it goes back to its queue"
        );
        tokio::time::sleep(SETTLE_PAUSE).await;
        if let Err(e) = delivery.acker.reject(true).await {
            tracing::warn!(%queue, error = %e, "cannot requeue");
        }
        return false;
    }
    if let Err(e) = delivery.acker.ack().await {
        tracing::warn!(
            %queue,
            error = %e,
            "moved a message but cannot acknowledge it: it will be delivered again"
        );
    }
    true
}

async fn retry_later<T>(
    shared: &Shared<T>,
    queue: &str,
    delivery: Delivery,
    retry: Retry,
    n: u32,
    reason: &str,
) {
    let properties = with_header(
        delivery.properties.clone(),
        RETRIES_HEADER,
        AMQPValue::LongLongInt(n.into()),
    );
    let properties = with_header(properties, ERROR_HEADER, reason_value(reason));
    let target = Retry::queue_name(queue, n);
    tracing::debug!(%queue, retry = n, delay = ?retry.delay(n), %reason, "retrying later");
    if move_to(shared, queue, &delivery, &target, properties).await {
        shared.stats.retried.fetch_add(1, Ordering::Relaxed);
    }
}

/// To the worker's dead-letter queue with the reason, or rejected to the
/// broker when it has none.
async fn dead_letter<T>(shared: &Shared<T>, queue: &str, delivery: Delivery, reason: &str) {
    let Some(target) = &shared.plan.dead_letter else {
        tracing::error!(
            %queue,
            %reason,
            "rejecting a message (the worker has no dead-letter queue: the broker drops it \
             unless the queue dead-letters)"
        );
        match delivery.acker.reject(false).await {
            Ok(()) => {
                shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(%queue, error = %e, "cannot reject"),
        }
        return;
    };
    let properties = with_header(
        delivery.properties.clone(),
        ERROR_HEADER,
        reason_value(reason),
    );
    let properties = with_header(
        properties,
        QUEUE_HEADER,
        AMQPValue::LongString(queue.into()),
    );
    if move_to(shared, queue, &delivery, target, properties).await {
        shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}
