//! Topic routing in the embedded broker with 10k and 100k bindings ending in
//! `*` or in `#`: the trie makes a publish cost what its matches cost, not what
//! the bindings count.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use warren::broker::core::permission::Permissions;
use warren::broker::core::{Core, ExchangeDeclareOptions, QueueDeclareOptions};

fn routing(c: &mut Criterion) {
    // `*` bindings walk one path; `#` ones make the matcher track visited states.
    for (name, last) in [("topic_routing", "*"), ("topic_routing_hash", "#")] {
        routing_with(c, name, last);
    }
}

fn routing_with(c: &mut Criterion, name: &str, last: &str) {
    let mut group = c.benchmark_group(name);
    for bindings in [10_000usize, 100_000] {
        let core = Core::new(&[("guest".to_owned(), "guest".to_owned())], &[]);
        let all = Permissions::new(".*", ".*", ".*").expect("valid patterns");
        core.set_permissions("guest", "/", all);
        let connection = core.open_connection("/", "guest").expect("connection");
        let (channel, _events) = connection.open_channel_mpsc();
        channel
            .exchange_declare("x", "topic", ExchangeDeclareOptions::default())
            .expect("exchange");
        channel
            .queue_declare("q", QueueDeclareOptions::default())
            .expect("queue");
        for i in 0..bindings {
            let key = format!("region{}.host{}.{last}", i % 100, i);
            channel
                .queue_bind("q", "x", &key, FieldTable::default())
                .expect("bind");
        }
        // One matching binding among them all; purge so the queue stays small.
        group.bench_with_input(BenchmarkId::from_parameter(bindings), &bindings, |b, _| {
            b.iter(|| {
                channel
                    .basic_publish(
                        "x".into(),
                        "region7.host7.cpu".into(),
                        false,
                        BasicProperties::default(),
                        vec![0u8; 16].into(),
                    )
                    .expect("publish");
                channel.queue_purge("q").expect("purge")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
