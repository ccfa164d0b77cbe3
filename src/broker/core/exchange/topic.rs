//! Topic exchange routing: a trie over dot-separated words with `*` and `#` wildcards.
//!
//! Matching walks only the branches that can match the routing key, so the cost does
//! not grow with the number of non-matching bindings.

use std::collections::HashMap;

use super::{Binding, Destination};

#[derive(Debug, Default)]
struct Node {
    /// Literal word children.
    words: HashMap<String, Node>,
    /// `*` child.
    star: Option<Box<Node>>,
    /// `#` child.
    hash: Option<Box<Node>>,
    /// Destinations whose binding key ends at this node.
    dests: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none() && self.dests.is_empty()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            w => self.words.entry(w.to_string()).or_default(),
        }
    }

    /// Remove `dest` at the end of `path`; returns whether something was removed.
    fn remove(&mut self, path: &[&str], dest: &Destination) -> bool {
        let Some((first, rest)) = path.split_first() else {
            let before = self.dests.len();
            self.dests.retain(|d| d != dest);
            return before != self.dests.len();
        };
        let removed;
        match *first {
            "*" => {
                let Some(c) = self.star.as_mut() else {
                    return false;
                };
                removed = c.remove(rest, dest);
                if c.is_empty() {
                    self.star = None;
                }
            }
            "#" => {
                let Some(c) = self.hash.as_mut() else {
                    return false;
                };
                removed = c.remove(rest, dest);
                if c.is_empty() {
                    self.hash = None;
                }
            }
            w => {
                let Some(c) = self.words.get_mut(w) else {
                    return false;
                };
                removed = c.remove(rest, dest);
                if c.is_empty() {
                    self.words.remove(w);
                }
            }
        }
        removed
    }

    fn remove_all(&mut self, dest: &Destination) -> usize {
        let before = self.dests.len();
        self.dests.retain(|d| d != dest);
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

    fn walk(&self, words: &[&str], out: &mut dyn FnMut(&Destination)) {
        match words.split_first() {
            None => {
                for d in &self.dests {
                    out(d);
                }
            }
            Some((first, rest)) => {
                if let Some(c) = self.words.get(*first) {
                    c.walk(rest, out);
                }
                if let Some(c) = &self.star {
                    c.walk(rest, out);
                }
            }
        }
        if let Some(h) = &self.hash {
            // `#` matches zero or more words.
            for skip in 0..=words.len() {
                h.walk(&words[skip..], out);
            }
        }
    }
}

fn split(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
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
        let mut node = &mut self.root;
        for w in split(&b.routing_key) {
            node = node.child_mut(w);
        }
        if node.dests.contains(&b.destination) {
            return false;
        }
        node.dests.push(b.destination);
        self.count += 1;
        true
    }

    /// Remove a binding; false if absent.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let removed = self.root.remove(&split(&b.routing_key), &b.destination);
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

    /// True if there is no binding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Report destinations whose pattern matches `routing_key` (may repeat).
    pub fn route(&self, routing_key: &str, out: &mut dyn FnMut(&Destination)) {
        self.root.walk(&split(routing_key), out);
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
