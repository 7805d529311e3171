"""CPU used by each program on the machine over a window, from /proc (no sysstat needed).

    python3 bench/tools/cpu_by_process.py DELAY SECONDS

Waits DELAY seconds, then samples every process's user + system time over SECONDS and prints
one line: the busiest programs (summed by name) in percent of one core, and the machine's total
busy share of all its cores. bench/run.sh runs it during each scenario when BENCH_CPU=1.
"""

import os
import sys
import time


def processes() -> dict:
    ticks = {}
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
        ticks[(pid, name)] = int(fields[11]) + int(fields[12])
    return ticks


def machine() -> tuple:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


def main(delay: float, seconds: float) -> None:
    time.sleep(delay)
    before, (total0, idle0), start = processes(), machine(), time.monotonic()
    time.sleep(seconds)
    after, (total1, idle1), elapsed = processes(), machine(), time.monotonic() - start
    by_name = {}
    for key, ticks in after.items():
        by_name[key[1]] = by_name.get(key[1], 0) + ticks - before.get(key, 0)
    hz = os.sysconf("SC_CLK_TCK")
    busiest = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    shares = " ".join(f"{name}={ticks / hz / elapsed * 100:.0f}%" for name, ticks in busiest)
    busy = 100 * (1 - (idle1 - idle0) / max(total1 - total0, 1))
    print(f"cpu: machine {busy:.0f}% busy; {shares}")


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
