use crate::support::rill;

/// `rill check` of `yaml` written to a file: its exit code, stderr and the
/// file's name (the directory lives as long as the returned guard).
fn check_yaml(yaml: &str) -> (Option<i32>, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dataflow.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = rill().arg("check").arg(&file).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), file.display().to_string(), dir)
}

#[test]
fn check_reports_every_mistake_with_its_line_and_fails() {
    let (code, stderr, name, _dir) = check_yaml(
        "nodes:\n  - id: source\n    path: ./source\n    outputs: [out]\n    colour: red\n  - id: sink\n    path: ./sink\n    inputs:\n      a: source/missing\n      b: rill/timer/weeks/3\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    for line in [5, 9, 10] {
        assert!(stderr.contains(&format!("{name}:{line}:")), "no error for line {line}:\n{stderr}");
    }
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(stderr.contains("3 errors found"), "{stderr}");
}

#[test]
fn check_json_lists_errors_and_bundled_examples_pass() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pipeline/dataflow.yml");
    let out = rill().args(["check", "--json", root]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["nodes"], 3);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "nodes:\n  - id: a\n    path: ./a\n    inputs:\n      x: nope/out\n").unwrap();
    let out = rill().args(["check", "--json"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["errors"][0]["line"], 5);
}

#[test]
fn graph_prints_mermaid_edges() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pipeline/dataflow.yml");
    let out = rill().args(["graph", root]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.starts_with("flowchart"), "{stdout}");
    assert!(stdout.contains("number->number"), "{stdout}");
    assert!(stdout.contains("squared->value"), "{stdout}");
    let out = rill().args(["graph", "--json", root]).output().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        value["mermaid"].as_str().is_some_and(|m| m.starts_with("flowchart") && m.contains("squared->value")),
        "{value}"
    );
}

#[test]
fn an_operators_node_is_refused_at_its_line_with_what_to_do_instead() {
    let (code, stderr, name, _dir) = check_yaml(
        "nodes:\n  - id: camera\n    path: ./camera\n    outputs: [image]\n  - id: runtime-node\n    operators:\n      - id: detect\n        python: detect.py\n        inputs: { image: camera/image }\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "{name}:6:5: error: node `runtime-node` uses `operators`: rill runs every node as its own process and has no in-process operators"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("make each operator a node of its own with `path:`"), "{stderr}");
    assert!(stderr.contains("1 error found"), "{stderr}");
}

#[test]
fn check_warns_about_top_level_fields_rill_ignores_and_passes() {
    let (code, stderr, name, _dir) =
        check_yaml("health_check_interval: 2.0\nenv: { SITE: lab }\nnodes:\n  - id: a\n    path: /bin/true\n");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("{name}:1:1: warning: rill ignores `health_check_interval`")), "{stderr}");
}

#[test]
fn mismatched_output_types_warn_and_strict_types_fails_the_check() {
    let typed = "nodes:\n  - id: mic\n    path: /bin/true\n    outputs: [level]\n    output_types: { level: std/core/v1/Float32 }\n  - id: meter\n    path: /bin/true\n    inputs: { level: mic/level }\n    input_types: { level: std/core/v1/Float64 }\n";
    let (code, stderr, name, _dir) = check_yaml(typed);
    assert_eq!(code, Some(0), "a mismatch is a warning:\n{stderr}");
    let expected = format!(
        "{name}:9:27: warning: input `meter/level` expects `std/core/v1/Float64` but `mic/level` sends `std/core/v1/Float32`"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let (code, stderr, name, _dir) = check_yaml(&format!("strict_types: true\n{typed}"));
    assert_eq!(code, Some(1), "with strict_types it is an error:\n{stderr}");
    assert!(stderr.contains(&format!("{name}:10:27: error: input `meter/level` expects")), "{stderr}");
    assert!(stderr.contains("1 error found"), "{stderr}");
}

/// Writes `files` into a new directory and runs `rill check` on its `dataflow.yml`.
fn check_files(files: &[(&str, &str)]) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        std::fs::write(dir.path().join(path), text).unwrap();
    }
    let out = rill().arg("check").arg(dir.path().join("dataflow.yml")).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), dir)
}

#[test]
fn a_module_left_unwired_and_a_module_cycle_each_have_their_own_error_in_their_file() {
    let module = "module:\n  name: m\n  inputs: [frames]\nnodes:\n  - id: x\n    path: /bin/true\n    inputs: { f: _mod/frames }\n";
    let (code, stderr, dir) =
        check_files(&[("dataflow.yml", "nodes:\n  - id: det\n    module: m.yml\n"), ("m.yml", module)]);
    assert_eq!(code, Some(1), "{stderr}");
    let top = dir.path().join("dataflow.yml").display().to_string();
    let expected =
        format!("{top}:2:9: error: node `det` leaves the required input port `frames` of its module unwired");
    assert!(stderr.contains(&expected), "{stderr}");

    let a = "module: { name: a }\nnodes:\n  - id: inner\n    module: b.yml\n";
    let b = "module: { name: b }\nnodes:\n  - id: back\n    module: a.yml\n";
    let (code, stderr, dir) =
        check_files(&[("dataflow.yml", "nodes:\n  - id: outer\n    module: a.yml\n"), ("a.yml", a), ("b.yml", b)]);
    assert_eq!(code, Some(1), "{stderr}");
    let b_file = dir.path().join("b.yml").display().to_string();
    assert!(stderr.contains(&format!("{b_file}:4:13: error: module cycle: a.yml -> b.yml -> a.yml")), "{stderr}");
    assert!(stderr.contains("1 error found"), "{stderr}");
}
