//! From a measured value to a verdict: accepted ranges, the no-data policy, and the messages
//! users read in Events and status.

use crate::api::{CanaryMetric, NoDataPolicy, Verdict};
use crate::engine::MetricResult;

/// The verdict on one metric result, with a message that names the metric, the value and the
/// accepted range (or what went wrong).
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub value: Option<f64>,
    pub message: String,
}

/// Judges one metric result against the metric's range and no-data policy. NaN is no data.
pub fn judge(metric: &CanaryMetric, result: &MetricResult) -> Judgement {
    match result {
        MetricResult::Value(v) if v.is_nan() => no_data(metric, "the query returned NaN"),
        MetricResult::Value(v) => {
            let (min, max) = metric.range();
            let unit = unit(metric);
            if let Some(min) = min
                && *v < min
            {
                return Judgement {
                    verdict: Verdict::Fail,
                    value: Some(*v),
                    message: format!("{} {}{unit} < {}{unit}", label(metric), num(*v), num(min)),
                };
            }
            if let Some(max) = max
                && *v > max
            {
                return Judgement {
                    verdict: Verdict::Fail,
                    value: Some(*v),
                    message: format!("{} {}{unit} > {}{unit}", label(metric), num(*v), num(max)),
                };
            }
            Judgement {
                verdict: Verdict::Pass,
                value: Some(*v),
                message: format!(
                    "{} {}{unit} {}",
                    label(metric),
                    num(*v),
                    range_text(min, max, unit)
                ),
            }
        }
        MetricResult::NoData(why) => no_data(metric, why),
        MetricResult::Error(why) => Judgement {
            verdict: Verdict::Error,
            value: None,
            message: format!("metric {} query failed: {why}", metric.name),
        },
    }
}

fn no_data(metric: &CanaryMetric, why: &str) -> Judgement {
    let (verdict, consequence) = match metric.on_no_data() {
        NoDataPolicy::Fail => (
            Verdict::Fail,
            "counted as a failed check (onNoData: fail); the canary may not be receiving traffic",
        ),
        NoDataPolicy::Pass => (Verdict::Pass, "counted as passing (onNoData: pass)"),
        NoDataPolicy::Hold => (
            Verdict::Hold,
            "the step waits for data (onNoData: hold), bounded by the progress deadline",
        ),
    };
    Judgement {
        verdict,
        value: None,
        message: format!(
            "no values found for metric {}: {why}; {consequence}",
            metric.name
        ),
    }
}

fn label(metric: &CanaryMetric) -> String {
    match metric.name.as_str() {
        "request-success-rate" => "success rate".into(),
        "request-duration" => "request duration".into(),
        other => other.into(),
    }
}

fn unit(metric: &CanaryMetric) -> &'static str {
    match metric.name.as_str() {
        "request-success-rate" => "%",
        "request-duration" => "ms",
        _ => "",
    }
}

fn range_text(min: Option<f64>, max: Option<f64>, unit: &str) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("within {}{unit}..{}{unit}", num(a), num(b)),
        (Some(a), None) => format!(">= {}{unit}", num(a)),
        (None, Some(b)) => format!("<= {}{unit}", num(b)),
        (None, None) => "(no range set)".into(),
    }
}

/// A number as users read it: integers without decimals, others with two.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ThresholdRange;

    fn metric(name: &str, min: Option<f64>, max: Option<f64>) -> CanaryMetric {
        CanaryMetric {
            name: name.into(),
            threshold_range: Some(ThresholdRange { min, max }),
            ..Default::default()
        }
    }

    #[test]
    fn range_is_inclusive() {
        let m = metric("request-success-rate", Some(99.0), None);
        assert_eq!(judge(&m, &MetricResult::Value(99.0)).verdict, Verdict::Pass);
        let j = judge(&m, &MetricResult::Value(97.5));
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.message, "success rate 97.50% < 99%");
        let d = metric("request-duration", None, Some(500.0));
        assert_eq!(
            judge(&d, &MetricResult::Value(500.0)).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&d, &MetricResult::Value(1200.0)).message,
            "request duration 1200ms > 500ms"
        );
    }

    #[test]
    fn legacy_threshold_is_a_minimum_for_success_rate_and_a_maximum_otherwise() {
        let sr = CanaryMetric {
            name: "request-success-rate".into(),
            threshold: Some(99.0),
            ..Default::default()
        };
        assert_eq!(
            judge(&sr, &MetricResult::Value(98.0)).verdict,
            Verdict::Fail
        );
        let custom = CanaryMetric {
            name: "errors".into(),
            threshold: Some(5.0),
            query: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            judge(&custom, &MetricResult::Value(6.0)).verdict,
            Verdict::Fail
        );
        assert_eq!(
            judge(&custom, &MetricResult::Value(4.0)).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn no_data_and_nan_follow_the_policy() {
        let mut m = metric("request-success-rate", Some(99.0), None);
        for result in [
            MetricResult::NoData("empty result".into()),
            MetricResult::Value(f64::NAN),
        ] {
            m.on_no_data = None;
            let j = judge(&m, &result);
            assert_eq!(j.verdict, Verdict::Fail);
            assert!(
                j.message.contains("may not be receiving traffic"),
                "{}",
                j.message
            );
            m.on_no_data = Some(NoDataPolicy::Pass);
            assert_eq!(judge(&m, &result).verdict, Verdict::Pass);
            m.on_no_data = Some(NoDataPolicy::Hold);
            assert_eq!(judge(&m, &result).verdict, Verdict::Hold);
        }
    }

    #[test]
    fn query_errors_are_errors_whatever_the_policy() {
        let mut m = metric("request-success-rate", Some(99.0), None);
        m.on_no_data = Some(NoDataPolicy::Pass);
        let j = judge(
            &m,
            &MetricResult::Error("prometheus: connection refused".into()),
        );
        assert_eq!(j.verdict, Verdict::Error);
        assert!(j.message.contains("connection refused"));
    }
}
