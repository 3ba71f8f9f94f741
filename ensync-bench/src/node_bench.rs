//! The node alone: durable publishes/s with group commit vs one commit per event, and
//! the node's peak RSS while a backlog of 1 KB events is queued.

use std::path::PathBuf;

use crate::nodeproc::BoxError;

/// Arguments of `ensync-bench node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Shorter runs (smoke check of the harness; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// Events queued for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the node benchmarks.
pub fn run(_args: &NodeArgs) -> Result<(), BoxError> {
    Err("the node benchmarks are not written yet".into())
}
