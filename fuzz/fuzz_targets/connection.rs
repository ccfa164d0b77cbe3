//! Feeds arbitrary bytes to the broker's connection state machine, raw or
//! after a valid handshake (so the fuzzer reaches channel and content
//! handling). The broker must never panic, whatever it is sent, nor run out
//! of stack: it runs on a thread with tokio's default worker stack (2 MiB),
//! where a field table nested a thousand levels deep used to abort it.
#![no_main]

use amq_protocol::frame::{gen_frame, AMQPFrame, ProtocolVersion, WriteContext};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::FieldTable;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use warren_broker::core::permission::Permissions;

/// tokio's default worker thread stack size.
const WORKER_STACK: usize = 2 * 1024 * 1024;

fn frames(frames: &[AMQPFrame]) -> Vec<u8> {
    let mut buf = Vec::new();
    for frame in frames {
        buf = gen_frame(frame)(WriteContext::from(buf))
            .expect("valid frame")
            .into_inner()
            .0;
    }
    buf
}

fn handshake() -> Vec<u8> {
    frames(&[
        AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
    ])
}

/// Every permission, its regular expressions compiled once: compiling them
/// for each input took most of its time (60 inputs/s instead of 650).
fn all_permissions() -> Permissions {
    static ALL: OnceLock<Permissions> = OnceLock::new();
    ALL.get_or_init(|| Permissions::new(".*", ".*", ".*").expect("valid patterns"))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut input = handshake();
        input.extend_from_slice(rest);
        input
    };
    // The broker's stack is the worker's: a current-thread runtime on a
    // thread of its own, sized like a tokio worker.
    let broker = std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let core = warren_broker::core::Core::new(
                    &[("guest".to_owned(), "guest".to_owned())],
                    &[],
                );
                // Users may use nothing until granted, as in RabbitMQ.
                core.set_permissions("guest", "/", all_permissions());
                warren_broker::server::serve_bytes(core, &input).await;
            });
        })
        .expect("a broker thread");
    if let Err(panic) = broker.join() {
        std::panic::resume_unwind(panic);
    }
});
