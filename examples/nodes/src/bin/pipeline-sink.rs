//! Example sink: prints what arrives and how long it took to get here.
use rill_node::{Event, Node, now_ns};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    let mut received = 0;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { data, metadata, .. } => {
                received += 1;
                let latency_us = now_ns().saturating_sub(metadata.timestamp_ns) / 1000;
                println!("received {} ({latency_us} us after send)", String::from_utf8_lossy(&data));
            }
            Event::InputClosed { id } => println!("input `{id}` closed after {received} messages"),
            Event::Stop => println!("stopping"),
        }
    }
    Ok(())
}
