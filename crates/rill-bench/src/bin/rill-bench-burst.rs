//! Burst producer: for each round and size, allocates, fills every byte of
//! and sends COUNT messages back to back, then sleeps IDLE_MS without
//! calling rill-node (a producer that blocks on its camera or a long
//! computation). Then, RSS_WAIT_S after the last burst (if not 0), it
//! prints its RSS then and before the first burst as a `RESULT` line.
//! Args: SIZES ROUNDS COUNT IDLE_MS RSS_WAIT_S.
use std::time::Duration;

use rill_bench::BurstPlan;
use rill_node::Node;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plan = BurstPlan::from_args(std::env::args().skip(1))?;
    let mut node = Node::from_env()?;
    let rss_before = rill_bench::rss_kib();
    for round in 0..plan.rounds {
        for &size in &plan.sizes {
            for _ in 0..plan.count {
                let mut sample = node.allocate(size)?;
                // The producer writes every byte, as a camera or a model would.
                sample.fill(round as u8);
                node.send_sample("out", sample)?;
            }
            std::thread::sleep(Duration::from_millis(plan.idle_ms));
        }
    }
    if plan.rss_wait_s > 0 {
        // Counted from the end of the last burst (its idle time included).
        std::thread::sleep(Duration::from_secs(plan.rss_wait_s).saturating_sub(Duration::from_millis(plan.idle_ms)));
        println!(
            "RESULT {{\"rss_before_kib\":{rss_before},\"rss_after_kib\":{},\"after_s\":{}}}",
            rill_bench::rss_kib(),
            plan.rss_wait_s
        );
    }
    Ok(())
}
