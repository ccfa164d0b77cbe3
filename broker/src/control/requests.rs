//! One control request answered: the command's work on the core, its
//! result as JSON.

use std::time::Instant;

use serde_json::{json, Value};

use super::info::{self, Listing};
use crate::core::admin::AdminError;
use crate::core::QueueDeleteOptions;
use crate::definitions::Definitions;
use crate::BrokerHandle;

/// An error answer: a code the client maps to an exit status, and a message.
pub(super) fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"error": {"code": code, "message": message.into()}})
}

fn admin_error(e: &AdminError) -> Value {
    let code = match e {
        AdminError::NoSuchUser(_) => "no_such_user",
        AdminError::UserExists(_) => "user_exists",
        AdminError::NoSuchVhost(_) => "no_such_vhost",
        AdminError::NotFound(_) => "not_found",
        AdminError::Invalid(_) => "invalid",
        AdminError::Amqp(_) => "refused",
    };
    error(code, e.to_string())
}

/// A request's string argument.
fn arg<'a>(request: &'a Value, key: &str) -> Result<&'a str, Value> {
    request
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| error("usage", format!("missing argument '{key}'")))
}

fn flag(request: &Value, key: &str) -> bool {
    request.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The answer to `request`.
pub(super) fn answer(broker: &BrokerHandle, started: Instant, request: &Value) -> Value {
    match run(broker, started, request) {
        Ok(v) => json!({ "ok": v }),
        Err(e) => e,
    }
}

fn run(broker: &BrokerHandle, started: Instant, request: &Value) -> Result<Value, Value> {
    let core = broker.core();
    let command = arg(request, "command")?;
    let vhost = request.get("vhost").and_then(Value::as_str).unwrap_or("/");
    let done = |r: Result<(), AdminError>| r.map(|()| json!({})).map_err(|e| admin_error(&e));
    if command == "list_user_permissions" {
        let user = arg(request, "user")?;
        if !core.has_user(user) {
            return Err(admin_error(&AdminError::NoSuchUser(user.to_owned())));
        }
        let rows: Vec<info::Row> = core
            .list_permissions()
            .iter()
            .filter(|p| p.user == user)
            .map(info::permission)
            .collect();
        return Ok(json!({ "rows": rows }));
    }
    if let Some(listing) = Listing::of_command(command) {
        return list(broker, listing, vhost).map(|rows| json!({ "rows": rows }));
    }
    match command {
        "await_startup" => Ok(json!({})),
        "status" => Ok(status(broker, started)),
        "add_user" => done(core.add_user(arg(request, "user")?, arg(request, "password")?)),
        "delete_user" => done(core.delete_user(arg(request, "user")?)),
        "change_password" => {
            done(core.change_password(arg(request, "user")?, arg(request, "password")?))
        }
        "set_user_tags" => {
            let tags: Vec<String> = request
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            done(core.set_user_tags(arg(request, "user")?, &tags))
        }
        "add_vhost" => core
            .create_vhost(arg(request, "vhost")?)
            .map(|created| json!({ "created": created }))
            .map_err(|e| admin_error(&e)),
        "delete_vhost" => done(core.delete_vhost(arg(request, "vhost")?)),
        "set_permissions" => done(core.grant_permissions(
            arg(request, "user")?,
            vhost,
            arg(request, "configure")?,
            arg(request, "write")?,
            arg(request, "read")?,
        )),
        "clear_permissions" => done(core.clear_permissions(arg(request, "user")?, vhost)),
        "purge_queue" => core
            .purge_queue(vhost, arg(request, "queue")?)
            .map(|n| json!({ "messages": n }))
            .map_err(|e| admin_error(&e)),
        "delete_queue" => {
            let options = QueueDeleteOptions {
                if_unused: flag(request, "if_unused"),
                if_empty: flag(request, "if_empty"),
            };
            core.delete_queue(vhost, arg(request, "queue")?, options)
                .map(|n| json!({ "messages": n }))
                .map_err(|e| admin_error(&e))
        }
        "close_connection" => {
            done(core.close_connection(arg(request, "connection")?, arg(request, "reason")?))
        }
        "export_definitions" => Definitions::export(&core)
            .map(|d| json!({ "definitions": d.to_json() }))
            .map_err(|e| admin_error(&e)),
        "import_definitions" => {
            let defs = request
                .get("definitions")
                .ok_or_else(|| error("usage", "missing argument 'definitions'"))?;
            let defs = Definitions::from_json(defs).map_err(|e| error("invalid", e.to_string()))?;
            let summary = defs
                .import(&core)
                .map_err(|e| error("invalid", e.to_string()))?;
            Ok(json!({
                "users": summary.users, "vhosts": summary.vhosts,
                "permissions": summary.permissions, "queues": summary.queues,
                "exchanges": summary.exchanges, "bindings": summary.bindings,
                "ignored": summary.ignored,
            }))
        }
        other => Err(error("usage", format!("unknown command '{other}'"))),
    }
}

/// The rows of a listing (of one vhost, for the listings per vhost; none
/// when it does not exist, as `rabbitmqctl` answers).
fn list(broker: &BrokerHandle, listing: Listing, vhost: &str) -> Result<Vec<info::Row>, Value> {
    let core = broker.core();
    if listing.per_vhost() && !core.vhost_exists(vhost) {
        return Ok(Vec::new());
    }
    let fail = |e: AdminError| admin_error(&e);
    Ok(match listing {
        Listing::Queues => core
            .list_queues(Some(vhost))
            .map_err(fail)?
            .iter()
            .map(info::queue)
            .collect(),
        Listing::Exchanges => core
            .list_exchanges(Some(vhost))
            .map_err(fail)?
            .iter()
            .map(info::exchange)
            .collect(),
        Listing::Bindings => core
            .list_bindings(Some(vhost))
            .map_err(fail)?
            .iter()
            .map(info::binding)
            .collect(),
        Listing::Consumers => core
            .list_consumers(Some(vhost))
            .map_err(fail)?
            .iter()
            .map(info::consumer)
            .collect(),
        Listing::Connections => core
            .list_connections()
            .iter()
            .map(info::connection)
            .collect(),
        Listing::Channels => core.list_channels().iter().map(info::channel).collect(),
        Listing::Users => core.list_users().iter().map(info::user).collect(),
        Listing::Vhosts => core.list_vhosts().iter().map(info::vhost).collect(),
        Listing::Permissions => core
            .list_permissions()
            .iter()
            .filter(|p| p.vhost == vhost)
            .map(info::permission)
            .collect(),
    })
}

/// `status`: what runs, where, and how it is doing.
fn status(broker: &BrokerHandle, started: Instant) -> Value {
    let core = broker.core();
    let memory = core.memory();
    let listeners: Vec<String> = broker
        .local_addrs()
        .iter()
        .map(|a| format!("amqp {a}"))
        .chain(broker.tls_addrs().iter().map(|a| format!("amqp/ssl {a}")))
        .collect();
    let queues: usize = core
        .list_vhosts()
        .iter()
        .map(|v| usize::try_from(v.queues).unwrap_or(usize::MAX))
        .sum();
    json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": started.elapsed().as_secs(),
        "listeners": listeners,
        "memory_used": memory.tracked(),
        "memory_high_watermark": memory.watermark(),
        "memory_alarm": memory.alarm(),
        "connections": core.list_connections().len(),
        "vhosts": core.list_vhosts().len(),
        "queues": queues,
    })
}
