//! `serin loadtester`.

/// Arguments of `serin loadtester`.
#[derive(clap::Args, Debug)]
pub struct LoadtesterArgs {}

/// Runs the load tester until interrupted; returns the exit code.
pub fn run(_args: &LoadtesterArgs) -> i32 {
    0
}
