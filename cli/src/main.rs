//! The `warren` command: `warren broker` runs the embedded AMQP 0-9-1 broker
//! as a standalone server; `warren ctl` operates a running one as
//! `rabbitmqctl` does; `warren bench` generates RPC load against any
//! broker and reports throughput and latency.

mod bench;
mod broker;
mod ctl;
mod data_dir;

use clap::{Parser, Subcommand};

/// The broker and the load generator allocate per message on every thread
/// and free on another; glibc's malloc serializes that on its arena locks
/// (a third of the in-process benchmark's time, see BENCHMARKS.md), mimalloc
/// does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "RPC over message queues: broker and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded AMQP 0-9-1 broker as a server.
    Broker(Box<broker::BrokerArgs>),
    /// Measure RPC calls/s and latency against a broker.
    Bench(Box<bench::BenchArgs>),
    /// Operate a running broker as rabbitmqctl does (`warren ctl help`).
    Ctl(ctl::CtlArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log redirected to a file (a service
    // manager's, a test's) should not fill with escape codes.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        // rabbitmqctl's output and exit codes, no log lines.
        Command::Ctl(args) => return ctl::run(args),
        Command::Broker(args) => {
            init_logging();
            broker::run(*args).await
        }
        Command::Bench(args) => {
            init_logging();
            bench::run(*args).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
