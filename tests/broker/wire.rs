//! The wire, byte by byte: a wrong protocol header (on both brokers), and
//! malformed frames and out-of-place methods, which warren's broker answers
//! with connection.close and its reply code (RabbitMQ drops a connection
//! sending garbage before start-ok without a close, so those run on warren's
//! broker only). After each, the broker still serves a new client.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::embedded_broker;
use crate::common::raw::{Opts, Peer};

const WAIT: Duration = Duration::from_secs(10);

crate::on_both_brokers!(wrong_protocol_header_gets_the_0_9_1_header_back);

fn addr_of(url: &str) -> String {
    let uri: amq_protocol::uri::AMQPUri = url.parse().expect("an AMQP URL");
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Everything the broker sends until it closes (or resets) the socket.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the broker kept the socket open: {out:?}"),
        }
    }
}

/// A client speaking another protocol gets the header of the one the
/// broker speaks, and is hung up on.
async fn wrong_protocol_header_gets_the_0_9_1_header_back(url: String) {
    for hello in [&b"HTTP/1.1"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut s = TcpStream::connect(addr_of(&url)).await.expect("connect");
        s.write_all(hello).await.expect("write");
        assert_eq!(read_until_closed(&mut s).await, b"AMQP\x00\x00\x09\x01");
    }
    served(&url).await;
}

/// A new lapin client publishes and gets a message back.
async fn served(url: &str) {
    let c = tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect hung")
    .expect("connect");
    let ch = c.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare")
        .name()
        .clone();
    ch.basic_publish(
        "".into(),
        q.clone(),
        BasicPublishOptions::default(),
        b"still here",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let got = ch
        .basic_get(q, BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message");
    assert_eq!(got.delivery.data, b"still here");
}

/// The reply code of the connection.close the broker sends, reading until
/// it closes the socket.
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    let buf = read_until_closed(s).await;
    let mut at = 0;
    // Frames: type(1) channel(2) size(4) payload end(1).
    while buf.len() >= at + 7 {
        let size =
            u32::from_be_bytes([buf[at + 3], buf[at + 4], buf[at + 5], buf[at + 6]]) as usize;
        if buf.len() < at + size + 8 {
            break;
        }
        let payload = &buf[at + 7..at + 7 + size];
        if buf[at] == 1 && payload.len() >= 6 && payload[..4] == [0, 10, 0, 50] {
            return Some(u16::from_be_bytes([payload[4], payload[5]]));
        }
        at += size + 8;
    }
    None
}

/// Garbage right after the protocol header (a frame larger than frame_max,
/// a bad frame-end byte, an unknown frame type) is 501 FRAME_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_the_handshake_is_501_and_the_broker_keeps_serving() {
    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    let garbage: [&[u8]; 4] = [
        b"\x01\x00\x00\xff\xff\xff\xffjunk", // a frame larger than frame_max
        b"\x01\x00\x00\x00\x00\x00\x02ab\x00", // bad frame-end byte
        b"\x09\x00\x00\x00\x00\x00\x00\xce", // unknown frame type
        &[1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4, 0x00], // a method frame, bad frame end
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("write");
        s.write_all(bytes).await.expect("write");
        assert_eq!(close_code(&mut s).await, Some(501), "{bytes:?}");
    }
    served(&broker.url()).await;
}

/// After the handshake: a frame larger than frame_max or a bad frame end
/// is 501, a method on a channel never opened 504, an unknown class 540, a
/// content header without a publish 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_out_of_place_methods_get_their_close_codes() {
    let broker = embedded_broker().await;
    let url = broker.url();
    let before = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let cases: [(&str, Vec<u8>, u16); 5] = [
        (
            "a frame larger than frame_max",
            {
                let mut big = vec![1u8, 0, 1];
                big.extend_from_slice(&200_000u32.to_be_bytes());
                big
            },
            501,
        ),
        (
            "a bad frame end",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 20, 0, 10, 0xAB],
            501,
        ),
        // basic.qos (class 60, method 10) on channel 3, never opened.
        (
            "a method on a channel never opened",
            vec![
                1, 0, 3, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 0, 0, 1, 0, 0xCE,
            ],
            504,
        ),
        (
            "an unknown class",
            vec![1, 0, 0, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE],
            540,
        ),
        // channel.open on 1, then a content header there.
        (
            "a content header without a publish",
            vec![
                1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE, //
                2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xCE,
            ],
            505,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut peer = Peer::open(
            &url,
            Opts {
                tolerate_hangup: true,
                ..Opts::default()
            },
        )
        .await;
        peer.send_raw(&bytes).await;
        let mut s = peer.sock;
        let mut seen = peer.buf;
        seen.extend(read_until_closed(&mut s).await);
        let at = seen
            .windows(4)
            .position(|w| w == [0, 10, 0, 50])
            .unwrap_or_else(|| panic!("{what}: no connection.close in {seen:?}"));
        assert_eq!(
            u16::from_be_bytes([seen[at + 4], seen[at + 5]]),
            code,
            "{what}"
        );
    }
    served(&url).await;
    // The connection opened before them is still served too.
    let ch = before
        .create_channel()
        .await
        .expect("channel on the old connection");
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare on the old connection");
}
