//! Direct exchange routing: a hash map from exact routing key to destinations.
//!
//! Lookup cost is one hash lookup regardless of the number of bindings.

use std::collections::HashMap;

use super::{Binding, Destination};

/// Binding table of a direct exchange.
#[derive(Debug, Default)]
pub struct DirectRouter {
    by_key: HashMap<String, Vec<Destination>>,
    count: usize,
}

impl DirectRouter {
    /// Add a binding; false if already present.
    pub fn bind(&mut self, b: Binding) -> bool {
        let dests = self.by_key.entry(b.routing_key).or_default();
        if dests.contains(&b.destination) {
            return false;
        }
        dests.push(b.destination);
        self.count += 1;
        true
    }

    /// Remove a binding; false if absent.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let Some(dests) = self.by_key.get_mut(&b.routing_key) else {
            return false;
        };
        let before = dests.len();
        dests.retain(|d| d != &b.destination);
        let removed = before - dests.len();
        if dests.is_empty() {
            self.by_key.remove(&b.routing_key);
        }
        self.count -= removed;
        removed > 0
    }

    /// Remove all bindings to `dest`.
    pub fn remove_destination(&mut self, dest: &Destination) -> usize {
        let mut removed = 0;
        self.by_key.retain(|_, dests| {
            let before = dests.len();
            dests.retain(|d| d != dest);
            removed += before - dests.len();
            !dests.is_empty()
        });
        self.count -= removed;
        removed
    }

    /// The destinations of its bindings (each at least once).
    pub fn destinations(&self) -> Vec<Destination> {
        self.by_key.values().flatten().cloned().collect()
    }

    /// Its bindings (a direct exchange keeps no binding arguments).
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out = Vec::with_capacity(self.count);
        for (key, dests) in &self.by_key {
            out.extend(dests.iter().map(|d| Binding {
                destination: d.clone(),
                routing_key: key.clone(),
                arguments: Default::default(),
            }));
        }
        out
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Report destinations bound with exactly `routing_key`.
    pub fn route(&self, routing_key: &str, out: &mut dyn FnMut(&Destination)) {
        if let Some(dests) = self.by_key.get(routing_key) {
            for d in dests {
                out(d);
            }
        }
    }
}
