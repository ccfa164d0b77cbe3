//! The request context: what travels with a request besides its arguments.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::ContextMap;

/// A request context: a deadline and arbitrary key/values (oslo's
/// `_context_<key>` entries). A client attaches one to its calls; a server
/// method reads its request's with [`Context::current`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    pub(crate) deadline: Option<Instant>,
    pub(crate) values: ContextMap,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Context::default()
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
}
