//! RabbitMQ's definitions JSON (`rabbitmqctl export_definitions`,
//! `load_definitions`): users, vhosts, permissions, queues, exchanges and
//! bindings, exported from and imported into a [`Core`], so an operator
//! moves topology between RabbitMQ and warren.
//!
//! The field names are RabbitMQ's: `rabbit_version`, `users` (`name`,
//! `password_hash`, `hashing_algorithm`, `tags` as a list or a comma-separated
//! string), `vhosts`, `permissions`, `topic_permissions`, `parameters`,
//! `global_parameters`, `policies`, `queues`, `exchanges`, `bindings`.
//! warren has no policies, parameters or topic permissions: an import
//! accepts them and reports them as ignored ([`ImportSummary::ignored`]).
//!
//! A bad file fails with a [`DefinitionsError`] naming the field
//! (`queues[2].durable: expected a boolean, got a string`); an import
//! checks the whole file before it changes anything.

mod json;

use amq_protocol::types::FieldTable;
use serde_json::{json, Map, Value};

pub use json::{json_to_table, json_to_value, table_to_json, value_to_json, JsonTableError};

use crate::core::admin::{AdminError, DestinationType, HASHING_ALGORITHM};
use crate::core::{Core, ExchangeDeclareOptions, PasswordHash, QueueDeclareOptions};

/// What an export says made it (RabbitMQ writes its own version here).
pub const PRODUCT: &str = concat!("warren ", env!("CARGO_PKG_VERSION"));

/// Why a definitions file cannot be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// Not JSON at all.
    #[error("definitions are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is missing or has the wrong type or value.
    #[error("{path}: {message}")]
    Field {
        /// Where: `users[0].password_hash`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker refused a definition (an inequivalent redeclaration, …).
    #[error("{path}: {source}")]
    Apply {
        /// Which definition: `queues[3]`.
        path: String,
        /// The broker's refusal.
        #[source]
        source: AdminError,
    },
}

fn field(path: impl Into<String>, message: impl Into<String>) -> DefinitionsError {
    DefinitionsError::Field {
        path: path.into(),
        message: message.into(),
    }
}

/// A user of a definitions file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDefinition {
    /// `name`.
    pub name: String,
    /// `password_hash`, checked (RabbitMQ's salted SHA-256, base64).
    pub password_hash: PasswordHash,
    /// `tags`.
    pub tags: Vec<String>,
}

/// A permission of a definitions file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionDefinition {
    /// `user`.
    pub user: String,
    /// `vhost`.
    pub vhost: String,
    /// `configure`.
    pub configure: String,
    /// `write`.
    pub write: String,
    /// `read`.
    pub read: String,
}

/// A queue of a definitions file.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDefinition {
    /// `vhost`.
    pub vhost: String,
    /// `name`.
    pub name: String,
    /// `durable`.
    pub durable: bool,
    /// `auto_delete`.
    pub auto_delete: bool,
    /// `arguments`.
    pub arguments: FieldTable,
}

/// An exchange of a definitions file.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDefinition {
    /// `vhost`.
    pub vhost: String,
    /// `name`.
    pub name: String,
    /// `type`.
    pub exchange_type: String,
    /// `durable`.
    pub durable: bool,
    /// `auto_delete`.
    pub auto_delete: bool,
    /// `internal`.
    pub internal: bool,
    /// `arguments`.
    pub arguments: FieldTable,
}

/// A binding of a definitions file.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingDefinition {
    /// `vhost`.
    pub vhost: String,
    /// `source`.
    pub source: String,
    /// `destination`.
    pub destination: String,
    /// `destination_type`.
    pub destination_type: DestinationType,
    /// `routing_key`.
    pub routing_key: String,
    /// `arguments`.
    pub arguments: FieldTable,
}

/// A definitions file, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Definitions {
    /// `rabbit_version`: who wrote it.
    pub rabbit_version: Option<String>,
    /// `users`.
    pub users: Vec<UserDefinition>,
    /// `vhosts` (their names).
    pub vhosts: Vec<String>,
    /// `permissions`.
    pub permissions: Vec<PermissionDefinition>,
    /// `queues`.
    pub queues: Vec<QueueDefinition>,
    /// `exchanges`.
    pub exchanges: Vec<ExchangeDefinition>,
    /// `bindings`.
    pub bindings: Vec<BindingDefinition>,
    /// What warren does not keep, by section (`policies`, `parameters`,
    /// `global_parameters`, `topic_permissions`): how many entries each had.
    pub unsupported: Vec<(String, usize)>,
}

/// What an import changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Users added or updated.
    pub users: usize,
    /// Vhosts added (or already there).
    pub vhosts: usize,
    /// Permissions set.
    pub permissions: usize,
    /// Queues declared (or already there, equivalent).
    pub queues: usize,
    /// Exchanges declared (or already there, equivalent).
    pub exchanges: usize,
    /// Bindings made.
    pub bindings: usize,
    /// Entries warren does not keep, as `"policies: 2"`.
    pub ignored: Vec<String>,
}

/// One JSON object being read, with its path for errors.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: String) -> Result<Self, DefinitionsError> {
        match v {
            Value::Object(map) => Ok(Self { map, path }),
            other => Err(field(
                path,
                format!("expected an object, got {}", json::kind(other)),
            )),
        }
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn string(&self, key: &str) -> Result<String, DefinitionsError> {
        match self.map.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(field(
                self.at(key),
                format!("expected a string, got {}", json::kind(other)),
            )),
            None => Err(field(self.at(key), "missing")),
        }
    }

    fn string_or(&self, key: &str, default: &str) -> Result<String, DefinitionsError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(_) => self.string(key),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, DefinitionsError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            // RabbitMQ's own exports of old wrote some as strings.
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(other) => Err(field(
                self.at(key),
                format!("expected a boolean, got {}", json::kind(other)),
            )),
        }
    }

    fn table(&self, key: &str) -> Result<FieldTable, DefinitionsError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(FieldTable::default()),
            Some(v) => json_to_table(v, &self.at(key)).map_err(|e| field(e.path, e.message)),
        }
    }
}

/// The array at `key` of the top object (missing: empty).
fn section<'a>(top: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], DefinitionsError> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(field(
            key,
            format!("expected an array, got {}", json::kind(other)),
        )),
    }
}

impl Definitions {
    /// Reads and checks a definitions file.
    pub fn parse(text: &str) -> Result<Self, DefinitionsError> {
        let v: Value = serde_json::from_str(text)?;
        Self::from_json(&v)
    }

    /// Checks definitions already parsed as JSON.
    pub fn from_json(v: &Value) -> Result<Self, DefinitionsError> {
        let Value::Object(top) = v else {
            return Err(field(
                "(top level)",
                format!("expected an object, got {}", json::kind(v)),
            ));
        };
        let mut defs = Definitions {
            rabbit_version: match top.get("rabbit_version") {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            },
            ..Default::default()
        };
        for (i, u) in section(top, "users")?.iter().enumerate() {
            let o = Obj::new(u, format!("users[{i}]"))?;
            let name = o.string("name")?;
            let algorithm = o.string_or("hashing_algorithm", HASHING_ALGORITHM)?;
            if algorithm != HASHING_ALGORITHM {
                return Err(field(
                    o.at("hashing_algorithm"),
                    format!("unsupported '{algorithm}' (warren reads {HASHING_ALGORITHM})"),
                ));
            }
            let password_hash = match (o.map.get("password_hash"), o.map.get("password")) {
                (Some(Value::String(h)), _) if !h.is_empty() => PasswordHash::parse(h)
                    .map_err(|e| field(o.at("password_hash"), e.to_string()))?,
                (Some(Value::String(_)) | None, Some(Value::String(p))) => PasswordHash::new(p),
                // RabbitMQ's passwordless users (certificate logins only): a
                // hash no password matches.
                (Some(Value::String(_)) | None, None) => {
                    PasswordHash::new(&uuid::Uuid::new_v4().to_string())
                }
                (Some(other), _) => {
                    return Err(field(
                        o.at("password_hash"),
                        format!("expected a string, got {}", json::kind(other)),
                    ))
                }
                (_, Some(other)) => {
                    return Err(field(
                        o.at("password"),
                        format!("expected a string, got {}", json::kind(other)),
                    ))
                }
            };
            let tags = match o.map.get("tags") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Some(Value::Array(items)) => {
                    let mut tags = Vec::new();
                    for (j, t) in items.iter().enumerate() {
                        match t {
                            Value::String(s) => tags.push(s.clone()),
                            other => {
                                return Err(field(
                                    format!("{}[{j}]", o.at("tags")),
                                    format!("expected a string, got {}", json::kind(other)),
                                ))
                            }
                        }
                    }
                    tags
                }
                Some(other) => {
                    return Err(field(
                        o.at("tags"),
                        format!(
                            "expected a list or a comma-separated string, got {}",
                            json::kind(other)
                        ),
                    ))
                }
            };
            defs.users.push(UserDefinition {
                name,
                password_hash,
                tags,
            });
        }
        for (i, v) in section(top, "vhosts")?.iter().enumerate() {
            let o = Obj::new(v, format!("vhosts[{i}]"))?;
            defs.vhosts.push(o.string("name")?);
        }
        for (i, p) in section(top, "permissions")?.iter().enumerate() {
            let o = Obj::new(p, format!("permissions[{i}]"))?;
            let p = PermissionDefinition {
                user: o.string("user")?,
                vhost: o.string("vhost")?,
                configure: o.string("configure")?,
                write: o.string("write")?,
                read: o.string("read")?,
            };
            for (key, pattern) in [
                ("configure", &p.configure),
                ("write", &p.write),
                ("read", &p.read),
            ] {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(field(o.at(key), format!("not a regular expression: {e}")));
                }
            }
            defs.permissions.push(p);
        }
        for (i, q) in section(top, "queues")?.iter().enumerate() {
            let o = Obj::new(q, format!("queues[{i}]"))?;
            let mut arguments = o.table("arguments")?;
            // RabbitMQ 3.x writes the queue type beside the arguments.
            if let Some(Value::String(t)) = o.map.get("type") {
                if t != "classic" && !arguments.inner().contains_key("x-queue-type") {
                    arguments.insert(
                        "x-queue-type".into(),
                        amq_protocol::types::AMQPValue::LongString(t.as_str().into()),
                    );
                }
            }
            defs.queues.push(QueueDefinition {
                vhost: o.string("vhost")?,
                name: o.string("name")?,
                durable: o.boolean("durable", true)?,
                auto_delete: o.boolean("auto_delete", false)?,
                arguments,
            });
        }
        for (i, x) in section(top, "exchanges")?.iter().enumerate() {
            let o = Obj::new(x, format!("exchanges[{i}]"))?;
            let exchange_type = o.string("type")?;
            if !matches!(
                exchange_type.as_str(),
                "direct" | "fanout" | "topic" | "headers"
            ) {
                return Err(field(
                    o.at("type"),
                    format!("unknown exchange type '{exchange_type}'"),
                ));
            }
            defs.exchanges.push(ExchangeDefinition {
                vhost: o.string("vhost")?,
                name: o.string("name")?,
                exchange_type,
                durable: o.boolean("durable", true)?,
                auto_delete: o.boolean("auto_delete", false)?,
                internal: o.boolean("internal", false)?,
                arguments: o.table("arguments")?,
            });
        }
        for (i, b) in section(top, "bindings")?.iter().enumerate() {
            let o = Obj::new(b, format!("bindings[{i}]"))?;
            let destination_type = match o.string("destination_type")?.as_str() {
                "queue" => DestinationType::Queue,
                "exchange" => DestinationType::Exchange,
                other => {
                    return Err(field(
                        o.at("destination_type"),
                        format!("expected 'queue' or 'exchange', got '{other}'"),
                    ))
                }
            };
            defs.bindings.push(BindingDefinition {
                vhost: o.string("vhost")?,
                source: o.string("source")?,
                destination: o.string("destination")?,
                destination_type,
                routing_key: o.string_or("routing_key", "")?,
                arguments: o.table("arguments")?,
            });
        }
        for key in [
            "topic_permissions",
            "parameters",
            "global_parameters",
            "policies",
        ] {
            let n = section(top, key)?.len();
            if n > 0 {
                defs.unsupported.push((key.to_owned(), n));
            }
        }
        Ok(defs)
    }

    /// The broker's definitions: its users, vhosts, permissions, and the
    /// queues, exchanges and bindings clients declared (not exclusive
    /// queues, not the predeclared `amq.*` and default exchanges, not the
    /// default exchange's bindings), as RabbitMQ exports them.
    pub fn export(core: &Core) -> Result<Self, AdminError> {
        let users = core
            .list_users()
            .into_iter()
            .filter_map(|u| {
                let password_hash = PasswordHash::parse(&u.password_hash).ok()?;
                Some(UserDefinition {
                    name: u.name,
                    password_hash,
                    tags: u.tags,
                })
            })
            .collect();
        let permissions = core
            .list_permissions()
            .into_iter()
            .map(|p| PermissionDefinition {
                user: p.user,
                vhost: p.vhost,
                configure: p.configure,
                write: p.write,
                read: p.read,
            })
            .collect();
        let queues = core
            .list_queues(None)?
            .into_iter()
            .filter(|q| !q.exclusive)
            .map(|q| QueueDefinition {
                vhost: q.vhost,
                name: q.name,
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
            })
            .collect();
        let exchanges = core
            .list_exchanges(None)?
            .into_iter()
            .filter(|x| !x.name.is_empty() && !x.name.starts_with("amq."))
            .map(|x| ExchangeDefinition {
                vhost: x.vhost,
                name: x.name,
                exchange_type: x.exchange_type,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            })
            .collect();
        let bindings = core
            .list_bindings(None)?
            .into_iter()
            .filter(|b| !b.source.is_empty())
            .map(|b| BindingDefinition {
                vhost: b.vhost,
                source: b.source,
                destination: b.destination,
                destination_type: b.destination_type,
                routing_key: b.routing_key,
                arguments: b.arguments,
            })
            .collect();
        Ok(Definitions {
            rabbit_version: Some(PRODUCT.to_owned()),
            users,
            vhosts: core.list_vhosts().into_iter().map(|v| v.name).collect(),
            permissions,
            queues,
            exchanges,
            bindings,
            unsupported: Vec::new(),
        })
    }

    /// As RabbitMQ's JSON (keys sorted, as RabbitMQ writes them).
    pub fn to_json(&self) -> Value {
        let users: Vec<Value> = self
            .users
            .iter()
            .map(|u| {
                json!({
                    "name": u.name,
                    "password_hash": u.password_hash.encode(),
                    "hashing_algorithm": HASHING_ALGORITHM,
                    "tags": u.tags,
                    "limits": {},
                })
            })
            .collect();
        let vhosts: Vec<Value> = self
            .vhosts
            .iter()
            .map(|v| json!({"name": v, "limits": [], "metadata": {"description": "", "tags": []}}))
            .collect();
        let permissions: Vec<Value> = self
            .permissions
            .iter()
            .map(|p| {
                json!({
                    "user": p.user, "vhost": p.vhost,
                    "configure": p.configure, "write": p.write, "read": p.read,
                })
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let queue_type = q
                    .arguments
                    .inner()
                    .get("x-queue-type")
                    .and_then(crate::core::value_as_string)
                    .unwrap_or_else(|| "classic".to_owned());
                json!({
                    "name": q.name, "vhost": q.vhost, "type": queue_type,
                    "durable": q.durable, "auto_delete": q.auto_delete,
                    "arguments": table_to_json(&q.arguments),
                })
            })
            .collect();
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|x| {
                json!({
                    "name": x.name, "vhost": x.vhost, "type": x.exchange_type,
                    "durable": x.durable, "auto_delete": x.auto_delete,
                    "internal": x.internal, "arguments": table_to_json(&x.arguments),
                })
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                json!({
                    "source": b.source, "vhost": b.vhost, "destination": b.destination,
                    "destination_type": b.destination_type.as_str(),
                    "routing_key": b.routing_key, "arguments": table_to_json(&b.arguments),
                })
            })
            .collect();
        json!({
            "rabbit_version": self.rabbit_version.as_deref().unwrap_or(PRODUCT),
            "product_name": "warren",
            "product_version": env!("CARGO_PKG_VERSION"),
            "users": users,
            "vhosts": vhosts,
            "permissions": permissions,
            "topic_permissions": [],
            "parameters": [],
            "global_parameters": [],
            "policies": [],
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        })
    }

    /// Checks that every user and vhost a definition names exists, in the
    /// broker or in the file.
    fn check_references(&self, core: &Core) -> Result<(), DefinitionsError> {
        let vhost_known = |v: &str| self.vhosts.iter().any(|x| x == v) || core.vhost_exists(v);
        let check_vhost = |path: String, v: &str| {
            if vhost_known(v) {
                Ok(())
            } else {
                Err(field(
                    path,
                    format!("vhost '{v}' does not exist (neither in the broker nor in the file)"),
                ))
            }
        };
        for (i, p) in self.permissions.iter().enumerate() {
            if !(self.users.iter().any(|u| u.name == p.user) || core.has_user(&p.user)) {
                return Err(field(
                    format!("permissions[{i}].user"),
                    format!(
                        "user '{}' does not exist (neither in the broker nor in the file)",
                        p.user
                    ),
                ));
            }
            check_vhost(format!("permissions[{i}].vhost"), &p.vhost)?;
        }
        for (i, q) in self.queues.iter().enumerate() {
            check_vhost(format!("queues[{i}].vhost"), &q.vhost)?;
        }
        for (i, x) in self.exchanges.iter().enumerate() {
            check_vhost(format!("exchanges[{i}].vhost"), &x.vhost)?;
        }
        for (i, b) in self.bindings.iter().enumerate() {
            check_vhost(format!("bindings[{i}].vhost"), &b.vhost)?;
        }
        Ok(())
    }

    /// Applies the definitions to the broker, as RabbitMQ's import does:
    /// users (added, or their password and tags replaced), vhosts,
    /// permissions, exchanges, queues, then bindings. A queue or exchange
    /// that exists must be equivalent (as for a client's redeclaration).
    /// Stops at the first refusal, naming the definition.
    pub fn import(&self, core: &Core) -> Result<ImportSummary, DefinitionsError> {
        self.check_references(core)?;
        let apply =
            |path: String| move |source: AdminError| DefinitionsError::Apply { path, source };
        let mut summary = ImportSummary::default();
        for (i, u) in self.users.iter().enumerate() {
            let path = format!("users[{i}]");
            if core.has_user(&u.name) {
                core.set_password_hash(&u.name, u.password_hash.clone())
                    .and_then(|()| core.set_user_tags(&u.name, &u.tags))
                    .map_err(apply(path))?;
            } else {
                core.add_user_with_hash(&u.name, u.password_hash.clone(), &u.tags)
                    .map_err(apply(path))?;
            }
            summary.users += 1;
        }
        for (i, v) in self.vhosts.iter().enumerate() {
            core.create_vhost(v)
                .map_err(apply(format!("vhosts[{i}]")))?;
            summary.vhosts += 1;
        }
        for (i, p) in self.permissions.iter().enumerate() {
            core.grant_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read)
                .map_err(apply(format!("permissions[{i}]")))?;
            summary.permissions += 1;
        }
        for (i, x) in self.exchanges.iter().enumerate() {
            let options = ExchangeDeclareOptions {
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            };
            core.declare_exchange(&x.vhost, &x.name, &x.exchange_type, options)
                .map_err(apply(format!("exchanges[{i}]")))?;
            summary.exchanges += 1;
        }
        for (i, q) in self.queues.iter().enumerate() {
            let options = QueueDeclareOptions {
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            };
            core.declare_queue(&q.vhost, &q.name, options)
                .map_err(apply(format!("queues[{i}]")))?;
            summary.queues += 1;
        }
        for (i, b) in self.bindings.iter().enumerate() {
            core.bind(
                &b.vhost,
                &b.source,
                &b.destination,
                b.destination_type,
                &b.routing_key,
                b.arguments.clone(),
            )
            .map_err(apply(format!("bindings[{i}]")))?;
            summary.bindings += 1;
        }
        summary.ignored = self
            .unsupported
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        Ok(summary)
    }
}

#[cfg(test)]
mod tests;
