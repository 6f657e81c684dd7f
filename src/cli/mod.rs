//! Subcommands of the `serin` binary.

pub mod loadtester;
pub mod manifest;
pub mod plugin;
pub mod simulate;
