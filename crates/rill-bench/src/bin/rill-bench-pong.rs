//! Benchmark responder: for every message whose first 8 bytes have the top
//! bit set, replies with its own receive time (CLOCK_MONOTONIC ns).
use rill_node::{Event, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    while let Some(event) = node.next_event() {
        let Event::Input { data, .. } = event else { continue };
        let received = rill_bench::monotonic_ns();
        // Touch both ends: the receiver really reads the payload in place.
        let head: [u8; 8] = data.get(..8).and_then(|h| h.try_into().ok()).unwrap_or([0; 8]);
        std::hint::black_box(data.last());
        if u64::from_le_bytes(head) & rill_bench::REPLY_BIT != 0 {
            node.send_output("pong", &received.to_le_bytes())?;
        }
    }
    Ok(())
}
