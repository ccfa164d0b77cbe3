//! Fanout exchange routing: every bound destination receives every message.
//!
//! Routing keys are kept only to tell bindings apart (bind/unbind identity).

use super::{Binding, Destination};

/// Binding table of a fanout exchange.
#[derive(Debug, Default)]
pub struct FanoutRouter {
    bindings: Vec<(Destination, String)>,
}

impl FanoutRouter {
    /// Add a binding; false if already present.
    pub fn bind(&mut self, b: Binding) -> bool {
        let entry = (b.destination, b.routing_key);
        if self.bindings.contains(&entry) {
            return false;
        }
        self.bindings.push(entry);
        true
    }

    /// The destinations of its bindings (each at least once).
    pub fn destinations(&self) -> Vec<Destination> {
        self.bindings.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Remove a binding; false if absent.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings
            .retain(|(d, k)| !(d == &b.destination && k == &b.routing_key));
        before != self.bindings.len()
    }

    /// Remove all bindings to `dest`.
    pub fn remove_destination(&mut self, dest: &Destination) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|(d, _)| d != dest);
        before - self.bindings.len()
    }

    /// Its bindings (a fanout exchange keeps no binding arguments).
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings
            .iter()
            .map(|(d, k)| Binding {
                destination: d.clone(),
                routing_key: k.clone(),
                arguments: Default::default(),
            })
            .collect()
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Report every destination.
    pub fn route(&self, out: &mut dyn FnMut(&Destination)) {
        for (d, _) in &self.bindings {
            out(d);
        }
    }
}
