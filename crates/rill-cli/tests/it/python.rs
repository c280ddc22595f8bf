//! Python nodes (`import rill`, apis/python) with Rust nodes, run by `rill
//! run` and by a coordinator and daemon: every message in order, InputClosed
//! and Stop both ways, zero-copy reads of shared memory through numpy and
//! pyarrow, `allocate` + `send`, and a failing Python node's traceback.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::check;
use crate::support::{Finished, Flow};

/// The interpreter of a virtualenv that has the `rill` package built from
/// this tree: `$RILL_TEST_PYTHON` (scripts/test.sh sets it), else the one
/// scripts/python-env.sh makes (once per test run).
pub(crate) fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(python) = std::env::var("RILL_TEST_PYTHON").ok().filter(|p| !p.is_empty()) {
            return python;
        }
        let script = repo_root().join("scripts/python-env.sh");
        let out = Command::new(&script).output().expect("run scripts/python-env.sh");
        assert!(
            out.status.success(),
            "{} failed (it builds apis/python into a virtualenv, with packages from PyPI):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A dataflow where `{py}` is the Python test node (tests/it/py/node.py),
/// `{python}` the interpreter, and `{node}` the Rust test node.
fn flow(yaml: &str) -> Flow {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/py/node.py");
    Flow::new(&yaml.replace("{py}", &script.display().to_string()).replace("{python}", python()))
}

/// The `seq=` values of `node`'s `input ID ...` lines, in order.
fn seqs(run: &Finished, node: &str, input: &str) -> Vec<u64> {
    let prefix = format!("input {input} ");
    run.node_lines(node)
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix)?.split(" seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn a_python_source_feeds_a_rust_sink_every_message_in_order_and_gets_stop() {
    let flow = flow(
        "nodes:
  - id: small
    path: {py}
    args: [send, '40', '64']
    env: { RILL_PYTHON: {python} }
    outputs: [out]
  - id: big
    path: {py}
    args: [send, '40', '65536']
    env: { RILL_PYTHON: {python} }
    outputs: [out]
  - id: sink
    path: {node}
    args: [print]
    inputs:
      small: { source: small/out, queue_size: 100 }
      big: { source: big/out, queue_size: 100 }
  - id: pysink
    path: {py}
    args: [print]
    env: { RILL_PYTHON: {python} }
    inputs:
      small: { source: small/out, queue_size: 100 }
      big: { source: big/out, queue_size: 100 }
",
    );
    let mut running = flow.spawn(&[]);
    running.wait_for("80 messages at each sink", Duration::from_secs(30), |out| {
        out.matches("[sink] input ").count() >= 80
            && out.matches("[pysink] input ").count() >= 80
            && out.matches("sent 40").count() == 2
    });
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(20));
    let expected: Vec<u64> = (0..40).collect();
    check!(run, seqs(&run, "sink", "small") == expected, "small: every message, in order");
    check!(run, seqs(&run, "sink", "big") == expected, "big: every message, in order");
    let lines = run.node_lines("sink");
    let count =
        |prefix: &str, suffix: &str| lines.iter().filter(|l| l.starts_with(prefix) && l.ends_with(suffix)).count();
    check!(run, count("input small len=64 ", "shared=false") == 40, "64 bytes each, inline");
    check!(run, count("input big len=65536 ", "shared=true") == 40, "64 KiB each, shared");
    check!(run, !run.stdout.contains("corrupt"), "every word of every payload is its seq");
    check!(run, seqs(&run, "pysink", "small") == expected, "Python sink, small: every message, in order");
    check!(run, seqs(&run, "pysink", "big") == expected, "Python sink, big: every message, in order");
    let py_lines = run.node_lines("pysink");
    check!(run, py_lines.ends_with(&["stop".into(), "done after 80 inputs".into()]), "the Python sink got Stop");
    check!(run, run.node_lines("small") == ["sent 40", "got stop"], "the Python source got Stop");
    check!(run, run.node_lines("big") == ["sent 40", "got stop"], "the Python source got Stop");
}

#[test]
fn a_rust_source_feeds_a_python_sink_every_message_in_order_then_input_closed() {
    let flow = flow(
        "nodes:
  - id: small
    path: {node}
    args: [burst, '50', '16']
    outputs: [out]
  - id: big
    path: {node}
    args: [burst, '300', '8192']
    outputs: [out]
  - id: sink
    path: {py}
    args: [print]
    env: { RILL_PYTHON: {python} }
    inputs:
      small: { source: small/out, queue_size: 100 }
      big: { source: big/out, queue_size: 1000 }
",
    );
    // 300 shared messages: more than a producer may lend at once (128), so
    // they all arrive only if the Python sink's regions go back to it.
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    check!(run, seqs(&run, "sink", "small") == (0..50).collect::<Vec<u64>>(), "small: every message, in order");
    check!(run, seqs(&run, "sink", "big") == (0..300).collect::<Vec<u64>>(), "big: every message, in order");
    let lines = run.node_lines("sink");
    let count =
        |prefix: &str, suffix: &str| lines.iter().filter(|l| l.starts_with(prefix) && l.ends_with(suffix)).count();
    check!(run, count("input small len=16 ", "shared=False") == 50, "16 bytes each, inline");
    check!(run, count("input big len=8192 ", "shared=True") == 300, "8 KiB each, shared");
    check!(run, !run.stdout.contains("corrupt"), "every word of every payload is its seq");
    for input in ["small", "big"] {
        let closed = lines.iter().position(|l| *l == format!("closed {input}"));
        let last = lines.iter().rposition(|l| l.starts_with(&format!("input {input} ")));
        check!(run, closed.is_some() && closed > last, "InputClosed for {input}, after its last message");
    }
    check!(run, lines.last().map(String::as_str) == Some("done after 350 inputs"), "the stream ends after both close");
}

#[test]
fn a_python_node_reads_a_4_mib_message_in_place_through_numpy_and_pyarrow() {
    let flow = flow(
        "nodes:
  - id: camera
    path: {node}
    args: [burst, '5', '4194304']
    outputs: [out]
  - id: model
    path: {py}
    args: [zero-copy]
    env: { RILL_PYTHON: {python} }
    inputs:
      frame: { source: camera/out, queue_size: 8 }
",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    let lines = run.node_lines("model");
    let expected: Vec<String> = (0..5)
        .map(|seq| {
            format!(
                "zero-copy seq={seq} len=4194304 shared=True owner=Payload in_memfd=True same_address=True arrow=True intact=True"
            )
        })
        .collect();
    check!(
        run,
        lines == expected,
        "numpy.frombuffer and the pyarrow value point into the producer's shared-memory mapping"
    );
}

#[test]
fn a_buffer_from_allocate_filled_from_numpy_arrives_intact() {
    let flow = flow(
        "nodes:
  - id: source
    path: {py}
    args: [send-allocated, '20', '1048576']
    env: { RILL_PYTHON: {python} }
    outputs: [out]
  - id: sink
    path: {node}
    args: [print]
    inputs:
      in: { source: source/out, queue_size: 32 }
",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    check!(run, seqs(&run, "sink", "in") == (0..20).collect::<Vec<u64>>(), "every message, in order");
    let lines = run.node_lines("sink");
    let whole = lines.iter().filter(|l| l.starts_with("input in len=1048576 ") && l.ends_with("shared=true"));
    check!(run, whole.count() == 20, "1 MiB each, shared");
    check!(run, !run.stdout.contains("corrupt"), "every word of every payload is its seq");
    check!(run, lines.iter().any(|l| l == "closed in"), "the Python source's exit closes the input");
    let source = run.node_lines("source");
    check!(
        run,
        source.iter().any(|l| l.starts_with("refused while viewed: this buffer is still viewed by 1 object")),
        ""
    );
    check!(run, source.iter().any(|l| l.starts_with("refused twice: this buffer was already sent")), "");
}

#[test]
fn a_python_node_that_raises_is_reported_failed_with_its_traceback_in_rill_logs() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/py/node.py");
    let yaml = format!(
        "nodes:\n  - id: boom\n    path: {}\n    args: [raise]\n    env: {{ RILL_PYTHON: {} }}\n    inputs: {{ tick: rill/timer/millis/50 }}\n    deploy: {{ machine: a }}\n",
        script.display(),
        python()
    );
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], &yaml, "ValueError: boom from python");
    let port_text = port.to_string();
    let dataflow = crate::faults::dataflow_when(&procs, port, "failed", |d| d["status"] == "failed");
    assert_eq!(dataflow["nodes"]["boom"]["state"], "failed", "{dataflow}\n{}", procs.logs());
    let out = crate::support::rill().args(["logs", "app", "boom", "--coordinator-port", &port_text]).output().unwrap();
    // (`rill logs` prints what a node wrote to stderr on its stderr.)
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{logs}\n{}", procs.logs());
    for line in [
        "Traceback (most recent call last):",
        "raise ValueError(f\"boom from python on a {event.type} event\")",
        "ValueError: boom from python on a INPUT event",
    ] {
        assert!(logs.contains(line), "`rill logs` shows {line:?}:\n{logs}\n{}", procs.logs());
    }
}

#[test]
fn a_wait_releases_the_gil_and_bad_calls_raise_python_exceptions_with_the_message() {
    let flow = flow(
        "nodes:
  - id: api
    path: {py}
    args: [api]
    env: { RILL_PYTHON: {python} }
    inputs: { tick: rill/timer/secs/3 }
    outputs: [out]
",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "the node ends by itself");
    let lines = run.node_lines("api");
    let unknown = "RillError: `nope` is not an output of this node (declare it under `outputs:`)";
    let expected = [
        "next(timeout=0.5) returned None after 0.5 s or more: True",
        "another thread counted while waiting: True",
        unknown,
        "ValueError: timeout must be a number of seconds >= 0, not -1",
        "ValueError: the data is not contiguous in memory: pass numpy.ascontiguousarray(data) or bytes(data)",
        "TypeError: send_output takes bytes, a buffer (numpy array, memoryview) or a pyarrow array, not int",
        "ValueError: this pyarrow array has 1 null(s), which have no bytes to send",
        "TypeError: only pyarrow arrays of a fixed-width type (integers, floats) are sent as their bytes, not StringArray",
        unknown,
        "RillError: this process already created its rill.Node: create it once and pass it around",
        "sent after a wrong name: 8192 bytes",
        "next(timeout=1e300) gave INPUT",
    ];
    check!(run, lines.len() == expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expected) {
        check!(run, line.starts_with(want), "{line:?} should start with {want:?}");
    }
}

#[test]
fn pyarrow_arrays_are_sent_as_their_bytes() {
    let flow = flow(
        "nodes:
  - id: source
    path: {py}
    args: [send-arrow, '10']
    env: { RILL_PYTHON: {python} }
    outputs: [out]
  - id: sink
    path: {node}
    args: [print]
    inputs: { in: source/out }
",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    check!(run, seqs(&run, "sink", "in") == (0..10).collect::<Vec<u64>>(), "every message, in order");
    let lines = run.node_lines("sink");
    check!(run, lines.iter().filter(|l| l.starts_with("input in len=16 ")).count() == 10, "16 bytes each");
    check!(run, !run.stdout.contains("corrupt"), "every word of every payload is its seq");
}

#[test]
fn the_python_example_pipeline_runs_as_documented() {
    let file = repo_root().join("examples/python-pipeline/dataflow.yml");
    let mut cmd = crate::support::rill();
    cmd.arg("run").arg(&file).env("RILL_PYTHON", python());
    let run = crate::support::Running::start(cmd).wait(Duration::from_secs(120));
    check!(run, run.code == Some(0), "the pipeline ends by itself");
    let sink = run.node_lines("sink");
    check!(run, sink.first().is_some_and(|l| l.starts_with("received 1^2 = 1 (")), "{sink:?}");
    check!(run, sink.iter().filter(|l| l.starts_with("received ")).count() == 10, "{sink:?}");
    check!(run, sink.iter().any(|l| l.starts_with("received 10^2 = 100 (")), "{sink:?}");
    check!(run, sink.last().map(String::as_str) == Some("input `value` closed after 10 messages"), "{sink:?}");
}
