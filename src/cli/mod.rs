//! Subcommands of the `serin` binary.

pub mod manifest;
pub mod simulate;
