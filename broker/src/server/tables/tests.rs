//! The scanner against amq-protocol's own encoder and parser: depth 100
//! passes and 101 fails, lying or truncated lengths fail, nothing panics, and
//! whatever amq-protocol parses (within the depth limit) the scanner accepts.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};

use super::{check_frame, check_table_body, TableError, MAX_DEPTH};

fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("frame encodes")
        .into_inner()
        .0
}

/// The payload of an encoded frame (between header and end marker).
fn payload(frame: &[u8]) -> &[u8] {
    &frame[7..frame.len() - 1]
}

/// A table whose containers nest `depth` deep (the table itself is 1),
/// built with amq-protocol's types: fine for depths its recursive encoder
/// and parser handle.
fn nested_value_table(depth: usize, arrays: bool) -> FieldTable {
    let mut inner: Option<AMQPValue> = None;
    for _ in 1..depth {
        inner = Some(if arrays {
            AMQPValue::FieldArray(FieldArray::from(inner.into_iter().collect::<Vec<_>>()))
        } else {
            let mut t = FieldTable::default();
            if let Some(v) = inner {
                t.insert("d".into(), v);
            }
            AMQPValue::FieldTable(t)
        });
    }
    let mut table = FieldTable::default();
    if let Some(v) = inner {
        table.insert("d".into(), v);
    }
    table
}

/// The entries of a table (no length prefix) whose containers nest `depth`
/// deep, written iteratively for depths amq-protocol's recursion cannot
/// encode: key "d" → array → array → ... → empty array.
fn nested_body(depth: usize) -> Vec<u8> {
    if depth < 2 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(2 + 5 * depth);
    out.extend_from_slice(&[1, b'd']);
    for level in 2..=depth {
        out.push(b'A');
        let inside = 5 * (depth - level);
        out.extend_from_slice(&u32::try_from(inside).expect("small").to_be_bytes());
    }
    out
}

fn declare(arguments: FieldTable) -> AMQPFrame {
    AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        })),
    )
}

/// One frame of every kind that carries a table, with `table` in it.
fn every_table_frame(table: &FieldTable) -> Vec<AMQPFrame> {
    let t = || table.clone();
    vec![
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: t(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: t(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "x".into(),
                kind: "direct".into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: t(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: t(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "k".into(),
                nowait: true,
                arguments: t(),
            })),
        ),
        declare(t()),
        AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: t(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                arguments: t(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "c".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: t(),
            })),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 3,
                properties: BasicProperties::default()
                    .with_content_type("text/plain".into())
                    .with_content_encoding("identity".into())
                    .with_headers(t())
                    .with_priority(3)
                    .with_message_id("m".into()),
            },
        ),
    ]
}

fn check(frame: &[u8]) -> Result<(), TableError> {
    check_frame(frame[0], payload(frame))
}

#[test]
fn depth_100_passes_and_101_fails_in_every_frame_with_a_table() {
    for arrays in [true, false] {
        for frame in every_table_frame(&nested_value_table(MAX_DEPTH, arrays)) {
            let bytes = encode(&frame);
            assert_eq!(check(&bytes), Ok(()), "depth {MAX_DEPTH}: {frame:?}");
            // And amq-protocol, which then parses it, agrees on the bytes.
            assert!(parse_frame(&bytes[..]).is_ok());
        }
        for frame in every_table_frame(&nested_value_table(MAX_DEPTH + 1, arrays)) {
            let bytes = encode(&frame);
            assert_eq!(
                check(&bytes),
                Err(TableError::TooDeep),
                "depth {}: {frame:?}",
                MAX_DEPTH + 1
            );
        }
    }
}

#[test]
fn the_iterative_builder_agrees_with_amq_protocol() {
    for depth in [1, 2, 3, 50, MAX_DEPTH] {
        let body = nested_body(depth);
        let mut framed = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&body);
        let (rest, table) =
            amq_protocol::types::parsing::parse_field_table(&framed[..]).expect("parses");
        assert!(rest.is_empty());
        assert_eq!(table, nested_value_table(depth, true), "depth {depth}");
    }
}

#[test]
fn a_table_body_100_deep_passes_and_101_fails() {
    assert_eq!(check_table_body(&nested_body(MAX_DEPTH)), Ok(()));
    assert_eq!(
        check_table_body(&nested_body(MAX_DEPTH + 1)),
        Err(TableError::TooDeep)
    );
}

#[test]
fn tens_of_thousands_of_levels_are_refused_without_recursion() {
    // 26,000 levels took a tokio worker's stack in amq-protocol's parser; the
    // scanner runs them on this test thread's stack without noticing.
    let body = nested_body(26_000);
    assert_eq!(check_table_body(&body), Err(TableError::TooDeep));
    let frame = encode(&declare(FieldTable::default()));
    let mut deep = frame[..frame.len() - 5].to_vec();
    deep.extend_from_slice(&u32::try_from(body.len()).expect("fits").to_be_bytes());
    deep.extend_from_slice(&body);
    assert_eq!(check_frame(1, &deep[7..]), Err(TableError::TooDeep));
}

/// A table with one value of every type amq-protocol knows.
fn every_type() -> FieldTable {
    let mut t = FieldTable::default();
    let values = [
        AMQPValue::Boolean(true),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::ShortShortUInt(1),
        AMQPValue::ShortInt(-2),
        AMQPValue::ShortUInt(2),
        AMQPValue::LongInt(-3),
        AMQPValue::LongUInt(3),
        AMQPValue::LongLongInt(-4),
        AMQPValue::Float(1.5),
        AMQPValue::Double(2.5),
        AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 }),
        AMQPValue::LongString("long".into()),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Void,
            AMQPValue::LongString("in array".into()),
        ])),
        AMQPValue::Timestamp(7),
        AMQPValue::FieldTable(nested_value_table(3, false)),
        AMQPValue::ByteArray(vec![0, 1, 2].into()),
        AMQPValue::Void,
    ];
    for (i, v) in values.into_iter().enumerate() {
        t.insert(format!("k{i}").into(), v);
    }
    t
}

#[test]
fn every_value_type_is_walked_to_its_exact_end() {
    for frame in every_table_frame(&every_type()) {
        let bytes = encode(&frame);
        assert_eq!(check(&bytes), Ok(()), "{frame:?}");
    }
}

#[test]
fn truncated_payloads_fail_and_never_panic() {
    for frame in every_table_frame(&every_type()) {
        let bytes = encode(&frame);
        let whole = payload(&bytes);
        for cut in 0..whole.len() {
            let r = check_frame(bytes[0], &whole[..cut]);
            // Cut inside the table (or before it): refused. Cut after it: the
            // scanner has nothing left to check.
            if r.is_ok() {
                assert!(
                    parse_frame_payload(bytes[0], &whole[..cut]).is_err(),
                    "accepted a truncated frame the parser also accepts? {frame:?} at {cut}"
                );
            }
        }
    }
    // The table itself, cut anywhere before its end, is malformed.
    let body = nested_body(10);
    for cut in 0..body.len() {
        let r = check_table_body(&body[..cut]);
        assert!(
            r == Ok(()) || r == Err(TableError::Malformed),
            "{cut}: {r:?}"
        );
    }
}

/// Re-frames `payload` with amq-protocol's frame header and parses it.
fn parse_frame_payload(frame_type: u8, payload: &[u8]) -> Result<AMQPFrame, ()> {
    let mut frame = vec![frame_type, 0, 1];
    frame.extend_from_slice(&u32::try_from(payload.len()).map_err(|_| ())?.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    parse_frame(&frame[..]).map(|(_, f)| f).map_err(|_| ())
}

#[test]
fn lengths_that_lie_fail() {
    let body = nested_body(5);
    // The outer table claims more than the frame holds.
    let mut framed = u32::try_from(body.len() + 1)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&body);
    let frame = encode(&declare(FieldTable::default()));
    let mut lying = frame[..frame.len() - 5].to_vec();
    lying.extend_from_slice(&framed);
    assert_eq!(check_frame(1, &lying[7..]), Err(TableError::Malformed));
    // An inner array claims more than its parent holds (the frame is longer).
    let mut inner = nested_body(5);
    inner[2 + 1..2 + 5].copy_from_slice(&100u32.to_be_bytes());
    inner.extend_from_slice(&[0; 200]);
    let mut t = u32::try_from(2 + 5 * 4)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    t.extend_from_slice(&inner);
    let mut lying = frame[..frame.len() - 5].to_vec();
    lying.extend_from_slice(&t);
    assert_eq!(check_frame(1, &lying[7..]), Err(TableError::Malformed));
    // A length of u32::MAX.
    let mut huge = vec![1, b'd', b'S'];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(check_table_body(&huge), Err(TableError::Malformed));
}

#[test]
fn unknown_type_tags_fail() {
    for tag in 0..=255u8 {
        let body = [1, b'k', tag, 0, 0, 0, 0, 0, 0, 0, 0];
        let known = amq_protocol::types::AMQPType::from_id(char::from(tag)).is_some();
        let r = check_table_body(&body);
        if !known {
            assert_eq!(r, Err(TableError::Malformed), "tag {tag}");
        }
    }
}

/// A small deterministic generator (xorshift), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<Vec<u8>> = every_table_frame(&every_type())
        .iter()
        .chain(every_table_frame(&nested_value_table(MAX_DEPTH, true)).iter())
        .map(encode)
        .collect();
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = u8::try_from(rng.next() & 0xFF).unwrap_or(0),
                1 => bytes.truncate(at.max(8)),
                _ => bytes.insert(at, u8::try_from(rng.next() & 0xFF).unwrap_or(0)),
            }
        }
        let ftype = bytes[0];
        let body = bytes.get(7..bytes.len().saturating_sub(1)).unwrap_or(&[]);
        let scanned = check_frame(ftype, body);
        if scanned.is_err() {
            continue;
        }
        // Accepted by the scanner: the recursive parser may still refuse it,
        // but runs at most MAX_DEPTH levels deep.
        let _ = parse_frame_payload(ftype, body);
    }
    for round in 0..20_000u64 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| u8::try_from(rng.next() & 0xFF).unwrap_or(0))
            .collect();
        let _ = check_frame(u8::try_from(round % 4).unwrap_or(1), &bytes);
        let _ = check_table_body(&bytes);
    }
}

#[test]
fn what_the_parser_accepts_the_scanner_accepts() {
    let mut rng = Rng(42);
    let seeds: Vec<Vec<u8>> = every_table_frame(&every_type())
        .iter()
        .map(encode)
        .collect();
    let mut parsed = 0;
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        let at = rng.below(bytes.len() - 8) + 7;
        bytes[at] = u8::try_from(rng.next() & 0xFF).unwrap_or(0);
        let body = &bytes[7..bytes.len() - 1];
        if parse_frame_payload(bytes[0], body).is_ok() {
            parsed += 1;
            assert_eq!(
                check_frame(bytes[0], body),
                Ok(()),
                "the parser accepts what the scanner refuses: {bytes:?}"
            );
        }
    }
    assert!(
        parsed > 1_000,
        "too few mutants parsed ({parsed}) to mean anything"
    );
}
