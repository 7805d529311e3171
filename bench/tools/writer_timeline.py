"""The writer's store calls second by second, from a running Arbor's /metrics.

    python3 bench/tools/writer_timeline.py http://127.0.0.1:PORT SECONDS [INTERVAL]

Samples `arbor_writer_stage_duration_seconds` (each store call of a batch, by stage) and
`arbor_writer_batch_rows` every INTERVAL seconds (default 1) for SECONDS and prints one line per
interval: batches,
rows, and for each stage its mean time and the bucket its slowest call fell in. A tail that
comes and goes with the calls of one store, at a steady rate, is that store's; one that comes
every N seconds whatever the load is a checkpoint or a flush.
"""

import re
import sys
import time
import urllib.request

SAMPLE = re.compile(r'^(arbor_writer_(?:stage_duration_seconds|batch_rows)_(bucket|sum|count))\{?([^}]*)\}? (\S+)$')


def scrape(url: str) -> dict:
    values = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            m = SAMPLE.match(line)
            if not m:
                continue
            name, kind, labels, value = m.groups()
            label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            stage = label.get("stage", "batch")
            key = (stage, kind, label.get("le"))
            values[key] = values.get(key, 0.0) + float(value)
    return values


def slowest_bucket(before: dict, after: dict, stage: str) -> str:
    """The upper bound of the bucket the slowest call of the interval fell in."""
    buckets = sorted(
        (float(le), after[k] - before.get(k, 0.0))
        for k in after
        if k[0] == stage and k[1] == "bucket" and (le := k[2]) != "+Inf"
    )
    total = after.get((stage, "count", None), 0.0) - before.get((stage, "count", None), 0.0)
    for le, cumulative in buckets:
        if cumulative >= total:
            return f"≤{le * 1000:g}ms"
    return ">30s"


def main() -> None:
    url, seconds = sys.argv[1], float(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    before = scrape(url)
    start = time.monotonic()
    for tick in range(1, int(seconds / interval) + 1):
        time.sleep(max(0.0, start + tick * interval - time.monotonic()))
        after = scrape(url)
        batches = after.get(("batch", "count", None), 0) - before.get(("batch", "count", None), 0)
        rows = after.get(("batch", "sum", None), 0) - before.get(("batch", "sum", None), 0)
        parts = [f"t={tick * interval:6.1f}s batches {batches:4.0f} rows {rows:6.0f}"]
        for stage in sorted({k[0] for k in after if k[0] != "batch"}):
            n = after.get((stage, "count", None), 0) - before.get((stage, "count", None), 0)
            if n <= 0:
                continue
            total = after[(stage, "sum", None)] - before.get((stage, "sum", None), 0)
            parts.append(f"{stage} mean {total / n * 1000:6.2f}ms max {slowest_bucket(before, after, stage):>9}")
        print(" | ".join(parts), flush=True)
        before = after


if __name__ == "__main__":
    main()
