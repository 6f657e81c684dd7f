//! `serin pause NAME`: suspends the Canary (`spec.suspend: true`); the controller leaves it,
//! its traffic and its target as they are until it is resumed.

use std::time::Duration;

use super::KubeArgs;
use super::request::{DEFAULT_ACK_TIMEOUT, set_suspend};

/// Arguments of `serin pause`.
#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller to see the change.
    #[arg(long, default_value = DEFAULT_ACK_TIMEOUT, value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin pause`: 0 when the controller saw it, 1 when it did not answer, 2 on bad input.
pub fn run(args: &PauseArgs) -> u8 {
    super::run_command(
        "pause",
        set_suspend(&args.kube, &args.name, true, args.timeout),
    )
}
