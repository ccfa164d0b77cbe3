//! The management API's PUT, POST and DELETE endpoints: vhosts, users,
//! permissions, queues, exchanges, bindings, connections, publishing and
//! getting messages. Status codes as RabbitMQ's: 201 when a PUT creates,
//! 204 when it changes or a DELETE deletes, 400 with a reason for a bad
//! body, 404 for what does not exist.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::convert::{self, arguments, count, flag, text};
use super::error::ApiError;
use super::read::exchange_name;
use super::views;
use super::Shared;
use crate::core::admin::{DestinationType, GetMode};
use crate::core::{ExchangeDeclareOptions, PasswordHash, QueueDeclareOptions, QueueDeleteOptions};

type Done = Result<StatusCode, ApiError>;

/// A request body as a JSON object; an empty body is `{}`.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
    }
}

fn created(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// `q` or `e` in a binding's path.
pub(crate) fn destination_kind(letter: &str) -> Result<DestinationType, ApiError> {
    match letter {
        "q" => Ok(DestinationType::Queue),
        "e" => Ok(DestinationType::Exchange),
        _ => Err(ApiError::not_found()),
    }
}

/// `PUT /api/vhosts/{vhost}`: the creator gets full permissions on it.
pub(crate) async fn put_vhost(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Done {
    let caller = s.caller(&headers)?;
    caller.require_administrator()?;
    object(&body)?;
    let new = s.core.create_vhost(&name)?;
    if new {
        s.core
            .grant_permissions(&caller.name, &name, ".*", ".*", ".*")?;
    }
    Ok(created(new))
}

/// `DELETE /api/vhosts/{vhost}`.
pub(crate) async fn delete_vhost(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Done {
    s.caller(&headers)?.require_administrator()?;
    s.core.delete_vhost(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tags as a list or a comma-separated string.
fn tags(body: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let split = |s: &str| {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(split(s))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(ApiError::bad_request("tags must be a string or a list")),
    }
}

/// `PUT /api/users/{name}`: `password` or `password_hash`, and `tags`.
pub(crate) async fn put_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Done {
    s.caller(&headers)?.require_administrator()?;
    let body = object(&body)?;
    let tags = tags(&body)?;
    // As RabbitMQ: without a password or a hash (or with an empty hash)
    // the user has no password and cannot log in with one; a random
    // secret no one knows stands for "none".
    let hash = match (text(&body, "password")?, text(&body, "password_hash")?) {
        (Some(password), _) => PasswordHash::new(password),
        (None, Some(hash)) if !hash.is_empty() => PasswordHash::parse(hash)
            .map_err(|e| ApiError::bad_request(format!("password_hash: {e}")))?,
        (None, _) => PasswordHash::new(&uuid::Uuid::new_v4().to_string()),
    };
    if let Some(algorithm) = text(&body, "hashing_algorithm")? {
        if algorithm != crate::core::admin::HASHING_ALGORITHM {
            return Err(ApiError::bad_request(format!(
                "hashing_algorithm {algorithm:?} is not supported (only {})",
                crate::core::admin::HASHING_ALGORITHM
            )));
        }
    }
    let tags = tags.unwrap_or_default();
    if s.core.has_user(&name) {
        s.core.set_password_hash(&name, hash)?;
        s.core.set_user_tags(&name, &tags)?;
        return Ok(StatusCode::NO_CONTENT);
    }
    s.core.add_user_with_hash(&name, hash, &tags)?;
    Ok(StatusCode::CREATED)
}

/// `DELETE /api/users/{name}`.
pub(crate) async fn delete_user(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Done {
    s.caller(&headers)?.require_administrator()?;
    s.core.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/permissions/{vhost}/{user}`.
pub(crate) async fn put_permission(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Done {
    s.caller(&headers)?.require_administrator()?;
    let body = object(&body)?;
    let pattern = |name: &str| -> Result<String, ApiError> {
        Ok(text(&body, name)?
            .ok_or_else(|| ApiError::bad_request(format!("{name} is required")))?
            .to_owned())
    };
    let (configure, write, read) = (pattern("configure")?, pattern("write")?, pattern("read")?);
    let existed = s
        .core
        .list_permissions()
        .iter()
        .any(|p| p.vhost == vhost && p.user == user);
    s.core
        .grant_permissions(&user, &vhost, &configure, &write, &read)?;
    Ok(created(!existed))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub(crate) async fn delete_permission(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> Done {
    s.caller(&headers)?.require_administrator()?;
    let existed = s
        .core
        .list_permissions()
        .iter()
        .any(|p| p.vhost == vhost && p.user == user);
    if !existed {
        return Err(ApiError::not_found());
    }
    s.core.clear_permissions(&user, &vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/queues/{vhost}/{name}`: `durable`, `auto_delete`, `arguments`.
pub(crate) async fn put_queue(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let body = object(&body)?;
    let options = QueueDeclareOptions {
        passive: false,
        durable: flag(&body, "durable", true)?,
        exclusive: false,
        auto_delete: flag(&body, "auto_delete", false)?,
        arguments: arguments(&body)?,
    };
    Ok(created(s.core.declare_queue(&vhost, &name, options)?))
}

/// `?if-unused=true&if-empty=true` of a queue or exchange deletion.
#[derive(serde::Deserialize, Default)]
pub(crate) struct DeleteConditions {
    #[serde(rename = "if-unused", default)]
    if_unused: Option<String>,
    #[serde(rename = "if-empty", default)]
    if_empty: Option<String>,
}

fn is_true(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `DELETE /api/queues/{vhost}/{name}`.
pub(crate) async fn delete_queue(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    Query(when): Query<DeleteConditions>,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let options = QueueDeleteOptions {
        if_unused: is_true(&when.if_unused),
        if_empty: is_true(&when.if_empty),
    };
    s.core.delete_queue(&vhost, &name, options)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purges the queue.
pub(crate) async fn purge_queue(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    s.core.purge_queue(&vhost, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/queues/{vhost}/{name}/get`: `count`, `ackmode`, `encoding`,
/// `truncate`.
pub(crate) async fn get_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let body = object(&body)?;
    let n = count(&body, "count")?.unwrap_or(1);
    let mode = match text(&body, "ackmode")? {
        Some("ack_requeue_true" | "reject_requeue_true") => GetMode::Requeue,
        Some("ack_requeue_false" | "reject_requeue_false") => GetMode::Ack,
        Some(other) => return Err(ApiError::bad_request(format!("unknown ackmode {other:?}"))),
        None => return Err(ApiError::bad_request("ackmode is required")),
    };
    let base64_always = match text(&body, "encoding")? {
        Some("auto") | None => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown encoding {other:?}"))),
    };
    let truncate = count(&body, "truncate")?.map(|t| usize::try_from(t).unwrap_or(usize::MAX));
    let n = usize::try_from(n.min(10_000)).unwrap_or(10_000);
    let messages = s.core.get(&vhost, &name, n, mode)?;
    let list = messages
        .iter()
        .map(|m| {
            let mut body = &m.body[..];
            if let Some(limit) = truncate {
                body = &body[..body.len().min(limit)];
            }
            let (payload, encoding) = match std::str::from_utf8(body) {
                Ok(text) if !base64_always => (text.to_owned(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(body),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": m.redelivered,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "message_count": m.message_count,
                "properties": convert::properties_to_json(&m.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `PUT /api/exchanges/{vhost}/{name}`: `type` (default `direct`), `durable`,
/// `auto_delete`, `internal`, `arguments`.
pub(crate) async fn put_exchange(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let body = object(&body)?;
    if name.is_empty() || name == "amq.default" || name.starts_with("amq.") {
        return Err(ApiError::not_authorised(format!(
            "access to exchange '{name}' in vhost '{vhost}' refused: the amq. prefix is reserved"
        )));
    }
    // RabbitMQ declares a direct exchange when no type is given.
    let kind = text(&body, "type")?.unwrap_or("direct");
    let options = ExchangeDeclareOptions {
        passive: false,
        durable: flag(&body, "durable", true)?,
        auto_delete: flag(&body, "auto_delete", false)?,
        internal: flag(&body, "internal", false)?,
        arguments: arguments(&body)?,
    };
    Ok(created(
        s.core.declare_exchange(&vhost, &name, kind, options)?,
    ))
}

/// `DELETE /api/exchanges/{vhost}/{name}`.
pub(crate) async fn delete_exchange(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    Query(when): Query<DeleteConditions>,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    s.core
        .delete_exchange(&vhost, exchange_name(&name), is_true(&when.if_unused))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `routing_key`, `payload`,
/// `payload_encoding` (`string` or `base64`), `properties`.
pub(crate) async fn publish(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let body = object(&body)?;
    let routing_key = text(&body, "routing_key")?
        .ok_or_else(|| ApiError::bad_request("routing_key is required"))?;
    let payload =
        text(&body, "payload")?.ok_or_else(|| ApiError::bad_request("payload is required"))?;
    let payload = match text(&body, "payload_encoding")? {
        Some("string") | None => payload.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown payload_encoding {other:?}"
            )))
        }
    };
    let properties = match body.get("properties") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(p)) => convert::properties_from_json(p)?,
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    let routed = s.core.publish(
        &vhost,
        exchange_name(&name),
        routing_key,
        properties,
        payload.into(),
    )?;
    Ok(Json(json!({ "routed": routed })))
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`:
/// `routing_key`, `arguments`. Answers 201 with the new binding's location.
pub(crate) async fn post_binding(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let kind = destination_kind(&kind)?;
    let body = object(&body)?;
    let routing_key = text(&body, "routing_key")?.unwrap_or("");
    let args = arguments(&body)?;
    let key = views::properties_key(routing_key, &convert::table_to_json(&args));
    s.core.bind(
        &vhost,
        exchange_name(&source),
        &destination,
        kind,
        routing_key,
        args,
    )?;
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        views::percent_encode(&vhost),
        views::percent_encode(&source),
        if kind == DestinationType::Queue {
            "q"
        } else {
            "e"
        },
        views::percent_encode(&destination),
        key
    );
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response())
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub(crate) async fn delete_binding(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Done {
    s.caller(&headers)?.require_vhost(&s.core, &vhost)?;
    let kind = destination_kind(&kind)?;
    let source = exchange_name(&source);
    let binding = s
        .core
        .list_bindings(Some(&vhost))?
        .into_iter()
        .find(|b| {
            b.source == source
                && b.destination == destination
                && b.destination_type == kind
                && views::properties_key(&b.routing_key, &convert::table_to_json(&b.arguments))
                    == views::percent_encode(&props)
        })
        .ok_or_else(ApiError::not_found)?;
    s.core.unbind(
        &vhost,
        source,
        &destination,
        kind,
        &binding.routing_key,
        binding.arguments,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/connections/{name}`: closes it with 320 CONNECTION_FORCED
/// and the `X-Reason` header's text.
pub(crate) async fn close_connection(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Done {
    let caller = s.caller(&headers)?;
    if !s
        .visible_connections(&caller)
        .iter()
        .any(|c| c.name == name)
    {
        return Err(ApiError::not_found());
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    s.core.close_connection(&name, reason)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_objects_and_empty_is_empty() {
        assert_eq!(object(b"").ok(), Some(Map::new()));
        assert_eq!(object(b" \n").ok(), Some(Map::new()));
        assert!(object(b"[1]").is_err());
        assert!(object(b"{").is_err());
    }

    #[test]
    fn tags_come_as_a_list_or_a_comma_separated_string() {
        let Value::Object(a) = json!({"tags": "administrator, monitoring"}) else {
            unreachable!()
        };
        let Value::Object(b) = json!({"tags": ["management"]}) else {
            unreachable!()
        };
        let Value::Object(c) = json!({"tags": 5}) else {
            unreachable!()
        };
        assert_eq!(
            tags(&a).ok().flatten(),
            Some(vec!["administrator".to_owned(), "monitoring".to_owned()])
        );
        assert_eq!(tags(&b).ok().flatten(), Some(vec!["management".to_owned()]));
        assert!(tags(&c).is_err());
    }
}
