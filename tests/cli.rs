//! The `serin` binary's `validate` and `crds` subcommands as a user runs them.

use std::process::Command;

fn serin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(args)
        .output()
        .expect("serin runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempdir::Dir, name: &str, text: &str) -> String {
    let p = dir.0.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("serin-cli-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const VALID: &str = "apiVersion: serin.dev/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis: {interval: 1m, stepWeights: [5, 10, 50]}
";

#[test]
fn validate_accepts_a_valid_canary() {
    let d = tempdir::Dir::new("ok");
    let f = write(&d, "c.yaml", VALID);
    let (code, out, _) = serin(&["validate", &f]);
    assert_eq!(code, 0);
    assert!(out.contains("Canary podinfo is valid"), "{out}");
}

#[test]
fn validate_names_the_file_field_and_rule() {
    let d = tempdir::Dir::new("bad");
    let f = write(&d, "c.yaml", &VALID.replace("[5, 10, 50]", "[5, 50, 10]"));
    let (code, _, err) = serin(&["validate", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("c.yaml"), "{err}");
    assert!(
        err.contains("spec.analysis.stepWeights: stepWeights must be strictly ascending"),
        "{err}"
    );
}

#[test]
fn validate_reports_type_errors_with_their_path() {
    let d = tempdir::Dir::new("type");
    let f = write(&d, "c.yaml", &VALID.replace("port: 9898", "port: ninety"));
    let (code, _, err) = serin(&["validate", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("spec.service.port"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn validate_rejects_flagger_api_version_with_the_fix() {
    let d = tempdir::Dir::new("flagger");
    let f = write(
        &d,
        "c.yaml",
        &VALID.replace("serin.dev/v1beta1", "flagger.app/v1beta1"),
    );
    let (code, _, err) = serin(&["validate", &f]);
    assert_eq!(code, 2);
    assert!(
        err.contains("apiVersion") && err.contains("use serin.dev/v1beta1"),
        "{err}"
    );
}

#[test]
fn validate_reports_bad_yaml_and_missing_files() {
    let d = tempdir::Dir::new("yaml");
    let f = write(&d, "c.yaml", "kind: Canary\n  bad: [indent");
    let (code, _, err) = serin(&["validate", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("not valid YAML"), "{err}");
    let (code, _, err) = serin(&["validate", "/nonexistent/c.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/c.yaml: cannot read"), "{err}");
}

#[test]
fn crds_prints_all_three() {
    let (code, out, _) = serin(&["crds"]);
    assert_eq!(code, 0);
    for name in [
        "canaries.serin.dev",
        "metrictemplates.serin.dev",
        "alertproviders.serin.dev",
    ] {
        assert!(out.contains(&format!("name: {name}")), "{name}");
    }
    assert_eq!(out.matches("kind: CustomResourceDefinition").count(), 3);
}
