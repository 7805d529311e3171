"""How many messages per second the MongoDB-wire server alone can store.

    python bench/tools/mongo_write_floor.py URL [--seconds S] [--batch N] [--clients C] [--pid PID]

Inserts message-shaped documents (the shape Arbor stores, 2 per Q&A pair) into the server at URL
with `insert_many(ordered=False)` and Arbor's write concern `{w: "majority", j: true}`, in
batches of N (Arbor's writer sends up to 1,024 rows per batch), from C client threads, for S
seconds, and prints documents/s, the pairs/s that allows, each call's latency (p50, p99, p99.9,
the slowest, and how many took over 25 ms: a durable acknowledgment waits for one such call) and
(with --pid) the server's CPU use in percent of one core. --keep leaves the documents in place
for the next run (a grown collection), and --grow N inserts N documents first, untimed. No client, Arbor included, can store pairs faster than this on the same
machine. Usage in bench/HISTORY.md.
"""

import argparse
import datetime
import os
import threading
import time
import uuid

from pymongo import MongoClient, WriteConcern


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--grow", type=int, default=0)
    args = parser.parse_args()

    client = MongoClient(args.url, uuidRepresentation="standard")
    database = client.get_database("arbor_write_floor")
    if not args.keep:
        database.drop_collection("messages")
    collection = database.get_collection(
        "messages", write_concern=WriteConcern(w="majority", j=True)
    )
    collection.create_index([("chat_id", 1), ("_id", 1)])
    chats = [uuid.uuid4() for _ in range(1000)]

    def batch(n: int) -> list:
        now = datetime.datetime.now(datetime.timezone.utc)
        docs = []
        for i in range(n):
            docs.append(
                {
                    "_id": uuid.uuid4(),
                    "chat_id": chats[i % len(chats)],
                    "parent_id": uuid.uuid4(),
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": "How do branches work?" if i % 2 == 0
                    else "A branch is a pointer to a head message.",
                    "created_at": now,
                }
            )
        return docs

    for _ in range(args.grow // 1000):
        collection.insert_many(batch(1000), ordered=False)

    stored = [0] * args.clients
    latencies = [[] for _ in range(args.clients)]
    deadline = time.monotonic() + args.seconds

    def work(slot: int) -> None:
        while time.monotonic() < deadline:
            docs = batch(args.batch)  # built before the clock matters: the server's time counts
            call = time.perf_counter()
            collection.insert_many(docs, ordered=False)
            latencies[slot].append((time.perf_counter() - call) * 1000)
            stored[slot] += len(docs)

    cpu_before = cpu_seconds(args.pid) if args.pid else 0.0
    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    docs_per_s = sum(stored) / elapsed
    calls = sorted(ms for slot in latencies for ms in slot)
    pick = lambda q: calls[min(len(calls) - 1, int(q * len(calls)))]
    line = (
        f"BENCH docs_per_s={docs_per_s:.0f} pairs_per_s={docs_per_s / 2:.0f} "
        f"batch={args.batch} clients={args.clients} calls={len(calls)} "
        f"call_p50_ms={pick(0.5):.2f} call_p99_ms={pick(0.99):.2f} "
        f"call_p999_ms={pick(0.999):.2f} call_max_ms={calls[-1]:.1f} "
        f"calls_over_25ms={sum(ms > 25 for ms in calls)}"
    )
    if args.pid:
        line += f" server_cpu_pct={(cpu_seconds(args.pid) - cpu_before) / elapsed * 100:.0f}"
    print(line)
    if not args.keep:
        database.drop_collection("messages")


if __name__ == "__main__":
    main()
