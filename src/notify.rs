//! Notifications, as oslo.messaging sends and receives them: a [`Notifier`]
//! publishes `{publisher_id, event_type, priority, payload, …}` to the
//! control exchange with routing key `<topic>.<priority>` (declaring the
//! queue of that name, so nothing is lost before a listener starts); a
//! [`NotificationListener`] consumes those queues. Both interoperate with
//! oslo's notifier and listener (the messagingv2 driver: JSON, 2.0 envelope).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rpc::declare_topic_queues;
use crate::rpc::{Context, DEFAULT_EXCHANGE};
use crate::transport::recovery::{resubscribe, DeclaredOnce};
use crate::transport::{ConsumeSpec, Outgoing, Properties, Subscription};
use crate::wire::{new_id, oslo, JSON_CONTENT_TYPE};
use crate::{Connection, Error};

/// oslo's default notification topic.
pub const DEFAULT_TOPIC: &str = "notifications";

/// A notification's priority (oslo's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// `audit`
    Audit,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
    /// `critical`
    Critical,
    /// `sample`
    Sample,
}

impl Priority {
    /// Every priority, in oslo's order.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// The lower-case name used in routing keys.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }

    fn parse(s: &str) -> Option<Priority> {
        let lower = s.to_ascii_lowercase();
        let lower = if lower == "warning" {
            "warn".to_owned()
        } else {
            lower
        };
        Priority::ALL.into_iter().find(|p| p.name() == lower)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, as Python's `str(utcnow())`.
fn utc_timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Sends notifications.
#[derive(Clone)]
pub struct Notifier {
    connection: Connection,
    publisher_id: String,
    topic: String,
    exchange: String,
    declared: Arc<DeclaredOnce>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("publisher_id", &self.publisher_id)
            .field("topic", &self.topic)
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl Notifier {
    /// A notifier publishing as `publisher_id` (e.g. `compute.host1`) to
    /// topic `notifications` on exchange `openstack`.
    pub fn new(connection: &Connection, publisher_id: impl Into<String>) -> Self {
        Notifier {
            connection: connection.clone(),
            publisher_id: publisher_id.into(),
            topic: DEFAULT_TOPIC.to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            declared: Arc::default(),
        }
    }

    /// Another topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Another control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sends `event_type` with `payload` at `priority`; returns once the
    /// broker confirmed it.
    pub async fn notify<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        priority: Priority,
        event_type: &str,
        payload: &P,
    ) -> Result<(), Error> {
        let routing_key = format!("{}.{}", self.topic, priority.name());
        self.declare(&routing_key).await?;
        let payload = serde_json::to_value(payload)
            .map_err(|e| Error::decode("cannot encode the notification payload").with_source(e))?;
        let mut inner = Map::new();
        inner.insert(
            "message_id".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        inner.insert(
            "publisher_id".into(),
            Value::String(self.publisher_id.clone()),
        );
        inner.insert("event_type".into(), Value::String(event_type.to_owned()));
        inner.insert(
            "priority".into(),
            Value::String(priority.name().to_ascii_uppercase()),
        );
        inner.insert("payload".into(), payload);
        inner.insert(
            "timestamp".into(),
            Value::String(utc_timestamp(SystemTime::now())),
        );
        for (key, value) in context.values() {
            inner.insert(format!("_context_{key}"), value.clone());
        }
        inner.insert("_unique_id".into(), Value::String(new_id()));
        let body = oslo::wrap(&inner)?.into();
        // oslo's notification properties.
        let properties = Properties::default()
            .with_content_type(JSON_CONTENT_TYPE)?
            .with_content_encoding("utf-8")?
            .with_delivery_mode(2)
            .with_priority(0);
        self.connection
            .transport()
            .publish(Outgoing {
                exchange: self.exchange.clone(),
                routing_key,
                mandatory: false,
                confirm: true,
                properties,
                body,
            })
            .await
    }

    /// [`Notifier::notify`] at `info`.
    pub async fn info<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<(), Error> {
        self.notify(context, Priority::Info, event_type, payload)
            .await
    }

    /// [`Notifier::notify`] at `warn`.
    pub async fn warn<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<(), Error> {
        self.notify(context, Priority::Warn, event_type, payload)
            .await
    }

    /// [`Notifier::notify`] at `error`.
    pub async fn error<P: Serialize + ?Sized>(
        &self,
        context: &Context,
        event_type: &str,
        payload: &P,
    ) -> Result<(), Error> {
        self.notify(context, Priority::Error, event_type, payload)
            .await
    }

    /// Declares the exchange and the `<topic>.<priority>` queue once, as
    /// oslo does, so notifications wait for a listener.
    async fn declare(&self, queue: &str) -> Result<(), Error> {
        self.declared
            .ensure(self.connection.transport().as_ref(), queue, || async {
                declare_topic_queues(&self.connection, &self.exchange, &[queue]).await
            })
            .await
    }
}

/// A received notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Its id (a uuid).
    pub message_id: String,
    /// Who sent it (e.g. `compute.host1`).
    pub publisher_id: String,
    /// What happened (e.g. `compute.instance.create.end`).
    pub event_type: String,
    /// Its priority.
    pub priority: Priority,
    /// The payload, as JSON.
    pub payload: Value,
    /// When it was sent (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub timestamp: String,
    /// The sender's request context.
    pub context: Context,
}

impl Notification {
    fn decode(body: &Bytes) -> Result<Notification, Error> {
        let inner = oslo::unwrap(body)?;
        let mut map: Map<String, Value> = serde_json::from_slice(&inner)
            .map_err(|e| Error::decode(format!("invalid notification: {e}")).with_source(e))?;
        let mut text = |key: &str| match map.remove(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Ok(other.to_string()),
            None => Err(Error::decode(format!("notification without {key}"))),
        };
        let message_id = text("message_id")?;
        let publisher_id = text("publisher_id")?;
        let event_type = text("event_type")?;
        let priority_text = text("priority")?;
        let priority = Priority::parse(&priority_text).ok_or_else(|| {
            Error::decode(format!("unknown notification priority {priority_text:?}"))
        })?;
        let timestamp = text("timestamp").unwrap_or_default();
        let payload = map.remove("payload").unwrap_or(Value::Null);
        let mut context = Context::new();
        for (key, value) in map {
            if let Some(name) = key.strip_prefix("_context_") {
                context.insert(name, value);
            }
        }
        Ok(Notification {
            message_id,
            publisher_id,
            event_type,
            priority,
            payload,
            timestamp,
            context,
        })
    }
}

/// Handles received notifications; any `Fn(Notification) -> impl Future`
/// is one.
pub trait NotificationHandler: Send + Sync + 'static {
    /// Handles one notification; it is acknowledged when this returns.
    fn handle(&self, notification: Notification) -> futures::future::BoxFuture<'static, ()>;
}

impl<F, Fut> NotificationHandler for F
where
    F: Fn(Notification) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    fn handle(&self, notification: Notification) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self(notification))
    }
}

/// Consumes notifications.
#[derive(Debug, Clone)]
pub struct NotificationListener {
    connection: Connection,
    topic: String,
    exchange: String,
    priorities: Vec<Priority>,
}

impl NotificationListener {
    /// A listener for every priority of topic `notifications` on exchange
    /// `openstack`.
    pub fn new(connection: &Connection) -> Self {
        NotificationListener {
            connection: connection.clone(),
            topic: DEFAULT_TOPIC.to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            priorities: Priority::ALL.to_vec(),
        }
    }

    /// Another topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Another control exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Only these priorities.
    pub fn priorities(mut self, priorities: &[Priority]) -> Self {
        self.priorities = priorities.to_vec();
        self
    }

    /// Declares the `<topic>.<priority>` queues and hands every
    /// notification to `handler` until the handle is shut down or dropped.
    pub async fn serve(self, handler: impl NotificationHandler) -> Result<ListenerHandle, Error> {
        let handler: Arc<dyn NotificationHandler> = Arc::new(handler);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for priority in &self.priorities {
            let queue = format!("{}.{}", self.topic, priority.name());
            let subscription = subscribe(&self.connection, &self.exchange, &queue).await?;
            tasks.push(tokio::spawn(listen(
                self.connection.clone(),
                self.exchange.clone(),
                queue,
                subscription,
                handler.clone(),
                stopped.clone(),
            )));
        }
        Ok(ListenerHandle { stop, tasks })
    }
}

/// Declares a notification queue and consumes it.
async fn subscribe(
    connection: &Connection,
    exchange: &str,
    queue: &str,
) -> Result<Box<dyn Subscription>, Error> {
    declare_topic_queues(connection, exchange, &[queue]).await?;
    connection
        .transport()
        .consume(&ConsumeSpec {
            queue: queue.to_owned(),
            prefetch: 64,
            no_ack: false,
        })
        .await
}

/// Hands each notification of one queue to the handler, consuming again
/// after a lost connection, until told to stop.
async fn listen(
    connection: Connection,
    exchange: String,
    queue: String,
    mut subscription: Box<dyn Subscription>,
    handler: Arc<dyn NotificationHandler>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let delivery = tokio::select! {
            _ = stopped.changed() => break,
            delivery = subscription.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(%queue, error = %e, "notification consumer cut off; consuming again");
                let again = resubscribe(&queue, &mut stopped, || {
                    subscribe(&connection, &exchange, &queue)
                })
                .await;
                match again {
                    Some(fresh) => subscription = fresh,
                    None => return,
                }
                continue;
            }
            None => break,
        };
        match Notification::decode(&delivery.body) {
            Ok(notification) => handler.handle(notification).await,
            Err(e) => tracing::warn!(error = %e, "dropping an undecodable notification"),
        }
        if let Err(e) = delivery.acker.ack().await {
            tracing::warn!(error = %e, "cannot ack notification");
        }
    }
    let _ = subscription.cancel().await;
    let _ = subscription.close().await;
}

/// A running listener; dropping it stops the listener.
#[derive(Debug)]
pub struct ListenerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ListenerHandle {
    /// Stops consuming (after the notification being handled, if any).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_pythons_utcnow() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_991_658_751);
        assert_eq!(utc_timestamp(t), "2026-11-18 11:23:11.658751");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
    }

    #[test]
    fn captured_python_notification_decodes() {
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"04194355-6142-4f6d-a87d-14044d5cb4f5\", \"publisher_id\": \"compute.host1\", \"event_type\": \"compute.instance.create.end\", \"priority\": \"INFO\", \"payload\": {\"id\": 1}, \"timestamp\": \"2026-11-22 11:23:11.658751\", \"_unique_id\": \"2e4c1c58801040d3a65a5eae9d25962f\", \"_context_user_id\": \"u1\"}"}"#;
        let n = Notification::decode(&Bytes::from_static(body)).unwrap();
        assert_eq!(n.publisher_id, "compute.host1");
        assert_eq!(n.priority, Priority::Info);
        assert_eq!(n.payload, serde_json::json!({"id": 1}));
        assert_eq!(n.context.get("user_id"), Some(&serde_json::json!("u1")));
        assert!(Notification::decode(&Bytes::from_static(b"{}"))
            .unwrap_err()
            .is_decode());
    }
}
