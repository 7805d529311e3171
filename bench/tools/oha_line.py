"""oha's JSON report (on stdin) as the `BENCH key=value ...` line bench/run.sh reads from wrk.

    oha --output-format json ... | python3 bench/tools/oha_line.py

requests counts every answered request; non2xx those answered with another status; errors those
that got no answer (connection errors, timeouts). Latencies are oha's: with -q and
--latency-correction, from the time each request was due, not the time it was sent.
"""

import json
import sys

report = json.load(sys.stdin)
statuses = report.get("statusCodeDistribution") or {}
answered = sum(statuses.values())
non2xx = sum(n for status, n in statuses.items() if not status.startswith("2"))
errors = sum((report.get("errorDistribution") or {}).values())
percentiles = report["latencyPercentiles"]
ms = lambda key: (percentiles.get(key) or 0.0) * 1000
print(
    f"BENCH requests={answered + errors} errors={errors} non2xx={non2xx} "
    f"seconds={report['summary']['total']:.3f} p50_ms={ms('p50'):.3f} p99_ms={ms('p99'):.3f} "
    f"p999_ms={ms('p99.9'):.3f}"
)
