//! Request and reply encode/decode, MessagePack against oslo JSON: the work
//! every call does twice on each side.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use warren::rpc::Context;
use warren::wire::{new_id, Args, Codec, Reply, ReplyTo, Request};

#[derive(Serialize, Deserialize)]
struct HealthCheck {
    seqid: u64,
    host: String,
    req: String,
}

fn request(codec: Codec) -> Request {
    let args = HealthCheck {
        seqid: 42,
        host: "heat-api".into(),
        req: "How are you?".into(),
    };
    Request {
        method: "health_check".into(),
        args: Args::encode(codec, &args).expect("encodable"),
        namespace: None,
        version: Some("1.0".into()),
        reply: Some(ReplyTo {
            queue: format!("reply_{}", new_id()),
            msg_id: new_id(),
        }),
        timeout: None,
        unique_id: Some(new_id()),
        context: Context::new(),
    }
}

fn reply(codec: Codec) -> Reply {
    Reply {
        msg_id: Some(new_id()),
        outcome: Ok(codec
            .encode_value(&(42u64, "vm", "I'm fine!"))
            .expect("encodable")
            .into()),
        ending: true,
        unique_id: Some(new_id()),
    }
}

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for codec in [Codec::MsgPack, Codec::OsloJson] {
        let name = format!("{codec:?}");
        let req = request(codec);
        let req_body = codec.encode_request(&req).expect("encodable");
        let rep = reply(codec);
        let rep_body = codec.encode_reply(&rep).expect("encodable");
        group.bench_with_input(BenchmarkId::new("encode_request", &name), &req, |b, r| {
            b.iter(|| codec.encode_request(r).expect("encodable"))
        });
        group.bench_with_input(
            BenchmarkId::new("decode_request", &name),
            &req_body,
            |b, body| {
                b.iter(|| {
                    let r = codec.decode_request(body).expect("decodable");
                    r.args.decode::<HealthCheck>().expect("decodable")
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("encode_reply", &name), &rep, |b, r| {
            b.iter(|| codec.encode_reply(r).expect("encodable"))
        });
        group.bench_with_input(
            BenchmarkId::new("decode_reply", &name),
            &rep_body,
            |b, body| {
                b.iter(|| {
                    let r = codec.decode_reply(body).expect("decodable");
                    codec
                        .decode_value::<(u64, String, String)>(&r.outcome.expect("ok"))
                        .expect("decodable")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
