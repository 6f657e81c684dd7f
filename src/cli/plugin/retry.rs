//! `serin retry NAME`: runs the analysis of a failed revision again without changing the
//! target (the request `retry`).

use std::time::Duration;

use super::KubeArgs;
use super::request::{DEFAULT_ACK_TIMEOUT, send};

/// Arguments of `serin retry`.
#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller to carry the request out.
    #[arg(long, default_value = DEFAULT_ACK_TIMEOUT, value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin retry`: 0 when carried out, 1 when rejected or not answered, 2 on bad input.
pub fn run(args: &RetryArgs) -> u8 {
    super::run_command("retry", send(&args.kube, &args.name, "retry", args.timeout))
}
