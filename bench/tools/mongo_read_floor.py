"""How long the MongoDB-wire server alone takes to return one chat's messages.

Inserts 20 chats of 1,000 message-shaped documents (the shape Arbor stores) into the server at
the given URL, then times `find({chat_id})` for each, 5 rounds, with pymongo decoding nothing
(RawBSONDocument). Any client, Arbor included, needs at least this long to activate a
1,000-message chat from that server. The same read with the server sorting by `_id`
(`.sort(_id)`, which Arbor asked for until `a72c284`) is timed beside it, interleaved. Usage
(BENCHMARKS.md, "Activation"):

    python bench/tools/mongo_read_floor.py mongodb://127.0.0.1:PORT/?directConnection=true
"""

import datetime
import sys
import time
import uuid

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient


def main(url: str) -> None:
    client = MongoClient(url, uuidRepresentation="standard")
    collection = client.arbor_read_floor.messages
    collection.drop()
    collection.create_index([("chat_id", 1), ("_id", 1)])
    chats = []
    for _ in range(20):
        chat = uuid.uuid4()
        chats.append(chat)
        now = datetime.datetime.now(datetime.timezone.utc)
        collection.insert_many(
            {
                "_id": uuid.uuid4(),
                "chat_id": chat,
                "parent_id": None,
                "role": "user",
                "content": f"question number {i:6d} about branching trees?",
                "created_at": now,
                "model": None,
                "metadata": None,
                "idempotency_key": None,
            }
            for i in range(1000)
        )
    raw = collection.with_options(
        codec_options=collection.codec_options.with_options(document_class=RawBSONDocument)
    )
    reads = {
        "unsorted": lambda chat: raw.find({"chat_id": chat}),
        "sorted by the server": lambda chat: raw.find({"chat_id": chat}).sort("_id", 1),
    }
    samples = {name: [] for name in reads}
    for _ in range(5):
        for chat in chats:
            for name, read in reads.items():
                started = time.perf_counter()
                count = len(list(read(chat).batch_size(100_000)))
                samples[name].append(time.perf_counter() - started)
                assert count == 1000
    for name, times in samples.items():
        times.sort()
        p50 = times[len(times) // 2] * 1e3
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3
        print(f"1000-document read, {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(times)} samples)")
    client.arbor_read_floor.messages.drop()


if __name__ == "__main__":
    main(sys.argv[1])
