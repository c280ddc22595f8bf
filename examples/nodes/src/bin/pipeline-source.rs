//! Example source: on every `tick` it publishes the next number; after
//! `COUNT` numbers (default 10) it exits, which closes the pipeline.
use rill_node::{Event, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    let count: u64 = std::env::var("COUNT").ok().and_then(|c| c.parse().ok()).unwrap_or(10);
    let mut sent: u64 = 0;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { .. } => {
                sent += 1;
                node.send_output("number", &sent.to_le_bytes())?;
                println!("sent {sent}");
                if sent == count {
                    break;
                }
            }
            Event::Stop => break,
            Event::InputClosed { .. } => {}
        }
    }
    Ok(())
}
