"""Example source: on every tick it sends the next number (8 bytes, little
endian, as the Rust transform reads it); after COUNT numbers it returns,
which closes the pipeline."""
import os

import rill

node = rill.Node()
count = int(os.environ.get("COUNT", "10"))
sent = 0
for event in node:
    if event.type == "INPUT":
        sent += 1
        node.send_output("number", sent.to_bytes(8, "little"))
        print(f"sent {sent}")
        if sent == count:
            break
    elif event.type == "STOP":
        break
