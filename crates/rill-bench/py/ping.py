"""Benchmark driver node in Python: the same method as rill-bench-ping (hot
and paced one-way latency, its send time against the pong's receive time,
and msgs/s in bursts of 100); prints `RESULT {json}` per size.
Arguments: SIZES(comma-separated) HOT PACED BURSTS."""
import json
import sys
import time

import rill

REPLY_BIT = 1 << 63


def iterations(size, hot):
    return max(hot // 5 if size >= 1 << 20 else hot, 20)


def percentile(samples, p):
    """As rill_bench::percentile: the nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def send(node, size, header):
    """Allocates and writes the header, then sends; returns the send time
    (after allocation: the transport is measured, not the pool)."""
    sample = node.allocate(max(size, 8))
    memoryview(sample)[:8] = header.to_bytes(8, "little")
    sent_at = time.monotonic_ns()
    node.send("ping", sample)
    return sent_at


def wait_pong(node):
    while True:
        event = node.next(timeout=10.0)
        if event is None:
            raise SystemExit("no pong within 10 s")
        if event.type == "INPUT":
            return int.from_bytes(bytes(event.data[:8]), "little")


def ping(node, size):
    sent_at = send(node, size, REPLY_BIT)
    return (wait_pong(node) - sent_at) / 1000.0


def main():
    node = rill.Node()
    sizes = [int(s) for s in sys.argv[1].split(",") if s]
    hot_iters, paced_iters, bursts = (int(a) for a in sys.argv[2:5])
    for size in sizes:
        n = iterations(size, hot_iters)
        for _ in range(n // 10):
            ping(node, size)  # warm-up: pool regions, mappings, caches
        hot = [ping(node, size) for _ in range(n)]
        paced = []
        for _ in range(paced_iters):
            time.sleep(0.005)
            paced.append(ping(node, size))
        start = time.monotonic()
        sent = 0
        for _ in range(bursts):
            for i in range(100):
                send(node, size, i | (REPLY_BIT if i == 99 else 0))
                sent += 1
            wait_pong(node)
        msgs_per_s = sent / (time.monotonic() - start)
        result = {
            "size": size,
            "p50_us": round(percentile(hot, 50), 1),
            "p99_us": round(percentile(hot, 99), 1),
            "paced_p50_us": round(percentile(paced, 50), 1),
            "paced_p99_us": round(percentile(paced, 99), 1),
            "msgs_per_s": round(msgs_per_s),
        }
        print("RESULT " + json.dumps(result), flush=True)


main()
