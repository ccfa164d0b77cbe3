//! The management API's GET endpoints: listings and single objects, the
//! overview, `whoami`, the nodes and the alarms health check. Each shows
//! the caller only the vhosts (and, for `management` users, the
//! connections) it may see.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::views;
use super::Shared;
use crate::core::admin::ConnectionSnapshot;

type Answer = Result<Json<Value>, ApiError>;

/// The exchange a path names: `amq.default` is the default exchange (`""`).
pub(crate) fn exchange_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

/// `GET /api/overview`.
pub(crate) async fn overview(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let caller = s.caller(&headers)?;
    let queues = s.core.list_queues(None).unwrap_or_default();
    let visible = |vhost: &str| caller.may_use(&s.core, vhost);
    let queues: Vec<_> = queues.into_iter().filter(|q| visible(&q.vhost)).collect();
    let exchanges = s
        .core
        .list_exchanges(None)
        .unwrap_or_default()
        .into_iter()
        .filter(|x| visible(&x.vhost))
        .count();
    let connections = s.visible_connections(&caller);
    let channels = s
        .core
        .list_channels()
        .into_iter()
        .filter(|c| caller.sees_everything() || c.user == caller.name)
        .count();
    let consumers = s
        .core
        .list_consumers(None)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| visible(&c.vhost))
        .count();
    let (messages, ready, unacked) = queues.iter().fold((0, 0, 0), |(m, r, u), q| {
        (
            m + q.messages,
            r + q.messages_ready,
            u + q.messages_unacknowledged,
        )
    });
    let stats = queues.iter().fold((0, 0, 0, 0), |(p, d, a, r), q| {
        (
            p + q.published,
            d + q.delivered,
            a + q.acked,
            r + q.redelivered,
        )
    });
    let (rates, publish_rate) = s.rates.totals();
    let publish: u64 = s
        .core
        .list_exchanges(None)
        .unwrap_or_default()
        .iter()
        .filter(|x| visible(&x.vhost))
        .map(|x| x.publish_in)
        .sum();
    let listeners: Vec<Value> = s
        .amqp_listeners
        .iter()
        .map(|a| json!({"node": s.node, "protocol": "amqp", "ip_address": a.ip().to_string(), "port": a.port(), "socket_opts": {}}))
        .collect();
    Ok(Json(json!({
        "management_version": super::RABBITMQ_VERSION,
        "rates_mode": "basic",
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        ],
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "warren",
        "rabbitmq_version": super::RABBITMQ_VERSION,
        "cluster_name": s.node,
        "erlang_version": "none (warren is written in Rust)",
        "erlang_full_version": "none (warren is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": {
            "publish": publish,
            "publish_details": views::details(publish_rate),
            "deliver_get": stats.1,
            "deliver_get_details": views::details(rates.delivered),
            "ack": stats.2,
            "ack_details": views::details(rates.acked),
            "redeliver": stats.3,
            "redeliver_details": views::details(rates.redelivered),
        },
        "queue_totals": {
            "messages": messages,
            "messages_details": views::details(rates.messages),
            "messages_ready": ready,
            "messages_ready_details": views::details(rates.ready),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": views::details(rates.unacked),
        },
        "object_totals": {
            "channels": channels,
            "connections": connections.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues.len(),
        },
        "statistics_db_event_queue": 0,
        "node": s.node,
        "listeners": listeners,
        "contexts": [{"node": s.node, "description": "warren management", "path": "/", "port": s.port.to_string()}],
    })))
}

/// `GET /api/whoami`.
pub(crate) async fn whoami(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let caller = s.caller(&headers)?;
    Ok(Json(json!({"name": caller.name, "tags": caller.tags})))
}

/// `GET /api/nodes`: this broker, as one node.
pub(crate) async fn nodes(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    s.caller(&headers)?;
    let memory = s.core.memory();
    let (mem_alarm, disk_alarm) = s.alarms();
    Ok(Json(json!([{
        "name": s.node,
        "type": "disc",
        "running": true,
        "mem_used": super::prometheus::resident_memory().unwrap_or(memory.tracked() as u64),
        "mem_limit": memory.watermark(),
        "mem_alarm": mem_alarm,
        "disk_free_alarm": disk_alarm,
    }])))
}

/// `GET /api/health/checks/alarms`: 200 without alarms, 503 with.
pub(crate) async fn alarms(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.caller(&headers)?;
    let (memory, disk) = s.alarms();
    let alarms: Vec<Value> = [(memory, "memory"), (disk, "disk")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, resource)| json!({"node": s.node, "resource": resource}))
        .collect();
    if alarms.is_empty() {
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        let body = json!({
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": alarms,
        });
        Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
    }
}

/// `GET /api/vhosts`.
pub(crate) async fn vhosts(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let caller = s.caller(&headers)?;
    let queues = s.core.list_queues(None).unwrap_or_default();
    let list = s
        .core
        .list_vhosts()
        .iter()
        .filter(|v| caller.may_use(&s.core, &v.name))
        .map(|v| {
            let totals =
                queues
                    .iter()
                    .filter(|q| q.vhost == v.name)
                    .fold((0, 0, 0), |(m, r, u), q| {
                        (
                            m + q.messages,
                            r + q.messages_ready,
                            u + q.messages_unacknowledged,
                        )
                    });
            views::vhost(v, totals, &s.node)
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/vhosts/{vhost}`.
pub(crate) async fn vhost(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let caller = s.caller(&headers)?;
    let v = s
        .core
        .list_vhosts()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(ApiError::not_found)?;
    caller.require_vhost(&s.core, &name)?;
    let totals = s
        .core
        .list_queues(Some(&name))
        .unwrap_or_default()
        .iter()
        .fold((0, 0, 0), |(m, r, u), q| {
            (
                m + q.messages,
                r + q.messages_ready,
                u + q.messages_unacknowledged,
            )
        });
    Ok(Json(views::vhost(&v, totals, &s.node)))
}

/// `GET /api/users`.
pub(crate) async fn users(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    s.caller(&headers)?.require_administrator()?;
    Ok(Json(s.core.list_users().iter().map(views::user).collect()))
}

/// `GET /api/users/{name}`.
pub(crate) async fn user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    s.caller(&headers)?.require_administrator()?;
    Ok(Json(views::user(&s.core.user_info(&name)?)))
}

/// `GET /api/permissions`.
pub(crate) async fn permissions(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    s.caller(&headers)?.require_administrator()?;
    Ok(Json(
        s.core
            .list_permissions()
            .iter()
            .map(views::permission)
            .collect(),
    ))
}

/// `GET /api/permissions/{vhost}/{user}`.
pub(crate) async fn permission(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> Answer {
    s.caller(&headers)?.require_administrator()?;
    s.core
        .list_permissions()
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(views::permission(p)))
        .ok_or_else(ApiError::not_found)
}

/// The vhosts `vhost` names (all the caller may see for `None`); a vhost
/// that does not exist is 404, one the caller may not use 401.
fn vhost_scope(s: &Shared, caller: &Caller, vhost: Option<&str>) -> Result<(), ApiError> {
    if let Some(v) = vhost {
        if !s.core.list_vhosts().iter().any(|x| x.name == v) {
            return Err(ApiError::not_found());
        }
        caller.require_vhost(&s.core, v)?;
    }
    Ok(())
}

fn queues_in(s: &Shared, headers: &HeaderMap, vhost: Option<&str>) -> Answer {
    let caller = s.caller(headers)?;
    vhost_scope(s, &caller, vhost)?;
    let list = s
        .core
        .list_queues(vhost)?
        .iter()
        .filter(|q| caller.may_use(&s.core, &q.vhost))
        .map(|q| views::queue(q, &s.rates.queue(&q.vhost, &q.name), &s.node))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/queues`.
pub(crate) async fn queues(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    queues_in(&s, &headers, None)
}

/// `GET /api/queues/{vhost}`.
pub(crate) async fn queues_of(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Answer {
    queues_in(&s, &headers, Some(&vhost))
}

/// `GET /api/queues/{vhost}/{name}`.
pub(crate) async fn queue(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Answer {
    let caller = s.caller(&headers)?;
    vhost_scope(&s, &caller, Some(&vhost))?;
    let q = s.core.queue_info(&vhost, &name)?;
    Ok(Json(views::queue(
        &q,
        &s.rates.queue(&vhost, &name),
        &s.node,
    )))
}

fn exchanges_in(s: &Shared, headers: &HeaderMap, vhost: Option<&str>) -> Answer {
    let caller = s.caller(headers)?;
    vhost_scope(s, &caller, vhost)?;
    let list = s
        .core
        .list_exchanges(vhost)?
        .iter()
        .filter(|x| caller.may_use(&s.core, &x.vhost))
        .map(|x| views::exchange(x, &s.rates.exchange(&x.vhost, &x.name)))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/exchanges`.
pub(crate) async fn exchanges(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    exchanges_in(&s, &headers, None)
}

/// `GET /api/exchanges/{vhost}`.
pub(crate) async fn exchanges_of(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Answer {
    exchanges_in(&s, &headers, Some(&vhost))
}

/// `GET /api/exchanges/{vhost}/{name}`.
pub(crate) async fn exchange(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Answer {
    let caller = s.caller(&headers)?;
    vhost_scope(&s, &caller, Some(&vhost))?;
    let name = exchange_name(&name);
    let x = s
        .core
        .list_exchanges(Some(&vhost))?
        .into_iter()
        .find(|x| x.name == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(views::exchange(&x, &s.rates.exchange(&vhost, name))))
}

fn bindings_where(
    s: &Shared,
    headers: &HeaderMap,
    vhost: Option<&str>,
    keep: impl Fn(&Value) -> bool,
) -> Answer {
    let caller = s.caller(headers)?;
    vhost_scope(s, &caller, vhost)?;
    let list = s
        .core
        .list_bindings(vhost)?
        .iter()
        .filter(|b| caller.may_use(&s.core, &b.vhost))
        .map(views::binding)
        .filter(|b| keep(b))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/bindings`.
pub(crate) async fn bindings(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    bindings_where(&s, &headers, None, |_| true)
}

/// `GET /api/bindings/{vhost}`.
pub(crate) async fn bindings_of(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Answer {
    bindings_where(&s, &headers, Some(&vhost), |_| true)
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub(crate) async fn bindings_between(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> Answer {
    let kind = super::write::destination_kind(&kind)?;
    let source = exchange_name(&source).to_owned();
    bindings_where(&s, &headers, Some(&vhost), |b| {
        b["source"] == source.as_str()
            && b["destination"] == destination.as_str()
            && b["destination_type"] == kind.as_str()
    })
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source` and
/// `/api/queues/{vhost}/{name}/bindings`.
pub(crate) async fn bindings_of_exchange(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Answer {
    let name = exchange_name(&name).to_owned();
    bindings_where(&s, &headers, Some(&vhost), |b| b["source"] == name.as_str())
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub(crate) async fn bindings_of_queue(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Answer {
    bindings_where(&s, &headers, Some(&vhost), |b| {
        b["destination"] == name.as_str() && b["destination_type"] == "queue"
    })
}

/// `GET /api/connections`.
pub(crate) async fn connections(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let caller = s.caller(&headers)?;
    Ok(Json(
        s.visible_connections(&caller)
            .iter()
            .map(|c| views::connection(c, &s.node))
            .collect(),
    ))
}

/// `GET /api/connections/{name}`.
pub(crate) async fn connection(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let caller = s.caller(&headers)?;
    s.visible_connections(&caller)
        .iter()
        .find(|c| c.name == name)
        .map(|c| Json(views::connection(c, &s.node)))
        .ok_or_else(ApiError::not_found)
}

fn peer<'a>(connections: &'a [ConnectionSnapshot], name: &str) -> Option<&'a ConnectionSnapshot> {
    connections.iter().find(|c| c.name == name)
}

/// `GET /api/channels`.
pub(crate) async fn channels(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    let caller = s.caller(&headers)?;
    let connections = s.visible_connections(&caller);
    Ok(Json(
        s.core
            .list_channels()
            .iter()
            .filter_map(|c| {
                let p = peer(&connections, &c.connection)?;
                Some(views::channel(c, Some(p), &s.node))
            })
            .collect(),
    ))
}

fn consumers_in(s: &Shared, headers: &HeaderMap, vhost: Option<&str>) -> Answer {
    let caller = s.caller(headers)?;
    vhost_scope(s, &caller, vhost)?;
    let connections = s.core.list_connections();
    Ok(Json(
        s.core
            .list_consumers(vhost)?
            .iter()
            .filter(|c| caller.may_use(&s.core, &c.vhost))
            .map(|c| {
                let p = connections.iter().find(|p| p.id == c.connection_id);
                views::consumer(c, p, &s.node)
            })
            .collect(),
    ))
}

/// `GET /api/consumers`.
pub(crate) async fn consumers(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    consumers_in(&s, &headers, None)
}

/// `GET /api/consumers/{vhost}`.
pub(crate) async fn consumers_of(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Answer {
    consumers_in(&s, &headers, Some(&vhost))
}

#[cfg(test)]
mod tests {
    use super::exchange_name;

    #[test]
    fn amq_default_names_the_default_exchange() {
        assert_eq!(exchange_name("amq.default"), "");
        assert_eq!(exchange_name("amq.topic"), "amq.topic");
    }
}
