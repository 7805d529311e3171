#!/usr/bin/env python3
"""The disk's floor under a durable acknowledgment: the latency of appending a small record to a
file and making it durable (os.fdatasync), one at a time, as a lone commit does. SQLite (WAL,
synchronous=FULL) and PostgreSQL (fsync on) both end a commit with such a sync.

    bench/tools/fsync_floor.py [DIR] [COUNT]     # DIR defaults to $TMPDIR or /tmp

Prints p50/p90/p99 in milliseconds.
"""
import os
import sys
import tempfile
import time

directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
record = b"x" * 200

fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-floor-")
try:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        os.write(fd, record)
        os.fdatasync(fd)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(
        f"fsync_floor dir={directory} count={count} p50_ms={pick(0.5):.3f} "
        f"p90_ms={pick(0.9):.3f} p99_ms={pick(0.99):.3f}"
    )
finally:
    os.close(fd)
    os.unlink(path)
