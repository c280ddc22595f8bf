//! 100,000 messages of 64 KiB through the daemon: the daemon's and the
//! nodes' open fds, shared-memory mappings and RSS stay flat. By design a
//! sender has at most `MAX_BUSY_REGIONS` (128) regions busy plus 64 free
//! (`PoolLimits::free_regions`), so fds and mappings have a fixed ceiling
//! whatever the message count; a leak of one region per thousand messages
//! would break it by 100k.

use std::time::Duration;

use crate::check;
use crate::support::{Flow, spawned_pids};

/// Busy plus free regions: 128 + 64.
fn map_ceiling() -> usize {
    rill_node::MAX_BUSY_REGIONS + rill_node::PoolLimits::default().free_regions
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    shm_maps: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let shm_maps = maps.lines().filter(|l| l.contains("rill-shm")).count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage { fds, shm_maps, rss_kib }
}

#[test]
fn hundred_thousand_64k_messages_leak_nothing() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '65536']\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [slow, '0']\n    inputs:\n      in: { source: source/out, queue_size: 64 }\n",
    );
    let mut running = flow.spawn(&["--json"]);
    running.wait_for("20,000 messages", Duration::from_secs(120), |out| out.contains("sent 20000"));
    let mut pids = spawned_pids(&running.stdout());
    pids.push(("daemon".into(), running.child.id()));
    let early: Vec<Usage> = pids.iter().map(|(_, pid)| usage(*pid)).collect();
    running.wait_for("100,000 messages", Duration::from_secs(300), |out| out.contains("sent 100000"));
    let late: Vec<Usage> = pids.iter().map(|(_, pid)| usage(*pid)).collect();
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(30));
    check!(run, run.code == Some(0), "clean stop");
    let received = run.stdout.matches("\"line\":\"seq ").count();
    check!(run, received > 100, "the sink received messages ({received})");
    for (((name, _), a), b) in pids.iter().zip(&early).zip(&late) {
        eprintln!("{name}: after 20k {a:?}, after 100k {b:?}");
        // The process's own few fds on top of one per region.
        check!(run, b.fds <= map_ceiling() + 32, "{name}: fds above the ceiling {a:?} -> {b:?}");
        check!(run, b.shm_maps <= map_ceiling(), "{name}: shm mappings above the ceiling {a:?} -> {b:?}");
        check!(run, b.rss_kib <= a.rss_kib + 16 * 1024, "{name}: RSS grew {a:?} -> {b:?}");
    }
}
