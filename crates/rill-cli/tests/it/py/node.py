"""The Python test node (the counterpart of rill-test-node); the mode is the
first argument:
  send N SIZE          send N messages of SIZE bytes with send_output (every
                       8-byte word is the message's seq: bytes, bytearray and
                       numpy arrays in turn), print `sent N`, then wait for STOP
                       and print `got stop`
  send-allocated N SIZE  the same through allocate() filled from numpy and
                       send(); first checks that sending a buffer still viewed
                       is refused; exits after sending
  print                print every event: `input ID len=L seq=S shared=B`,
                       `corrupt ...` for a payload whose words are not its seq,
                       `closed ID`, `stop`, then `done after K inputs`
  zero-copy            for every input, check that numpy.frombuffer and the
                       pyarrow value read the received bytes in place: print
                       `zero-copy seq=S in_memfd=B same_address=B arrow=B`
  raise                raise an exception on the first event
  api                  (no input arrives) check that a wait releases the GIL and
                       times out, and the errors of bad calls; print each result
  send-arrow N         send N pyarrow uint8 arrays of 16 bytes (words = seq), then exit
"""
import sys
import time

import numpy as np

import rill


def seq_of(data):
    return int.from_bytes(bytes(data[:8]), "little") if len(data) >= 8 else 0


def payload(seq, size, kind):
    words = np.full(max(size, 8) // 8, seq, dtype="<u8")
    if kind == 0:
        return words.tobytes()
    if kind == 1:
        return bytearray(words.tobytes())
    return words


def send(node, n, size):
    for seq in range(n):
        node.send_output("out", payload(seq, size, seq % 3))
    print(f"sent {n}")
    for event in node:
        if event.type == "STOP":
            print("got stop")
            break


def send_allocated(node, n, size):
    buf = node.allocate(size)
    view = np.frombuffer(buf, dtype="<u8")
    try:
        node.send("out", buf)
        print("sent a viewed buffer")
    except rill.RillError as e:
        print(f"refused while viewed: {e}")
    del view
    for seq in range(n):
        if seq > 0:
            buf = node.allocate(size)
        np.frombuffer(buf, dtype="<u8")[:] = seq
        node.send("out", buf)
    try:
        node.send("out", buf)
    except rill.RillError as e:
        print(f"refused twice: {e}")
    print(f"sent {n}")


def print_events(node):
    inputs = 0
    for event in node:
        if event.type == "INPUT":
            inputs += 1
            data = event.data
            seq = seq_of(data)
            print(f"input {event.id} len={len(data)} seq={seq} shared={event.is_shared}")
            words = np.frombuffer(data, dtype="<u8")
            if not (words == seq).all():
                print(f"corrupt input {event.id} seq={seq}: a word of its payload is not its seq")
        elif event.type == "INPUT_CLOSED":
            print(f"closed {event.id}")
        elif event.type == "STOP":
            print("stop")
    print(f"done after {inputs} inputs")


def memfd_ranges():
    """The address ranges of this process's rill shared-memory mappings."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:rill-shm" in line:
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def zero_copy(node):
    for event in node:
        if event.type != "INPUT":
            continue
        array = np.frombuffer(event.data, dtype="<u8")
        address = array.__array_interface__["data"][0]
        owner = event.data.obj
        in_memfd = any(start <= address and address + array.nbytes <= end for start, end in memfd_ranges())
        value = event["value"]
        arrow = type(value).__name__ == "UInt8Array" and value.buffers()[1].address == address
        intact = bool((array == array[0]).all())
        print(
            f"zero-copy seq={int(array[0])} len={array.nbytes} shared={event.is_shared} "
            f"owner={type(owner).__name__} in_memfd={in_memfd} same_address={owner.address == address} "
            f"arrow={arrow} intact={intact}"
        )


def api(node):
    import threading

    counted = 0
    stop = threading.Event()

    def count():
        nonlocal counted
        while not stop.is_set():
            counted += 1

    thread = threading.Thread(target=count)
    thread.start()
    before = counted
    started = time.monotonic()
    event = node.next(timeout=0.5)
    waited = time.monotonic() - started
    during = counted - before
    stop.set()
    thread.join()
    print(f"next(timeout=0.5) returned {event} after 0.5 s or more: {0.5 <= waited < 5}")
    print(f"another thread counted while waiting: {during > 1000}")
    import pyarrow as pa

    buf = node.allocate(8192)
    for call in (
        lambda: node.send_output("nope", b"x"),
        lambda: node.next(timeout=-1),
        lambda: node.send_output("out", np.zeros((4, 4), dtype="<u8")[:, 0]),
        lambda: node.send_output("out", 42),
        lambda: node.send_output("out", pa.array([1, None, 3], type=pa.uint64())),
        lambda: node.send_output("out", pa.array(["a", "b"])),
        lambda: node.send("nope", buf),
        lambda: rill.Node(),
    ):
        try:
            call()
            print("no error")
        except Exception as e:
            print(f"{type(e).__name__}: {e}")
    # The wrong name did not cost the buffer; a huge timeout is "forever"
    # (here: until the timer's tick), not an overflow.
    np.frombuffer(buf, dtype="<u8")[:] = 7
    node.send("out", buf)
    print(f"sent after a wrong name: {len(buf)} bytes")
    event = node.next(timeout=1e300)
    print(f"next(timeout=1e300) gave {event['type']}")


def send_arrow(node, n):
    import pyarrow as pa

    for seq in range(n):
        node.send_output("out", pa.array(np.full(2, seq, dtype="<u8").view(np.uint8)))
    print(f"sent {n}")


def main():
    node = rill.Node()
    mode = sys.argv[1]
    if mode == "send":
        send(node, int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "send-allocated":
        send_allocated(node, int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "print":
        print_events(node)
    elif mode == "zero-copy":
        zero_copy(node)
    elif mode == "api":
        api(node)
    elif mode == "send-arrow":
        send_arrow(node, int(sys.argv[2]))
    elif mode == "raise":
        for event in node:
            raise ValueError(f"boom from python on a {event.type} event")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
