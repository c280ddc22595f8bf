//! What the local data plane does for a producer that stops calling rill-node
//! (it sleeps, computes, or waits on a camera): its messages still arrive,
//! and the shared memory its bursts needed is given back.

use std::time::{Duration, Instant};

use crate::check;
use crate::support::{Flow, Running, shm_maps, spawned_pids};

/// The sink's `input in len=L seq=S shared=B` lines, as (len, seq).
fn received(running: &Running) -> Vec<(usize, u64)> {
    running
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("[sink] input in len="))
        .filter_map(|rest| {
            let (len, rest) = rest.split_once(" seq=")?;
            let seq = rest.split(' ').next()?;
            Some((len.parse().ok()?, seq.parse().ok()?))
        })
        .collect()
}

/// The producer sends `plan` (`N:SIZE,...`, sequence numbers from 0) back
/// to back, then sleeps 10 s without calling rill-node; the consumer must
/// have every message within 1 s of the last send, in order.
fn burst_reaches_the_consumer_while_its_producer_sleeps(plan: &str) {
    let sizes: Vec<usize> = plan
        .split(',')
        .flat_map(|part| {
            let (n, size) = part.split_once(':').expect("N:SIZE");
            std::iter::repeat_n(size.parse::<usize>().expect("size"), n.parse().expect("count"))
        })
        .collect();
    let total = sizes.len();
    let flow = Flow::new(&format!(
        "nodes:\n  - id: source\n    path: {{node}}\n    args: [burst-sleep, '10', '{plan}']\n    outputs: [out]\n  - id: sink\n    path: {{node}}\n    args: [print]\n    inputs:\n      in: {{ source: source/out, queue_size: {total} }}\n"
    ));
    let mut running = flow.spawn(&[]);
    running.wait_for("the producer's burst", Duration::from_secs(30), |out| {
        out.contains(&format!("[source] sent {total}"))
    });
    let burst_done = Instant::now();
    running.wait_for(&format!("all {total} messages at the sink within 1 s"), Duration::from_secs(1), |out| {
        out.matches("[sink] input in ").count() >= total
    });
    let waited = burst_done.elapsed();
    let got = received(&running);
    let expected: Vec<(usize, u64)> = sizes.iter().enumerate().map(|(seq, size)| (*size, seq as u64)).collect();
    check!(running, got == expected, "in order, sizes kept (got {} messages)", got.len());
    eprintln!("all {total} arrived {waited:?} after the producer's last send");
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(30));
    check!(run, run.code == Some(0), "clean stop");
}

#[test]
fn a_mixed_burst_reaches_the_consumer_while_its_producer_sleeps() {
    // 500 inline messages overflow the socket; the 4 KiB (shared) ones
    // queue behind them.
    burst_reaches_the_consumer_while_its_producer_sleeps("500:2048,500:4096");
}

#[test]
fn an_inline_burst_reaches_the_consumer_while_its_producer_sleeps() {
    // Nothing but inline messages: the producer never waits for shared
    // memory, so nothing but the flusher moves what the socket had no room for.
    burst_reaches_the_consumer_while_its_producer_sleeps("1000:2048");
}

#[test]
fn shared_memory_of_a_burst_is_given_back_while_the_producer_sleeps() {
    // No warm reserve and a 300 ms idle time, so everything goes.
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst-sleep, '60', '40:1048576']\n    outputs: [out]\n    env:\n      RILL_SHM_IDLE_MS: '300'\n      RILL_SHM_RESERVE_MB: '0'\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      in: { source: source/out, queue_size: 1000 }\n",
    );
    let mut running = flow.spawn(&["--json"]);
    running.wait_for("the burst at the sink", Duration::from_secs(30), |out| {
        out.contains("sent 40") && out.matches("input in len=1048576").count() >= 40
    });
    let pids = spawned_pids(&running.stdout());
    let pid = |node: &str| pids.iter().find(|(n, _)| n == node).map(|(_, p)| *p).expect("spawned");
    let (source, sink) = (pid("source"), pid("sink"));
    let peak = (shm_maps(source), shm_maps(sink));
    check!(running, peak.0 > 0, "the producer used shared regions");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (shm_maps(source), shm_maps(sink)) != (0, 0) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = (shm_maps(source), shm_maps(sink));
    check!(
        running,
        now == (0, 0),
        "(producer, consumer) mappings: {peak:?} at the end of the burst, {now:?} 10 s later"
    );
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(30));
    check!(run, run.code == Some(0), "clean stop");
}

#[test]
fn a_consumer_that_stops_reading_large_messages_does_not_stop_the_producer_or_the_others() {
    // `stuck` never reads anything (not even its control socket); `reader` reads all.
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '600', '4194304']\n    outputs: [out]\n  - id: stuck\n    path: /bin/sh\n    args: ['-c', 'echo stuck; sleep 600']\n    inputs: { in: source/out }\n  - id: reader\n    path: {node}\n    args: [print, '600']\n    inputs: { in: { source: source/out, queue_size: 1000 } }\n",
    );
    let mut running = flow.spawn(&["--grace", "0.5"]);
    running.wait_for("the producer sent everything", Duration::from_secs(60), |out| out.contains("[source] sent 600"));
    running.wait_for("the reader got everything", Duration::from_secs(60), |out| {
        out.contains("[reader] done after 600 inputs")
    });
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(30));
    check!(run, !run.stderr.contains("[source]"), "the producer reported no error");
}
