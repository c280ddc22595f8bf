//! Burst producer: for each round and size, allocates, fills every byte of
//! and sends COUNT messages back to back, then sleeps IDLE_MS without
//! calling rill-node (a producer that blocks on its camera or a long
//! computation). Args: SIZES ROUNDS COUNT IDLE_MS.
use std::time::Duration;

use rill_bench::BurstPlan;
use rill_node::Node;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plan = BurstPlan::from_args(std::env::args().skip(1))?;
    let mut node = Node::from_env()?;
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
    Ok(())
}
