//! Example transform: squares every number and publishes it as text.
use rill_node::{Event, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    while let Some(event) = node.next_event() {
        if let Event::Input { data, .. } = event {
            let bytes: [u8; 8] = data[..].try_into()?;
            let n = u64::from_le_bytes(bytes);
            node.send_output("squared", format!("{n}^2 = {}", n * n).as_bytes())?;
        }
    }
    Ok(())
}
