//! Living through a lost connection: what the RPC layer and the notification
//! listener share to declare their topology again and consume again once a
//! transport re-establishes its connection (see [`Transport::epoch`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{Subscription, Transport};
use crate::Error;

/// Names declared on the current connection, so each is declared once per
/// connection rather than once per publish. A re-established connection
/// (a restarted broker forgets transient exchanges and queues) starts afresh.
#[derive(Debug, Default)]
pub(crate) struct DeclaredOnce {
    inner: Mutex<(u64, HashSet<String>)>,
}

impl DeclaredOnce {
    /// Runs `declare` unless `name` was already declared on the transport's
    /// current connection.
    pub(crate) async fn ensure<Fut>(
        &self,
        transport: &dyn Transport,
        name: &str,
        declare: impl FnOnce() -> Fut,
    ) -> Result<(), Error>
    where
        Fut: Future<Output = Result<(), Error>>,
    {
        let epoch = transport.epoch();
        {
            let mut declared = self.lock();
            if declared.0 != epoch {
                *declared = (epoch, HashSet::new());
            }
            if declared.1.contains(name) {
                return Ok(());
            }
        }
        declare().await?;
        let mut declared = self.lock();
        if declared.0 == epoch {
            declared.1.insert(name.to_owned());
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashSet<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// First and longest pause between attempts to consume again.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Retries `attempt` (declare what the queue needs, then consume it) with
/// exponential backoff until it succeeds; `None` if `stop` turns true (or
/// its sender goes) first.
pub(crate) async fn resubscribe<F, Fut>(
    queue: &str,
    stop: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Option<Box<dyn Subscription>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Box<dyn Subscription>, Error>>,
{
    let (mut pause, longest) = BACKOFF;
    loop {
        if *stop.borrow() {
            return None;
        }
        match attempt().await {
            Ok(subscription) => {
                tracing::info!(%queue, "consuming again");
                return Some(subscription);
            }
            Err(e) => tracing::warn!(%queue, error = %e, retry_in = ?pause, "cannot consume yet"),
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                return None;
            },
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(longest);
    }
}
