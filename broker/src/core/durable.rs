//! What the core hands the durable store ([`crate::store`]), and how.
//!
//! A core opened on a data directory ([`super::Core::open_durable`]) holds one
//! [`Persistence`]. The core calls it where RabbitMQ persists:
//!
//! - **definitions**, written when they change: vhosts ([`super::Core::add_vhost`]),
//!   permissions ([`super::Core::set_permissions`]), durable exchanges and queues
//!   (not exclusive; auto-delete ones too, as RabbitMQ keeps them; a quorum queue
//!   always is durable), and the
//!   bindings between durable ends (predeclared exchanges count as durable). Each
//!   exchange and queue gets a uid at declaration, never reused, which its bindings
//!   name: a binding outlived by its queue (deleted, then declared again) is dropped at
//!   restore instead of coming back;
//! - **messages**: a persistent message (delivery mode 2; any message in a quorum
//!   queue) routed to durable queues is stored once, with the queues it reached, before
//!   any of them holds it ([`persist_routed`]); its publisher's confirm waits for the
//!   returned [`Durable`]. Each durable queue's copy carries a [`Stored`] token; when
//!   the last clone of that copy is dropped (acked, rejected, expired, dropped at a
//!   length limit, dead-lettered away, purged, its queue deleted) the token records
//!   the settlement, so nothing settled comes back after a restart.
//!
//! Writes other than publishes are not awaited: the log keeps submission order, so a
//! confirmed message implies that every earlier definition is on disk too.
//! [`Persistence::close`] stops the tokens (a broker shutting down drops every queue,
//! which settles nothing) and leaves the store's clean-shutdown marker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{basic, BasicProperties};
use amq_protocol::types::{FieldTable, ShortString};
use tokio::sync::watch;

use super::locks::{read, write};
use super::message::Message;
use super::queue::Queue;
use crate::store::{DefClass, Durable, MsgId, QueueId, Recovered, Store, StoreError, StoreOptions};

/// The durable store as the core sees it (one per [`super::Core`]).
#[derive(Debug)]
pub(crate) struct Persistence {
    /// `None` once closed.
    store: RwLock<Option<Store>>,
    /// Set before closing: settle tokens dropped from now on record nothing.
    closing: AtomicBool,
    /// The next queue or exchange uid.
    next_uid: AtomicU64,
    dir: PathBuf,
    disk_full: watch::Receiver<bool>,
    failed: watch::Receiver<bool>,
}

impl Persistence {
    /// Opens the store in `dir` (see [`Store::open`]).
    pub(crate) fn open(
        dir: &Path,
        segment_size: Option<u64>,
        repair: bool,
    ) -> Result<(Arc<Self>, Recovered), StoreError> {
        let mut opts = StoreOptions {
            repair,
            ..StoreOptions::default()
        };
        if let Some(s) = segment_size {
            opts.segment_size = s;
        }
        let (store, recovered) = Store::open(dir, opts)?;
        // Uids only grow: from the clock, and past every recovered one.
        let max_recovered = recovered
            .definitions
            .iter()
            .filter(|d| d.class == DefClass::QUEUE || d.class == DefClass::EXCHANGE)
            .filter_map(|d| Dec::new(&d.value).u64())
            .max()
            .unwrap_or(0);
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        let disk_full = store.watch_disk_full();
        let failed = store.watch_failed();
        Ok((
            Arc::new(Self {
                store: RwLock::new(Some(store)),
                closing: AtomicBool::new(false),
                next_uid: AtomicU64::new(clock.max(max_recovered.saturating_add(1))),
                dir: dir.to_path_buf(),
                disk_full,
                failed,
            }),
            recovered,
        ))
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Follows the store's disk-full state.
    pub(crate) fn watch_disk_full(&self) -> watch::Receiver<bool> {
        self.disk_full.clone()
    }

    /// Follows whether the store has failed a write or an fsync.
    pub(crate) fn watch_failed(&self) -> watch::Receiver<bool> {
        self.failed.clone()
    }

    /// The store's failure, if it failed.
    pub(crate) fn failure(&self) -> Option<Arc<std::io::Error>> {
        read(&self.store).as_ref().and_then(Store::failure)
    }

    /// Fails the store as a failed write would.
    #[cfg(test)]
    pub(crate) fn fail_as_if_written(&self, e: std::io::Error) {
        if let Some(store) = read(&self.store).as_ref() {
            store.fail_as_if_written(e);
        }
    }

    /// A new exchange or queue uid.
    pub(crate) fn new_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on the open store; `None` once closing.
    fn with<R>(&self, f: impl FnOnce(&Store) -> R) -> Option<R> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        read(&self.store).as_ref().map(f)
    }

    /// Logs a failed write that nobody waits for.
    fn logged(what: &str, r: Option<Result<Durable, StoreError>>) {
        if let Some(Err(e)) = r {
            tracing::error!(error = %e, "durable store: cannot record {what}");
        }
    }

    /// Sets a definition.
    pub(crate) fn put(&self, class: DefClass, key: &[u8], value: &[u8]) {
        Self::logged(
            "a definition",
            self.with(|s| s.put_definition(class, key, value)),
        );
    }

    /// Deletes a definition.
    pub(crate) fn delete(&self, class: DefClass, key: &[u8]) {
        Self::logged(
            "a definition's deletion",
            self.with(|s| s.delete_definition(class, key)),
        );
    }

    /// Records that message `id` is settled in `queue`.
    pub(crate) fn settle(&self, queue: QueueId, id: MsgId) {
        Self::logged("a settlement", self.with(|s| s.settle(queue, &[id])));
    }

    /// Records that messages `ids` are settled in `queue`, in few records.
    pub(crate) fn settle_many(&self, queue: QueueId, ids: &[MsgId]) {
        for chunk in ids.chunks(65_536) {
            Self::logged("a settlement", self.with(|s| s.settle(queue, chunk)));
        }
    }

    /// Records message `id`'s delivery count in `queue`.
    pub(crate) fn delivered(&self, queue: QueueId, id: MsgId, count: u32) {
        Self::logged(
            "a delivery count",
            self.with(|s| s.delivered(queue, id, count)),
        );
    }

    /// Settles everything stored in `queue`.
    pub(crate) fn purge(&self, queue: QueueId) {
        Self::logged("a purge", self.with(|s| s.purge(queue)));
    }

    /// Stops recording settlements, flushes, and leaves the clean-shutdown marker.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        self.closing.store(true, Ordering::Release);
        match write(&self.store).take() {
            Some(store) => store.close(),
            None => Ok(()),
        }
    }

    /// Marks the store closing without the clean-shutdown marker (a core dropped
    /// without [`Persistence::close`]): dropping its queues settles nothing.
    pub(crate) fn abandon(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

/// A durable queue's copy of a stored message: records its settlement when the
/// last clone is dropped (see the module docs).
#[derive(Debug)]
pub(crate) struct Stored {
    persistence: Arc<Persistence>,
    queue: QueueId,
    id: MsgId,
    /// Settled otherwise (a purge record): record nothing on drop.
    forgotten: AtomicBool,
}

impl Stored {
    /// A token for message `id` in queue `queue` (restore).
    pub(crate) fn new(persistence: Arc<Persistence>, queue: QueueId, id: MsgId) -> Arc<Self> {
        Arc::new(Self {
            persistence,
            queue,
            id,
            forgotten: AtomicBool::new(false),
        })
    }

    /// Record nothing when dropped (the queue's purge covered it).
    pub(crate) fn forget(&self) {
        self.forgotten.store(true, Ordering::Relaxed);
    }

    /// The message's store id.
    pub(crate) fn id(&self) -> MsgId {
        self.id
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        if self.forgotten.load(Ordering::Relaxed) {
            return;
        }
        self.persistence.settle(self.queue, self.id);
    }
}

/// A durable queue's link to the store.
#[derive(Debug, Clone)]
pub(crate) struct QueueStore {
    /// The store.
    pub(crate) persistence: Arc<Persistence>,
    /// The queue's uid.
    pub(crate) uid: QueueId,
    /// A quorum queue: every message is persisted, whatever its delivery mode.
    pub(crate) quorum: bool,
}

impl QueueStore {
    /// Whether `msg` is to be stored for this queue.
    pub(crate) fn keeps(&self, msg: &Message) -> bool {
        self.quorum || msg.properties.delivery_mode() == &Some(2)
    }

    /// The settle token of `msg`'s copy in this queue, if it was stored for it.
    pub(crate) fn token(&self, msg: &Message) -> Option<Arc<Stored>> {
        let id = *msg.store_id.get()?;
        self.keeps(msg)
            .then(|| Stored::new(self.persistence.clone(), self.uid, id))
    }
}

/// Stores `msg` for the durable queues among `targets` that keep it, before any of
/// them holds it. `Ok(None)`: nothing to store. Fails while the disk is full (the
/// message is then to be refused everywhere: a nack).
pub(crate) fn persist_routed(
    msg: &Message,
    targets: &[Arc<Queue>],
) -> Result<Option<Durable>, StoreError> {
    let mut uids = Vec::new();
    let mut persistence = None;
    for q in targets {
        if let Some(qs) = &q.store {
            if qs.keeps(msg) {
                uids.push(qs.uid);
                persistence.get_or_insert_with(|| qs.persistence.clone());
            }
        }
    }
    let Some(p) = persistence else {
        return Ok(None);
    };
    let meta = encode_meta(msg);
    match p.with(|s| s.publish(&uids, &meta, &msg.body)) {
        None => Ok(None),
        Some(Err(e)) => Err(e),
        Some(Ok((id, durable))) => {
            // A message is persisted once: a copy offered again keeps its id.
            let _ = msg.store_id.set(id);
            Ok(Some(durable))
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Version of the message meta encoding.
const META_V1: u8 = 1;

/// A stored message's meta: version, publish time (ms since the epoch, for TTL
/// deadlines), exchange, routing key, then the properties as on the wire (headers
/// and so `x-death` included).
pub(crate) fn encode_meta(msg: &Message) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.push(META_V1);
    e.u64(now_ms());
    e.str(msg.exchange.as_str());
    e.str(msg.routing_key.as_str());
    let props = gen_properties(&msg.properties);
    e.0.extend_from_slice(&props);
    e.0
}

/// A decoded meta: exchange, routing key, properties, publish time.
pub(crate) struct Meta {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) published_ms: u64,
}

/// Decodes [`encode_meta`]'s output; `None` if it does not decode.
pub(crate) fn decode_meta(b: &[u8]) -> Option<Meta> {
    let mut d = Dec::new(b);
    if d.u8()? != META_V1 {
        return None;
    }
    let published_ms = d.u64()?;
    let exchange = ShortString::try_new(d.str()?.to_owned()).ok()?;
    let routing_key = ShortString::try_new(d.str()?.to_owned()).ok()?;
    let (_, properties) = basic::parse_properties(d.rest()).ok()?;
    Some(Meta {
        exchange,
        routing_key,
        properties,
        published_ms,
    })
}

fn gen_properties(p: &BasicProperties) -> Vec<u8> {
    match basic::gen_properties(p)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.into_inner().0,
        Err(_) => Vec::new(),
    }
}

/// A field table as on the wire (length-prefixed).
pub(crate) fn encode_table(t: &FieldTable) -> Vec<u8> {
    match amq_protocol::types::generation::gen_field_table(t)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.into_inner().0,
        Err(_) => 0u32.to_be_bytes().to_vec(),
    }
}

/// Decodes [`encode_table`]'s output.
pub(crate) fn decode_table(b: &[u8]) -> Option<FieldTable> {
    amq_protocol::types::parsing::parse_field_table(b)
        .ok()
        .map(|(_, t)| t)
}

/// A little encoder for definition keys and values: strings and blobs are
/// length-prefixed, so any byte may appear in a name.
#[derive(Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0
            .extend_from_slice(b.get(..len as usize).unwrap_or_default());
        self
    }
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub(crate) fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Reads what [`Enc`] wrote; every read is `None` past the end.
pub(crate) struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self(b)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Key of a vhost's entity: vhost and name.
pub(crate) fn entity_key(vhost: &str, name: &str) -> Vec<u8> {
    Enc::default().str(vhost).str(name).done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;
    use bytes::Bytes;

    #[test]
    fn meta_round_trips_properties_and_headers() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_expiration("1000".into())
            .with_headers(headers);
        let msg = Message::new("x".into(), "rk".into(), props.clone(), Bytes::from("b"));
        let meta = decode_meta(&encode_meta(&msg)).expect("decodes");
        assert_eq!(meta.exchange.as_str(), "x");
        assert_eq!(meta.routing_key.as_str(), "rk");
        assert_eq!(meta.properties, props);
        assert!(meta.published_ms > 0);
        assert!(decode_meta(&[9, 9]).is_none());
    }

    #[test]
    fn the_codec_refuses_short_input() {
        let b = Enc::default().str("a\0b").u64(7).done();
        let mut d = Dec::new(&b);
        assert_eq!(d.str(), Some("a\0b"));
        assert_eq!(d.u64(), Some(7));
        assert_eq!(d.u64(), None);
        assert_eq!(Dec::new(&[255, 255, 255, 255]).bytes(), None);
    }
}
