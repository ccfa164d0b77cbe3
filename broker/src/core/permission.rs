//! Per-user, per-vhost permissions, as RabbitMQ reads them: three regular
//! expressions over resource names, for configure (declare, delete), write
//! (publish, bind to) and read (consume, get, purge, bind from).

use std::fmt;

use regex::Regex;

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Declare or delete it.
    Configure,
    /// Publish to it, or bind something to it.
    Write,
    /// Consume from, get from, purge it, or bind from it.
    Read,
}

/// A user's permissions on one vhost.
#[derive(Clone)]
pub struct Permissions {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

/// One permission pattern: the text as given and what it compiles to.
#[derive(Clone)]
struct Pattern {
    given: String,
    regex: Regex,
    /// `.*`, the pattern nearly every user has: checked on every publish,
    /// so answered without running the regex.
    matches_all: bool,
}

impl Pattern {
    fn new(given: &str) -> Result<Self, regex::Error> {
        // RabbitMQ: "the empty string is a synonym for ^$".
        let regex = Regex::new(if given.is_empty() { "^$" } else { given })?;
        Ok(Pattern {
            given: given.to_owned(),
            regex,
            matches_all: given == ".*",
        })
    }

    fn is_match(&self, name: &str) -> bool {
        self.matches_all || self.regex.is_match(name)
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permissions")
            .field("configure", &self.configure())
            .field("write", &self.write())
            .field("read", &self.read())
            .finish()
    }
}

impl Permissions {
    /// Permissions from three patterns (unanchored, as RabbitMQ matches
    /// them: `.*` allows everything, `^$` nothing but the empty name, and
    /// the empty pattern is a synonym for `^$`).
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Permissions {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// The configure, write and read patterns.
    pub(crate) fn patterns(&self) -> [&str; 3] {
        [self.configure(), self.write(), self.read()]
    }

    /// The configure pattern, as given.
    pub fn configure(&self) -> &str {
        &self.configure.given
    }

    /// The write pattern, as given.
    pub fn write(&self) -> &str {
        &self.write.given
    }

    /// The read pattern, as given.
    pub fn read(&self) -> &str {
        &self.read.given
    }

    /// Whether `access` to the resource `name` is allowed.
    pub(crate) fn allows(&self, access: Access, name: &str) -> bool {
        match access {
            Access::Configure => self.configure.is_match(name),
            Access::Write => self.write.is_match(name),
            Access::Read => self.read.is_match(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_rabbitmq() {
        let p = Permissions::new("^alice\\.", ".*", "^$").unwrap();
        assert!(p.allows(Access::Configure, "alice.q"));
        assert!(!p.allows(Access::Configure, "bob.q"));
        assert!(p.allows(Access::Write, "anything"));
        assert!(!p.allows(Access::Read, "alice.q"));
        assert!(p.allows(Access::Read, ""));
        assert!(Permissions::new("(", ".*", ".*").is_err());
    }

    #[test]
    fn the_empty_pattern_allows_nothing_but_the_empty_name() {
        let p = Permissions::new("", ".*", ".*").unwrap();
        assert!(!p.allows(Access::Configure, "q"));
        assert!(p.allows(Access::Configure, ""));
        assert_eq!(p.configure(), "", "shown as given");
    }
}
