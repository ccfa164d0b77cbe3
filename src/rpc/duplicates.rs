//! The request ids a server has taken recently, so a request delivered again
//! (its first delivery's ack lost with a connection, a publisher's retry) is
//! not executed twice.
//!
//! oslo.messaging remembers the last 16 `_unique_id`s, which a busy server
//! forgets within milliseconds. Here an id is remembered for a time window
//! (default [`DEFAULT_DUPLICATE_WINDOW`], the default call timeout, so a
//! caller has given up on a call before its id is forgotten), and at least
//! until the request's own deadline: past that a redelivered copy is dropped
//! as expired anyway. At most [`MAX_REMEMBERED_IDS`] ids are kept (the oldest go
//! first), so a flood of requests cannot grow the table without bound; at
//! rates above `MAX_REMEMBERED_IDS / window` the window effectively shortens.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a server remembers a request id unless told otherwise.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = super::DEFAULT_TIMEOUT;

/// The most ids a server remembers (about 100 bytes each).
pub const MAX_REMEMBERED_IDS: usize = 200_000;

/// Recently taken request ids and until when each is remembered.
#[derive(Debug)]
pub(crate) struct Duplicates {
    window: Duration,
    /// Until when each id is remembered, and how many times it is in
    /// `order` (an id taken again after it expired is there twice).
    until: HashMap<Box<str>, (Instant, u32)>,
    /// Ids in the order taken, for forgetting.
    order: VecDeque<Box<str>>,
}

impl Duplicates {
    pub(crate) fn new(window: Duration) -> Self {
        Duplicates {
            window,
            until: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` was taken within the window; remembers it (until the
    /// later of the window's end and `deadline`) if not.
    pub(crate) fn seen_before(&mut self, id: &str, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        self.forget_expired(now);
        let window_end = now.checked_add(self.window).unwrap_or(now);
        let until = deadline.map_or(window_end, |d| d.max(window_end));
        match self.until.get_mut(id) {
            Some((remembered, _)) if *remembered > now => return true,
            Some((remembered, copies)) => {
                *remembered = until;
                *copies += 1;
            }
            None => {
                self.until.insert(id.into(), (until, 1));
            }
        }
        self.order.push_back(id.into());
        while self.order.len() > MAX_REMEMBERED_IDS {
            self.forget_oldest();
        }
        false
    }

    /// Whether `id` is remembered (without taking it).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.until
            .get(id)
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    /// Forgets ids from the oldest on while they have expired.
    fn forget_expired(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.until.get(oldest) {
                Some((until, _)) if *until > now => break,
                _ => self.forget_oldest(),
            }
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            // The same id taken again later is a newer entry in `order`:
            // keep its time until that entry goes too.
            if let Some((_, copies)) = self.until.get_mut(&id) {
                *copies -= 1;
                if *copies == 0 {
                    self.until.remove(&id);
                }
            }
        }
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_and_not_after() {
        let mut d = Duplicates::new(Duration::from_millis(50));
        assert!(!d.seen_before("a", None));
        assert!(d.seen_before("a", None));
        assert!(!d.seen_before("b", None));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!d.seen_before("a", None), "forgotten after the window");
        assert!(d.seen_before("a", None));
    }

    #[test]
    fn an_id_outlives_the_window_until_its_request_deadline() {
        let mut d = Duplicates::new(Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(3600);
        assert!(!d.seen_before("slow", Some(deadline)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(d.seen_before("slow", None));
    }

    #[test]
    fn the_table_is_bounded_under_a_flood_and_forgets_the_oldest() {
        let mut d = Duplicates::new(Duration::from_secs(3600));
        for i in 0..MAX_REMEMBERED_IDS + 10 {
            assert!(!d.seen_before(&i.to_string(), None));
        }
        assert_eq!(d.len(), MAX_REMEMBERED_IDS);
        assert!(!d.seen_before("0", None), "the oldest went first");
        assert!(d.seen_before(&(MAX_REMEMBERED_IDS + 9).to_string(), None));
    }
}
