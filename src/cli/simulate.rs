//! `serin simulate`.

/// Arguments of `serin simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {}

/// Runs the command; returns the exit code.
pub fn run(_args: &SimulateArgs) -> i32 {
    0
}
