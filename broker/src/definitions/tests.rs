use super::*;

use std::sync::Arc;

/// An export of RabbitMQ 3.10.8 (`rabbitmqctl export_definitions -`), trimmed.
const RABBITMQ_EXPORT: &str = r##"{
  "bindings": [
    {"arguments": {}, "destination": "edge.results", "destination_type": "queue",
     "routing_key": "results", "source": "edge", "vhost": "edge"},
    {"arguments": {}, "destination": "edge.audit", "destination_type": "exchange",
     "routing_key": "#", "source": "edge", "vhost": "edge"}
  ],
  "exchanges": [
    {"arguments": {}, "auto_delete": false, "durable": true, "name": "edge",
     "type": "topic", "vhost": "edge", "internal": false},
    {"arguments": {"alternate-exchange": "edge"}, "auto_delete": false, "durable": true,
     "name": "edge.audit", "type": "fanout", "vhost": "edge", "internal": false}
  ],
  "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"}],
  "parameters": [],
  "permissions": [
    {"configure": ".*", "read": ".*", "user": "guest", "vhost": "/", "write": ".*"},
    {"configure": "^edge\\.", "read": ".*", "user": "edge-admin", "vhost": "edge", "write": ".*"}
  ],
  "policies": [],
  "queues": [
    {"arguments": {"x-max-length": 1000, "x-dead-letter-exchange": "edge"},
     "auto_delete": false, "durable": true, "name": "edge.results", "type": "classic",
     "vhost": "edge"}
  ],
  "rabbit_version": "3.10.8",
  "rabbitmq_version": "3.10.8",
  "topic_permissions": [],
  "users": [
    {"hashing_algorithm": "rabbit_password_hashing_sha256", "limits": {}, "name": "guest",
     "password_hash": "uY9uqw40V4ZM3yiTjdIPLFJxw9iCxF3TAcvQsMBPRgsRW0XJ", "tags": ["administrator"]},
    {"hashing_algorithm": "rabbit_password_hashing_sha256", "limits": {}, "name": "edge-admin",
     "password_hash": "uY9uqw40V4ZM3yiTjdIPLFJxw9iCxF3TAcvQsMBPRgsRW0XJ", "tags": "administrator,monitoring"}
  ],
  "vhosts": [
    {"limits": [], "metadata": {"description": "Default virtual host", "tags": []}, "name": "/"},
    {"limits": [], "metadata": {"description": "", "tags": []}, "name": "edge"}
  ]
}"##;

fn core() -> Arc<Core> {
    Core::new(&[], &[])
}

#[test]
fn a_rabbitmq_export_imports_and_exports_back_the_same() {
    let defs = Definitions::parse(RABBITMQ_EXPORT).expect("parses");
    assert_eq!(defs.users[1].tags, ["administrator", "monitoring"]);
    assert_eq!(defs.unsupported, [("global_parameters".to_owned(), 1)]);
    let core = core();
    let summary = defs.import(&core).expect("imports");
    assert_eq!(
        (summary.users, summary.vhosts, summary.permissions),
        (2, 2, 2)
    );
    assert_eq!(
        (summary.queues, summary.exchanges, summary.bindings),
        (1, 2, 2)
    );
    assert_eq!(summary.ignored, ["global_parameters: 1"]);
    // The password behind RabbitMQ's hash: "guest".
    assert!(core.authenticate("edge-admin", "guest"));
    assert!(core.can_access("edge-admin", "edge"));

    let exported = Definitions::export(&core).expect("exports");
    let mut expected = defs.clone();
    expected.rabbit_version = Some(PRODUCT.to_owned());
    expected.unsupported.clear();
    expected.users.sort_by(|a, b| a.name.cmp(&b.name));
    expected
        .bindings
        .sort_by(|a, b| a.destination.cmp(&b.destination));
    expected.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    let mut got = exported.clone();
    got.bindings
        .sort_by(|a, b| a.destination.cmp(&b.destination));
    assert_eq!(got, expected);

    // And its JSON reads back as the same definitions, importable again.
    let text = exported.to_json().to_string();
    let again = Definitions::parse(&text).expect("re-parses");
    assert_eq!(again, exported);
    again.import(&core).expect("idempotent");
}

#[test]
fn bad_files_name_the_field() {
    let err = |text: &str| match Definitions::parse(text) {
        Err(e) => e.to_string(),
        Ok(d) => match d.import(&core()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        },
    };
    assert!(err("{").starts_with("definitions are not valid JSON"));
    assert_eq!(err("[]"), "(top level): expected an object, got an array");
    assert_eq!(
        err(r#"{"users": {}}"#),
        "users: expected an array, got an object"
    );
    assert_eq!(
        err(r#"{"users": [{"password_hash": "x"}]}"#),
        "users[0].name: missing"
    );
    assert!(
        err(r#"{"users": [{"name": "u", "password_hash": "not base64!"}]}"#)
            .starts_with("users[0].password_hash: not a RabbitMQ SHA-256 password hash")
    );
    assert_eq!(
        err(r#"{"users": [{"name": "u", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_md5"}]}"#),
        "users[0].hashing_algorithm: unsupported 'rabbit_password_hashing_md5' (warren reads rabbit_password_hashing_sha256)"
    );
    assert_eq!(
        err(r#"{"users": [{"name": "u", "tags": 3}]}"#),
        "users[0].tags: expected a list or a comma-separated string, got a number"
    );
    assert_eq!(
        err(r#"{"queues": [{"name": "q", "vhost": "/", "durable": 1}]}"#),
        "queues[0].durable: expected a boolean, got a number"
    );
    assert_eq!(
        err(r#"{"queues": [{"name": "q", "vhost": "/", "arguments": {"x": {"y": [1, 1e400]}}}]}"#)
            .split(':')
            .next(),
        Some("definitions are not valid JSON")
    );
    assert_eq!(
        err(r#"{"queues": [{"name": "q", "vhost": "/", "arguments": []}]}"#),
        "queues[0].arguments: expected an object, got an array"
    );
    assert_eq!(
        err(r#"{"exchanges": [{"name": "x", "vhost": "/", "type": "x-delayed"}]}"#),
        "exchanges[0].type: unknown exchange type 'x-delayed'"
    );
    assert_eq!(
        err(
            r#"{"bindings": [{"source": "x", "vhost": "/", "destination": "q", "destination_type": "stream"}]}"#
        ),
        "bindings[0].destination_type: expected 'queue' or 'exchange', got 'stream'"
    );
    assert!(err(r#"{"permissions": [{"user": "guest", "vhost": "/", "configure": "(", "write": "", "read": ""}]}"#)
        .starts_with("permissions[0].configure: not a regular expression"));
    assert_eq!(
        err(r#"{"queues": [{"name": "q", "vhost": "nowhere"}]}"#),
        "queues[0].vhost: vhost 'nowhere' does not exist (neither in the broker nor in the file)"
    );
    assert_eq!(
        err(
            r#"{"permissions": [{"user": "ghost", "vhost": "/", "configure": "", "write": "", "read": ""}]}"#
        ),
        "permissions[0].user: user 'ghost' does not exist (neither in the broker nor in the file)"
    );
    // An inequivalent redeclaration is the broker's refusal, named.
    let core = core();
    let q = r#"{"queues": [{"name": "q", "vhost": "/", "durable": true}]}"#;
    Definitions::parse(q)
        .expect("parses")
        .import(&core)
        .expect("imports");
    let e = Definitions::parse(r#"{"queues": [{"name": "q", "vhost": "/", "durable": false}]}"#)
        .expect("parses")
        .import(&core)
        .expect_err("inequivalent");
    assert!(
        e.to_string()
            .starts_with("queues[0]: PRECONDITION_FAILED - inequivalent arg 'durable'"),
        "{e}"
    );
}
