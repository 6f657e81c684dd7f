//! `serin resume NAME`: lifts a pause (`spec.suspend: false`); the rollout continues where it
//! stood, and a revision pushed meanwhile starts.

use std::time::Duration;

use super::KubeArgs;
use super::request::{DEFAULT_ACK_TIMEOUT, set_suspend};

/// Arguments of `serin resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The Canary.
    pub name: String,
    /// How long to wait for the controller to see the change.
    #[arg(long, default_value = DEFAULT_ACK_TIMEOUT, value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin resume`: 0 when the controller saw it, 1 when it did not answer, 2 on bad input.
pub fn run(args: &ResumeArgs) -> u8 {
    super::run_command(
        "resume",
        set_suspend(&args.kube, &args.name, false, args.timeout),
    )
}
