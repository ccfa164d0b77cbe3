//! Codec round trips, and the oslo envelope against the captured bytes.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct HealthCheck {
    seqid: u64,
    host: String,
    req: String,
}

fn health_check(codec: Codec) -> Request {
    Request {
        method: "health_check".into(),
        args: Args::encode(
            codec,
            &HealthCheck {
                seqid: 0,
                host: "heat-api".into(),
                req: "How are you?".into(),
            },
        )
        .unwrap(),
        namespace: None,
        version: Some("1.0".into()),
        reply: Some(ReplyTo {
            queue: "reply_b9d558bd91624d409a1d84080137cd84".into(),
            msg_id: "6e0509d917394247affb6b6d6b9979ef".into(),
        }),
        timeout: None,
        unique_id: Some("b036b19a474643f9970d1bdcd53f907b".into()),
        context: Context::new(),
    }
}

#[test]
fn oslo_request_matches_the_captured_bytes() {
    let body = Codec::OsloJson
        .encode_request(&health_check(Codec::OsloJson))
        .unwrap();
    let captured = r#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"health_check\",\"args\":{\"seqid\":0,\"host\":\"heat-api\",\"req\":\"How are you?\"},\"version\":\"1.0\",\"_msg_id\":\"6e0509d917394247affb6b6d6b9979ef\",\"_reply_q\":\"reply_b9d558bd91624d409a1d84080137cd84\",\"_timeout\":null,\"_unique_id\":\"b036b19a474643f9970d1bdcd53f907b\"}"}"#;
    assert_eq!(std::str::from_utf8(&body).unwrap(), captured);
}

#[test]
fn captured_python_request_with_context_decodes() {
    let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"add\", \"args\": {\"a\": 1, \"b\": 2}, \"version\": \"1.2\", \"_msg_id\": \"05e83609bbcd4ff1bd4cbabebd5dea79\", \"_reply_q\": \"reply_3080b94eb8ea429ca91c78cdc67a7325\", \"_timeout\": null, \"_unique_id\": \"b846f24dc3ce43509aaaa21784185a1a\", \"_context_request_id\": \"req-6d1f\", \"_context_user_id\": \"u1\", \"_context_is_admin\": false}"}"#;
    let r = Codec::OsloJson
        .decode_request(&Bytes::from_static(body))
        .unwrap();
    assert_eq!(r.method, "add");
    assert_eq!(r.version.as_deref(), Some("1.2"));
    assert_eq!(
        r.reply,
        Some(ReplyTo {
            queue: "reply_3080b94eb8ea429ca91c78cdc67a7325".into(),
            msg_id: "05e83609bbcd4ff1bd4cbabebd5dea79".into(),
        })
    );
    let values = r.context.values();
    assert_eq!(values["user_id"], serde_json::json!("u1"));
    assert_eq!(values["is_admin"], serde_json::json!(false));
    assert_eq!(values.len(), 3);
    #[derive(Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    let args: Add = r.args.decode().unwrap();
    assert_eq!((args.a, args.b), (1, 2));
}

#[test]
fn captured_python_failure_reply_decodes() {
    let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": \"{\\\"class\\\": \\\"ValueError\\\", \\\"module\\\": \\\"builtins\\\", \\\"message\\\": \\\"boom\\\", \\\"tb\\\": [\\\"Traceback (most recent call last):\\\\n\\\", \\\"ValueError: boom\\\\n\\\"], \\\"args\\\": [\\\"boom\\\"], \\\"kwargs\\\": {}}\", \"ending\": true, \"_msg_id\": \"f797e16db7ac45d0b942a797f74e191b\", \"_unique_id\": \"259c87448ca943f4b7048ad0a7b1c7cb\"}"}"#;
    let reply = Codec::OsloJson
        .decode_reply(&Bytes::from_static(body))
        .unwrap();
    assert_eq!(
        reply.msg_id.as_deref(),
        Some("f797e16db7ac45d0b942a797f74e191b")
    );
    let failure = reply.outcome.unwrap_err();
    assert_eq!(failure.class, "ValueError");
    assert_eq!(failure.module, "builtins");
    assert_eq!(failure.message, "boom");
    assert_eq!(failure.tb.len(), 2);
}

#[test]
fn legacy_unenveloped_request_is_accepted() {
    let r = Codec::OsloJson
        .decode_request(&Bytes::from_static(
            br#"{"method": "ping", "args": {"x": 1}}"#,
        ))
        .unwrap();
    assert_eq!(r.method, "ping");
    assert_eq!(&r.args.raw()[..], br#"{"x": 1}"#);
}

#[test]
fn unknown_envelope_version_is_rejected() {
    let err = Codec::OsloJson
        .decode_request(&Bytes::from_static(
            br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#,
        ))
        .unwrap_err();
    assert!(err.is_decode());
    assert!(err.to_string().contains("3.0"), "{err}");
}

#[test]
fn requests_round_trip_in_both_codecs() {
    for codec in [Codec::MsgPack, Codec::OsloJson] {
        let mut request = health_check(codec);
        request.namespace = Some("ns".into());
        request.context.insert("user_id", serde_json::json!("u1"));
        let decoded = codec
            .decode_request(&codec.encode_request(&request).unwrap())
            .unwrap();
        assert_eq!(decoded.method, request.method);
        assert_eq!(decoded.namespace, request.namespace);
        // MessagePack leaves the reply address to the AMQP properties.
        let reply = codec.carries_reply_address().then(|| request.reply.clone());
        assert_eq!(decoded.reply, reply.flatten(), "{codec:?}");
        assert_eq!(decoded.context, request.context);
        let args: HealthCheck = decoded.args.decode().unwrap();
        assert_eq!(args.host, "heat-api");
    }
}

#[test]
fn replies_round_trip_in_both_codecs() {
    for codec in [Codec::MsgPack, Codec::OsloJson] {
        let value = codec.encode_value(&(7u64, "vm", "I'm fine!")).unwrap();
        let reply = Reply {
            msg_id: Some(new_id()),
            outcome: Ok(value.into()),
            ending: true,
            unique_id: Some(new_id()),
        };
        let decoded = codec
            .decode_reply(&codec.encode_reply(&reply).unwrap())
            .unwrap();
        assert_eq!(decoded.msg_id, reply.msg_id);
        let result: (u64, String, String) = codec.decode_value(&decoded.outcome.unwrap()).unwrap();
        assert_eq!(result, (7, "vm".into(), "I'm fine!".into()));

        let mut failure = Failure::no_such_method("nope");
        failure.data = Some(codec.encode_value(&"typed").unwrap());
        let reply = Reply {
            msg_id: None,
            outcome: Err(failure.clone()),
            ending: true,
            unique_id: None,
        };
        let decoded = codec
            .decode_reply(&codec.encode_reply(&reply).unwrap())
            .unwrap();
        assert_eq!(decoded.outcome.unwrap_err(), failure);
    }
}

#[test]
fn received_arguments_and_results_are_views_of_the_body_not_copies() {
    let inside = |body: &Bytes, part: &Bytes| {
        let range = body.as_ptr_range();
        range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
    };
    let codec = Codec::MsgPack;
    let body = codec.encode_request(&health_check(codec)).unwrap();
    let request = codec.decode_request(&body).unwrap();
    assert!(inside(&body, request.args.raw()));
    let reply = Reply {
        msg_id: None,
        outcome: Ok(codec.encode_value(&vec![7u8; 64]).unwrap().into()),
        ending: true,
        unique_id: None,
    };
    let body = codec.encode_reply(&reply).unwrap();
    let decoded = codec.decode_reply(&body).unwrap();
    assert!(inside(&body, decoded.outcome.as_ref().unwrap()));
    let value: Vec<u8> = codec.decode_value(&decoded.outcome.unwrap()).unwrap();
    assert_eq!(value, [7u8; 64]);
    // oslo's JSON unescapes the inner message once; the arguments are a
    // view of that.
    let codec = Codec::OsloJson;
    let request = codec
        .decode_request(&codec.encode_request(&health_check(codec)).unwrap())
        .unwrap();
    let args: HealthCheck = request.args.decode().unwrap();
    assert_eq!(args.req, "How are you?");
}

#[test]
fn msgpack_deadlines_travel_and_a_passed_one_stays_passed() {
    let codec = Codec::MsgPack;
    let mut request = health_check(codec);
    let deadline = Instant::now() + Duration::from_secs(30);
    request.context = request.context.with_deadline(deadline);
    let decoded = codec
        .decode_request(&codec.encode_request(&request).unwrap())
        .unwrap();
    let got = decoded.context.deadline().expect("a deadline");
    // Milliseconds on the wire, and two clock readings apart.
    let gap = got.max(deadline) - got.min(deadline);
    assert!(gap < Duration::from_secs(1), "{gap:?}");

    request.context = Context::new().with_deadline(Instant::now() - Duration::from_secs(5));
    let decoded = codec
        .decode_request(&codec.encode_request(&request).unwrap())
        .unwrap();
    assert!(decoded.context.deadline().expect("a deadline") <= Instant::now());
    // No deadline in JSON (oslo peers use the AMQP expiration).
    let codec = Codec::OsloJson;
    let request = Request {
        context: Context::new().with_deadline(deadline),
        ..health_check(codec)
    };
    let decoded = codec
        .decode_request(&codec.encode_request(&request).unwrap())
        .unwrap();
    assert_eq!(decoded.context.deadline(), None);
}

#[test]
fn garbage_is_a_decode_error_not_a_panic() {
    for codec in [Codec::MsgPack, Codec::OsloJson] {
        for body in [&b""[..], b"\xff\xfe", b"{", b"[1,2]", b"\x93\x01\x02\x03"] {
            let body = Bytes::from_static(body);
            assert!(codec.decode_request(&body).unwrap_err().is_decode());
            assert!(codec.decode_reply(&body).unwrap_err().is_decode());
        }
    }
}

#[test]
fn content_type_picks_the_codec() {
    assert_eq!(
        Codec::for_message(Some("application/json"), b"").unwrap(),
        Codec::OsloJson
    );
    assert_eq!(
        Codec::for_message(Some("application/msgpack"), b"").unwrap(),
        Codec::MsgPack
    );
    assert_eq!(Codec::for_message(None, b"{}").unwrap(), Codec::OsloJson);
    assert!(Codec::for_message(Some("text/plain"), b"")
        .unwrap_err()
        .is_decode());
}

#[test]
fn ids_are_32_hex_digits_and_distinct() {
    let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
    assert_eq!(ids.len(), 10_000);
    assert!(ids
        .iter()
        .all(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())));
}
