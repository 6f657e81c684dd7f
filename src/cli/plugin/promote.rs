//! `serin promote NAME [--full]`: opens the gate the rollout waits at (confirm-rollout,
//! confirm-traffic-increase, confirm-promotion) once, or with `--full` skips the remaining
//! steps and promotes now. Written as the request `promote` / `promote-full`.

use std::time::Duration;

use super::KubeArgs;
use super::request::{DEFAULT_ACK_TIMEOUT, send};

/// Arguments of `serin promote`.
#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    /// The Canary.
    pub name: String,
    /// Skip the remaining analysis steps and promote now.
    #[arg(long)]
    pub full: bool,
    /// How long to wait for the controller to carry the request out.
    #[arg(long, default_value = DEFAULT_ACK_TIMEOUT, value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `serin promote`: 0 when carried out, 1 when rejected or not answered, 2 on bad input.
pub fn run(args: &PromoteArgs) -> u8 {
    let verb = if args.full { "promote-full" } else { "promote" };
    super::run_command("promote", send(&args.kube, &args.name, verb, args.timeout))
}
