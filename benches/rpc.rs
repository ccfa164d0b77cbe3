//! One call's round trip in-process (no sockets): stub → codec → broker
//! core → dispatcher → reply → stub. Sequential and 64 in flight.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[warren::service(topic = "bench", version = "1.0")]
pub trait Echo {
    async fn echo(&self, payload: Vec<u8>) -> Vec<u8>;
}

struct Server;

impl Echo for Server {
    async fn echo(&self, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

fn round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (client, _server, _broker) = runtime.block_on(async {
        let broker = warren::broker::Broker::builder()
            .no_listen()
            .start()
            .await
            .expect("broker");
        let connection = warren::Connection::in_process(&broker).expect("connection");
        let server = EchoServer::new(Server)
            .serve(&connection, "s1")
            .await
            .expect("serve");
        (EchoClient::new(&connection), server, broker)
    });
    let payload = vec![7u8; 64];
    let mut group = c.benchmark_group("in_process_call");
    group.throughput(Throughput::Elements(1));
    // `in_flight` tasks on the runtime's workers, as application code
    // would run, each making `iters` calls one after the other.
    let timed = |iters: u64, in_flight: usize| {
        runtime.block_on(async {
            let start = std::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..in_flight {
                let (client, payload) = (client.clone(), payload.clone());
                tasks.spawn(async move {
                    for _ in 0..iters {
                        client.echo(payload.clone()).await.expect("reply");
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("a benchmark task");
            }
            start.elapsed()
        })
    };
    group.bench_function("sequential", |b| b.iter_custom(|iters| timed(iters, 1)));
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_in_flight", |b| b.iter_custom(|iters| timed(iters, 64)));
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
