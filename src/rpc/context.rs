//! The request context: a deadline and arbitrary key/values that travel with
//! a request (oslo's `_context_<key>` entries) and reach the server method.
//!
//! A server method reads its request's context with [`Context::current`];
//! a client attaches one with the stub's `.context(ctx)`.

use std::time::Duration;

tokio::task_local! {
    static CURRENT: Context;
}

pub use crate::wire::Context;

/// What only a server's task knows: the context of the request it serves.
impl Context {
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
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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
