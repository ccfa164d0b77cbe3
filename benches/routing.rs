//! Topic routing in the embedded broker with 10k and 100k bindings: the
//! trie makes a publish cost what its matches cost, not what the bindings
//! count.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use warren::broker::core::{Core, Destination, ExchangeOptions, QueueOptions};

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_routing");
    for bindings in [10_000usize, 100_000] {
        let core = Core::new(
            [("guest".to_owned(), "guest".to_owned())].into(),
            Vec::new(),
        );
        let vhost = core.vhost("/").expect("default vhost");
        vhost
            .declare_exchange("x", "topic", &ExchangeOptions::default())
            .expect("exchange");
        vhost
            .declare_queue(0, "q", &QueueOptions::default())
            .expect("queue");
        for i in 0..bindings {
            let key = format!("region{}.host{}.*", i % 100, i);
            vhost
                .bind(
                    0,
                    "x",
                    Destination::Queue("q".into()),
                    &key,
                    FieldTable::default(),
                )
                .expect("bind");
        }
        // One matching binding among them all; purge so the queue stays small.
        group.bench_with_input(BenchmarkId::from_parameter(bindings), &bindings, |b, _| {
            b.iter(|| {
                vhost
                    .publish(
                        "x",
                        "region7.host7.cpu",
                        BasicProperties::default(),
                        vec![0; 16],
                    )
                    .expect("publish");
                vhost.purge_queue(0, "q").expect("purge")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
