#!/usr/bin/env python3
"""Lines up add_pair_rated's slow requests with what the machine was doing at the time.

    episodes.py record TIMELINE        every 100 ms until stopped (SIGTERM): CPU busy and iowait,
                                       KiB the kernel sent to the disk (pgpgout), dirty and
                                       writeback page cache, and each program's KiB written
                                       (/proc/PID/io write_bytes, summed by program name)
    episodes.py report OHA_DB TIMELINE [THRESHOLD_MS]
                                       oha's requests (--db-url, with OHA_DB.start holding its
                                       start as Unix time: bench/run.sh's BENCH_OHA_DB) in 100 ms
                                       intervals beside the timeline: every interval with more
                                       than 20 requests over THRESHOLD_MS (default 25), with the
                                       intervals around it, then how many of the slow requests
                                       fall next to a writeback burst (the kernel sending more
                                       than 8 MiB to the disk in 100 ms) or a store's write
                                       burst (a store program writing twice its median
                                       in 100 ms, and at least 2 MiB)

A request's latency is oha's with --latency-correction: from when it was due to its answer.
A timeline line covers the 100 ms before its timestamp.
"""
import collections
import os
import signal
import sqlite3
import sys
import time

STORES = ("postgres", "secantusd-rs", "secantusd-py", "mongod")
WRITEBACK_KIB = 8 * 1024
STORE_BURST_KIB = 2 * 1024


def cpu():
    values = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(values), values[3], values[4]


def meminfo():
    found = {}
    for line in open("/proc/meminfo"):
        key, value = line.split(":")
        if key in ("Dirty", "Writeback"):
            found[key] = int(value.split()[0])
    return found


def pgpgout():
    for line in open("/proc/vmstat"):
        if line.startswith("pgpgout "):
            return int(line.split()[1])
    return 0


def written():
    """Bytes written so far by each process, keyed by (pid, program)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            name = open(f"/proc/{pid}/comm").read().strip()
            for line in open(f"/proc/{pid}/io"):
                if line.startswith("write_bytes:"):
                    found[(pid, name)] = int(line.split(":")[1])
        except OSError:
            pass
    return found


def record(path):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with open(path, "w") as out:
        previous = None
        while not stop:
            now = time.time()
            sample = (cpu(), pgpgout(), written())
            memory = meminfo()
            if previous:
                (total, idle, iowait), sent, by_pid = sample
                (p_total, p_idle, p_iowait), p_sent, p_by_pid = previous
                ticks = max(total - p_total, 1)
                waited = iowait - p_iowait
                busy = ticks - (idle - p_idle) - waited
                programs = collections.Counter()
                for key, value in by_pid.items():
                    if key in p_by_pid:
                        programs[key[1]] += (value - p_by_pid[key]) // 1024
                writers = " ".join(
                    f"{name}={kib}" for name, kib in programs.most_common(4) if kib > 0
                )
                out.write(
                    f"{now:.2f} busy={100 * busy // ticks} iowait={100 * waited // ticks} "
                    f"sent_kib={sent - p_sent} dirty_kib={memory['Dirty']} "
                    f"writeback_kib={memory['Writeback']} {writers}\n"
                )
                out.flush()
            previous = sample
            time.sleep(max(0.0, 0.1 - (time.time() - now)))


def fields(line):
    parts = line.split()
    return float(parts[0]), dict(p.split("=", 1) for p in parts[1:] if "=" in p)


def report(oha_db, timeline, threshold_ms=25.0):
    started = float(open(oha_db + ".start").read())
    rows = sqlite3.connect(oha_db).execute(
        "SELECT start_latency_correction, end FROM oha"
    ).fetchall()
    slow, total = collections.Counter(), collections.Counter()
    for due, end in rows:
        interval = int((started + due) * 10)
        total[interval] += 1
        if (end - due) * 1000 > threshold_ms:
            slow[interval] += 1
    # A timeline line stamped t covers [t - 0.1, t): the interval starting at t - 0.1.
    lines = {}
    for line in open(timeline):
        stamp, values = fields(line)
        lines[int(stamp * 10) - 1] = (line.split(" ", 1)[1].strip(), values)

    # A store's burst: twice its median writes per interval, and at least 2 MiB
    # (PostgreSQL's counted writes are ~30 MiB per 100 ms at 8,000 req/s, each WAL page
    # rewritten by many commits, so a fixed threshold would call all of them bursts).
    limits = {}
    for store in STORES:
        kibs = sorted(int(v.get(store, 0)) for _, v in lines.values())
        if kibs and kibs[-1] > 0:
            limits[store] = max(2 * kibs[len(kibs) // 2], STORE_BURST_KIB)

    def burst(interval):
        kinds = set()
        _, values = lines.get(interval, ("", {}))
        if int(values.get("sent_kib", 0)) > WRITEBACK_KIB:
            kinds.add("writeback")
        if any(int(values.get(s, 0)) > limit for s, limit in limits.items()):
            kinds.add("store")
        return kinds

    count = sum(slow.values())
    print(f"{count} of {len(rows)} requests over {threshold_ms:g} ms")
    shown = set()
    for interval in sorted(i for i in slow if slow[i] > 20):
        if interval - 2 not in shown:
            print("--")
        for nearby in range(interval - 2, interval + 3):
            if nearby in shown or nearby not in total:
                continue
            shown.add(nearby)
            mark = "*" if slow[nearby] > 20 else " "
            text = lines.get(nearby, ("(no sample)", {}))[0]
            print(f"{mark} +{nearby / 10 - started:6.1f}s slow {slow[nearby]:4d}/{total[nearby]:4d}  {text}")
    def around(interval):
        kinds = set()
        for nearby in range(interval - 1, interval + 3):
            kinds |= burst(nearby)
        return " and ".join(sorted(kinds)) or "neither"

    near, every = collections.Counter(), collections.Counter()
    for interval, n in total.items():
        kind = around(interval)
        near[kind] += slow[interval]
        every[kind] += n
    print("requests by what the machine did from 100 ms before to 300 ms after them:")
    for kind, n in every.most_common():
        print(
            f"  {kind}: {100 * n / len(rows):.0f}% of all requests, "
            f"{100 * near[kind] / max(count, 1):.0f}% of the slow ones"
        )


def main(argv):
    if len(argv) == 3 and argv[1] == "record":
        record(argv[2])
    elif len(argv) in (4, 5) and argv[1] == "report":
        report(argv[2], argv[3], *(float(a) for a in argv[4:]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
