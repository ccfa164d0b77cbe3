//! What operators see and do: the admin surface of [`Core`], behind
//! `warren ctl`, the management API and the definitions import/export.
//!
//! Listings return [`snapshot`](super::snapshot)s, sorted by vhost and name
//! (RabbitMQ's own order is its tables' and unspecified). Mutations are
//! built on the core's own methods (a vhost is added by [`Core::add_vhost`],
//! permissions set by [`Core::set_permissions`], topology changed through
//! the vhost's declare/delete/bind as a channel would) and fail with an
//! [`AdminError`] naming what was wrong, in RabbitMQ's words where it has some.
//!
//! The top layer of the core (see [`super`]): it calls down, nothing calls it.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;

pub use super::snapshot::{
    BindingSnapshot, ChannelSnapshot, ConnectionInfo, ConnectionSnapshot, ConsumerSnapshot,
    DestinationType, ExchangeSnapshot, PermissionSnapshot, QueueSnapshot, UserSnapshot,
    VhostSnapshot,
};

use super::error::AmqpError;
use super::exchange::{Destination, ExchangeDeclareOptions};
use super::message::Message;
use super::password::PasswordHash;
use super::permission::Permissions;
use super::queue::{QueueDeclareOptions, QueueDeleteOptions};
use super::vhost::VHost;
use super::{read, write, Core, User};

/// RabbitMQ's name of warren's password hashing (salted SHA-256).
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// The connection id operators act as: no AMQP connection has it (ids start
/// at 1), so exclusive queues stay their owners'.
const ADMIN_CONNECTION: u64 = 0;

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The user does not exist.
    #[error("user '{0}' does not exist")]
    NoSuchUser(String),
    /// The user exists already.
    #[error("user '{0}' already exists")]
    UserExists(String),
    /// The vhost does not exist.
    #[error("vhost '{0}' does not exist")]
    NoSuchVhost(String),
    /// No such queue, exchange or connection.
    #[error("{0}")]
    NotFound(String),
    /// A bad argument: an invalid permission pattern, an empty name, …
    #[error("{0}")]
    Invalid(String),
    /// The operation failed as it would for an AMQP client.
    #[error("{0}")]
    Amqp(AmqpError),
}

impl From<AmqpError> for AdminError {
    fn from(e: AmqpError) -> Self {
        AdminError::Amqp(e)
    }
}

/// What [`Core::get`] does with the messages it takes, as the management
/// API's `ackmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetMode {
    /// Put them back at the head of the queue, marked redelivered
    /// (`ack_requeue_true`).
    Requeue,
    /// Take them off the queue (`ack_requeue_false`).
    Ack,
}

/// A message taken by [`Core::get`].
#[derive(Clone, Debug)]
pub struct GotMessage {
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether it had been delivered before.
    pub redelivered: bool,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
    /// Messages left in the queue after this one was taken.
    pub message_count: u64,
}

impl Core {
    fn vhost_or_err(&self, name: &str) -> Result<Arc<VHost>, AdminError> {
        self.vhost(name)
            .ok_or_else(|| AdminError::NoSuchVhost(name.to_owned()))
    }

    /// The vhosts named (all of them for `None`), sorted by name.
    fn vhosts_named(&self, vhost: Option<&str>) -> Result<Vec<Arc<VHost>>, AdminError> {
        match vhost {
            Some(name) => Ok(vec![self.vhost_or_err(name)?]),
            None => {
                let mut all: Vec<Arc<VHost>> = read(&self.vhosts).values().cloned().collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(all)
            }
        }
    }

    // ----- listings -----

    /// The queues of `vhost` (every vhost for `None`), by vhost and name.
    pub fn list_queues(&self, vhost: Option<&str>) -> Result<Vec<QueueSnapshot>, AdminError> {
        let mut out = Vec::new();
        for vh in self.vhosts_named(vhost)? {
            let mut qs: Vec<QueueSnapshot> = vh
                .queue_list()
                .iter()
                .map(|q| {
                    let mut s = q.snapshot(&vh.name);
                    s.exclusive_owner = q
                        .exclusive_owner
                        .and_then(|id| self.connections.session(id))
                        .map(|s| s.name());
                    s
                })
                .collect();
            qs.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(qs);
        }
        Ok(out)
    }

    /// One queue.
    pub fn queue_info(&self, vhost: &str, name: &str) -> Result<QueueSnapshot, AdminError> {
        self.list_queues(Some(vhost))?
            .into_iter()
            .find(|q| q.name == name)
            .ok_or_else(|| no_queue(vhost, name))
    }

    /// The exchanges of `vhost` (every vhost for `None`), by vhost and name
    /// (the default exchange, `""`, first).
    pub fn list_exchanges(&self, vhost: Option<&str>) -> Result<Vec<ExchangeSnapshot>, AdminError> {
        let mut out = Vec::new();
        for vh in self.vhosts_named(vhost)? {
            let mut xs: Vec<ExchangeSnapshot> = vh
                .exchange_list()
                .iter()
                .map(|x| ExchangeSnapshot {
                    vhost: vh.name.clone(),
                    name: x.name.clone(),
                    exchange_type: x.kind.as_str().to_owned(),
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                    publish_in: x.publish_in.load(std::sync::atomic::Ordering::Relaxed),
                    publish_out: x.publish_out.load(std::sync::atomic::Ordering::Relaxed),
                })
                .collect();
            xs.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(xs);
        }
        Ok(out)
    }

    /// The bindings of `vhost` (every vhost for `None`): first each
    /// queue's binding to the default exchange, as RabbitMQ lists them,
    /// then by source, destination and routing key.
    pub fn list_bindings(&self, vhost: Option<&str>) -> Result<Vec<BindingSnapshot>, AdminError> {
        let mut out = Vec::new();
        for vh in self.vhosts_named(vhost)? {
            let mut queues: Vec<String> = vh.queue_list().iter().map(|q| q.name.clone()).collect();
            queues.sort();
            out.extend(queues.into_iter().map(|q| BindingSnapshot {
                vhost: vh.name.clone(),
                source: String::new(),
                destination: q.clone(),
                destination_type: DestinationType::Queue,
                routing_key: q,
                arguments: FieldTable::default(),
            }));
            let mut rest = Vec::new();
            for x in vh.exchange_list() {
                if x.name.is_empty() {
                    continue;
                }
                let bindings = read(&x.router).bindings();
                rest.extend(bindings.into_iter().map(|b| {
                    let (destination, destination_type) = match b.destination {
                        Destination::Queue(q) => (q, DestinationType::Queue),
                        Destination::Exchange(e) => (e, DestinationType::Exchange),
                    };
                    BindingSnapshot {
                        vhost: vh.name.clone(),
                        source: x.name.clone(),
                        destination,
                        destination_type,
                        routing_key: b.routing_key,
                        arguments: b.arguments,
                    }
                }));
            }
            rest.sort_by(|a, b| {
                (&a.source, &a.destination, &a.routing_key).cmp(&(
                    &b.source,
                    &b.destination,
                    &b.routing_key,
                ))
            });
            out.extend(rest);
        }
        Ok(out)
    }

    /// The open connections, in the order they were opened.
    pub fn list_connections(&self) -> Vec<ConnectionSnapshot> {
        self.connections
            .sessions()
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }

    /// The open channels, by connection and channel number.
    pub fn list_channels(&self) -> Vec<ChannelSnapshot> {
        self.connections
            .sessions()
            .iter()
            .flat_map(|s| s.channel_snapshots())
            .map(|(c, _)| c)
            .collect()
    }

    /// The consumers on `vhost`'s queues (every vhost for `None`), by
    /// connection, channel and tag.
    pub fn list_consumers(&self, vhost: Option<&str>) -> Result<Vec<ConsumerSnapshot>, AdminError> {
        if let Some(v) = vhost {
            self.vhost_or_err(v)?;
        }
        Ok(self
            .connections
            .sessions()
            .iter()
            .filter(|s| vhost.is_none_or(|v| s.vhost.name == v))
            .flat_map(|s| s.channel_snapshots())
            .flat_map(|(_, consumers)| consumers)
            .collect())
    }

    /// The users, by name.
    pub fn list_users(&self) -> Vec<UserSnapshot> {
        let mut out: Vec<UserSnapshot> = read(&self.users)
            .iter()
            .map(|(name, u)| UserSnapshot {
                name: name.clone(),
                password_hash: u.hash.encode(),
                hashing_algorithm: HASHING_ALGORITHM.to_owned(),
                tags: u.tags.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One user.
    pub fn user_info(&self, name: &str) -> Result<UserSnapshot, AdminError> {
        self.list_users()
            .into_iter()
            .find(|u| u.name == name)
            .ok_or_else(|| AdminError::NoSuchUser(name.to_owned()))
    }

    /// The vhosts, by name.
    pub fn list_vhosts(&self) -> Vec<VhostSnapshot> {
        let vhosts = self.vhosts_named(None).unwrap_or_default();
        vhosts
            .iter()
            .map(|vh| VhostSnapshot {
                name: vh.name.clone(),
                queues: vh.queue_list().len() as u64,
                exchanges: vh.exchange_list().len() as u64,
            })
            .collect()
    }

    /// Whether a vhost exists.
    pub fn vhost_exists(&self, name: &str) -> bool {
        self.vhost(name).is_some()
    }

    /// Every permission, by vhost and user.
    pub fn list_permissions(&self) -> Vec<PermissionSnapshot> {
        let mut out: Vec<PermissionSnapshot> = read(&self.permissions)
            .iter()
            .map(|((user, vhost), p)| PermissionSnapshot {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: p.configure().to_owned(),
                write: p.write().to_owned(),
                read: p.read().to_owned(),
            })
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        out
    }

    /// The tags of `user`.
    pub fn user_tags(&self, user: &str) -> Option<Vec<String>> {
        read(&self.users).get(user).map(|u| u.tags.clone())
    }

    // ----- users -----

    /// Adds a user with a password (RabbitMQ refuses an empty one for
    /// logins, and so does [`authenticate`](Self::authenticate)).
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), AdminError> {
        self.add_user_with_hash(name, PasswordHash::new(password), &[])
    }

    /// Adds a user by its password hash (RabbitMQ's SHA-256 scheme, as in
    /// definitions), with tags.
    pub fn add_user_with_hash(
        &self,
        name: &str,
        hash: PasswordHash,
        tags: &[String],
    ) -> Result<(), AdminError> {
        if name.is_empty() {
            return Err(AdminError::Invalid("a user name cannot be empty".into()));
        }
        let mut users = write(&self.users);
        if users.contains_key(name) {
            return Err(AdminError::UserExists(name.to_owned()));
        }
        users.insert(
            name.to_owned(),
            User {
                hash,
                tags: tags.to_vec(),
            },
        );
        drop(users);
        self.store_user(name);
        Ok(())
    }

    /// Deletes a user and its permissions, and closes its connections (320
    /// CONNECTION_FORCED, "user '…' is deleted", as RabbitMQ does).
    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        if write(&self.users).remove(name).is_none() {
            return Err(AdminError::NoSuchUser(name.to_owned()));
        }
        self.store_user(name);
        let mut cleared = Vec::new();
        write(&self.permissions).retain(|(user, vhost), _| {
            let keep = user != name;
            if !keep {
                cleared.push(vhost.clone());
            }
            keep
        });
        for vhost in cleared {
            self.store_permissions_cleared(name, &vhost);
        }
        let reason = format!("user '{name}' is deleted");
        for s in self.connections.sessions() {
            if s.user == name {
                s.force_close(&reason);
            }
        }
        Ok(())
    }

    /// Sets a user's password.
    pub fn change_password(&self, name: &str, password: &str) -> Result<(), AdminError> {
        self.set_password_hash(name, PasswordHash::new(password))
    }

    /// Sets a user's password by its hash.
    pub fn set_password_hash(&self, name: &str, hash: PasswordHash) -> Result<(), AdminError> {
        let found = write(&self.users)
            .get_mut(name)
            .map(|u| u.hash = hash)
            .is_some();
        if !found {
            return Err(AdminError::NoSuchUser(name.to_owned()));
        }
        self.store_user(name);
        Ok(())
    }

    /// Replaces a user's tags (`administrator`, `monitoring`,
    /// `management`, … as RabbitMQ; none clears them).
    pub fn set_user_tags(&self, name: &str, tags: &[String]) -> Result<(), AdminError> {
        let found = write(&self.users)
            .get_mut(name)
            .map(|u| u.tags = tags.to_vec())
            .is_some();
        if !found {
            return Err(AdminError::NoSuchUser(name.to_owned()));
        }
        self.store_user(name);
        Ok(())
    }

    // ----- vhosts and permissions -----

    /// Adds a vhost ([`add_vhost`](Self::add_vhost)); `Ok(false)` when it
    /// existed already (RabbitMQ accepts that too).
    pub fn create_vhost(&self, name: &str) -> Result<bool, AdminError> {
        if name.is_empty() {
            return Err(AdminError::Invalid("a vhost name cannot be empty".into()));
        }
        let existed = self.vhost(name).is_some();
        self.add_vhost(name);
        Ok(!existed)
    }

    /// Deletes a vhost: its connections are closed (320 CONNECTION_FORCED),
    /// its queues deleted (their consumers cancelled), its permissions
    /// cleared.
    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        let Some(vh) = write(&self.vhosts).remove(name) else {
            return Err(AdminError::NoSuchVhost(name.to_owned()));
        };
        self.store_vhost_deleted(name);
        let mut cleared = Vec::new();
        write(&self.permissions).retain(|(user, vhost), _| {
            let keep = vhost != name;
            if !keep {
                cleared.push(user.clone());
            }
            keep
        });
        for user in cleared {
            self.store_permissions_cleared(&user, name);
        }
        let reason = format!("vhost '{name}' is deleted");
        for s in self.connections.sessions() {
            if s.vhost.name == name {
                s.force_close(&reason);
            }
        }
        for q in vh.queue_list() {
            vh.delete_queue_internal(&q.name, Some(&q));
        }
        // Its durable exchanges (and their bindings) leave the data directory
        // too, so a vhost declared again under the name starts empty.
        vh.forget_stored_exchanges();
        Ok(())
    }

    /// Sets `user`'s permissions on `vhost` ([`set_permissions`](Self::set_permissions))
    /// from RabbitMQ's three patterns, once user, vhost and patterns check.
    pub fn grant_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        if !self.has_user(user) {
            return Err(AdminError::NoSuchUser(user.to_owned()));
        }
        self.vhost_or_err(vhost)?;
        let p = Permissions::new(configure, write, read)
            .map_err(|e| AdminError::Invalid(format!("invalid permission pattern: {e}")))?;
        self.set_permissions(user, vhost, p);
        Ok(())
    }

    /// Removes `user`'s permissions on `vhost`; its open connections keep
    /// theirs (as in RabbitMQ, where they apply from the next login).
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), AdminError> {
        if !self.has_user(user) {
            return Err(AdminError::NoSuchUser(user.to_owned()));
        }
        self.vhost_or_err(vhost)?;
        write(&self.permissions).remove(&(user.to_owned(), vhost.to_owned()));
        self.store_permissions_cleared(user, vhost);
        Ok(())
    }

    // ----- topology -----

    /// Declares a queue as `queue.declare` would; `Ok(true)` when it was
    /// created. An operator's queue cannot be exclusive (it has no connection).
    pub fn declare_queue(
        &self,
        vhost: &str,
        name: &str,
        options: QueueDeclareOptions,
    ) -> Result<bool, AdminError> {
        if name.is_empty() {
            return Err(AdminError::Invalid("a queue name cannot be empty".into()));
        }
        if options.exclusive {
            return Err(AdminError::Invalid(
                "an exclusive queue needs a connection to own it".into(),
            ));
        }
        let vh = self.vhost_or_err(vhost)?;
        let existed = vh.queue(name).is_some();
        vh.queue_declare(name, options, ADMIN_CONNECTION, |_| Ok(()))?;
        Ok(!existed)
    }

    /// Deletes a queue (an exclusive one too), unless `options` refuse;
    /// returns how many messages it held.
    pub fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        options: QueueDeleteOptions,
    ) -> Result<u64, AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        if vh.queue(name).is_none() {
            return Err(no_queue(vhost, name));
        }
        Ok(u64::from(vh.queue_delete_checked(name, options, None)?))
    }

    /// Drops a queue's ready messages; returns how many.
    pub fn purge_queue(&self, vhost: &str, name: &str) -> Result<u64, AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let q = vh.queue(name).ok_or_else(|| no_queue(vhost, name))?;
        Ok(u64::from(q.purge()))
    }

    /// Declares an exchange as `exchange.declare` would; `Ok(true)` when
    /// it was created.
    pub fn declare_exchange(
        &self,
        vhost: &str,
        name: &str,
        kind: &str,
        options: ExchangeDeclareOptions,
    ) -> Result<bool, AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let existed = vh.exchange(name).is_some();
        vh.exchange_declare(name, kind, options, |_| Ok(()))?;
        Ok(!existed)
    }

    /// Deletes an exchange (refused while bound from when `if_unused`).
    pub fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        if vh.exchange(name).is_none() {
            return Err(AdminError::NotFound(format!(
                "no exchange '{name}' in vhost '{vhost}'"
            )));
        }
        Ok(vh.exchange_delete(name, if_unused)?)
    }

    /// Binds a queue or exchange to exchange `source`.
    pub fn bind(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        destination_type: DestinationType,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let dest = destination_of(destination, destination_type);
        Ok(vh.bind(source, dest, routing_key, arguments, ADMIN_CONNECTION)?)
    }

    /// Removes a binding (a missing one is fine, as in AMQP).
    pub fn unbind(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        destination_type: DestinationType,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let dest = destination_of(destination, destination_type);
        Ok(vh.unbind(source, dest, routing_key, arguments, ADMIN_CONNECTION)?)
    }

    // ----- messages and connections -----

    /// Publishes a message as `basic.publish` would (counted on the memory
    /// gauge, not blocked by its alarm); returns whether a queue took it.
    pub fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: Bytes,
    ) -> Result<bool, AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let too_long = |what: &str| AdminError::Invalid(format!("{what} longer than 255 bytes"));
        let x = ShortString::try_new(exchange.to_owned()).map_err(|_| too_long("exchange name"))?;
        let key =
            ShortString::try_new(routing_key.to_owned()).map_err(|_| too_long("routing key"))?;
        let msg = Message::new(x, key, properties, body).charged(&self.memory);
        let routed = vh.publish(exchange, Arc::new(msg))?;
        Ok(routed.routed > 0 && !routed.rejected)
    }

    /// Takes up to `count` messages from the head of a queue, as
    /// `basic.get` would, and puts them back (marked redelivered) or not.
    pub fn get(
        &self,
        vhost: &str,
        queue: &str,
        count: usize,
        mode: GetMode,
    ) -> Result<Vec<GotMessage>, AdminError> {
        let vh = self.vhost_or_err(vhost)?;
        let q = vh.queue(queue).ok_or_else(|| no_queue(vhost, queue))?;
        let mut taken = Vec::new();
        let mut out = Vec::new();
        while taken.len() < count {
            let (m, left, dead) = q.get();
            vh.dead_letter(dead);
            let Some(m) = m else { break };
            q.counters.delivered(m.redelivered, false, m.size());
            out.push(GotMessage {
                exchange: m.msg.exchange.to_string(),
                routing_key: m.msg.routing_key.to_string(),
                redelivered: m.redelivered,
                properties: m.msg.properties.clone(),
                body: m.msg.body.clone(),
                message_count: u64::from(left),
            });
            taken.push(m);
        }
        if mode == GetMode::Requeue && !taken.is_empty() {
            vh.dead_letter(q.requeue(taken));
        }
        Ok(out)
    }

    /// Closes the connection named `name` ([`ConnectionSnapshot::name`]):
    /// its client gets `connection.close` 320 CONNECTION_FORCED with
    /// `reason`, as from `rabbitmqctl close_connection`.
    pub fn close_connection(&self, name: &str, reason: &str) -> Result<(), AdminError> {
        let session = self
            .connections
            .sessions()
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| AdminError::NotFound(format!("no connection '{name}'")))?;
        session.force_close(reason);
        Ok(())
    }
}

fn no_queue(vhost: &str, name: &str) -> AdminError {
    AdminError::NotFound(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn destination_of(name: &str, kind: DestinationType) -> Destination {
    match kind {
        DestinationType::Queue => Destination::Queue(name.to_owned()),
        DestinationType::Exchange => Destination::Exchange(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use amq_protocol::types::AMQPValue;
    use tokio::sync::mpsc;

    use crate::core::{ChannelEvent, ConsumeOptions};

    fn core() -> Arc<Core> {
        let core = Core::new(&[("guest".into(), "guest".into())], &[]);
        core.grant_permissions("guest", "/", ".*", ".*", ".*")
            .expect("guest on /");
        core
    }

    fn publish(core: &Core, exchange: &str, key: &str, body: &str) -> bool {
        core.publish(
            "/",
            exchange,
            key,
            BasicProperties::default(),
            Bytes::from(body.to_owned()),
        )
        .expect("publish")
    }

    #[test]
    fn queue_snapshots_count_ready_unacked_and_totals() {
        let core = core();
        assert!(core
            .declare_queue("/", "q", QueueDeclareOptions::default())
            .expect("declare"));
        assert!(!core
            .declare_queue("/", "q", QueueDeclareOptions::default())
            .expect("redeclare"));
        for body in ["a", "bb", "ccc"] {
            assert!(publish(&core, "", "q", body));
        }
        let q = core.queue_info("/", "q").expect("listed");
        assert_eq!((q.messages_ready, q.messages_unacknowledged), (3, 0));
        assert_eq!((q.message_bytes, q.published, q.consumers), (6, 3, 0));
        assert_eq!(
            (q.queue_type.as_str(), q.state.as_str()),
            ("classic", "running")
        );

        let conn = core.open_connection("/", "guest").expect("open");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ch = conn.open_numbered_channel(7, Box::new(tx));
        ch.basic_qos(2, false).expect("qos");
        ch.basic_consume("q", "c1", ConsumeOptions::default())
            .expect("consume");
        let q = core.queue_info("/", "q").expect("listed");
        assert_eq!((q.messages_ready, q.messages_unacknowledged), (1, 2));
        assert_eq!((q.messages, q.message_bytes, q.delivered), (3, 6, 2));
        assert_eq!(q.message_bytes_unacknowledged, 3);

        let mut tags = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let ChannelEvent::Deliver(d) = ev {
                tags.push(d.delivery_tag);
            }
        }
        assert_eq!(tags.len(), 2);
        ch.basic_ack(tags[0], false).expect("ack");
        ch.basic_nack(tags[1], false, true).expect("nack");
        let q = core.queue_info("/", "q").expect("listed");
        assert_eq!(q.acked, 1);
        assert_eq!(
            q.messages_unacknowledged, 2,
            "the requeued one and the third"
        );
        assert_eq!(q.redelivered, 1);
        assert_eq!(q.consumers, 1);

        let channels = core.list_channels();
        assert_eq!(channels.len(), 1);
        let c = &channels[0];
        assert_eq!((c.number, c.prefetch_count, c.consumer_count), (7, 2, 1));
        assert_eq!(c.messages_unacknowledged, 2);
        assert_eq!(c.name, format!("in-process {} (7)", conn.id()));
        let consumers = core.list_consumers(Some("/")).expect("consumers");
        assert_eq!(consumers.len(), 1);
        let k = &consumers[0];
        assert_eq!((k.queue.as_str(), k.consumer_tag.as_str()), ("q", "c1"));
        assert!(k.ack_required && !k.exclusive);
        assert_eq!(k.prefetch_count, 2);
        drop(ch);
        let q = core.queue_info("/", "q").expect("listed");
        assert_eq!((q.messages_ready, q.messages_unacknowledged), (2, 0));
    }

    #[test]
    fn exchanges_and_bindings_are_listed_as_rabbitmq_lists_them() {
        let core = core();
        core.declare_queue("/", "q", QueueDeclareOptions::default())
            .expect("queue");
        core.declare_exchange("/", "t", "topic", ExchangeDeclareOptions::default())
            .expect("topic");
        core.declare_exchange("/", "h", "headers", ExchangeDeclareOptions::default())
            .expect("headers");
        core.bind(
            "/",
            "t",
            "q",
            DestinationType::Queue,
            "a.#.#",
            FieldTable::default(),
        )
        .expect("bind");
        core.bind(
            "/",
            "t",
            "q",
            DestinationType::Queue,
            "a.*.b",
            FieldTable::default(),
        )
        .expect("bind");
        core.bind(
            "/",
            "t",
            "h",
            DestinationType::Exchange,
            "x",
            FieldTable::default(),
        )
        .expect("e2e");
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("any".into()));
        core.bind("/", "h", "q", DestinationType::Queue, "", args.clone())
            .expect("headers bind");
        let bindings: Vec<(String, String, &str, String)> = core
            .list_bindings(Some("/"))
            .expect("bindings")
            .iter()
            .map(|b| {
                (
                    b.source.clone(),
                    b.destination.clone(),
                    b.destination_type.as_str(),
                    b.routing_key.clone(),
                )
            })
            .collect();
        let expect = |s: &str, d: &str, t: &'static str, k: &str| {
            (s.to_owned(), d.to_owned(), t, k.to_owned())
        };
        assert_eq!(
            bindings,
            [
                expect("", "q", "queue", "q"),
                expect("h", "q", "queue", ""),
                expect("t", "h", "exchange", "x"),
                expect("t", "q", "queue", "a.#.#"),
                expect("t", "q", "queue", "a.*.b"),
            ]
        );
        let all = core.list_bindings(None).expect("bindings");
        assert_eq!(all[1].arguments, args);

        assert!(publish(&core, "t", "a.z.b", "m"));
        assert!(!publish(&core, "t", "nowhere", "m"));
        let xs = core.list_exchanges(Some("/")).expect("exchanges");
        let names: Vec<&str> = xs.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "amq.direct",
                "amq.fanout",
                "amq.headers",
                "amq.match",
                "amq.rabbitmq.trace",
                "amq.topic",
                "h",
                "t"
            ]
        );
        let t = xs.iter().find(|x| x.name == "t").expect("t");
        assert_eq!((t.exchange_type.as_str(), t.durable), ("topic", false));
        assert_eq!((t.publish_in, t.publish_out), (2, 1));
        let trace = xs
            .iter()
            .find(|x| x.name == "amq.rabbitmq.trace")
            .expect("trace");
        assert!(trace.internal && trace.durable);

        core.unbind(
            "/",
            "t",
            "q",
            DestinationType::Queue,
            "a.*.b",
            FieldTable::default(),
        )
        .expect("unbind");
        core.delete_exchange("/", "h", false).expect("delete");
        assert_eq!(core.list_bindings(Some("/")).expect("bindings").len(), 2);
        assert!(matches!(
            core.delete_exchange("/", "h", false),
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn users_vhosts_and_permissions_change_and_are_listed() {
        let core = core();
        core.add_user("ops", "secret").expect("add");
        assert_eq!(
            core.add_user("ops", "again"),
            Err(AdminError::UserExists("ops".into()))
        );
        assert!(core.authenticate("ops", "secret"));
        core.change_password("ops", "better").expect("password");
        assert!(!core.authenticate("ops", "secret"));
        assert!(core.authenticate("ops", "better"));
        core.set_user_tags("ops", &["administrator".into(), "monitoring".into()])
            .expect("tags");
        let ops = core.user_info("ops").expect("ops");
        assert_eq!(ops.tags, ["administrator", "monitoring"]);
        assert_eq!(ops.hashing_algorithm, HASHING_ALGORITHM);
        assert!(PasswordHash::parse(&ops.password_hash).is_ok_and(|h| h.verify("better")));

        assert!(core.create_vhost("edge").expect("vhost"));
        assert!(!core.create_vhost("edge").expect("again"));
        let names: Vec<String> = core.list_vhosts().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["/", "edge"]);
        assert!(matches!(
            core.grant_permissions("ops", "edge", "(", ".*", ".*"),
            Err(AdminError::Invalid(_))
        ));
        assert_eq!(
            core.grant_permissions("nobody", "edge", ".*", ".*", ".*"),
            Err(AdminError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            core.grant_permissions("ops", "nowhere", ".*", ".*", ".*"),
            Err(AdminError::NoSuchVhost("nowhere".into()))
        );
        core.grant_permissions("ops", "edge", "^ops\\.", ".*", "")
            .expect("grant");
        let perms = core.list_permissions();
        assert_eq!(perms.len(), 2);
        assert_eq!(
            perms[1],
            PermissionSnapshot {
                user: "ops".into(),
                vhost: "edge".into(),
                configure: "^ops\\.".into(),
                write: ".*".into(),
                read: String::new(),
            }
        );
        assert!(core.can_access("ops", "edge"));
        core.clear_permissions("ops", "edge").expect("clear");
        assert!(!core.can_access("ops", "edge"));

        core.grant_permissions("ops", "edge", ".*", ".*", ".*")
            .expect("grant");
        core.declare_queue("edge", "work", QueueDeclareOptions::default())
            .expect("queue");
        let conn = core.open_connection("edge", "ops").expect("open");
        let (ch, _events) = conn.open_channel_mpsc();
        ch.basic_consume("work", "", ConsumeOptions::default())
            .expect("consume");
        assert_eq!(core.list_connections().len(), 1);
        core.delete_vhost("edge").expect("delete vhost");
        assert!(ch.is_closed(), "an in-process connection closes at once");
        assert!(core.list_connections().is_empty());
        assert_eq!(core.list_permissions().len(), 1);
        assert_eq!(
            core.list_queues(Some("edge")),
            Err(AdminError::NoSuchVhost("edge".into()))
        );
        let conn = core.open_connection("/", "guest").expect("open");
        let (ch, _events) = conn.open_channel_mpsc();
        core.delete_user("guest").expect("delete user");
        assert!(ch.is_closed(), "a deleted user's connections close");
        core.delete_user("ops").expect("delete user");
        assert!(!core.has_user("ops"));
        assert_eq!(
            core.delete_user("ops"),
            Err(AdminError::NoSuchUser("ops".into()))
        );
    }

    #[test]
    fn connections_are_listed_and_closed_by_name() {
        let core = core();
        let a = core.open_connection("/", "guest").expect("open");
        let b = core.open_connection("/", "guest").expect("open");
        a.set_info(ConnectionInfo {
            name: "127.0.0.1:5555 -> 127.0.0.1:5672".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: 5555,
            host: "127.0.0.1".into(),
            port: 5672,
            client_properties: FieldTable::default(),
            frame_max: 131_072,
            channel_max: 2047,
            timeout: 60,
            protocol: "AMQP 0-9-1".into(),
            auth_mechanism: "PLAIN".into(),
            ssl: false,
            connected_at: std::time::SystemTime::now(),
        });
        let mut watch = a.forced_close();
        let names: Vec<String> = core
            .list_connections()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "127.0.0.1:5555 -> 127.0.0.1:5672".to_owned(),
                format!("in-process {}", b.id())
            ]
        );
        core.close_connection("127.0.0.1:5555 -> 127.0.0.1:5672", "maintenance")
            .expect("close");
        assert!(watch.has_changed().unwrap_or(false));
        let forced = watch.borrow_and_update().clone().expect("a close");
        assert_eq!(
            (forced.code, forced.text.as_str()),
            (320, "CONNECTION_FORCED - maintenance"),
            "RabbitMQ's close_connection"
        );
        assert!(matches!(
            core.close_connection("nope", "x"),
            Err(AdminError::NotFound(_))
        ));
        drop(b);
        assert_eq!(core.list_connections().len(), 1);
    }

    #[test]
    fn get_requeues_or_takes_and_purge_and_delete_count() {
        let core = core();
        core.declare_queue("/", "q", QueueDeclareOptions::default())
            .expect("queue");
        for body in ["one", "two", "three"] {
            publish(&core, "", "q", body);
        }
        let got = core.get("/", "q", 2, GetMode::Requeue).expect("get");
        let bodies: Vec<&[u8]> = got.iter().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [&b"one"[..], b"two"]);
        assert_eq!(got[1].message_count, 1);
        let again = core.get("/", "q", 1, GetMode::Ack).expect("get");
        assert!(again[0].redelivered);
        assert_eq!(core.queue_info("/", "q").expect("q").messages_ready, 2);
        assert_eq!(core.purge_queue("/", "q").expect("purge"), 2);
        publish(&core, "", "q", "four");
        assert_eq!(
            core.delete_queue("/", "q", QueueDeleteOptions::default())
                .expect("delete"),
            1
        );
        assert!(matches!(
            core.delete_queue("/", "q", QueueDeleteOptions::default()),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            core.declare_queue(
                "/",
                "x",
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                }
            ),
            Err(AdminError::Invalid(_))
        ));
    }
}
