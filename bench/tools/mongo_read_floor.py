"""How long the MongoDB-wire server alone takes to return one chat's messages.

Inserts 20 chats of 1,000 message-shaped documents (the shape Arbor stores) into the server at
the given URL, then times `find({chat_id}).sort(_id)` for each, 5 rounds, with pymongo decoding
nothing (RawBSONDocument). Any client, Arbor included, needs at least this long to activate a
1,000-message chat from that server. Usage (BENCHMARKS.md):

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
    samples = []
    for _ in range(5):
        for chat in chats:
            started = time.perf_counter()
            count = len(list(raw.find({"chat_id": chat}).sort("_id", 1).batch_size(100_000)))
            samples.append(time.perf_counter() - started)
            assert count == 1000
    samples.sort()
    p50 = samples[len(samples) // 2] * 1e3
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3
    print(f"1000-document read: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(samples)} samples)")
    client.arbor_read_floor.messages.drop()


if __name__ == "__main__":
    main(sys.argv[1])
