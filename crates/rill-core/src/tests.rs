//! End-to-end tests of `Dataflow::parse`: what parses into what, and the exact diagnostics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

/// Parses YAML written in a raw string that starts with a newline (so line 1 is the first line).
fn parse(yaml: &str) -> Result<Dataflow, Diagnostics> {
    let text = yaml.strip_prefix('\n').unwrap_or(yaml);
    Dataflow::parse(text, Path::new("dataflow.yml"))
}

fn parse_ok(yaml: &str) -> Dataflow {
    match parse(yaml) {
        Ok(dataflow) => dataflow,
        Err(diagnostics) => panic!("unexpected errors:\n{diagnostics}"),
    }
}

/// The diagnostics as (line, column, message, hint) tuples.
fn errors(yaml: &str) -> Vec<(usize, usize, String, Option<String>)> {
    match parse(yaml) {
        Ok(dataflow) => panic!("expected errors, parsed {dataflow:?}"),
        Err(diagnostics) => diagnostics.0.into_iter().map(|d| (d.line, d.column, d.message, d.hint)).collect(),
    }
}

/// The single diagnostic of a file with one mistake.
fn single_error(yaml: &str) -> (usize, usize, String, Option<String>) {
    let mut found = errors(yaml);
    assert_eq!(found.len(), 1, "expected one error, got {found:#?}");
    found.remove(0)
}

/// The warnings of a valid file as (line, message).
fn warned(positions: &Positions) -> Vec<(usize, &str)> {
    positions.warnings.iter().map(|w| (w.line, w.message.as_str())).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn from_node(node: &str, output: &str, queue_size: usize) -> InputSpec {
    let source = InputSource::Node { node: node.into(), output: output.into() };
    InputSpec { source, queue_size }
}

fn timer(interval: Duration) -> InputSpec {
    InputSpec { source: InputSource::Timer { interval }, queue_size: DEFAULT_QUEUE_SIZE }
}

const FULL: &str = r#"
nodes:
  - id: camera
    name: Camera driver
    description: grabs frames
    path: ./camera-driver
    args: --device /dev/video0 --title 'front cam'
    env:
      FPS: 30
      GAIN: 1.50
      DEBUG: true
      MODE: fast
    build: cargo build -p camera
    inputs:
      tick: rill/timer/millis/33
    outputs:
      - frames
      - status
    restart_policy: on-failure
    max_restarts: 5
    restart_delay: 1.5s
    deploy:
      machine: robot
      distribute: scp
      working_dir: /opt/app
  - id: inference
    path: /usr/local/bin/ml-model
    args: [--model, yolo.onnx, 8080]
    inputs:
      frames:
        source: camera/frames
        queue_size: 2
      status: camera/status
    outputs: [predictions]
    restart_policy: always
    restart_delay: 2
    _unstable_deploy:
      labels:
        gpu: "true"
        cores: 8
      distribute: http
  - id: logger
    path: python3
    inputs:
      predictions: inference/predictions
      heartbeat: rill/timer/hz/2
"#;

#[test]
fn full_example_parses_into_the_expected_structs() {
    let expected = Dataflow {
        nodes: vec![
            NodeSpec {
                id: "camera".into(),
                path: "./camera-driver".into(),
                args: strings(&["--device", "/dev/video0", "--title", "front cam"]),
                env: map(&[("FPS", "30"), ("GAIN", "1.50"), ("DEBUG", "true"), ("MODE", "fast")]),
                build: Some("cargo build -p camera".into()),
                inputs: [("tick".to_string(), timer(Duration::from_millis(33)))].into(),
                outputs: strings(&["frames", "status"]),
                restart: RestartSpec {
                    policy: RestartPolicy::OnFailure,
                    max_restarts: Some(5),
                    restart_delay: Duration::from_millis(1500),
                    max_restart_delay: DEFAULT_MAX_RESTART_DELAY,
                },
                deploy: Deploy {
                    machine: Some("robot".into()),
                    labels: BTreeMap::new(),
                    distribute: Distribute::Scp,
                    working_dir: Some(PathBuf::from("/opt/app")),
                    artifact: None,
                },
                cpu_affinity: vec![],
                git: None,
                modules: Vec::new(),
                printed: Printed::default(),
            },
            NodeSpec {
                id: "inference".into(),
                path: "/usr/local/bin/ml-model".into(),
                args: strings(&["--model", "yolo.onnx", "8080"]),
                env: BTreeMap::new(),
                build: None,
                inputs: [
                    ("frames".to_string(), from_node("camera", "frames", 2)),
                    ("status".to_string(), from_node("camera", "status", DEFAULT_QUEUE_SIZE)),
                ]
                .into(),
                outputs: strings(&["predictions"]),
                restart: RestartSpec {
                    policy: RestartPolicy::Always,
                    max_restarts: None,
                    restart_delay: Duration::from_secs(2),
                    max_restart_delay: DEFAULT_MAX_RESTART_DELAY,
                },
                deploy: Deploy {
                    machine: None,
                    labels: map(&[("gpu", "true"), ("cores", "8")]),
                    distribute: Distribute::Http,
                    working_dir: None,
                    artifact: None,
                },
                cpu_affinity: vec![],
                git: None,
                modules: Vec::new(),
                printed: Printed::default(),
            },
            NodeSpec {
                id: "logger".into(),
                path: "python3".into(),
                args: Vec::new(),
                env: BTreeMap::new(),
                build: None,
                inputs: [
                    ("predictions".to_string(), from_node("inference", "predictions", 10)),
                    ("heartbeat".to_string(), timer(Duration::from_millis(500))),
                ]
                .into(),
                outputs: Vec::new(),
                restart: RestartSpec::default(),
                deploy: Deploy::default(),
                cpu_affinity: vec![],
                git: None,
                modules: Vec::new(),
                printed: Printed::default(),
            },
        ],
    };
    assert_eq!(parse_ok(FULL), expected);
}

#[test]
fn defaults() {
    let dataflow = parse_ok("nodes:\n  - id: a\n    path: ./a\n");
    let node = dataflow.node("a").unwrap();
    assert_eq!(node.restart.policy, RestartPolicy::Never);
    assert_eq!(node.restart.restart_delay, Duration::from_millis(500));
    assert_eq!(node.deploy.distribute, Distribute::Local);
    assert!(dataflow.node("b").is_none());
}

#[test]
fn dora_timer_alias() {
    let dataflow = parse_ok(
        r#"
nodes:
  - id: a
    path: ./a
    inputs:
      tick: dora/timer/millis/10
      slow: dora/timer/secs/2
"#,
    );
    let inputs = &dataflow.nodes[0].inputs;
    assert_eq!(inputs["tick"], timer(Duration::from_millis(10)));
    assert_eq!(inputs["slow"], timer(Duration::from_secs(2)));
}

#[test]
fn unstable_deploy_alias_from_the_guide() {
    let dataflow = parse_ok(
        r#"
nodes:
- id: camera
  _unstable_deploy:
    machine: robot
  path: ./camera-driver
  outputs:
  - frames
- id: inference
  _unstable_deploy:
    labels:
      gpu: "true"
  path: ./ml-model
  inputs:
    frames: camera/frames
  outputs:
  - predictions
"#,
    );
    assert_eq!(dataflow.nodes[0].deploy.machine.as_deref(), Some("robot"));
    assert_eq!(dataflow.nodes[1].deploy.labels, map(&[("gpu", "true")]));
}

#[test]
fn args_as_string_or_list() {
    let dataflow = parse_ok(
        r#"
nodes:
  - id: a
    path: ./a
    args: --name "my node" -v
  - id: b
    path: ./b
    args:
      - --name
      - my node
      - -v
"#,
    );
    let expected = strings(&["--name", "my node", "-v"]);
    assert_eq!(dataflow.nodes[0].args, expected);
    assert_eq!(dataflow.nodes[1].args, expected);
}

#[test]
fn env_values_are_stringified_as_written() {
    let dataflow = parse_ok(
        r#"
nodes:
  - id: a
    path: ./a
    env:
      PORT: 8080
      RATIO: 0.50
      ENABLED: false
      NAME: "007"
      ANSWER: yes
"#,
    );
    let expected =
        map(&[("PORT", "8080"), ("RATIO", "0.50"), ("ENABLED", "false"), ("NAME", "007"), ("ANSWER", "yes")]);
    assert_eq!(dataflow.nodes[0].env, expected);
}

#[test]
fn restart_delay_spellings() {
    let delay = |value: &str| {
        let yaml = format!("nodes:\n  - id: a\n    path: ./a\n    restart_delay: {value}\n");
        parse_ok(&yaml).nodes[0].restart.restart_delay
    };
    assert_eq!(delay("500ms"), Duration::from_millis(500));
    assert_eq!(delay("\"2s\""), Duration::from_secs(2));
    assert_eq!(delay("0.25"), Duration::from_millis(250));
    assert_eq!(delay("3"), Duration::from_secs(3));
}

#[test]
fn input_referring_to_its_own_node_is_allowed() {
    parse_ok("nodes:\n  - id: a\n    path: ./a\n    inputs:\n      again: a/out\n    outputs: [out]\n");
}

// ---- error classes ----

#[test]
fn yaml_syntax_error() {
    let (line, column, message, _) = single_error("nodes:\n  - id: a\n    path: [./a\n");
    assert_eq!((line, column), (3, 11));
    assert_eq!(message, "invalid YAML: unclosed bracket '['");
}

#[test]
fn empty_file_and_missing_or_empty_nodes() {
    assert_eq!(single_error("").2, "the dataflow file is empty");
    assert_eq!(single_error("# nothing\n").2, "the dataflow file is empty");
    let found = errors("\nname: demo\n");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[0].2.as_str()), (1, "unknown field `name` in the dataflow"));
    let valid = format!("valid fields: {}", crate::parse::TOP_FIELDS.join(", "));
    assert_eq!(found[0].3.as_deref(), Some(valid.as_str()));
    assert_eq!((found[1].0, found[1].2.as_str()), (1, "missing field `nodes`"));
    assert_eq!(single_error("nodes: []\n").2, "`nodes` is empty");
    assert_eq!(single_error("nodes:\n").2, "`nodes` is empty");
    assert_eq!(single_error("- a\n").2, "the dataflow must be a mapping with a `nodes` list, found a list");
    assert_eq!(single_error("nodes: a\n").2, "`nodes` must be a list, found a string");
}

#[test]
fn unknown_top_level_field_does_not_hide_other_errors() {
    let found = errors("nodes:\n  - id: a\nversion: 2\n");
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [(2, "node `a` is missing the required field `path`"), (3, "unknown field `version` in the dataflow"),]
    );
}

#[test]
fn unknown_node_field_names_it_and_lists_valid_ones() {
    let (line, column, message, hint) = single_error(
        r#"
nodes:
  - id: a
    path: ./a
    ouputs: [x]
"#,
    );
    assert_eq!((line, column), (4, 5));
    assert_eq!(message, "unknown field `ouputs` in node `a`");
    assert_eq!(
        hint.as_deref(),
        Some(format!("did you mean `outputs`? valid fields: {}", crate::parse::NODE_FIELDS.join(", ")).as_str())
    );
}

#[test]
fn unknown_fields_in_input_and_deploy() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    outputs: [x]
    inputs:
      in: {source: a/x, queue: 3}
    deploy:
      machine: m1
      gpu: true
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (6, 25));
    assert_eq!(found[0].2, "unknown field `queue` in input `in` of node `a`");
    assert_eq!(found[0].3.as_deref(), Some("valid fields: source, queue_size"));
    assert_eq!((found[1].0, found[1].1), (9, 7));
    assert_eq!(found[1].2, "unknown field `gpu` in `deploy` of node `a`");
    assert_eq!(found[1].3.as_deref(), Some("valid fields: machine, labels, distribute, working_dir"));
}

#[test]
fn wrong_types() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: [./a]
    outputs: x
    env: [A]
    max_restarts: -1
  - just a string
"#,
    );
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (3, "`path` of node `a` must be a string, found a list"),
            (4, "`outputs` of node `a` must be a list, found a string"),
            (5, "`env` of node `a` must be a mapping, found a list"),
            (6, "`max_restarts` of node `a` must be a non-negative whole number, found `-1`"),
            (7, "each entry of `nodes` must be a mapping, found a string"),
        ]
    );
}

#[test]
fn missing_id_and_path() {
    let found = errors(
        r#"
nodes:
  - path: ./a
  - id: b
    outputs: [x]
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (2, 5));
    assert_eq!(found[0].2, "node is missing the required field `id`");
    assert_eq!(found[0].3.as_deref(), Some("add `id: <unique-name>`"));
    assert_eq!((found[1].0, found[1].1), (3, 5));
    assert_eq!(found[1].2, "node `b` is missing the required field `path`");
}

#[test]
fn duplicate_node_ids_point_at_the_second() {
    let (line, column, message, hint) = single_error(
        r#"
nodes:
  - id: camera
    path: ./a
  - id: sink
    path: ./b
  - id: camera
    path: ./c
"#,
    );
    assert_eq!((line, column), (6, 9));
    assert_eq!(message, "duplicate node id `camera`");
    assert_eq!(hint.as_deref(), Some("the first node with this id is at line 2"));
}

#[test]
fn bad_and_reserved_ids() {
    let found = errors(
        r#"
nodes:
  - id: a/b
    path: ./a
  - id: rill
    path: ./r
    outputs: [ok, "no way", x]
    inputs:
      "in put": rill/x/ok
"#,
    );
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (2, "invalid node id `a/b`"),
            (4, "node id `rill` is reserved"),
            (6, "invalid output id `no way` in node `rill`"),
            (8, "invalid input id `in put` in node `rill`"),
            (8, "unknown built-in source `rill/x/ok`"),
        ]
    );
    assert_eq!(found[0].3.as_deref(), Some("ids may contain only letters, digits, '_', '-' and '.'"));
}

#[test]
fn input_naming_a_missing_node() {
    let found = errors(
        r#"
nodes:
  - id: camera
    path: ./a
    outputs: [frames]
  - id: sink
    path: ./b
    inputs:
      in: nope/frames
      frames: camra/frames
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (8, 11));
    assert_eq!(found[0].2, "input `sink/in` refers to node `nope`, which does not exist");
    assert_eq!(found[0].3.as_deref(), Some("existing nodes: camera, sink"));
    assert_eq!((found[1].0, found[1].1), (9, 15));
    assert_eq!(found[1].2, "input `sink/frames` refers to node `camra`, which does not exist");
    assert_eq!(found[1].3.as_deref(), Some("did you mean `camera`? existing nodes: camera, sink"));
}

#[test]
fn input_naming_a_missing_output() {
    let found = errors(
        r#"
nodes:
  - id: camera
    path: ./a
    outputs: [frames, status]
  - id: mic
    path: ./m
  - id: sink
    path: ./b
    inputs:
      video: camera/frame
      audio:
        source: mic/samples
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    // Inputs are checked in id order (audio, video) but reported in file order.
    assert_eq!((found[0].0, found[0].1), (10, 14));
    assert_eq!(found[0].2, "input `sink/video` refers to output `frame` of node `camera`, which does not exist");
    assert_eq!(found[0].3.as_deref(), Some("did you mean `frames`? node `camera` has outputs: frames, status"));
    assert_eq!((found[1].0, found[1].1), (12, 17));
    assert_eq!(found[1].2, "input `sink/audio` refers to output `samples` of node `mic`, which does not exist");
    assert_eq!(found[1].3.as_deref(), Some("node `mic` declares no outputs; add `samples` to its `outputs`"));
}

#[test]
fn broken_outputs_do_not_cause_follow_up_errors() {
    let (line, _, message, _) = single_error(
        r#"
nodes:
  - id: camera
    path: ./a
    outputs: [frames, [oops]]
  - id: sink
    path: ./b
    inputs:
      video: camera/frames
      other: camera/status
"#,
    );
    assert_eq!((line, message.as_str()), (4, "each of `outputs` of node `camera` must be a string, found a list"));
}

#[test]
fn bad_timer_specs() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    inputs:
      a: rill/timer/millis/abc
      b: rill/timer/weeks/1
      c: rill/timer/millis/0
      d: rill/timer/hz/0
      e: dora/timer/hz/-2
      f: rill/clock/1
"#,
    );
    let messages: Vec<_> = found.iter().map(|(line, column, message, _)| (*line, *column, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (5, 10, "invalid timer `rill/timer/millis/abc`: `abc` is not a whole number"),
            (6, 10, "unknown timer unit `weeks` in `rill/timer/weeks/1`"),
            (7, 10, "timer `rill/timer/millis/0` has a zero interval"),
            (8, 10, "invalid timer `rill/timer/hz/0`: the frequency must be greater than zero"),
            (9, 10, "invalid timer `dora/timer/hz/-2`: the frequency must be greater than zero"),
            (10, 10, "unknown built-in source `rill/clock/1`"),
        ]
    );
    assert_eq!(found[0].3.as_deref(), Some("use rill/timer/millis/N, rill/timer/secs/N or rill/timer/hz/F"));
}

#[test]
fn source_without_slash() {
    let (line, column, message, hint) = single_error(
        r#"
nodes:
  - id: a
    path: ./a
    inputs:
      in: camera
"#,
    );
    assert_eq!((line, column), (5, 11));
    assert_eq!(message, "invalid input source `camera`: expected `node/output` or `rill/timer/...`");
    assert_eq!(hint.as_deref(), Some("e.g. `camera/frames` or `rill/timer/millis/100`"));
}

#[test]
fn long_form_input_problems() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    outputs: [x]
    inputs:
      zero:
        source: a/x
        queue_size: 0
      nosource:
        queue_size: 3
"#,
    );
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (8, "`queue_size` of input `zero` of node `a` must be at least 1"),
            (10, "input `nosource` of node `a` is missing the required field `source`"),
        ]
    );
}

#[test]
fn bad_restart_settings() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    restart_policy: sometimes
    restart_delay: soon
  - id: b
    path: ./b
    restart_delay: -1
    max_restarts: 99999999999
"#,
    );
    assert_eq!(found.len(), 4, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (4, 21));
    assert_eq!(found[0].2, "invalid restart_policy `sometimes` in node `a`");
    assert_eq!(found[0].3.as_deref(), Some("expected one of: never, on-failure, always"));
    assert_eq!((found[1].0, found[1].2.as_str()), (5, "invalid restart_delay `soon`"));
    assert_eq!(
        found[1].3.as_deref(),
        Some("use seconds as a number (`1.5`) or a string with a unit: \"500ms\", \"2s\", \"1.5s\", \"1m\"")
    );
    assert_eq!((found[2].0, found[2].2.as_str()), (8, "invalid restart_delay `-1`"));
    assert_eq!(
        (found[3].0, found[3].2.as_str()),
        (9, "`max_restarts` of node `b` must be at most 4294967295, found `99999999999`")
    );
}

#[test]
fn duplicate_outputs_and_keys() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    outputs:
      - x
      - y
      - x
    path: ./again
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (7, 9));
    assert_eq!(found[0].2, "duplicate output `x` in node `a`");
    assert_eq!(found[0].3.as_deref(), Some("first listed at line 5"));
    assert_eq!((found[1].0, found[1].1), (8, 5));
    assert_eq!(found[1].2, "duplicate field `path` in node `a`");
    assert_eq!(found[1].3.as_deref(), Some("first set at line 3"));
}

#[test]
fn deploy_and_its_alias_together() {
    let (line, column, message, hint) = single_error(
        r#"
nodes:
  - id: a
    path: ./a
    deploy:
      machine: m1
    _unstable_deploy:
      machine: m2
"#,
    );
    assert_eq!((line, column), (6, 5));
    assert_eq!(message, "node `a` has both `deploy` and `_unstable_deploy`");
    assert_eq!(hint.as_deref(), Some("`_unstable_deploy` is an alias of `deploy`; keep only one"));
}

#[test]
fn bad_deploy_values() {
    let found = errors(
        r#"
nodes:
  - id: a
    path: ./a
    deploy:
      distribute: ftp
      labels: [gpu]
"#,
    );
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (5, "invalid distribute `ftp` in `deploy` of node `a`"),
            (6, "`labels` in `deploy` of node `a` must be a mapping, found a list"),
        ]
    );
}

#[test]
fn unterminated_quote_in_args() {
    let (line, _, message, _) = single_error("nodes:\n  - id: a\n    path: ./a\n    args: --name 'x\n");
    assert_eq!((line, message.as_str()), (4, "unterminated ' quote in args `--name 'x`"));
}

#[test]
fn three_mistakes_three_diagnostics() {
    let yaml = r#"
nodes:
  - id: camera
    path: ./camera
    outputs: [frames]
  - id: detector
    path: ./detector
    inputs:
      frames: camera/frame
    restart_policy: sometimes
  - id: sink
    path: ./sink
    inputs:
      tick: rill/timer/millis/abc
"#;
    let found = errors(yaml);
    let lines: Vec<usize> = found.iter().map(|(line, ..)| *line).collect();
    assert_eq!(lines, [8, 9, 13], "{found:#?}");
    assert_eq!(found[0].2, "input `detector/frames` refers to output `frame` of node `camera`, which does not exist");
    assert_eq!(found[1].2, "invalid restart_policy `sometimes` in node `detector`");
    assert_eq!(found[2].2, "invalid timer `rill/timer/millis/abc`: `abc` is not a whole number");
}

#[test]
fn display_format() {
    let Err(diagnostics) = parse("nodes:\n  - id: a\n    path: ./a\n    restart_policy: maybe\n    colour: red\n")
    else {
        panic!("expected errors");
    };
    let fields = crate::parse::NODE_FIELDS.join(", ");
    assert_eq!(
        diagnostics.to_string(),
        format!(
            "dataflow.yml:4:21: error: invalid restart_policy `maybe` in node `a`\n    \
             hint: expected one of: never, on-failure, always\n\
             dataflow.yml:5:5: error: unknown field `colour` in node `a`\n    \
             hint: valid fields: {fields}\n\
             2 errors found"
        )
    );
}

#[test]
fn load_reports_unreadable_file() {
    let path = Path::new("/nonexistent/rill/dataflow.yml");
    let Err(diagnostics) = Dataflow::load(path) else { panic!("expected an error") };
    assert_eq!(diagnostics.0.len(), 1);
    let diagnostic = &diagnostics.0[0];
    assert_eq!((diagnostic.file.as_path(), diagnostic.line, diagnostic.column), (path, 0, 0));
    assert!(
        diagnostic.message.starts_with("cannot read dataflow file `/nonexistent/rill/dataflow.yml`: "),
        "{}",
        diagnostic.message
    );
    assert!(diagnostics.to_string().starts_with("/nonexistent/rill/dataflow.yml: error: cannot read"));
}

#[test]
fn load_reads_and_parses() {
    let dir = std::env::temp_dir().join(format!("rill-core-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dataflow.yml");
    std::fs::write(&path, "nodes:\n  - id: a\n    path: ./a\n").unwrap();
    let dataflow = Dataflow::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(dataflow.unwrap().nodes[0].id, "a");
}

#[test]
fn mermaid_has_boxes_edges_and_timers() {
    let chart = parse_ok(FULL).mermaid();
    let expected = [
        "flowchart TB",
        r#"    n0["camera"]"#,
        r#"    n1["inference"]"#,
        r#"    n2["logger"]"#,
        r#"    t0(("timer 33ms"))"#,
        r#"    t1(("timer 500ms"))"#,
        r#"    t0 -->|"tick"| n0"#,
        r#"    n0 -->|"frames->frames"| n1"#,
        r#"    n0 -->|"status->status"| n1"#,
        r#"    t1 -->|"heartbeat"| n2"#,
        r#"    n1 -->|"predictions->predictions"| n2"#,
    ];
    assert_eq!(chart.lines().collect::<Vec<_>>(), expected, "{chart}");
}

#[test]
fn serde_json_round_trip() {
    let dataflow = parse_ok(FULL);
    let json = serde_json::to_string(&dataflow).unwrap();
    assert!(json.contains(r#""restart_delay_ms":1500"#), "{json}");
    assert!(json.contains(r#""policy":"on-failure""#), "{json}");
    assert!(json.contains(r#""timer":{"interval_ns":33000000}"#), "{json}");
    let back: Dataflow = serde_json::from_str(&json).unwrap();
    assert_eq!(back, dataflow);
}

#[test]
fn edge_cases_get_clear_messages() {
    let (line, _, message, _) = single_error("nodes:\n  - id: a\n    path: ./a\n---\nnodes: []\n");
    // The parser reports where the second document's content starts.
    assert_eq!(line, 5);
    assert_eq!(message, "invalid YAML: the file holds several YAML documents (`---`); a dataflow is a single document");
    let found = errors("nodes:\n  - id: \"\"\n    path: ./a\n    max_restarts: 1.5\n");
    let messages: Vec<_> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (2, "node id is empty"),
            (4, "`max_restarts` of the node at line 2 must be a non-negative whole number, found `1.5`"),
        ]
    );
}

#[test]
fn non_finite_floats_are_text() {
    let dataflow = parse_ok("nodes:\n  - id: a\n    path: ./a\n    env:\n      LIMIT: .inf\n");
    assert_eq!(dataflow.nodes[0].env, map(&[("LIMIT", ".inf")]));
    let (_, _, message, _) = single_error("nodes:\n  - id: a\n    path: ./a\n    restart_delay: .inf\n");
    assert_eq!(message, "invalid restart_delay `.inf`");
}

#[test]
fn cpu_affinity_and_max_restart_delay_are_read_and_bad_values_refused_at_their_line() {
    let dataflow = parse_ok(
        "nodes:\n  - id: a\n    path: ./a\n    cpu_affinity: [1, 0, 1]\n    restart_delay: 0.1\n    max_restart_delay: 2s\n",
    );
    let a = &dataflow.nodes[0];
    assert_eq!(a.cpu_affinity, [1, 0], "each core once, in order");
    assert_eq!(
        (a.restart.restart_delay, a.restart.max_restart_delay),
        (Duration::from_millis(100), Duration::from_secs(2))
    );
    assert_eq!(
        parse_ok("nodes:\n  - id: a\n    path: ./a\n").nodes[0].restart.max_restart_delay,
        DEFAULT_MAX_RESTART_DELAY
    );
    let found = errors("nodes:\n  - id: a\n    path: ./a\n    cpu_affinity: [0, -1, 1.5]\n    max_restart_delay: -3\n");
    let lines: Vec<(usize, &str)> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(lines.len(), 3, "{found:?}");
    assert!(
        lines[..2].iter().all(|(line, m)| *line == 4 && m.contains("each core of `cpu_affinity` of node `a`")),
        "{found:?}"
    );
    assert!(lines[0].1.contains("`-1`") && lines[1].1.contains("`1.5`"), "{found:?}");
    assert_eq!(lines[2], (5, "invalid max_restart_delay `-3`"), "{found:?}");
}

#[test]
fn in_process_operators_are_refused_at_their_line_with_what_to_do() {
    let found = errors(
        "nodes:\n  - id: camera\n    path: ./camera\n    outputs: [image]\n  - id: runtime-node\n    operators:\n      - id: detect\n        python: detect.py\n        inputs: { image: camera/image }\n",
    );
    assert_eq!(found.len(), 1, "one error, not one per consequence: {found:#?}");
    let (line, column, message, hint) = &found[0];
    assert_eq!((*line, *column), (6, 5));
    assert_eq!(
        message,
        "node `runtime-node` uses `operators`: rill runs every node as its own process and has no in-process operators"
    );
    assert!(
        hint.as_deref().is_some_and(|h| h.contains("node of its own with `path:`") && h.contains(".py")),
        "{hint:?}"
    );
    let found = errors("nodes:\n  - id: op\n    operator:\n      python: op.py\n");
    assert_eq!((found[0].0, found[0].2.contains("uses `operator`")), (3, true), "{found:#?}");
}

#[test]
fn top_level_env_reaches_every_node_and_ignored_fields_are_warnings_at_their_line() {
    let (dataflow, positions) = Dataflow::parse_located(
        "env: { LEVEL: info, SITE: lab }\nhealth_check_interval: 2.0\nnodes:\n  - id: a\n    path: ./a\n    env: { LEVEL: debug }\n  - id: b\n    path: ./b\nexit_when_nodes_finish: [a]\n",
        Path::new("d.yml"),
    )
    .expect("valid");
    assert_eq!(dataflow.nodes[0].env, map(&[("LEVEL", "debug"), ("SITE", "lab")]), "the node's own value wins");
    assert_eq!(dataflow.nodes[1].env, map(&[("LEVEL", "info"), ("SITE", "lab")]));
    let warnings = warned(&positions);
    assert_eq!(warnings, [(2, "rill ignores `health_check_interval`"), (9, "rill ignores `exit_when_nodes_finish`")]);
    assert!(positions.warnings.iter().all(|w| w.severity == Severity::Warning && w.hint.is_some()));
    assert!(errors("env: [a]\nnodes:\n  - id: a\n    path: ./a\n")[0].2.contains("`env` of the dataflow"));
}

const TYPED: &str = "nodes:
  - id: mic
    path: ./mic
    outputs: [audio, level]
    output_types:
      audio: std/media/v1/AudioFrame[sample_type=f32]
      level: std/core/v1/Float32
  - id: asr
    path: ./asr
    inputs: { audio: mic/audio, level: mic/level, tick: rill/timer/millis/10 }
    input_types:
      audio: std/media/v1/AudioFrame[sample_type=i16]
      level: std/core/v1/Float64
      tick: std/core/v1/Flaot32
";

#[test]
fn mismatched_and_unknown_types_warn_and_strict_types_makes_them_errors() {
    let (_, positions) = Dataflow::parse_located(TYPED, Path::new("d.yml")).expect("types are only annotations");
    let warnings = warned(&positions);
    assert_eq!(
        warnings,
        [
            (
                12,
                "input `asr/audio` expects `std/media/v1/AudioFrame[sample_type=i16]` but `mic/audio` sends `std/media/v1/AudioFrame[sample_type=f32]`"
            ),
            (13, "input `asr/level` expects `std/core/v1/Float64` but `mic/level` sends `std/core/v1/Float32`"),
            (14, "unknown type `std/core/v1/Flaot32`"),
        ]
    );
    assert!(positions.warnings[2].hint.as_deref().unwrap_or("").contains("did you mean `std/core/v1/Float32`"));
    let strict = errors(&format!("strict_types: true\n{TYPED}"));
    assert_eq!(strict.iter().map(|e| e.0).collect::<Vec<_>>(), [13, 14, 15], "{strict:#?}");
    assert!(strict.iter().all(|e| e.3.as_deref().unwrap_or("").contains("strict_types")));
}

#[test]
fn types_that_agree_are_silent_and_bad_annotations_are_named() {
    let agreeing = "nodes:\n  - id: a\n    path: ./a\n    outputs: [x]\n    output_types: { x: std/media/v1/AudioFrame }\n  - id: b\n    path: ./b\n    inputs: { x: a/x }\n    input_types: { x: 'std/media/v1/AudioFrame[channels=2]' }\n";
    let (_, positions) = Dataflow::parse_located(agreeing, Path::new("d.yml")).expect("valid");
    assert!(positions.warnings.is_empty(), "{:?}", positions.warnings);
    let (line, _, message, _) =
        single_error("nodes:\n  - id: a\n    path: ./a\n    outputs: [x]\n    output_types: { x: Float32 }\n");
    assert_eq!((line, message.as_str()), (5, "`Float32` is not a type name"));
    let (_, positions) = Dataflow::parse_located(
        "nodes:\n  - id: a\n    path: ./a\n    outputs: [x]\n    output_types: { y: acme/robot/v1/Wheel }\n",
        Path::new("d.yml"),
    )
    .expect("valid");
    assert_eq!(positions.warnings[0].message, "`output_types` of node `a` names output `y`, which it does not declare");
    assert!(
        single_error("strict_types: yes please\nnodes:\n  - id: a\n    path: ./a\n")
            .2
            .contains("`strict_types` must be `true` or `false`")
    );
}

#[test]
fn printed_outputs_must_be_declared_and_levels_known() {
    let dataflow = parse_ok(
        "nodes:\n  - id: a\n    path: ./a\n    outputs: [lines, logs]\n    send_stdout_as: lines\n    send_logs_as: logs\n    min_log_level: WARN\n",
    );
    let printed = &dataflow.nodes[0].printed;
    assert_eq!((printed.stdout_as.as_deref(), printed.logs_as.as_deref()), (Some("lines"), Some("logs")));
    assert_eq!(printed.min_log_level, Some(LogLevel::Warn));
    let found = errors(
        "nodes:\n  - id: a\n    path: ./a\n    outputs: [lines]\n    send_stdout_as: text\n    send_logs_as: lines\n    min_log_level: loud\n  - id: b\n    path: ./b\n    outputs: [x]\n    send_stdout_as: x\n    send_logs_as: x\n",
    );
    let found: Vec<(usize, &str)> = found.iter().map(|(line, _, message, _)| (*line, message.as_str())).collect();
    assert_eq!(
        found,
        [
            (5, "`send_stdout_as` of node `a` names `text`, which is not one of its outputs"),
            (7, "invalid `min_log_level` `loud` in node `a`"),
            (12, "`send_stdout_as` and `send_logs_as` of node `b` name the same output"),
        ]
    );
}

#[test]
fn git_sources_need_one_revision_and_refuse_what_git_would_misread() {
    let dataflow = parse_ok("nodes:\n  - id: a\n    path: ./a\n    git: https://example.org/a.git\n    tag: v1.2\n");
    let git = dataflow.nodes[0].git.as_ref().expect("a git source");
    assert_eq!((git.repo.as_str(), &git.rev), ("https://example.org/a.git", &GitRev::Tag("v1.2".into())));
    let found = errors(
        "nodes:\n  - id: a\n    path: ./a\n    git: ../repo\n  - id: b\n    path: ./b\n    branch: main\n  - id: c\n    path: ./c\n    git: --upload-pack=evil\n    rev: abc1\n  - id: d\n    path: ./d\n    git: ../repo\n    branch: main\n    tag: v1\n  - id: e\n    path: ./e\n    git: ../repo\n    rev: HEAD~1\n  - id: f\n    path: ./f\n    git: ../repo\n    branch: main\n    deploy: { distribute: scp }\n",
    );
    let found: Vec<(usize, String)> = found.into_iter().map(|(line, _, message, _)| (line, message)).collect();
    let lines: Vec<usize> = found.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [4, 7, 10, 16, 20, 23], "{found:#?}");
    assert!(found[0].1.contains("needs one of `branch`, `tag` or `rev`"));
    assert!(found[1].1.contains("`branch` of node `b` needs `git`"));
    assert!(found[2].1.contains("not a repository rill will clone"));
    assert!(found[3].1.contains("more than one of `branch`, `tag` and `rev`"));
    assert!(found[4].1.contains("`HEAD~1` is not a commit id"));
    assert!(found[5].1.contains("has both `git` and `distribute: scp`"), "{found:#?}");
    let bad_branch = single_error("nodes:\n  - id: a\n    path: ./a\n    git: ../repo\n    branch: -x\n").2;
    assert!(bad_branch.contains("`-x` is not a valid git branch or tag name"), "{bad_branch}");
}

#[test]
fn predecessor_fields_rill_ignores_warn_and_a_top_level_deploy_fills_every_node() {
    let (dataflow, positions) = Dataflow::parse_located(
        "_unstable_deploy: { machine: robot }\nnodes:\n  - id: a\n    path: ./a\n    max_log_size: 10MB\n    health_check_timeout: 5.0\n  - id: b\n    path: ./b\n    deploy: { machine: desk }\ncommunication: { local: tcp }\n",
        Path::new("d.yml"),
    )
    .expect("valid");
    assert_eq!(dataflow.nodes[0].deploy.machine.as_deref(), Some("robot"));
    assert_eq!(dataflow.nodes[1].deploy.machine.as_deref(), Some("desk"), "the node's own placement wins");
    let warnings = warned(&positions);
    assert_eq!(
        warnings,
        [
            (5, "rill ignores `max_log_size` of node `a`"),
            (6, "rill ignores `health_check_timeout` of node `a`"),
            (10, "rill ignores `communication`"),
        ]
    );
    let (line, _, message, _) = single_error("nodes:\n  - id: a\n    path: https://x/a\n    path_sha256: abc\n");
    assert_eq!(
        (line, message.as_str()),
        (4, "node `a` uses `path_sha256`: rill does not download node programs from URLs")
    );
}
