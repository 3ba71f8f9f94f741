//! Publish -> node -> subscriber, for every adapter and the published Python client.

use std::path::PathBuf;

use crate::nodeproc::BoxError;

/// Arguments of `ensync-bench e2e`.
#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// Shorter runs (smoke check of the harness; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the end-to-end benchmarks.
pub fn run(_args: &E2eArgs) -> Result<(), BoxError> {
    Err("the end-to-end benchmarks are not written yet".into())
}
