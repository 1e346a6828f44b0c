#!/usr/bin/env python3
"""Log pipeline throughput: a dyno writing numbered lines as fast as it can → its agent (shim,
stream, rate limit, batches over AgentLink) → the scheduler's log plex → `manifold logs
--tail` on this machine. Counts what arrives, what is missing, and the lines/s between the
first and the last line.

Starts an all-in-one node in a scratch state directory, deploys the tiny app (testing
stack) and scales its `burst` process (BURST numbered lines, then sleep) to 1, twice: with
the agent's rate limit raised out of the way (`--log-rate 10000000`, the pipeline's own
capacity) and with the default 2,000 lines/s (what the limiter lets through, and its L10).

    bench/logs.py [--lines 200000]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/manifold/target"), "release")
TINY = f"{ROOT}/scheduler/tests/fixtures/tiny-web"


def run(lines, rate):
    state = tempfile.mkdtemp(prefix="manifold-bench-")
    listen = "127.0.0.1:18750"
    env = dict(os.environ, MANIFOLD_API=f"http://{listen}", MANIFOLD_API_TOKEN="bench")

    def manifold(*a):
        return subprocess.run([f"{BIN}/manifold", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    node = subprocess.Popen(
        [f"{BIN}/manifold-scheduler", "--listen", listen, "--router-listen", "none",
         "--state-dir", state, "--api-token", "bench", "--with-agent",
         f"--agent-arg=--buildpacks-dir={ROOT}/buildpacks", "--agent-arg=--ports=38000-38099",
         f"--agent-arg=--log-rate={rate}"],
        env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    tail = None
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{listen}/health", timeout=1)
                if "ready" in manifold("hosts"):
                    break
            except Exception:
                pass
            time.sleep(0.1)
        manifold("apps:create", "logbench", "--stack", "testing")
        manifold("config:set", f"BURST={lines}", "-a", "logbench")
        manifold("deploy", TINY, "-a", "logbench")
        manifold("ps:scale", "web=0", "-a", "logbench")
        tail = subprocess.Popen([f"{BIN}/manifold", "logs", "--tail", "-a", "logbench",
                                 "-n", "0", "--ps", "burst.1"],
                                env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        manifold("ps:scale", "burst=1", "-a", "logbench")
        seen = set()
        first = last = None
        l10 = 0
        pattern = re.compile(r" app\[burst\.1\]: burst (\d+)$")
        arrivals = []

        def read():
            for line in tail.stdout:
                arrivals.append((time.monotonic(), line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        count = 0
        while time.monotonic() < deadline:
            time.sleep(1)
            if arrivals and len(arrivals) == count:
                break  # nothing new for a second
            count = len(arrivals)
        for at, line in list(arrivals):
            m = pattern.search(line)
            if m:
                seen.add(int(m.group(1)))
                first = first or at
                last = at
            elif "Error L10" in line:
                l10 += 1
        span = (last - first) if first and last and last > first else float("nan")
        print(f"--log-rate {rate}: {len(seen)} of {lines} lines arrived "
              f"({lines - len(seen)} missing), {len(seen) / span:,.0f} lines/s "
              f"from first to last, {l10} L10 lines")
        manifold("apps:destroy", "logbench", "--confirm", "logbench")
        for _ in range(300):
            if not os.listdir("/var/lib/manifold/dynos"):
                break
            time.sleep(0.1)
    finally:
        if tail:
            tail.kill()
        os.killpg(node.pid, signal.SIGTERM)
        node.wait()
        shutil.rmtree(state, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200000)
    args = parser.parse_args()
    run(args.lines, 10_000_000)
    run(args.lines, 2000)


if __name__ == "__main__":
    main()
