//! Burst consumer: expects the burst producer's plan (same args, plus
//! `touch` to read every byte of every payload) and prints one
//! `RESULT {json}` line per burst: messages received, the worst one-way
//! latency in the burst, and msg/s from the first send to the last receipt.
use std::time::Duration;

use rill_bench::BurstPlan;
use rill_node::{Event, Node, RecvError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let touch = args.iter().any(|a| a == "touch");
    let plan = BurstPlan::from_args(args.into_iter().filter(|a| a != "touch"))?;
    let mut node = Node::from_env()?;
    // A burst is complete once COUNT messages arrived; a lost message shows
    // up as a short burst once the producer's idle time has passed.
    let patience = Duration::from_millis(plan.idle_ms) + Duration::from_secs(5);
    let mut checksum = 0u64;
    'plan: for round in 0..plan.rounds {
        for &size in &plan.sizes {
            let mut received = 0usize;
            let mut first_sent = u64::MAX;
            let mut last_received = 0u64;
            let mut worst_ns = 0u64;
            while received < plan.count {
                match node.recv_timeout(patience) {
                    Ok(Event::Input { data, metadata, .. }) => {
                        let now = rill_node::now_ns();
                        if touch {
                            checksum = checksum.wrapping_add(sum_bytes(&data));
                        }
                        received += 1;
                        first_sent = first_sent.min(metadata.timestamp_ns);
                        last_received = now;
                        worst_ns = worst_ns.max(now.saturating_sub(metadata.timestamp_ns));
                        if data.len() != size {
                            eprintln!("round {round}: expected {size} B, got {} B (messages were lost)", data.len());
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Timeout) => break,
                    Err(RecvError::Finished) => {
                        report(round, size, received, first_sent, last_received, worst_ns);
                        break 'plan;
                    }
                }
            }
            report(round, size, received, first_sent, last_received, worst_ns);
        }
    }
    std::hint::black_box(checksum);
    Ok(())
}

fn report(round: usize, size: usize, received: usize, first_sent: u64, last_received: u64, worst_ns: u64) {
    let span_s = last_received.saturating_sub(first_sent) as f64 / 1e9;
    let msgs_per_s = if received > 0 && span_s > 0.0 { received as f64 / span_s } else { 0.0 };
    println!(
        "RESULT {{\"round\":{round},\"size\":{size},\"received\":{received},\"worst_latency_us\":{:.1},\"msgs_per_s\":{msgs_per_s:.0}}}",
        worst_ns as f64 / 1000.0
    );
}

/// Reads every byte (eight at a time), so the payload's pages are touched.
fn sum_bytes(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    let mut sum = 0u64;
    for chunk in &mut chunks {
        let word: [u8; 8] = chunk.try_into().unwrap_or([0; 8]);
        sum = sum.wrapping_add(u64::from_ne_bytes(word));
    }
    chunks.remainder().iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)))
}
