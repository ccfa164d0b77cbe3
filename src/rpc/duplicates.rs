//! The request ids a server has taken recently, so a request delivered again
//! (its first delivery's ack lost with a connection, a publisher's retry) is
//! not executed twice.
//!
//! oslo.messaging remembers the last 16 `_unique_id`s, which a busy server
//! forgets within milliseconds. Here an id is remembered for at least a time
//! window (default [`DEFAULT_DUPLICATE_WINDOW`], the default call timeout, so
//! a caller has given up on a call before its id is forgotten), about twice
//! that at most, and at least until the request's own deadline: past that a
//! redelivered copy is dropped as expired anyway. At most
//! [`MAX_REMEMBERED_IDS`] ids are kept, so a flood of requests cannot grow
//! the table without bound; at rates above `MAX_REMEMBERED_IDS / window` the
//! window effectively shortens.
//!
//! Ids live in two generations, as a generational cache does: each id goes
//! into the current one; when the current one is a window old (or full)
//! the previous one is dropped whole and the current
//! one takes its place. A request costs a lookup and an insert, with no
//! per-id clock or eviction order to keep (at 100k+ calls/s the per-id
//! bookkeeping of a time-ordered table was a twentieth of a call).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::id_key::IdKey as Key;

/// How long a server remembers a request id unless told otherwise.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = super::DEFAULT_TIMEOUT;

/// The most ids a server remembers (about 50 bytes each).
pub const MAX_REMEMBERED_IDS: usize = 200_000;

/// The most ids one generation holds, and the most kept apart until their
/// deadline: together never more than [`MAX_REMEMBERED_IDS`].
const GENERATION_CAP: usize = MAX_REMEMBERED_IDS * 3 / 8;
const LONG_CAP: usize = MAX_REMEMBERED_IDS / 4;

/// Recently taken request ids.
#[derive(Debug)]
pub(crate) struct Duplicates {
    window: Duration,
    /// Ids taken since `current_since`.
    current: HashMap<Key, ()>,
    /// Ids taken in the generation before.
    previous: HashMap<Key, ()>,
    current_since: Instant,
    /// Ids whose request's deadline is past the generations' reach, until
    /// that deadline (few: only requests with a timeout above the window).
    long: HashMap<Key, Instant>,
}

impl Duplicates {
    pub(crate) fn new(window: Duration) -> Self {
        Duplicates {
            window,
            current: HashMap::new(),
            previous: HashMap::new(),
            current_since: Instant::now(),
            long: HashMap::new(),
        }
    }

    /// Whether `id` was taken within the window; remembers it (until at
    /// least the later of the window's end and `deadline`) if not.
    pub(crate) fn seen_before(&mut self, id: &str, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        self.rotate(now);
        let key = Key::of(id);
        if self.holds(&key, now) {
            return true;
        }
        // The generations keep an id at least a window; a deadline past
        // that (a call with a longer timeout) is kept apart, while there
        // is room.
        let reach = now.checked_add(self.window).unwrap_or(now);
        match deadline {
            Some(deadline) if deadline > reach && self.long.len() < LONG_CAP => {
                self.long.insert(key, deadline);
            }
            _ => {
                self.current.insert(key, ());
            }
        }
        false
    }

    /// Whether `id` is remembered (without taking it).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.holds(&Key::of(id), Instant::now())
    }

    fn holds(&self, key: &Key, now: Instant) -> bool {
        self.current.contains_key(key)
            || self.previous.contains_key(key)
            || self.long.get(key).is_some_and(|until| *until > now)
    }

    /// Starts a new generation when the current one is a window old or
    /// full, forgetting the one before (both, after two idle windows: every
    /// id in them has been kept a window).
    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current_since);
        if age < self.window && self.current.len() < GENERATION_CAP {
            return;
        }
        let idle = age >= self.window.saturating_mul(2);
        self.previous = std::mem::take(&mut self.current);
        if idle {
            self.previous = HashMap::new();
        }
        self.current_since = now;
        self.long.retain(|_, until| *until > now);
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len() + self.long.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_and_not_after_twice_it() {
        let mut d = Duplicates::new(Duration::from_millis(50));
        assert!(!d.seen_before("a", None));
        assert!(d.seen_before("a", None));
        assert!(!d.seen_before("b", None));
        std::thread::sleep(Duration::from_millis(120));
        // Two rotations: the first moves "a" to the previous generation,
        // the second forgets it.
        assert!(!d.seen_before("c", None));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !d.seen_before("a", None),
            "forgotten after twice the window"
        );
        assert!(d.seen_before("a", None));
    }

    #[test]
    fn an_id_outlives_the_window_until_its_request_deadline() {
        let mut d = Duplicates::new(Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(3600);
        assert!(!d.seen_before("slow", Some(deadline)));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(15));
            assert!(!d.seen_before(&format!("{:?}", Instant::now()), None));
        }
        assert!(d.seen_before("slow", None));
    }

    #[test]
    fn hex_ids_and_other_ids_are_told_apart() {
        let mut d = Duplicates::new(Duration::from_secs(3600));
        let id = "0123456789abcdef0123456789abcdef";
        assert!(!d.seen_before(id, None));
        assert!(d.seen_before(id, None));
        assert!(d.contains(id));
        // The same digits in capitals are another id (oslo's are lowercase).
        assert!(!d.seen_before(&id.to_uppercase(), None));
        assert!(!d.seen_before("+123456789abcdef0123456789abcdef", None));
        assert!(!d.seen_before("req-1", None));
        assert!(d.seen_before("req-1", None));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn the_table_is_bounded_under_a_flood_and_forgets_the_oldest() {
        let mut d = Duplicates::new(Duration::from_secs(3600));
        for i in 0..MAX_REMEMBERED_IDS + 10 {
            assert!(!d.seen_before(&i.to_string(), None));
        }
        assert!(d.len() <= MAX_REMEMBERED_IDS, "{}", d.len());
        assert!(!d.seen_before("0", None), "the oldest went first");
        assert!(d.seen_before(&(MAX_REMEMBERED_IDS + 9).to_string(), None));
        assert!(
            d.seen_before(&(MAX_REMEMBERED_IDS / 2 + 1).to_string(), None),
            "the previous generation is still remembered"
        );
    }
}
