//! The topology a warren heat-engine and heat-api declare on RabbitMQ equals
//! the one oslo.messaging declares (captured listing in
//! `tests/fixtures/oslo-topology.txt`), modulo uuids.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

#[warren::service(topic = "engine", version = "1.0", exchange = "heat")]
pub trait Engine {
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
}

struct HeatEngine;

impl Engine for HeatEngine {
    async fn health_check(&self, seqid: u64, _host: String, _req: String) -> (u64, String, String) {
        (seqid, "vm".into(), "I'm fine!".into())
    }
}

/// Replaces every 32-hex-digit uuid with `<uuid>`.
fn without_uuids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if run == 32 {
            out.push_str("<uuid>");
            i += 32;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn expected(section: &str) -> BTreeSet<String> {
    let header = format!("[{section}]");
    let lines: BTreeSet<String> = include_str!("../fixtures/oslo-topology.txt")
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(without_uuids)
        .collect();
    assert!(!lines.is_empty(), "section {section} in the fixture");
    lines
}

fn listed(vhost: &str, what: &str, columns: &[&str]) -> BTreeSet<String> {
    let mut args = vec![what, "-s", "-p", vhost];
    args.extend_from_slice(columns);
    rabbitmqctl(&args)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("amq."))
        .map(without_uuids)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_pair_declares_exactly_what_oslo_messaging_declares() {
    let (vhost, url) = rabbitmq_vhost();
    let engine_side = warren::connect(&url).await.unwrap();
    let api_side = warren::connect(&url).await.unwrap();
    let _engine = EngineServer::new(HeatEngine)
        .serve(&engine_side, "heat-engine")
        .await
        .unwrap();
    let api = EngineClient::new(&api_side).timeout(Duration::from_secs(20));
    let (seqid, _, answer) = api
        .health_check(0, "heat-api".into(), "How are you?".into())
        .await
        .unwrap();
    assert_eq!((seqid, answer.as_str()), (0, "I'm fine!"));

    let bindings = listed(
        &vhost,
        "list_bindings",
        &[
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
    );
    let queues = listed(
        &vhost,
        "list_queues",
        &["name", "durable", "auto_delete", "arguments"],
    );
    let exchanges: BTreeSet<String> = listed(
        &vhost,
        "list_exchanges",
        &["name", "type", "durable", "auto_delete"],
    )
    .into_iter()
    // The default exchange lists with an empty name.
    .filter(|l| !l.starts_with('\t'))
    .collect();
    rabbitmqctl(&["delete_vhost", &vhost]);
    assert_eq!(bindings, expected("bindings"));
    assert_eq!(queues, expected("queues"));
    assert_eq!(exchanges, expected("exchanges"));
}

/// `rabbitmqctl list_queues name durable arguments` in `vhost`, by name.
fn queues(vhost: &str) -> Vec<String> {
    let mut lines: Vec<String> = rabbitmqctl(&[
        "list_queues",
        "-s",
        "-p",
        vhost,
        "name",
        "durable",
        "arguments",
    ])
    .lines()
    .map(without_uuids)
    .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_url_options_change_the_topology_as_oslo_does() {
    for (options, expected) in [
        (
            "amqp_durable_queues=true&rabbit_transient_queues_ttl=60",
            vec![
                "engine\ttrue\t[]",
                "engine.heat-engine\ttrue\t[]",
                "engine_fanout_<uuid>\tfalse\t[{\"x-expires\",60000}]",
                "reply_<uuid>\tfalse\t[{\"x-expires\",60000}]",
            ],
        ),
        (
            "rabbit_quorum_queue=true&rabbit_transient_queues_ttl=0",
            vec![
                "engine\ttrue\t[{\"x-queue-type\",\"quorum\"}]",
                "engine.heat-engine\ttrue\t[{\"x-queue-type\",\"quorum\"}]",
                "engine_fanout_<uuid>\tfalse\t[]",
                "reply_<uuid>\tfalse\t[]",
            ],
        ),
    ] {
        let (vhost, url) = rabbitmq_vhost();
        let url = format!("{}?{options}", url.replacen("amqp://", "rabbit://", 1));
        let connection = warren::connect(&url).await.unwrap();
        let engine = EngineServer::new(HeatEngine)
            .serve(&connection, "heat-engine")
            .await
            .unwrap();
        let api = EngineClient::new(&connection).timeout(Duration::from_secs(20));
        api.health_check(0, "heat-api".into(), "How are you?".into())
            .await
            .unwrap();
        let listed = queues(&vhost);
        drop(engine);
        rabbitmqctl(&["delete_vhost", &vhost]);
        assert_eq!(listed, expected, "{options}");
    }
}
