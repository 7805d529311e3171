"""CPU used by each program on the machine over a window, from /proc (no sysstat needed).

    python3 bench/tools/cpu_by_process.py DELAY SECONDS

Waits DELAY seconds, then samples every process's user + system time over SECONDS and prints
one line: the busiest programs (summed by name) in percent of one core, the machine's total
busy share of all its cores, and then the user-mode part of each of those programs' share (the
kernel's part moves with how the load generator and the server wake each other; the user part
is the programs' own work). bench/run.sh runs it during each scenario when BENCH_CPU=1.
"""

import os
import sys
import time


def processes() -> tuple:
    ticks, user = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # By pid: a kernel worker's name changes with the work it does, and keyed by name its
        # whole lifetime would count as this window's.
        ticks[pid] = (name, int(fields[11]) + int(fields[12]))
        user[pid] = int(fields[11])
    return ticks, user


def machine() -> tuple:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


def main(delay: float, seconds: float) -> None:
    time.sleep(delay)
    (before, user0), (total0, idle0), start = processes(), machine(), time.monotonic()
    time.sleep(seconds)
    (after, user1), (total1, idle1), elapsed = processes(), machine(), time.monotonic() - start
    by_name, user_by_name = {}, {}
    for pid, (name, ticks) in after.items():
        by_name[name] = by_name.get(name, 0) + ticks - before.get(pid, (name, 0))[1]
        user_by_name[name] = user_by_name.get(name, 0) + user1[pid] - user0.get(pid, 0)
    hz = os.sysconf("SC_CLK_TCK")
    busiest = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    share = lambda ticks: f"{ticks / hz / elapsed * 100:.0f}%"
    shares = " ".join(f"{name}={share(ticks)}" for name, ticks in busiest)
    users = " ".join(f"{name}={share(user_by_name[name])}" for name, ticks in busiest[:2])
    busy = 100 * (1 - (idle1 - idle0) / max(total1 - total0, 1))
    print(f"cpu: machine {busy:.0f}% busy; {shares}; user: {users}")


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
