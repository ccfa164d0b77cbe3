//! The request context: a deadline and arbitrary key/values that travel with
//! a request (oslo's `_context_<key>` entries) and reach the server method.
//!
//! A server method reads its request's context with [`Context::current`];
//! a client attaches one with the stub's `.context(ctx)`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::wire::ContextMap;

tokio::task_local! {
    static CURRENT: Context;
}

/// A request context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    deadline: Option<Instant>,
    values: ContextMap,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Context::default()
    }

    /// The context of the request this task is serving; empty outside a
    /// server method.
    pub fn current() -> Context {
        CURRENT.try_with(Context::clone).unwrap_or_default()
    }

    /// Time left before the deadline of the request this task is serving,
    /// without cloning its context (every call asks).
    pub(crate) fn current_remaining() -> Option<Duration> {
        CURRENT.try_with(Context::remaining).ok().flatten()
    }

    /// Runs `future` with `self` as its [`Context::current`].
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// Adds or replaces an item.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces an item.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.values.insert(key.into(), value.into());
    }

    /// An item.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// All items.
    pub fn values(&self) -> &ContextMap {
        &self.values
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// When the caller stops waiting, if known.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Resolves when the deadline passes; never, if there is none. A long
    /// server method can race its work against it to stop once its caller
    /// has given up:
    ///
    /// ```no_run
    /// # async fn work() {}
    /// # async fn f() {
    /// let ctx = warren::rpc::Context::current();
    /// tokio::select! {
    ///     _ = work() => {}
    ///     _ = ctx.deadline_passed() => { /* the caller stopped waiting */ }
    /// }
    /// # }
    /// ```
    pub async fn deadline_passed(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn from_wire(values: ContextMap, deadline: Option<Instant>) -> Self {
        Context { deadline, values }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn deadline_passed_resolves_once_the_deadline_passes_and_never_without_one() {
        let passed = Context::new().with_deadline(Instant::now());
        // The timer fires on its driver's next tick; the timeout is a hang guard.
        tokio::time::timeout(Duration::from_secs(10), passed.deadline_passed())
            .await
            .expect("resolves");
        let far = Context::new().with_deadline(Instant::now() + Duration::from_secs(3600));
        assert!(far.deadline_passed().now_or_never().is_none());
        assert!(Context::new().deadline_passed().now_or_never().is_none());
    }

    #[tokio::test]
    async fn the_current_remaining_budget_is_the_served_requests() {
        assert_eq!(Context::current_remaining(), None);
        let ctx = Context::new().with_deadline(Instant::now() + Duration::from_secs(5));
        let left = ctx.scope(async { Context::current_remaining() }).await;
        assert!(left.is_some_and(|d| d <= Duration::from_secs(5)));
    }
}
