"""Example sink: prints what arrives and how long it took to get here."""
import time

import rill

node = rill.Node()
received = 0
for event in node:
    if event.type == "INPUT":
        received += 1
        latency_us = (time.time_ns() - event.metadata["timestamp_ns"]) // 1000
        print(f"received {bytes(event.data).decode()} ({latency_us} us after send)")
    elif event.type == "INPUT_CLOSED":
        print(f"input `{event.id}` closed after {received} messages")
    elif event.type == "STOP":
        print("stopping")
