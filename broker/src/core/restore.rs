//! Rebuilding a core from what the durable store recovered ([`crate::store::Recovered`]).
//!
//! Definitions first (vhosts, permissions, durable exchanges, queues, then the
//! bindings whose ends still carry the uids they were made with; stale ones are
//! deleted from the store), then the live messages in publish order, each into the
//! queues it is live in. After a crash (no clean-shutdown marker) every recovered
//! message comes back with `redelivered = true`, since any may have been delivered
//! and not acknowledged; after a clean stop only those with a delivery count.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::durable::{self, Dec, Enc, Persistence, Stored};
use super::exchange::{Destination, ExchangeDeclareOptions, ExchangeKind};
use super::locks::write;
use super::message::{Message, QueuedMessage};
use super::password::PasswordHash;
use super::permission::Permissions;
use super::queue::Queue;
use super::vhost::VHost;
use super::{Core, User};
use crate::store::{DefClass, Recovered, RecoveredDefinition};

/// What a durable core restored at start ([`Core::recovery`]).
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Whether the previous run stopped cleanly.
    pub clean_shutdown: bool,
    /// Vhosts restored (besides `/`).
    pub vhosts: usize,
    /// Durable exchanges restored.
    pub exchanges: usize,
    /// Durable queues restored.
    pub queues: usize,
    /// Bindings restored.
    pub bindings: usize,
    /// Messages restored (each once, whatever the number of its queues).
    pub messages: usize,
    /// Definitions or messages that could not be decoded or placed (logged).
    pub skipped: usize,
    /// What was dropped from the end of the log (a torn write), if anything.
    pub torn_tail: Option<TornTail>,
    /// Segment files read.
    pub segments: usize,
    /// Record bytes read.
    pub bytes: u64,
    /// Time from opening the store to serving.
    pub duration: Duration,
}

/// A torn tail dropped at start: the end of the newest segment held a record
/// that never fully reached the disk (never confirmed).
#[derive(Debug, Clone)]
pub struct TornTail {
    /// The segment file.
    pub path: std::path::PathBuf,
    /// Where the valid log ends.
    pub offset: u64,
    /// Bytes dropped after it.
    pub bytes: u64,
    /// What was found there.
    pub reason: String,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes dropped at offset {} of {} ({})",
            self.bytes,
            self.offset,
            self.path.display(),
            self.reason
        )
    }
}

impl RecoveryReport {
    /// Logs the report at info (a torn tail at warn).
    pub(crate) fn log(&self) {
        if let Some(t) = &self.torn_tail {
            tracing::warn!("durable store: torn tail dropped: {t}");
        }
        tracing::info!(
            clean = self.clean_shutdown,
            exchanges = self.exchanges,
            queues = self.queues,
            bindings = self.bindings,
            messages = self.messages,
            skipped = self.skipped,
            ms = self.duration.as_millis() as u64,
            "durable store recovered"
        );
    }
}

/// A user's stored value: its password hash, then a tab and its tags
/// (comma-separated) when it has any.
pub(crate) fn encode_user(user: &User) -> Vec<u8> {
    let mut value = user.hash.encode();
    if !user.tags.is_empty() {
        value.push('\t');
        value.push_str(&user.tags.join(","));
    }
    value.into_bytes()
}

/// Reads what [`encode_user`] wrote.
fn decode_user(value: &[u8]) -> Option<User> {
    let text = std::str::from_utf8(value).ok()?;
    let (hash, tags) = text.split_once('\t').unwrap_or((text, ""));
    Some(User {
        hash: PasswordHash::parse(hash).ok()?,
        tags: tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Takes the users out of what was recovered (the core is built with them).
pub(crate) fn split_users(mut r: Recovered) -> (HashMap<String, User>, Recovered) {
    let mut users = HashMap::new();
    r.definitions.retain(|d| {
        if d.class != DefClass::USER {
            return true;
        }
        let parsed = std::str::from_utf8(&d.key)
            .ok()
            .and_then(|name| Some((name.to_owned(), decode_user(&d.value)?)));
        match parsed {
            Some((name, user)) => {
                users.insert(name, user);
            }
            None => tracing::warn!("durable store: an unreadable user was skipped"),
        }
        false
    });
    (users, r)
}

/// Key of `user`'s permissions on `vhost`.
pub(crate) fn permissions_key(user: &str, vhost: &str) -> Vec<u8> {
    Enc::default().str(user).str(vhost).done()
}

/// Records `user`'s permissions on `vhost`.
pub(crate) fn store_permissions(p: &Persistence, user: &str, vhost: &str, perms: &Permissions) {
    let key = permissions_key(user, vhost);
    let [c, w, r] = perms.patterns();
    let value = Enc::default().str(c).str(w).str(r).done();
    p.put(DefClass::PERMISSION, &key, &value);
}

/// Rebuilds `core` from `r` (users already taken out by [`split_users`]).
pub(crate) fn restore(core: &Core, p: &Arc<Persistence>, r: Recovered) -> RecoveryReport {
    let mut report = RecoveryReport {
        clean_shutdown: r.clean_shutdown,
        torn_tail: r.torn_tail.as_ref().map(|t| TornTail {
            path: t.path.clone(),
            offset: t.offset,
            bytes: t.bytes,
            reason: t.reason.to_owned(),
        }),
        segments: r.segments,
        bytes: r.bytes,
        ..RecoveryReport::default()
    };
    let mut by_class: HashMap<DefClass, Vec<RecoveredDefinition>> = HashMap::new();
    for d in r.definitions {
        by_class.entry(d.class).or_default().push(d);
    }
    let mut take = |c: DefClass| by_class.remove(&c).unwrap_or_default();
    let (vhosts, perms, exchanges, queues, bindings) = (
        take(DefClass::VHOST),
        take(DefClass::PERMISSION),
        take(DefClass::EXCHANGE),
        take(DefClass::QUEUE),
        take(DefClass::BINDING),
    );
    for d in vhosts {
        match std::str::from_utf8(&d.key) {
            Ok(name) => {
                write(&core.vhosts)
                    .entry(name.to_owned())
                    .or_insert_with(|| VHost::with_store(name, Some(p.clone())));
                report.vhosts += 1;
            }
            Err(_) => report.skipped += 1,
        }
    }
    for d in perms {
        let ok = (|| {
            let mut k = Dec::new(&d.key);
            let (user, vhost) = (k.str()?, k.str()?);
            let mut v = Dec::new(&d.value);
            let perms = Permissions::new(v.str()?, v.str()?, v.str()?).ok()?;
            core.insert_permissions(user, vhost, perms);
            Some(())
        })();
        report.skipped += usize::from(ok.is_none());
    }
    let vhost = |name: &str| core.vhost(name);
    for d in exchanges {
        let ok = (|| {
            let mut k = Dec::new(&d.key);
            let (vh, name) = (vhost(k.str()?)?, k.str()?);
            let mut v = Dec::new(&d.value);
            let uid = v.u64()?;
            let kind = ExchangeKind::parse(v.str()?)?;
            let internal = v.u8()? != 0;
            let arguments = durable::decode_table(v.bytes()?)?;
            // Absent from records written before auto-delete exchanges were kept.
            let auto_delete = v.u8().is_some_and(|b| b != 0);
            let options = ExchangeDeclareOptions {
                durable: true,
                auto_delete,
                internal,
                arguments,
                ..ExchangeDeclareOptions::default()
            };
            vh.restore_exchange(name, kind, options, uid);
            Some(())
        })();
        match ok {
            Some(()) => report.exchanges += 1,
            None => report.skipped += 1,
        }
    }
    let mut by_uid: HashMap<u64, Arc<Queue>> = HashMap::new();
    for d in queues {
        let ok = (|| {
            let mut k = Dec::new(&d.key);
            let (vh, name) = (vhost(k.str()?)?, k.str()?);
            let mut v = Dec::new(&d.value);
            let uid = v.u64()?;
            let args = durable::decode_table(v.bytes()?)?;
            // Absent from records written before auto-delete queues were kept.
            let auto_delete = v.u8().is_some_and(|b| b != 0);
            match vh.restore_queue(name, args, auto_delete, uid) {
                Ok(q) => {
                    by_uid.insert(uid, q);
                    Some(())
                }
                Err(e) => {
                    tracing::warn!(queue = name, error = %e.text, "durable store: queue not restored");
                    None
                }
            }
        })();
        match ok {
            Some(()) => report.queues += 1,
            None => report.skipped += 1,
        }
    }
    for d in bindings {
        let restored = (|| {
            let mut k = Dec::new(&d.key);
            let vh = vhost(k.str()?)?;
            let source = k.str()?;
            let kind = k.u8()?;
            let dest = k.str()?.to_owned();
            let routing_key = k.str()?;
            let args = durable::decode_table(k.bytes()?)?;
            let destination = match kind {
                b'q' => Destination::Queue(dest),
                b'e' => Destination::Exchange(dest),
                _ => return None,
            };
            let mut v = Dec::new(&d.value);
            let uids = (v.u64()?, v.u64()?);
            vh.restore_binding(source, destination, routing_key, args, uids)
                .then_some(())
        })();
        match restored {
            Some(()) => report.bindings += 1,
            // An end was deleted (and maybe declared again): the binding went with it.
            None => p.delete(DefClass::BINDING, &d.key),
        }
    }
    let now = Instant::now();
    let now_ms = durable::now_ms();
    for m in r.messages {
        let Some(meta) = durable::decode_meta(&m.meta()) else {
            tracing::warn!(
                id = m.id,
                "durable store: a message with unreadable meta was skipped"
            );
            report.skipped += 1;
            continue;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(meta.published_ms));
        let published = now.checked_sub(age).unwrap_or(now);
        let body: Bytes = m.body();
        let msg = Message::new(meta.exchange, meta.routing_key, meta.properties, body)
            .charged(&core.memory);
        let _ = msg.store_id.set(m.id);
        let msg = Arc::new(msg);
        let mut placed = false;
        for (uid, count) in m.queues.iter() {
            let Some(q) = by_uid.get(&uid) else {
                // Its queue is gone: settle it there for good.
                p.settle(uid, m.id);
                continue;
            };
            // A quorum queue's deliveries carry their count.
            let msg = if q.config.quorum {
                super::queue::with_delivery_count(&msg, Some(count))
            } else {
                msg.clone()
            };
            q.restore(QueuedMessage {
                expires_at: q.expiry_at(&msg, published),
                msg,
                redelivered: !r.clean_shutdown || count > 0,
                delivery_count: count,
                stored: Some(Stored::new(p.clone(), uid, m.id)),
            });
            placed = true;
        }
        if placed {
            report.messages += 1;
        } else {
            report.skipped += 1;
        }
    }
    report
}
