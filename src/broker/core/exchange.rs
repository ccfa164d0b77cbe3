//! Exchanges and routing: direct (a hash on the key), fanout, topic (a trie,
//! so non-matching bindings cost nothing) and headers (x-match all/any).

use std::collections::{BTreeSet, HashMap};

use amq_protocol::types::{AMQPValue, FieldTable};

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// A queue.
    Queue(String),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(String),
}

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// By exact routing key.
    Direct,
    /// To every binding.
    Fanout,
    /// By pattern (`*` one word, `#` zero or more).
    Topic,
    /// By message headers.
    Headers,
}

impl Kind {
    /// Parses an `exchange.declare` type.
    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "direct" => Some(Kind::Direct),
            "fanout" => Some(Kind::Fanout),
            "topic" => Some(Kind::Topic),
            "headers" => Some(Kind::Headers),
            _ => None,
        }
    }

    /// The type's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
            Kind::Headers => "headers",
        }
    }
}

/// A binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where it leads.
    pub destination: Destination,
    /// Its routing key (pattern, for topic exchanges).
    pub key: String,
    /// Its arguments (headers exchanges match on them).
    pub arguments: FieldTable,
}

/// An exchange and its bindings.
#[derive(Debug)]
pub struct Exchange {
    /// Type.
    pub kind: Kind,
    /// Declared durable.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    bindings: Vec<Binding>,
    direct: HashMap<String, Vec<Destination>>,
    topic: TopicNode,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(kind: Kind, durable: bool, auto_delete: bool, internal: bool) -> Self {
        Exchange {
            kind,
            durable,
            auto_delete,
            internal,
            bindings: Vec::new(),
            direct: HashMap::new(),
            topic: TopicNode::default(),
        }
    }

    /// Its bindings.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Adds a binding (a duplicate is a no-op). Returns whether it was new.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.contains(&binding) {
            return false;
        }
        match self.kind {
            Kind::Direct => self
                .direct
                .entry(binding.key.clone())
                .or_default()
                .push(binding.destination.clone()),
            Kind::Topic => self
                .topic
                .insert(&words(&binding.key), binding.destination.clone()),
            Kind::Fanout | Kind::Headers => {}
        }
        self.bindings.push(binding);
        true
    }

    /// Removes bindings matching `keep == false`. Returns how many went.
    pub fn unbind_where(&mut self, mut remove: impl FnMut(&Binding) -> bool) -> usize {
        let before = self.bindings.len();
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = std::mem::take(&mut self.bindings)
            .into_iter()
            .partition(|b| remove(b));
        self.bindings = kept;
        for b in &gone {
            match self.kind {
                Kind::Direct => {
                    if let Some(dests) = self.direct.get_mut(&b.key) {
                        if let Some(i) = dests.iter().position(|d| *d == b.destination) {
                            dests.remove(i);
                        }
                        if dests.is_empty() {
                            self.direct.remove(&b.key);
                        }
                    }
                }
                Kind::Topic => self.topic.remove(&words(&b.key), &b.destination),
                Kind::Fanout | Kind::Headers => {}
            }
        }
        before - self.bindings.len()
    }

    /// The destinations a message with this key and headers goes to.
    pub fn route(&self, key: &str, headers: Option<&FieldTable>, out: &mut BTreeSet<Destination>) {
        match self.kind {
            Kind::Direct => {
                if let Some(dests) = self.direct.get(key) {
                    out.extend(dests.iter().cloned());
                }
            }
            Kind::Fanout => out.extend(self.bindings.iter().map(|b| b.destination.clone())),
            Kind::Topic => {
                let words: Vec<&str> = key.split('.').collect();
                self.topic.matches(&words, 0, out);
            }
            Kind::Headers => {
                let empty = FieldTable::default();
                let headers = headers.unwrap_or(&empty);
                for b in &self.bindings {
                    if headers_match(&b.arguments, headers) {
                        out.insert(b.destination.clone());
                    }
                }
            }
        }
    }
}

fn words(pattern: &str) -> Vec<&str> {
    pattern.split('.').collect()
}

/// A trie of topic patterns, one word per level.
#[derive(Debug, Default)]
struct TopicNode {
    children: HashMap<String, TopicNode>,
    destinations: Vec<Destination>,
}

impl TopicNode {
    fn insert(&mut self, words: &[&str], destination: Destination) {
        match words.split_first() {
            None => self.destinations.push(destination),
            Some((first, rest)) => self
                .children
                .entry((*first).to_owned())
                .or_default()
                .insert(rest, destination),
        }
    }

    fn remove(&mut self, words: &[&str], destination: &Destination) {
        match words.split_first() {
            None => {
                if let Some(i) = self.destinations.iter().position(|d| d == destination) {
                    self.destinations.remove(i);
                }
            }
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(*first) {
                    child.remove(rest, destination);
                    if child.destinations.is_empty() && child.children.is_empty() {
                        self.children.remove(*first);
                    }
                }
            }
        }
    }

    fn matches(&self, key: &[&str], at: usize, out: &mut BTreeSet<Destination>) {
        if at == key.len() {
            out.extend(self.destinations.iter().cloned());
        } else {
            if let Some(child) = self.children.get(key[at]) {
                child.matches(key, at + 1, out);
            }
            if let Some(child) = self.children.get("*") {
                child.matches(key, at + 1, out);
            }
        }
        // `#` matches zero or more words.
        if let Some(hash) = self.children.get("#") {
            for next in at..=key.len() {
                hash.matches(key, next, out);
            }
        }
    }
}

/// x-match all (default) / any over the binding's arguments, ignoring `x-`
/// keys, as RabbitMQ does.
fn headers_match(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let any = matches!(
        arguments.inner().get("x-match"),
        Some(AMQPValue::LongString(s)) if s.as_bytes() == b"any"
    ) || matches!(
        arguments.inner().get("x-match"),
        Some(AMQPValue::ShortString(s)) if s.as_str() == "any"
    );
    let mut wanted = arguments
        .inner()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("x-"))
        .peekable();
    if wanted.peek().is_none() {
        return !any;
    }
    let mut check =
        |(k, v): (&amq_protocol::types::ShortString, &AMQPValue)| match headers.inner().get(k) {
            Some(AMQPValue::Void) | None => false,
            Some(h) => matches!(v, AMQPValue::Void) || h == v,
        };
    if any {
        wanted.any(&mut check)
    } else {
        wanted.all(&mut check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> Destination {
        Destination::Queue(name.to_owned())
    }

    fn routed(x: &Exchange, key: &str) -> Vec<Destination> {
        let mut out = BTreeSet::new();
        x.route(key, None, &mut out);
        out.into_iter().collect()
    }

    fn bind(x: &mut Exchange, queue: &str, key: &str) {
        x.bind(Binding {
            destination: q(queue),
            key: key.to_owned(),
            arguments: FieldTable::default(),
        });
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        let mut x = Exchange::new(Kind::Topic, false, false, false);
        bind(&mut x, "star", "a.*.c");
        bind(&mut x, "hash", "a.#");
        bind(&mut x, "mid", "a.#.c");
        bind(&mut x, "all", "#");
        bind(&mut x, "exact", "a.b");
        assert_eq!(
            routed(&x, "a.b.c"),
            vec![q("all"), q("hash"), q("mid"), q("star")]
        );
        assert_eq!(routed(&x, "a"), vec![q("all"), q("hash")]);
        assert_eq!(routed(&x, "a.c"), vec![q("all"), q("hash"), q("mid")]);
        assert_eq!(routed(&x, "a.b"), vec![q("all"), q("exact"), q("hash")]);
        assert_eq!(routed(&x, "b"), vec![q("all")]);
        x.unbind_where(|b| b.key == "#");
        assert_eq!(routed(&x, "b"), vec![]);
    }

    #[test]
    fn direct_routes_by_exact_key_and_unbinds() {
        let mut x = Exchange::new(Kind::Direct, false, false, false);
        bind(&mut x, "q1", "k");
        bind(&mut x, "q2", "k");
        bind(&mut x, "q3", "other");
        assert_eq!(routed(&x, "k"), vec![q("q1"), q("q2")]);
        x.unbind_where(|b| b.destination == q("q1"));
        assert_eq!(routed(&x, "k"), vec![q("q2")]);
    }
}
