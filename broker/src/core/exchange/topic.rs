//! Topic exchange routing: a trie over dot-separated words with `*` and `#` wildcards.
//!
//! Matching walks only the branches that can match the routing key, so the cost does
//! not grow with the number of non-matching bindings. It is a work list of
//! `(node, words matched)` states rather than a recursion that retries every suffix
//! at each `#`: that retrying costs about C(n + k, k) steps for an n-word key against
//! k `#` (a 60-word key against 30 `#` never finishes), while the states number at
//! most (n + 1) per trie node, each handled once with at most three child lookups.
//! Routing keys are short strings, so n is at most 128, and runs of `#` (which match
//! what one `#` does) share one node, so `#.#.#…` costs no more than `#`.

use std::collections::HashMap;

use super::{Binding, Destination};

/// A binding as stored at the node its key leads to: the destination, and the key
/// itself only when it had a run of `#`. Runs are collapsed on the path (`#.#` matches
/// what `#` does, with more states to walk), so the path alone no longer tells `a.#.#`
/// from `a.#`, which are distinct bindings.
type Bound = (Destination, Option<Box<str>>);

#[derive(Debug, Default)]
struct Node {
    /// Literal word children.
    words: HashMap<String, Node>,
    /// `*` child.
    star: Option<Box<Node>>,
    /// `#` child.
    hash: Option<Box<Node>>,
    /// Bindings whose key ends at this node.
    dests: Vec<Bound>,
    /// The edge into this node is `#`, which may swallow more words and stay here.
    is_hash: bool,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none() && self.dests.is_empty()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node {
        let fresh = || Node {
            is_hash: word == "#",
            ..Node::default()
        };
        match word {
            "*" => self.star.get_or_insert_with(|| Box::new(fresh())),
            "#" => self.hash.get_or_insert_with(|| Box::new(fresh())),
            w => self.words.entry(w.to_string()).or_insert_with(fresh),
        }
    }

    /// Remove `bound` at the end of `path`; returns whether something was removed.
    /// Recursion depth is bounded by the words of a short string (128).
    fn remove(&mut self, path: &[&str], bound: &Bound) -> bool {
        let Some((first, rest)) = path.split_first() else {
            let before = self.dests.len();
            self.dests.retain(|d| d != bound);
            return before != self.dests.len();
        };
        let removed;
        match *first {
            "*" => {
                let Some(c) = self.star.as_mut() else {
                    return false;
                };
                removed = c.remove(rest, bound);
                if c.is_empty() {
                    self.star = None;
                }
            }
            "#" => {
                let Some(c) = self.hash.as_mut() else {
                    return false;
                };
                removed = c.remove(rest, bound);
                if c.is_empty() {
                    self.hash = None;
                }
            }
            w => {
                let Some(c) = self.words.get_mut(w) else {
                    return false;
                };
                removed = c.remove(rest, bound);
                if c.is_empty() {
                    self.words.remove(w);
                }
            }
        }
        removed
    }

    fn remove_all(&mut self, dest: &Destination) -> usize {
        let before = self.dests.len();
        self.dests.retain(|(d, _)| d != dest);
        let mut removed = before - self.dests.len();
        self.words.retain(|_, c| {
            removed += c.remove_all(dest);
            !c.is_empty()
        });
        if let Some(c) = self.star.as_mut() {
            removed += c.remove_all(dest);
            if c.is_empty() {
                self.star = None;
            }
        }
        if let Some(c) = self.hash.as_mut() {
            removed += c.remove_all(dest);
            if c.is_empty() {
                self.hash = None;
            }
        }
        removed
    }
}

fn split(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// The trie path of a binding key, runs of `#` collapsed, and the [`Bound`] entry
/// that identifies the binding at its end.
fn path_of(key: &str, destination: Destination) -> (Vec<&str>, Bound) {
    let mut path = split(key);
    let words = path.len();
    path.dedup_by(|a, b| *a == "#" && *b == "#");
    let collapsed = path.len() != words;
    (path, (destination, collapsed.then(|| key.into())))
}

/// Binding table of a topic exchange.
#[derive(Debug, Default)]
pub struct TopicRouter {
    root: Node,
    count: usize,
}

impl TopicRouter {
    /// Add a binding; false if already present.
    pub fn bind(&mut self, b: Binding) -> bool {
        let (path, bound) = path_of(&b.routing_key, b.destination);
        let mut node = &mut self.root;
        for w in path {
            node = node.child_mut(w);
        }
        if node.dests.contains(&bound) {
            return false;
        }
        node.dests.push(bound);
        self.count += 1;
        true
    }

    /// Remove a binding; false if absent.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let (path, bound) = path_of(&b.routing_key, b.destination.clone());
        let removed = self.root.remove(&path, &bound);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Remove all bindings to `dest`.
    pub fn remove_destination(&mut self, dest: &Destination) -> usize {
        let n = self.root.remove_all(dest);
        self.count -= n;
        n
    }

    /// The destinations of its bindings (each at least once).
    pub fn destinations(&self) -> Vec<Destination> {
        let mut out = Vec::new();
        let mut todo = vec![&self.root];
        while let Some(n) = todo.pop() {
            out.extend(n.dests.iter().map(|(d, _)| d.clone()));
            todo.extend(n.words.values());
            todo.extend(n.star.as_deref());
            todo.extend(n.hash.as_deref());
        }
        out
    }

    /// Its bindings (a topic exchange keeps no binding arguments). The key
    /// is the path to its node, or the one kept for a collapsed run of `#`.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out = Vec::with_capacity(self.count);
        let mut todo: Vec<(&Node, Vec<&str>)> = vec![(&self.root, Vec::new())];
        while let Some((n, path)) = todo.pop() {
            for (d, key) in &n.dests {
                out.push(Binding {
                    destination: d.clone(),
                    routing_key: key.as_deref().map_or_else(|| path.join("."), str::to_owned),
                    arguments: Default::default(),
                });
            }
            let children = n
                .words
                .iter()
                .map(|(w, c)| (w.as_str(), c))
                .chain(n.star.as_deref().map(|c| ("*", c)))
                .chain(n.hash.as_deref().map(|c| ("#", c)));
            for (w, c) in children {
                let mut p = path.clone();
                p.push(w);
                todo.push((c, p));
            }
        }
        out
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Report destinations whose pattern matches `routing_key` (may repeat).
    pub fn route(&self, routing_key: &str, out: &mut dyn FnMut(&Destination)) {
        self.walk(&split(routing_key), out);
    }

    /// Walk the trie for `words`, reporting matches; returns how many states it
    /// expanded (at most (n + 1) per node, which the tests check).
    fn walk<'a>(&'a self, words: &[&str], out: &mut dyn FnMut(&Destination)) -> usize {
        // A state is a node together with how many words the path to it matched. A
        // node other than `#` has one way in, from its parent one word earlier, so
        // if its parent's states are expanded once, so are its own; a `#` node has
        // two ways in and needs the record `lows` keeps.
        //
        // One state is carried in `next` rather than pushed, so that a key going
        // down a single path (most do) never allocates the work list.
        let mut todo = Todo {
            next: Some((&self.root, 0)),
            rest: Vec::new(),
        };
        let mut lows = Lows::default();
        let mut steps = 0;
        while let Some((node, i)) = todo.pop() {
            let span = if node.is_hash {
                // `#` swallows any number of further words and stays where it is:
                // entered after i words, it is at every i..=n; only the part not
                // covered by an earlier entry is new.
                i..lows.enter(node, i, words.len() + 1)
            } else {
                i..i + 1
            };
            for j in span {
                steps += 1;
                match words.get(j) {
                    None => node.dests.iter().for_each(|(d, _)| out(d)),
                    Some(word) => {
                        if let Some(c) = node.words.get(*word) {
                            todo.push((c, j + 1));
                        }
                        if let Some(c) = &node.star {
                            todo.push((c, j + 1));
                        }
                    }
                }
                if let Some(h) = &node.hash {
                    // `#` may match no word at all.
                    todo.push((h, j));
                }
            }
        }
        steps
    }
}

/// The walk's pending states: the next one, and the rest once there are more.
struct Todo<'a> {
    next: Option<(&'a Node, usize)>,
    rest: Vec<(&'a Node, usize)>,
}

impl<'a> Todo<'a> {
    fn push(&mut self, state: (&'a Node, usize)) {
        match self.next {
            None => self.next = Some(state),
            Some(_) => self.rest.push(state),
        }
    }

    fn pop(&mut self) -> Option<(&'a Node, usize)> {
        self.next.take().or_else(|| self.rest.pop())
    }
}

/// For each `#` node the walk reached, the fewest words matched on the way in:
/// from there on it covers every count up to the key's length, so a later entry with
/// as many words or more adds nothing, and one with fewer adds only the difference.
/// Normal keys reach a `#` node or two, kept inline (no allocation); a map takes
/// over past [`Lows::FEW`].
struct Lows {
    few: [(*const Node, usize); Lows::FEW],
    len: usize,
    many: HashMap<*const Node, usize>,
}

impl Default for Lows {
    fn default() -> Self {
        Self {
            few: [(std::ptr::null(), 0); Lows::FEW],
            len: 0,
            many: HashMap::new(),
        }
    }
}

impl Lows {
    const FEW: usize = 8;

    /// Record an entry into `node` after `i` words, `none` standing for "never
    /// entered"; returns the end of the new part, `i..end` (empty if nothing is new).
    fn enter(&mut self, node: &Node, i: usize, none: usize) -> usize {
        let key = std::ptr::from_ref(node);
        let used = self.few.get_mut(..self.len).unwrap_or_default();
        let slot = match used.iter_mut().find(|(n, _)| *n == key) {
            Some((_, low)) => low,
            None => match self.few.get_mut(self.len) {
                Some(free) => {
                    self.len += 1;
                    *free = (key, none);
                    &mut free.1
                }
                None => self.many.entry(key).or_insert(none),
            },
        };
        let before = *slot;
        *slot = before.min(i);
        before.max(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::FieldTable;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut r = TopicRouter::default();
        r.bind(Binding {
            destination: Destination::Queue("q".into()),
            routing_key: pattern.into(),
            arguments: FieldTable::default(),
        });
        let mut hit = false;
        r.route(key, &mut |_| hit = true);
        hit
    }

    #[test]
    fn wildcards() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        assert!(matches("a.*", "a.c"));
        assert!(!matches("a.*", "a.c.d"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b.c"));
        assert!(matches("#", ""));
        assert!(matches("#", "x.y"));
        assert!(matches("#.z", "x.y.z"));
        assert!(matches("a.#.z", "a.z"));
        assert!(!matches("a.#.z", "a.z.y"));
        assert!(matches("*.*.c", "a.b.c"));
        assert!(!matches("", "a"));
        assert!(matches("", ""));
    }

    /// The trie's node count, root included.
    fn nodes(n: &Node) -> usize {
        1 + n.words.values().map(nodes).sum::<usize>()
            + n.star.as_deref().map_or(0, nodes)
            + n.hash.as_deref().map_or(0, nodes)
    }

    /// Route `key` on a hang-guarded thread: the backtracking matcher this
    /// replaced spun for hours on these keys, so a hang must fail the test, not
    /// stall the suite. Returns (matched destinations, states handled).
    fn route_guarded(r: TopicRouter, key: String) -> (Vec<Destination>, usize, TopicRouter) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let words = split(&key);
            let mut hits = Vec::new();
            let steps = r.walk(&words, &mut |d| hits.push(d.clone()));
            let _ = tx.send((hits, steps, r));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("topic matching hung (exponential backtracking?)")
    }

    fn router(patterns: &[String]) -> TopicRouter {
        let mut r = TopicRouter::default();
        for (i, p) in patterns.iter().enumerate() {
            r.bind(Binding {
                destination: Destination::Queue(format!("q{i}")),
                routing_key: p.clone(),
                arguments: FieldTable::default(),
            });
        }
        r
    }

    #[test]
    fn runs_of_hash_cost_words_times_nodes() {
        // Issue #9, attack 3: 30 `#` then `z`, against a 60-word key that does not
        // end in `z` (so every way of splitting the words among the `#` fails).
        let pattern = format!("{}z", "#.".repeat(30));
        let key = vec!["a"; 60].join(".");
        let r = router(&[pattern]);
        let bound = 61 * nodes(&r.root);
        let (hits, steps, _) = route_guarded(r, key);
        assert!(hits.is_empty());
        assert!(steps <= bound, "{steps} states for a bound of {bound}");

        // The brief's shapes: 127 `#` (the longest a short string allows), and 8 `#`
        // then a literal, against 128-word keys that do not match the latter.
        let all = vec!["#"; 127].join(".");
        let eight = format!("{}lit", "#.".repeat(8));
        let mut r = router(&[all, eight]);
        // Runs of `#` are one node each: the root, `#` (shared), and `lit`.
        assert_eq!(nodes(&r.root), 3);
        let bound = 129 * nodes(&r.root);
        for i in 0..1000 {
            let key = (0..128)
                .map(|w| format!("w{}", (i + w) % 7))
                .collect::<Vec<_>>()
                .join(".");
            let (hits, steps, back) = route_guarded(r, key);
            r = back;
            assert_eq!(hits, vec![Destination::Queue("q0".into())]);
            assert!(steps <= bound, "{steps} states for a bound of {bound}");
        }
    }

    /// The definition of a topic match, directly: exponential, fine for short
    /// patterns, and sharing no code with the trie.
    fn naive(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| naive(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && naive(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && naive(rest, &key[1..]),
        }
    }

    /// xorshift64*: a seeded, reproducible source of test cases.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn dotted(&mut self, alphabet: &[&str], max_words: usize) -> String {
            let n = self.below(max_words + 1);
            (0..n)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect::<Vec<_>>()
                .join(".")
        }
    }

    #[test]
    fn matches_the_naive_definition() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Empty words (`a..b`, a leading or trailing dot) are words like any other.
        let pattern_words = ["a", "b", "", "*", "#", "#", "*"];
        let key_words = ["a", "b", ""];
        for _round in 0..300 {
            let patterns: Vec<String> = (0..24).map(|_| rng.dotted(&pattern_words, 7)).collect();
            let mut r = router(&patterns);
            // Unbind a few, so pruning is exercised too.
            let mut live: Vec<bool> = vec![true; patterns.len()];
            for _ in 0..4 {
                let i = rng.below(patterns.len());
                r.unbind(&Binding {
                    destination: Destination::Queue(format!("q{i}")),
                    routing_key: patterns[i].clone(),
                    arguments: FieldTable::default(),
                });
                live[i] = false;
            }
            let bound_nodes = nodes(&r.root);
            for _ in 0..40 {
                let key = rng.dotted(&key_words, 9);
                let words = split(&key);
                let mut got: Vec<Destination> = Vec::new();
                let steps = r.walk(&words, &mut |d| got.push(d.clone()));
                assert!(steps <= (words.len() + 1) * bound_nodes);
                got.sort();
                got.dedup();
                let mut want: Vec<Destination> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| live[*i] && naive(&split(p), &words))
                    .map(|(i, _)| Destination::Queue(format!("q{i}")))
                    .collect();
                want.sort();
                assert_eq!(
                    got, want,
                    "key {key:?} against {patterns:?} (live {live:?})"
                );
            }
        }
    }

    #[test]
    fn many_hash_nodes_on_one_path() {
        // More `#` nodes than the walk keeps in its vector (it moves to a map).
        let patterns: Vec<String> = (1..=20)
            .map(|k| vec!["#.a"; k].join(".") + ".#")
            .chain((1..=20).map(|k| vec!["#.a"; k].join(".")))
            .collect();
        let r = router(&patterns);
        for n in [0, 1, 5, 19, 20, 21, 40, 60] {
            let key = vec!["a"; n].join(".");
            let words = split(&key);
            let mut got: Vec<Destination> = Vec::new();
            r.walk(&words, &mut |d| got.push(d.clone()));
            got.sort();
            got.dedup();
            let mut want: Vec<Destination> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| naive(&split(p), &words))
                .map(|(i, _)| Destination::Queue(format!("q{i}")))
                .collect();
            want.sort();
            assert_eq!(got, want, "{n} words");
        }
    }

    #[test]
    fn collapsed_keys_stay_distinct_bindings() {
        let bind = |r: &mut TopicRouter, key: &str| {
            r.bind(Binding {
                destination: Destination::Queue("q".into()),
                routing_key: key.into(),
                arguments: FieldTable::default(),
            })
        };
        let unbind = |r: &mut TopicRouter, key: &str| {
            r.unbind(&Binding {
                destination: Destination::Queue("q".into()),
                routing_key: key.into(),
                arguments: FieldTable::default(),
            })
        };
        let mut r = TopicRouter::default();
        assert!(bind(&mut r, "a.#"));
        assert!(bind(&mut r, "a.#.#"));
        assert!(!bind(&mut r, "a.#.#"));
        assert_eq!(r.len(), 2);
        assert!(unbind(&mut r, "a.#"));
        let mut hit = false;
        r.route("a.b", &mut |_| hit = true);
        assert!(hit, "a.#.# is still bound");
        assert!(!unbind(&mut r, "a.#"));
        assert!(unbind(&mut r, "a.#.#"));
        assert_eq!(r.len(), 0);
        assert!(r.root.is_empty());
    }

    #[test]
    fn unbind_prunes() {
        let mut r = TopicRouter::default();
        let b = Binding {
            destination: Destination::Queue("q".into()),
            routing_key: "a.*.#".into(),
            arguments: FieldTable::default(),
        };
        assert!(r.bind(b.clone()));
        assert!(!r.bind(b.clone()));
        assert!(r.unbind(&b));
        assert!(!r.unbind(&b));
        assert!(r.root.is_empty());
        assert_eq!(r.len(), 0);
    }
}
