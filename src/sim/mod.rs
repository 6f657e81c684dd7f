//! The simulator behind `serin simulate`: runs a Canary through the decision engine against an
//! in-memory cluster in virtual time, with traffic and metrics drawn from a scenario, so a user
//! sees what Serin would do (and how often a marginal canary slips through) without a cluster.
//!
//! - [`scenario`]: the scenario file format (documented there) and its checks.
//! - [`cluster`]: the in-memory target, primary and routes, and the world's own changes.
//! - [`traffic`]: simulated requests at the engine's weights, and the built-in metrics.
//! - [`run`]: the virtual clock and the loop that drives the engine.
//! - [`random`]: the seeded generator and distributions.

pub mod cluster;
pub mod random;
pub mod run;
pub mod scenario;
pub mod traffic;

use serde::Serialize;

use crate::api::Canary;
pub use run::{Options, RunOutcome, SimResult, Stop, clock, clock_short, simulate_with};
pub use scenario::{Issue, Scenario, ScenarioFile};

/// Simulates one Canary with Serin's engine.
pub fn simulate(canary: &Canary, scenario: &Scenario, options: &Options) -> SimResult {
    simulate_with(
        crate::engine::decide,
        canary.metadata.name.as_deref().unwrap_or_default(),
        canary.metadata.namespace.as_deref().unwrap_or("default"),
        &canary.spec,
        scenario,
        options,
    )
}

/// Simulates `runs` seeds starting at `first_seed`, on all cores; results are in seed order and
/// hold outcomes only (no timelines).
pub fn simulate_seeds(
    canary: &Canary,
    scenario: &Scenario,
    first_seed: u64,
    runs: u64,
) -> Vec<SimResult> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u64)
        .clamp(1, runs.max(1));
    let per_thread = runs.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let from = t * per_thread;
                let to = ((t + 1) * per_thread).min(runs);
                scope.spawn(move || {
                    (from..to)
                        .map(|i| {
                            let options = Options {
                                seed: first_seed.wrapping_add(i),
                                record: false,
                            };
                            simulate(canary, scenario, &options)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(results) => results,
                // A panicking run is a bug in the engine or simulator; re-raise it as is.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Minimum, median and maximum of a set of durations, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.sort_by(f64::total_cmp);
        Some(Spread {
            min: *values.first()?,
            median: values[values.len() / 2],
            max: *values.last()?,
        })
    }
}

/// What many seeds of one scenario did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub runs: u64,
    pub first_seed: u64,
    pub promoted: u64,
    pub rolled_back: u64,
    pub unfinished: u64,
    /// Runs stopped by an engine error.
    pub engine_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_promote_seconds: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_roll_back_seconds: Option<Spread>,
    /// Mean number of failed requests served by the canary per run.
    pub mean_canary_errors: f64,
    /// Up to ten seeds of each outcome, to replay one with `--seed`.
    pub promoted_seeds: Vec<u64>,
    pub rolled_back_seeds: Vec<u64>,
    pub unfinished_seeds: Vec<u64>,
}

impl Summary {
    pub fn of(first_seed: u64, results: &[SimResult]) -> Summary {
        let with = |o: RunOutcome| results.iter().filter(move |r| r.outcome == o);
        let count = |o: RunOutcome| with(o).count() as u64;
        let seeds = |o: RunOutcome| with(o).take(10).map(|r| r.seed).collect();
        let times =
            |o: RunOutcome| Spread::of(with(o).filter_map(|r| r.time_to_outcome_seconds).collect());
        let runs = results.len() as u64;
        Summary {
            runs,
            first_seed,
            promoted: count(RunOutcome::Succeeded),
            rolled_back: count(RunOutcome::Failed),
            unfinished: runs - count(RunOutcome::Succeeded) - count(RunOutcome::Failed),
            engine_errors: results
                .iter()
                .filter(|r| matches!(r.stopped, Stop::Engine(_)))
                .count() as u64,
            time_to_promote_seconds: times(RunOutcome::Succeeded),
            time_to_roll_back_seconds: times(RunOutcome::Failed),
            mean_canary_errors: if runs == 0 {
                0.0
            } else {
                results
                    .iter()
                    .map(|r| r.traffic.canary_errors as f64)
                    .sum::<f64>()
                    / runs as f64
            },
            promoted_seeds: seeds(RunOutcome::Succeeded),
            rolled_back_seeds: seeds(RunOutcome::Failed),
            unfinished_seeds: results
                .iter()
                .filter(|r| !matches!(r.outcome, RunOutcome::Succeeded | RunOutcome::Failed))
                .take(10)
                .map(|r| r.seed)
                .collect(),
        }
    }
}
