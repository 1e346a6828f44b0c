#!/usr/bin/env python3
"""Log pipeline throughput: a dyno writing numbered lines as fast as it can → its agent (shim,
stream, rate limit, batches over AgentLink) → the scheduler's log plex → `manifold logs
--tail` on this machine. Counts what arrives, what is missing, and the lines/s between the
first and the last line.

Starts an all-in-one node (bench/node.py), deploys the tiny app (testing
stack) and scales its `burst` process (BURST numbered lines, then sleep) to 1, twice: with
the agent's rate limit raised out of the way (`--log-rate 10000000`, the pipeline's own
capacity) and with the default 2,000 lines/s (what the limiter lets through, and its L10).

    bench/logs.py [--lines 200000]
"""

import argparse
import re
import subprocess
import threading
import time

from node import BIN, ROOT, Node

TINY = f"{ROOT}/scheduler/tests/fixtures/tiny-web"


def run(lines, rate):
    with Node("--router-listen", "none", agent_args=[f"--log-rate={rate}"]) as node:
        node.manifold("apps:create", "logbench", "--stack", "testing")
        node.manifold("config:set", f"BURST={lines}", "-a", "logbench")
        node.manifold("deploy", TINY, "-a", "logbench")
        node.manifold("ps:scale", "web=0", "-a", "logbench")
        tail = subprocess.Popen([f"{BIN}/manifold", "logs", "--tail", "-a", "logbench",
                                 "-n", "0", "--ps", "burst.1"],
                                env=node.env, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            node.manifold("ps:scale", "burst=1", "-a", "logbench")
            seen, first, last, l10 = follow(tail)
        finally:
            tail.kill()
            tail.wait()
        span = (last - first) if first and last and last > first else float("nan")
        print(f"--log-rate {rate}: {len(seen)} of {lines} lines arrived "
              f"({lines - len(seen)} missing), {len(seen) / span:,.0f} lines/s "
              f"from first to last, {l10} L10 lines")
        node.destroy("logbench")


def follow(tail):
    """Reads the tail until nothing new came for a second: the numbers seen, the arrival
    of the first and last numbered line, and how many L10 lines came."""
    pattern = re.compile(r" app\[burst\.1\]: burst (\d+)$")
    arrivals = []

    def read():
        for line in tail.stdout:
            arrivals.append((time.monotonic(), line.rstrip("\n")))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline:
        time.sleep(1)
        if arrivals and len(arrivals) == count:
            break
        count = len(arrivals)
    seen, first, last, l10 = set(), None, None, 0
    for at, line in list(arrivals):
        m = pattern.search(line)
        if m:
            seen.add(int(m.group(1)))
            first = first or at
            last = at
        elif "Error L10" in line:
            l10 += 1
    return seen, first, last, l10


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200000)
    args = parser.parse_args()
    run(args.lines, 10_000_000)
    run(args.lines, 2000)


if __name__ == "__main__":
    main()
