use std::time::Duration;

use crate::check;
use crate::support::{Flow, rill};

#[test]
fn bundled_pipeline_prints_every_squared_number() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pipeline/dataflow.yml");
    let out = rill().args(["run", "--skip-build", example]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for n in 1..=10u64 {
        assert!(stdout.contains(&format!("[sink] received {n}^2 = {}", n * n)), "missing {n}:\n{stdout}");
    }
    assert!(stdout.contains("[sink] input `value` closed after 10 messages"), "{stdout}");
    assert!(stderr.contains("dataflow finished (3 nodes)"), "{stderr}");
}

#[test]
fn timers_tick_at_their_interval() {
    let flow = Flow::new(
        "nodes:\n  - id: ticked\n    path: {node}\n    args: [print, '10']\n    inputs:\n      fast: rill/timer/millis/20\n      legacy: dora/timer/hz/50\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(0), "run failed");
    let ticks = run.node_lines("ticked");
    let fast = ticks.iter().filter(|l| l.starts_with("input fast len=0")).count();
    let legacy = ticks.iter().filter(|l| l.starts_with("input legacy len=0")).count();
    check!(run, fast + legacy == 10, "10 ticks expected");
    check!(run, fast >= 3 && legacy >= 3, "both timers tick");
    // 10 ticks from two 20 ms timers need at least 4 periods.
    check!(run, run.elapsed >= Duration::from_millis(80), "ticks came too fast");
}

#[test]
fn full_queue_drops_the_oldest_messages() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '50', '8']\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [slow, '30']\n    inputs:\n      in: { source: source/out, queue_size: 2 }\n",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "run failed");
    let seqs: Vec<u64> = run.node_lines("sink").iter().filter_map(|l| l.strip_prefix("seq ")?.parse().ok()).collect();
    check!(run, seqs.last() == Some(&49), "the newest message always arrives");
    check!(run, seqs.len() < 50, "some messages were dropped (got {})", seqs.len());
    check!(run, seqs.windows(2).all(|w| w[0] < w[1]), "order is kept: {seqs:?}");
}

#[test]
fn receivers_get_input_closed_after_the_last_message() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '3', '8']\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      in: source/out\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(0), "run failed");
    let lines = run.node_lines("sink");
    check!(
        run,
        lines
            == [
                "input in len=8 seq=0 shared=false",
                "input in len=8 seq=1 shared=false",
                "input in len=8 seq=2 shared=false",
                "closed in",
                "done after 3 inputs"
            ],
        "unexpected sink output {lines:?}"
    );
}

#[test]
fn large_messages_arrive_through_shared_memory_in_order() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '200', '1048576']\n    outputs: [out]\n  - id: a\n    path: {node}\n    args: [print]\n    inputs:\n      in: { source: source/out, queue_size: 1000 }\n  - id: b\n    path: {node}\n    args: [print]\n    inputs:\n      in: { source: source/out, queue_size: 1000 }\n",
    );
    let run = flow.run(&[], Duration::from_secs(60));
    check!(run, run.code == Some(0), "run failed");
    for node in ["a", "b"] {
        let seqs: Vec<u64> = run
            .node_lines(node)
            .iter()
            .filter(|l| l.contains("len=1048576") && l.ends_with("shared=true"))
            .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        check!(run, seqs == (0..200).collect::<Vec<_>>(), "{node} got {} of 200 in order", seqs.len());
    }
}
