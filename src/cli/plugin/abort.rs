//! `serin abort NAME`: fails the running analysis now and rolls all traffic back to the
//! primary (the request `abort`).

use std::time::Duration;

use super::KubeArgs;
use super::request::{DEFAULT_ACK_TIMEOUT, send};

/// Arguments of `serin abort`.
#[derive(clap::Args, Debug)]
pub struct AbortArgs {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller to carry the request out.
    #[arg(long, default_value = DEFAULT_ACK_TIMEOUT, value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin abort`: 0 when carried out, 1 when rejected or not answered, 2 on bad input.
pub fn run(args: &AbortArgs) -> u8 {
    super::run_command("abort", send(&args.kube, &args.name, "abort", args.timeout))
}
