//! The broker conformance spec: each AMQP behaviour once, run as a matrix of
//! clients (lapin from Rust, pika and kombu from Python) × brokers (warren's,
//! over TCP, and RabbitMQ, the reference), with the same assertions on both.
//!
//! A row names a behaviour and the clients that exercise it; each client
//! implements it under the row's name: lapin in [`crate::lapin_spec`], pika
//! and kombu as a `@feature` function in `tests/python/pika_spec.py` and
//! `tests/python/kombu_spec.py`. Every cell is a test of its own:
//! `spec::<behaviour>::<client>::<broker>`, so `cargo test --test broker
//! prefetch` runs one behaviour everywhere and `-- pika::rabbitmq` one
//! column. [`python_specs_hold_exactly_the_rows`] keeps the Python files and
//! the rows in step.
//!
//! A Python spec file runs once per broker (one interpreter, every feature,
//! each with its own names and clean-up) and its tests read their feature's
//! outcome from that run; a failed feature's test shows its traceback.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{embedded_broker, python_run, rabbitmq_url, repo, unique};

/// One test per client and broker for each row `behaviour: [clients]`.
macro_rules! spec {
    ($($row:ident: [$($client:ident),+ $(,)?]),* $(,)?) => {
        /// Every row, with the clients that implement it.
        pub const ROWS: &[(&str, &[&str])] = &[$((stringify!($row), &[$(stringify!($client)),+])),*];
        $(
            #[allow(non_snake_case)]
            mod $row {
                $( cell!($client, $row); )+
            }
        )*
    };
}

/// The tests of one cell of the matrix: `client` doing `row` on each broker.
macro_rules! cell {
    (lapin, $row:ident) => {
        mod lapin {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let broker = $crate::common::embedded_broker().await;
                $crate::lapin_spec::$row(broker.url()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                $crate::lapin_spec::$row($crate::common::rabbitmq_url()).await
            }
        }
    };
    ($client:ident, $row:ident) => {
        mod $client {
            #[test]
            fn embedded() {
                $crate::spec::python_feature(
                    stringify!($client),
                    $crate::spec::Broker::Embedded,
                    stringify!($row),
                )
            }

            #[test]
            fn rabbitmq() {
                $crate::spec::python_feature(
                    stringify!($client),
                    $crate::spec::Broker::RabbitMq,
                    stringify!($row),
                )
            }
        }
    };
}

spec! {
    // Routing.
    direct_routing: [lapin, pika, kombu],
    fanout_routing: [lapin, pika, kombu],
    topic_routing: [lapin, pika, kombu],
    headers_routing: [lapin, pika, kombu],
    exchange_to_exchange_binding: [lapin, pika],
    alternate_exchange: [pika],
    internal_exchange: [pika],
    binding_errors: [pika],

    // Getting and consuming.
    consume_and_ack: [lapin, pika, kombu],
    basic_get_and_get_empty: [pika],
    round_robin_between_consumers: [lapin],
    server_named_queue_and_large_message: [lapin],
    properties_round_trip: [pika],

    // Acknowledgements.
    ack_nack_reject_requeue: [lapin, pika, kombu],
    consumer_redelivery: [lapin, pika],
    unacked_messages_return_in_order_when_a_channel_closes: [lapin],
    ack_multiple_and_requeue_order: [pika],
    recover_redelivers: [pika],
    prefetch: [lapin, pika, kombu],

    // Publishing.
    publisher_confirms: [lapin, pika, kombu],
    mandatory_returns: [lapin, pika, kombu],
    transactions: [lapin, pika],
    tx_commit_with_a_refused_message_fails: [pika],
    acks_in_a_transaction_take_their_deliveries: [pika],
    tx_and_confirm_do_not_mix: [pika],
    direct_reply_to: [lapin, pika],

    // Queue arguments.
    message_ttl: [lapin, pika, kombu],
    queue_expires: [lapin, pika],
    dead_lettering: [lapin, pika, kombu],
    dead_letter_routing_key_and_count: [pika],
    expired_dead_letter_cycles_are_dropped: [pika],
    max_length: [lapin, pika, kombu],
    reject_publish_dlx_and_max_length_bytes: [pika],
    max_priority: [pika],
    invalid_queue_arguments_are_406: [pika],
    quorum_queue_delivery_limit: [pika],

    // Lifetimes.
    exclusive_queue: [lapin, pika, kombu],
    auto_delete_queue: [pika],
    auto_delete_exchange: [pika],
    deleting_a_queue_cancels_consumers: [lapin, pika],
    purge_counts: [pika],
    queue_delete_if_empty_if_unused: [pika],
    exchange_delete_if_unused: [pika],

    // Errors, with their reply codes.
    passive_declare_missing_is_404: [lapin, pika, kombu],
    consume_from_missing_queue_is_404: [pika],
    publish_to_missing_exchange_is_404: [lapin, pika],
    exclusive_consumer_is_403: [pika],
    reserved_names_are_403: [lapin, pika, kombu],
    redeclare_with_other_flags_is_406: [lapin, pika, kombu],
    unknown_delivery_tag_is_406: [lapin, pika],
    user_id_must_match_is_406: [pika],
    invalid_expiration_is_406: [pika],
    oversized_frame_is_501: [pika],
    duplicate_consumer_tag_is_530: [pika],
    immediate_publish_is_540: [lapin],

    // Connections.
    amqplain_login: [lapin],
    wrong_password_is_refused: [lapin, pika],
    missing_vhost_is_refused: [pika],
}

/// The broker a Python spec file runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    /// warren's broker over TCP: one for all the Python runs of this process.
    Embedded = 0,
    /// The RabbitMQ the tests use.
    RabbitMq = 1,
}

/// Generous: a spec file takes seconds; this only turns a hang into a
/// failure (each feature also has its own guard inside the script).
const PYTHON_LIMIT: Duration = Duration::from_secs(300);

/// The URL of warren's broker for the Python runs: started once, on a
/// thread of its own, so it outlives the test that asked first.
fn shared_embedded_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the shared broker");
            runtime.block_on(async move {
                let broker = embedded_broker().await;
                let _ = tx.send(broker.url());
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("the shared embedded broker starts")
    })
    .clone()
}

/// What one run of a spec file said about each feature: `Ok` or the
/// traceback it printed.
type Outcomes = Result<HashMap<String, Result<(), String>>, String>;

/// The clients whose rows run from a Python spec file.
const PYTHON_CLIENTS: [&str; 2] = ["pika", "kombu"];

/// The spec file of a Python client.
fn spec_file(client: &str) -> String {
    format!("{client}_spec.py")
}

/// Runs `client`'s spec file against `broker` (once per process) and reads
/// what it printed: `ok <feature>`, or `FAILED <feature>` then a traceback.
fn run_spec(client: &str, broker: Broker) -> &'static Outcomes {
    static RUNS: [OnceLock<Outcomes>; 4] = [const { OnceLock::new() }; 4];
    let client_index = PYTHON_CLIENTS
        .iter()
        .position(|c| *c == client)
        .unwrap_or_else(|| panic!("{client} is not one of {PYTHON_CLIENTS:?}"));
    let cell = &RUNS[client_index * 2 + broker as usize];
    cell.get_or_init(|| {
        let url = match broker {
            Broker::Embedded => shared_embedded_url(),
            Broker::RabbitMq => rabbitmq_url(),
        };
        let suffix = unique(client);
        let run = python_run(PYTHON_LIMIT, &spec_file(client), &[&url, &suffix]);
        let mut outcomes = HashMap::new();
        let mut failing: Option<(String, String)> = None;
        for line in run.stdout.lines() {
            let verdict = line
                .strip_prefix("ok ")
                .map(|f| (f, true))
                .or_else(|| line.strip_prefix("FAILED ").map(|f| (f, false)));
            let ends_run = line.starts_with(&format!("{client} "));
            if verdict.is_some() || ends_run {
                if let Some((feature, trace)) = failing.take() {
                    outcomes.insert(feature, Err(trace));
                }
            }
            match verdict {
                Some((feature, true)) => {
                    outcomes.insert(feature.to_owned(), Ok(()));
                }
                Some((feature, false)) => failing = Some((feature.to_owned(), String::new())),
                None => {
                    if let Some((_, trace)) = failing.as_mut() {
                        trace.push_str(line);
                        trace.push('\n');
                    }
                }
            }
        }
        if let Some((feature, trace)) = failing.take() {
            outcomes.insert(feature, Err(trace));
        }
        let finished = run
            .stdout
            .lines()
            .any(|l| l == format!("{client} OK") || l.starts_with(&format!("{client} FAILED")));
        if finished {
            Ok(outcomes)
        } else {
            Err(format!(
                "{} against {url} did not finish ({:?})\nstdout:\n{}\nstderr:\n{}",
                spec_file(client),
                run.status,
                run.stdout,
                run.stderr
            ))
        }
    })
}

/// The test of `client` doing `feature` on `broker`: its outcome in that
/// client's run of its spec file.
pub fn python_feature(client: &str, broker: Broker, feature: &str) {
    match run_spec(client, broker) {
        Err(run) => panic!("{run}"),
        Ok(outcomes) => match outcomes.get(feature) {
            Some(Ok(())) => {}
            Some(Err(trace)) => panic!(
                "{client} {feature} on {broker:?} failed:\n{trace}",
                client = client
            ),
            None => panic!(
                "{} reported nothing for {feature}: is it a @feature there?",
                spec_file(client)
            ),
        },
    }
}

/// The `@feature` functions of a Python spec file, in file order.
fn python_features(client: &str) -> Vec<String> {
    let path = repo().join("tests/python").join(spec_file(client));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut features = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "@feature" {
            let def = lines.next().unwrap_or_default();
            let name = def
                .strip_prefix("def ")
                .and_then(|d| d.split('(').next())
                .unwrap_or_else(|| panic!("@feature before {def:?}"));
            features.push(name.to_owned());
        }
    }
    features
}

/// Each Python spec file implements exactly the rows that list its client,
/// and each row is a behaviour of its own.
#[test]
fn python_specs_hold_exactly_the_rows() {
    let mut names: Vec<&str> = ROWS.iter().map(|(row, _)| *row).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "a row appears twice");
    for client in PYTHON_CLIENTS {
        let mut in_file = python_features(client);
        in_file.sort();
        let mut in_spec: Vec<String> = ROWS
            .iter()
            .filter(|(_, clients)| clients.contains(&client))
            .map(|(row, _)| (*row).to_owned())
            .collect();
        in_spec.sort();
        assert_eq!(
            in_file,
            in_spec,
            "{} and the spec's rows for {client} differ",
            spec_file(client)
        );
    }
}
