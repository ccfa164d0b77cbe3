//! One call's round trip in-process (no sockets): stub → codec → broker
//! core → dispatcher → reply → stub. Sequential and 64 in flight.
//!
//! Before measuring, it counts the heap allocations (and bytes allocated)
//! of one sequential call through a counting wrapper around the system
//! allocator, and prints them: the figure issue #10's zero-copy work is
//! judged by besides time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The system allocator, counting allocations and the bytes they ask for.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    // Allocations per sequential call, counted over the whole process
    // (client, broker and server), after a warm-up.
    runtime.block_on(async {
        let calls = 20_000u64;
        for _ in 0..1_000 {
            client.echo(payload.clone()).await.expect("reply");
        }
        let (count, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            ALLOCATED.load(Ordering::Relaxed),
        );
        for _ in 0..calls {
            client.echo(payload.clone()).await.expect("reply");
        }
        let count = ALLOCATIONS.load(Ordering::Relaxed) - count;
        let bytes = ALLOCATED.load(Ordering::Relaxed) - bytes;
        println!(
            "in_process_call/allocations: {:.1} allocations, {:.0} bytes per call (payload 64 B)",
            count as f64 / calls as f64,
            bytes as f64 / calls as f64
        );
    });
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
