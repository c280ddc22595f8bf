//! Benchmark driver node: for each size, measures hot and paced one-way
//! latency (its send time vs. the pong's receive time) and throughput in
//! bursts of 100, and prints `RESULT {json}` lines.
use std::time::{Duration, Instant};

use rill_bench::{REPLY_BIT, monotonic_ns, percentile};
use rill_node::{Event, Node, RecvError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> =
        args.get(1).map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or_default();
    let hot_iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let paced_iters: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    let bursts: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    for size in sizes {
        let hot_iters = rill_bench::iterations(size, hot_iters);
        let mut hot = Vec::with_capacity(hot_iters);
        for _ in 0..hot_iters / 10 {
            ping(&mut node, size, 0)?; // warm-up: pool regions, mappings, caches
        }
        for _ in 0..hot_iters {
            hot.push(ping(&mut node, size, 0)?);
        }
        let mut paced = Vec::with_capacity(paced_iters);
        for _ in 0..paced_iters {
            std::thread::sleep(Duration::from_millis(5));
            paced.push(ping(&mut node, size, 0)?);
        }
        let start = Instant::now();
        let mut sent = 0u64;
        for _ in 0..bursts {
            for i in 0..100u64 {
                let flag = if i == 99 { REPLY_BIT } else { 0 };
                send(&mut node, size, i | flag)?;
                sent += 1;
            }
            wait_pong(&mut node)?;
        }
        let msgs_per_s = sent as f64 / start.elapsed().as_secs_f64();
        println!(
            "RESULT {{\"size\":{size},\"p50_us\":{:.1},\"p99_us\":{:.1},\"paced_p50_us\":{:.1},\"paced_p99_us\":{:.1},\"msgs_per_s\":{:.0}}}",
            percentile(&mut hot, 50.0),
            percentile(&mut hot, 99.0),
            percentile(&mut paced, 50.0),
            percentile(&mut paced, 99.0),
            msgs_per_s
        );
    }
    Ok(())
}

/// Allocates and fills the header, then sends; returns the send time
/// (after allocation: the transport is measured, not the pool).
fn send(node: &mut Node, size: usize, header: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let mut sample = node.allocate(size.max(8))?;
    sample[..8].copy_from_slice(&header.to_le_bytes());
    let sent_at = monotonic_ns();
    node.send_sample("ping", sample)?;
    Ok(sent_at)
}

/// One-way latency of one message in microseconds.
fn ping(node: &mut Node, size: usize, seq: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let sent_at = send(node, size, seq | REPLY_BIT)?;
    let received_at = wait_pong(node)?;
    Ok(received_at.saturating_sub(sent_at) as f64 / 1000.0)
}

fn wait_pong(node: &mut Node) -> Result<u64, Box<dyn std::error::Error>> {
    loop {
        match node.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Input { data, .. }) => {
                let bytes: [u8; 8] = data[..8].try_into()?;
                return Ok(u64::from_le_bytes(bytes));
            }
            Ok(_) => continue,
            Err(RecvError::Timeout) => return Err("no pong within 10 s".into()),
            Err(RecvError::Finished) => return Err("stopped".into()),
        }
    }
}
