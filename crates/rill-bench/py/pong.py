"""Benchmark responder in Python (as rill-bench-pong): for every message
whose first 8 bytes have the top bit set, replies with its own receive time
(CLOCK_MONOTONIC ns). Touches both ends of the payload, in place."""
import time

import rill

REPLY_BIT = 1 << 63

node = rill.Node()
for event in node:
    if event.type != "INPUT":
        continue
    received = time.monotonic_ns()
    data = event.data
    head = int.from_bytes(data[:8], "little")
    data[-1]
    if head & REPLY_BIT:
        node.send_output("pong", received.to_bytes(8, "little"))
