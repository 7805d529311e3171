"""What the MongoDB-wire server's storage engine (WiredTiger) did during a scenario.

    PYTHON bench/tools/wt_stats.py URL snap FILE     save the counters to FILE
    PYTHON bench/tools/wt_stats.py URL diff FILE     print what moved since FILE, one line

PYTHON is one with pymongo (scripts/mongodb.sh's venv has it). Reads `serverStatus.wiredTiger`
(SecantusDB and MongoDB both report it) and prints the counters behind a write stall: the
in-memory updates the engine holds (a gauge; once they reach `eviction_updates_target`, 2.5% of
the cache by default, eviction starts writing pages out), pages written by eviction, the forced
evictions (a page evicted by the thread that touched it, which waits, and every writer of that
page with it), the time threads slept waiting for a page, checkpoints and the longest, and the
log's syncs. Usage and what they showed: bench/HISTORY.md, "What the message store's stalls are".
"""

import json
import sys

from pymongo import MongoClient

# (label, section, counter, kind): a delta is the change since the snapshot, a gauge the value now.
COUNTERS = [
    ("updates_mib", "cache", "bytes allocated for updates", "gauge_mib"),
    ("dirty_mib", "cache", "tracked dirty bytes in the cache", "gauge_mib"),
    ("evicted_mib", "capacity", "bytes written for eviction", "delta_mib"),
    ("forced", "cache", "forced eviction - pages evicted that were dirty count", "delta"),
    ("forced_ms", "cache", "forced eviction - pages evicted that were dirty time (usecs)", "delta_ms"),
    ("page_wait_ms", "thread-yield", "page acquire time sleeping (usecs)", "delta_ms"),
    ("checkpoints", "transaction", "transaction checkpoints", "delta"),
    ("checkpoint_mib", "block-manager", "bytes written for checkpoint", "delta_mib"),
    ("log_syncs", "log", "log sync operations", "delta"),
    ("log_sync_ms", "log", "log sync time duration (usecs)", "delta_ms"),
]


def counters(url: str) -> dict:
    client = MongoClient(url, serverSelectionTimeoutMS=5000)
    status = client.admin.command("serverStatus").get("wiredTiger", {})
    return {label: status.get(section, {}).get(name, 0) for label, section, name, _ in COUNTERS}


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[2] not in ("snap", "diff"):
        sys.exit(__doc__)
    url, action, path = sys.argv[1:]
    now = counters(url)
    if action == "snap":
        with open(path, "w") as f:
            json.dump(now, f)
        return
    with open(path) as f:
        before = json.load(f)
    parts = []
    for label, _, _, kind in COUNTERS:
        value = now[label] if kind.startswith("gauge") else now[label] - before.get(label, 0)
        if kind.endswith("_mib"):
            parts.append(f"{label} {value / 2**20:.0f}")
        elif kind.endswith("_ms"):
            parts.append(f"{label} {value / 1000:.0f}")
        else:
            parts.append(f"{label} {value}")
    print("wiredtiger: " + ", ".join(parts))


if __name__ == "__main__":
    main()
