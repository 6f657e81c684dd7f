//! The decision engine: a pure state machine from (spec, status, observations, probe results,
//! now) to the next status, actions, Events and requeue time. No I/O, no clock.

mod types;

pub use types::*;

/// Decides what to do now, or which probes to run first.
pub fn decide(input: &Input<'_>) -> Outcome {
    let _ = input;
    Outcome::Need(Vec::new())
}
