//! Where a message goes: exchange, topic, server, version, namespace.

/// oslo.messaging's default control exchange.
pub const DEFAULT_EXCHANGE: &str = "openstack";

/// The address of an RPC endpoint, in oslo.messaging's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The control exchange (a topic exchange).
    pub exchange: String,
    /// The topic: the service's name on the bus.
    pub topic: String,
    /// One named server, or any server of the topic when `None`.
    pub server: Option<String>,
    /// The version requested (client side) or offered (server side).
    pub version: Option<String>,
    /// The endpoint namespace.
    pub namespace: Option<String>,
    /// A cast to every server of the topic.
    pub fanout: bool,
}

impl Target {
    /// A target for `topic` on the default exchange.
    pub fn new(topic: impl Into<String>) -> Self {
        Target {
            exchange: DEFAULT_EXCHANGE.to_owned(),
            topic: topic.into(),
            server: None,
            version: None,
            namespace: None,
            fanout: false,
        }
    }

    /// The routing key a call or a direct cast uses: `<topic>` or
    /// `<topic>.<server>`.
    pub fn routing_key(&self) -> String {
        match &self.server {
            Some(server) => server_queue(&self.topic, server),
            None => self.topic.clone(),
        }
    }
}

/// The queue of one named server: `<topic>.<server>`.
pub fn server_queue(topic: &str, server: &str) -> String {
    format!("{topic}.{server}")
}

/// The fanout exchange of a topic: `<topic>_fanout`.
pub fn fanout_exchange(topic: &str) -> String {
    format!("{topic}_fanout")
}

/// A server's own fanout queue: `<topic>_fanout_<uuid hex>`.
pub fn fanout_queue(topic: &str) -> String {
    format!("{topic}_fanout_{}", crate::wire::new_id())
}

/// A client's reply queue: `reply_<uuid hex>`.
pub fn reply_queue() -> String {
    format!("reply_{}", crate::wire::new_id())
}
