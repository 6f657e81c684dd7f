//! Weight ladders: the next canary weight while analysing, and the next one while promoting.

use crate::api::CanaryAnalysis;

/// The canary weight after `current`: the next rung of `stepWeights`, or `current + stepWeight`;
/// never above the maximum weight (the last step is clamped, unlike Flagger's overshoot).
pub fn next_canary_weight(analysis: &CanaryAnalysis, current: i32) -> i32 {
    let max = analysis.max_weight();
    let next = match (&analysis.step_weights, analysis.step_weight) {
        (Some(ladder), None) if !ladder.is_empty() => {
            ladder.iter().copied().find(|w| *w > current).unwrap_or(max)
        }
        (_, step) => current.saturating_add(step.filter(|s| *s > 0).unwrap_or(max)),
    };
    next.clamp(0, max)
}

/// The canary weight after one promotion step of `step` percent back to the primary.
pub fn next_promotion_weight(current: i32, step: i32) -> i32 {
    current.saturating_sub(step.max(1)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(max: Option<i32>, step: i32) -> CanaryAnalysis {
        CanaryAnalysis {
            max_weight: max,
            step_weight: Some(step),
            ..Default::default()
        }
    }

    fn ladder(w: &[i32]) -> CanaryAnalysis {
        CanaryAnalysis {
            step_weights: Some(w.to_vec()),
            ..Default::default()
        }
    }

    fn walk(a: &CanaryAnalysis) -> Vec<i32> {
        let mut out = vec![];
        let mut w = 0;
        while w < a.max_weight() {
            w = next_canary_weight(a, w);
            out.push(w);
        }
        out
    }

    #[test]
    fn linear_steps_are_clamped_at_max_weight() {
        assert_eq!(walk(&linear(Some(50), 20)), vec![20, 40, 50]);
        assert_eq!(walk(&linear(Some(50), 5)).len(), 10);
        assert_eq!(walk(&linear(None, 50)), vec![50, 100]);
        assert_eq!(walk(&linear(Some(100), 30)), vec![30, 60, 90, 100]);
    }

    #[test]
    fn ladders_follow_their_rungs() {
        assert_eq!(walk(&ladder(&[1, 2, 10, 80])), vec![1, 2, 10, 80]);
        assert_eq!(walk(&ladder(&[5, 25, 50, 100])), vec![5, 25, 50, 100]);
        // A weight between rungs (routes edited by hand) moves to the next rung.
        assert_eq!(next_canary_weight(&ladder(&[10, 20, 40]), 15), 20);
    }

    #[test]
    fn promotion_steps_end_at_zero() {
        assert_eq!(next_promotion_weight(50, 20), 30);
        assert_eq!(next_promotion_weight(10, 20), 0);
        assert_eq!(next_promotion_weight(5, 0), 4);
    }
}
