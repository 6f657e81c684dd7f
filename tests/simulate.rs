//! `serin simulate` as a user runs it, on the App Mesh podinfo example and its scenarios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/appmesh")
        .join(name)
        .display()
        .to_string()
}

fn serin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_serin"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("serin runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn simulate(scenario: &str, extra: &[&str]) -> (i32, String, String) {
    let canary = example("canary.yaml");
    let mut args = vec![canary.as_str(), "--scenario", scenario];
    args.extend_from_slice(extra);
    serin(&args)
}

/// A scratch file removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("serin-simulate-{}-{name}", std::process::id()));
        std::fs::write(&p, text).expect("write scratch file");
        Scratch(p)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn yaml(path: &str) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml")
}

fn seconds(text: &str) -> f64 {
    serin::api::duration::parse(text)
        .expect("duration")
        .num_milliseconds() as f64
        / 1000.0
}

#[test]
fn healthy_canary_is_promoted() {
    let (code, out, err) = simulate(&example("healthy.yaml"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Progressing"), "{out}");
    assert!(
        out.contains("Advance podinfo.test canary weight 50"),
        "{out}"
    );
    assert!(out.contains("check   request-success-rate"), "{out}");
    let outcome = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("Requests:"))
        .unwrap_or_default();
    assert!(outcome.starts_with("Succeeded: promoted at "), "{out}");
}

#[test]
fn failing_canary_is_rolled_back_when_the_threshold_says() {
    let scenario = example("failing.yaml");
    let (code, out, err) = simulate(&scenario, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Failed: rolled back at "), "{out}");
    assert!(out.contains("CheckFailed"), "{out}");

    let (code, json, err) = simulate(&scenario, &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let result: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(result["outcome"], "Failed");
    let rolled_back_at = result["finishedAtSeconds"]
        .as_f64()
        .expect("finishedAtSeconds");

    // The expected time, from the scenario and the spec:
    // - from `onset` (canary.errorPercent's second step) 8% of the canary's requests fail, far
    //   below the 99% success-rate minimum, so every analysis whose window reaches past the onset
    //   fails; the first such analysis comes within one interval after the onset;
    // - an analysis runs every `interval`, so the `threshold`-th failed check comes
    //   (threshold − 1) intervals after the first: rollback in
    //   (onset + (threshold − 1)·interval, onset + threshold·interval];
    // - an engine that tests the threshold at the start of the next step (as Flagger does) rolls
    //   back one interval later.
    // So: onset + threshold·interval, give or take one interval.
    // podinfo: 5m + 5 × 1m = 10m, accepted from 9m to 11m.
    let doc = yaml(&scenario);
    let onset = seconds(
        doc["canary"]["errorPercent"][1]["at"]
            .as_str()
            .expect("onset"),
    );
    let canaries =
        serin::cli::manifest::load_canaries(example("canary.yaml").as_ref()).expect("canary");
    let analysis = canaries[0].spec.analysis();
    let interval = analysis.interval().num_seconds() as f64;
    let threshold = f64::from(analysis.threshold());
    let expected = onset + threshold * interval;
    assert!(
        (rolled_back_at - expected).abs() <= interval,
        "rolled back at {rolled_back_at}s, expected {expected}s ± {interval}s"
    );

    // Exactly `threshold` failed checks were counted before the rollback.
    let decisions = result["decisions"].as_array().expect("decisions");
    let last = decisions.last().expect("a decision");
    assert_eq!(last["phase"], "Failed");
    assert_eq!(last["weights"]["canary"], 0);
    let failing_analyses = decisions
        .iter()
        .filter(|d| {
            d["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["verdict"] == "Fail"))
        })
        .count();
    assert_eq!(failing_analyses as f64, threshold);
}

#[test]
fn critical_success_rate_rolls_back_within_seconds_of_the_breach() {
    // The same failing release against the Canary whose success rate is critical. From the
    // onset 8% of canary requests fail; over a 1m window the success rate drops below 99% once
    // more than 1/8 of the window (7.5s) is past the onset, and it is checked every 10s, so
    // the rollback comes within 7.5s + 10s of the onset (+ 10s slack for Poisson noise),
    // instead of threshold × interval later.
    let scenario = example("failing.yaml");
    let canary = example("canary-fail-fast.yaml");
    let (code, json, err) = serin(&[&canary, "--scenario", &scenario, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let result: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(result["outcome"], "Failed");
    let rolled_back_at = result["finishedAtSeconds"]
        .as_f64()
        .expect("finishedAtSeconds");
    let onset = seconds(
        yaml(&scenario)["canary"]["errorPercent"][1]["at"]
            .as_str()
            .expect("onset"),
    );
    assert!(
        rolled_back_at > onset && rolled_back_at <= onset + 30.0,
        "rolled back at {rolled_back_at}s, breach at {onset}s"
    );
}

#[test]
fn json_output_has_the_outcome_and_every_decision() {
    let (code, out, err) = simulate(&example("healthy.yaml"), &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["outcome"], "Succeeded");
    assert_eq!(v["canary"], "test/podinfo");
    assert!(v["timeToOutcomeSeconds"].as_f64().expect("time") > 0.0);
    let decisions = v["decisions"].as_array().expect("decisions");
    assert!(decisions.len() > 10);
    for d in decisions {
        for field in ["timeSeconds", "phase", "checks", "events", "actions"] {
            assert!(!d[field].is_null(), "{field} missing in {d}");
        }
    }
    assert!(decisions.iter().any(|d| {
        d["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["action"] == "PromoteToPrimary"))
    }));
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let scenario = example("failing.yaml");
    let a = simulate(&scenario, &["--output", "json", "--seed", "42"]);
    let b = simulate(&scenario, &["--output", "json", "--seed", "42"]);
    assert_eq!(a, b);
}

#[test]
fn many_runs_print_a_summary() {
    let (code, out, err) = simulate(&example("failing.yaml"), &["--runs", "20"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("20 runs"), "{out}");
    assert!(out.contains("rolled back      20"), "{out}");
    let (code, out, err) = simulate(
        &example("failing.yaml"),
        &["--runs", "5", "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["summary"]["rolledBack"], 5);
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(5));
}

#[test]
fn a_scenario_field_of_the_wrong_type_is_named() {
    let broken = Scratch::new("wrong-type.yaml", "traffic:\n  rps: lots\n");
    let (code, out, err) = simulate(&broken.path(), &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&broken.path()), "{err}");
    assert!(err.contains("traffic.rps"), "{err}");
    assert!(err.contains("expected a number"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );
}

#[test]
fn a_scenario_breaking_a_rule_is_named() {
    let broken = Scratch::new(
        "rule.yaml",
        "canary:\n  errorPercent:\n    - {at: 0s, value: 0.1}\n    - {at: 3m, value: 180}\nwebhooks:\n  acceptance-tests: pass\n",
    );
    let (code, _, err) = simulate(&broken.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("canary.errorPercent[1].value: 180 is not a percentage"),
        "{err}"
    );
    assert!(
        err.contains("webhooks.acceptance-tests: the Canary has no webhook named"),
        "{err}"
    );
}

#[test]
fn missing_files_exit_2() {
    let (code, _, err) = simulate("/nonexistent/scenario.yaml", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/scenario.yaml"), "{err}");
    let (code, _, err) = serin(&[
        "/nonexistent/canary.yaml",
        "--scenario",
        &example("healthy.yaml"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/canary.yaml"), "{err}");
}

#[test]
fn the_example_canary_uses_only_api_field_names() {
    // Deserializing ignores unknown fields, so compare the manifest with its round trip through
    // the API types: a misspelled or unknown field would be missing from the round trip.
    let path = example("canary.yaml");
    let written = yaml(&path);
    let canaries = serin::cli::manifest::load_canaries(path.as_ref()).expect("valid Canary");
    let round_trip = serde_json::to_value(&canaries[0]).expect("serialize");
    assert_eq!(
        numbers_as_floats(&round_trip["spec"]),
        numbers_as_floats(&written["spec"])
    );
}

/// The value with every number as a float, so `99` and `99.0` compare equal.
fn numbers_as_floats(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| serde_json::json!(f)),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn a_thousand_runs_of_a_failing_release_all_roll_back() {
    // Every seed of the failing example must roll back: 8% errors is far from the 99% minimum.
    // The elapsed time is printed as a report (run with `--nocapture`), never asserted.
    let start = Instant::now();
    let (code, out, err) = simulate(&example("failing.yaml"), &["--runs", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1000 runs"), "{out}");
    assert!(out.contains("rolled back    1000 (100.0%)"), "{out}");
    println!(
        "1,000 simulated rollouts of failing.yaml: {:.2}s (this build's profile)\n{out}",
        start.elapsed().as_secs_f64()
    );
}
