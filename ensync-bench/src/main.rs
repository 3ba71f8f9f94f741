//! `ensync-bench`: the end-to-end and node benchmarks of issue 8.
//!
//! ```text
//! cargo run --release -p ensync-bench -- e2e      # every adapter + the published Python client
//! cargo run --release -p ensync-bench -- node     # durable publishes/s, peak RSS with a backlog
//! cargo run --release -p ensync-bench -- jetstream  # the JetStream backend beside the embedded one
//! ```
//!
//! Every scenario runs against a node started by the bench in a child process
//! (`ensync-bench serve-node`), on loopback. The results are printed as markdown tables;
//! `--json FILE` also writes them as JSON. Benchmarks measure: nothing here fails on a
//! slow number.

mod e2e;
mod js_bench;
mod node_bench;
mod nodeproc;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as the `ensync` binary uses: the node under test (`serve-node`) runs as this
/// binary, so it is measured as operators run it. The Rust clients measured in this
/// process use it too, as an application may choose; the SDK crates set no allocator
/// (BENCHMARKS.md gives the client numbers with both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// End-to-end and node benchmarks of EnSync for Rust.
#[derive(Parser, Debug)]
#[command(name = "ensync-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish -> node -> subscriber: events/s and latency for every adapter and the
    /// published Python client.
    E2e(e2e::E2eArgs),
    /// The node alone: durable publishes/s (group commit vs one commit per event) and
    /// peak RSS while a backlog of events is queued.
    Node(node_bench::NodeArgs),
    /// The JetStream backend beside the embedded one: durable publishes/s, end to end,
    /// and the stall when the NATS server leading the stream is killed (needs
    /// `nats-server`).
    Jetstream(js_bench::JetStreamArgs),
    /// Internal: serve a node from a TOML config (used as the benchmarks' child process).
    /// Prints `ensync node ready grpc=ADDR [ws=ADDR]` and serves until stdin closes.
    ServeNode {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::E2e(args) => e2e::run(&args),
        Command::Node(args) => node_bench::run(&args),
        Command::Jetstream(args) => js_bench::run(&args),
        Command::ServeNode { config } => nodeproc::serve(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ensync-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
