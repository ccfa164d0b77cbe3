//! `warren bench`: a load generator for RPC and queues over brokers.
//!
//! One process runs servers and clients against a broker (the embedded one
//! by default), or `warren bench server` / `warren bench client` split the
//! roles across processes. `--mode queue` measures plain work queues
//! PerfTest-style instead (producers, consumers, confirms, acks). `--compare URL…` repeats the workload on several
//! brokers and prints ratios. `--rate` runs open-loop, measuring latency from
//! each call's intended send time so stalls are not hidden (no coordinated
//! omission).

mod plot;
mod queue;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// `warren bench` options.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    workload: Workload,
    /// Also run the same workload against these URLs and print ratios.
    #[arg(long, num_args = 1.., value_name = "URL")]
    compare: Vec<String>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG plot: latency distribution and throughput over time.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Only serve (until Ctrl-C), for clients in other processes.
    Server(Workload),
    /// Only call, against servers in other processes.
    Client(Workload),
}

/// What to run.
#[derive(Args, Debug, Clone)]
pub struct Workload {
    /// Broker URL (amqp://, amqps://, rabbit://); empty: the embedded broker.
    #[arg(long, default_value = "", env = "TRANSPORT_URL")]
    pub url: String,
    /// call (request/reply), cast (fire-and-forget), fanout (cast to every
    /// server), queue (producers and consumers on plain queues).
    #[arg(long, value_enum, default_value_t = Mode::Call)]
    pub mode: Mode,
    /// Servers to start.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// Clients (each with its own connection and reply queue).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Payload size in bytes, or a distribution `SIZE:WEIGHT,…` (e.g.
    /// `64:90,4096:10`). In queue mode the message body (at least 8 bytes:
    /// the send time travels in it).
    #[arg(long, short = 's', visible_alias = "size", default_value = "64")]
    pub payload: String,
    /// Codec of requests.
    #[arg(long, value_enum, default_value_t = CodecArg::Msgpack)]
    pub codec: CodecArg,
    /// Seconds to measure (after the warm-up).
    #[arg(long, short = 'z', default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests (queue mode: messages, all producers
    /// together) instead of after `--duration`.
    #[arg(long)]
    pub count: Option<u64>,
    /// Open loop: this many requests per second in total; in queue mode,
    /// messages per second per producer (0: unlimited).
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Queue mode: producers, each with its own connection.
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: usize,
    /// Queue mode: consumers, each with its own connection.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Queue mode: queues; producers and consumers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Queue mode: publisher confirms, at most N outstanding per producer
    /// (without it, publishes are not confirmed).
    #[arg(long, short = 'c', value_name = "N")]
    pub confirm: Option<usize>,
    /// Queue mode: persistent messages on durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Queue mode: consume without acknowledgements.
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Queue mode: unacknowledged messages per consumer (0: no limit).
    #[arg(long, short = 'q', default_value_t = 0)]
    pub prefetch: u16,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Topic to use.
    #[arg(long, default_value = "warren_bench")]
    pub topic: String,
}

impl Workload {
    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.001))
    }
}

/// RPC pattern to measure.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Request/reply.
    Call,
    /// Fire-and-forget to one server.
    Cast,
    /// Fire-and-forget to every server.
    Fanout,
    /// Producers publish to queues, consumers consume them (PerfTest-style).
    Queue,
}

/// Request codec.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecArg {
    /// MessagePack.
    Msgpack,
    /// oslo.messaging's JSON.
    Oslo,
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.role {
        Some(Role::Server(workload) | Role::Client(workload)) if workload.mode == Mode::Queue => {
            Err(
                "--mode queue runs producers and consumers in one process: drop `server`/`client`"
                    .into(),
            )
        }
        Some(Role::Server(workload)) => run::serve_until_ctrl_c(&workload).await,
        Some(Role::Client(workload)) => {
            let result = run::measure(&workload, run::Servers::Elsewhere).await?;
            report::print(std::slice::from_ref(&result));
            report::write_outputs(&[result], args.json.as_deref(), args.plot.as_deref())
        }
        None => {
            let mut urls = vec![args.workload.url.clone()];
            urls.extend(args.compare.iter().cloned());
            let mut results = Vec::new();
            for url in urls {
                let workload = Workload {
                    url,
                    ..args.workload.clone()
                };
                let result = if workload.mode == Mode::Queue {
                    queue::measure(&workload).await?
                } else {
                    run::measure(&workload, run::Servers::InProcess).await?
                };
                results.push(result);
            }
            report::print(&results);
            report::write_outputs(&results, args.json.as_deref(), args.plot.as_deref())
        }
    }
}
