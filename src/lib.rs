//! Serin: progressive delivery for Kubernetes. See README.md.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod hooks;
pub mod metrics;
pub mod notify;
pub mod router;
pub mod sim;
pub mod workload;
