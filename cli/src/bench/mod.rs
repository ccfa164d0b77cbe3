//! `warren bench`: a load generator for RPC over brokers.
//!
//! One process runs servers and clients against a broker (the embedded one
//! by default), or `warren bench server` / `warren bench client` split the
//! roles across processes. `--compare URL…` repeats the workload on several
//! brokers and prints ratios. `--rate` runs open-loop, measuring latency from
//! each call's intended send time so stalls are not hidden (no coordinated
//! omission).

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
    /// call (request/reply), cast (fire-and-forget), fanout (cast to every server).
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
    /// Payload size in bytes, or a distribution `SIZE:WEIGHT,…` (e.g. `64:90,4096:10`).
    #[arg(long, default_value = "64")]
    pub payload: String,
    /// Codec of requests.
    #[arg(long, value_enum, default_value_t = CodecArg::Msgpack)]
    pub codec: CodecArg,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead of after `--duration`.
    #[arg(long)]
    pub count: Option<u64>,
    /// Open loop: this many requests per second in total.
    #[arg(long)]
    pub rate: Option<f64>,
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
                results.push(run::measure(&workload, run::Servers::InProcess).await?);
            }
            report::print(&results);
            report::write_outputs(&results, args.json.as_deref(), args.plot.as_deref())
        }
    }
}
