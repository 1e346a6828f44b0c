#!/usr/bin/env python3
"""`manifold ps:scale web=1` to `up`, end to end, for the Python example on a warm host.

Starts an all-in-one node (manifold-scheduler --with-agent) in a scratch state directory,
deploys examples/python-web once (the build is not measured), then N times: scale web from
0 to 1 and time until `manifold ps` shows web.1 `up` (its $PORT accepted a connection), then
scale back to 0 and wait until it is gone. Prints the median and p90.

    bench/scale.py [-n 20]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/manifold/target"), "release")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="manifold-bench-")
    listen = "127.0.0.1:18750"
    env = dict(os.environ, MANIFOLD_API=f"http://{listen}", MANIFOLD_API_TOKEN="bench")

    def manifold(*a):
        return subprocess.run([f"{BIN}/manifold", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    node = subprocess.Popen(
        [f"{BIN}/manifold-scheduler", "--listen", listen, "--state-dir", state,
         "--api-token", "bench", "--with-agent",
         f"--agent-arg=--buildpacks-dir={ROOT}/buildpacks", "--agent-arg=--ports=38000-38099"],
        env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{listen}/health", timeout=1)
                if "ready" in manifold("hosts"):
                    break
            except Exception:
                pass
            time.sleep(0.1)
        manifold("apps:create", "bench")
        manifold("deploy", f"{ROOT}/examples/python-web", "-a", "bench")
        manifold("ps:scale", "web=0", "-a", "bench")
        wait(manifold, lambda d: not d)
        times = []
        for _ in range(args.n):
            start = time.monotonic()
            manifold("ps:scale", "web=1", "-a", "bench")
            wait(manifold, lambda d: len(d) == 1 and d[0]["state"] == "up", poll=0.005)
            times.append((time.monotonic() - start) * 1000)
            manifold("ps:scale", "web=0", "-a", "bench")
            wait(manifold, lambda d: not d)
        times.sort()
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"ps:scale web=1 to up (python example, warm host), n={len(times)}: "
              f"median {statistics.median(times):.0f} ms, p90 {p90:.0f} ms, "
              f"min {times[0]:.0f} ms")
        manifold("apps:destroy", "bench", "--confirm", "bench")
        wait(manifold, None)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait()
        shutil.rmtree(state, ignore_errors=True)


def wait(manifold, done, poll=0.05, timeout=120):
    end = time.monotonic() + timeout
    dynos = None
    while time.monotonic() < end:
        if done is None:
            if not os.listdir("/var/lib/manifold/dynos"):
                return
        else:
            dynos = json.loads(manifold("ps", "-a", "bench", "--json"))
            if done(dynos):
                return
        time.sleep(poll)
    sys.exit(f"timed out; last: {dynos if done else os.listdir('/var/lib/manifold/dynos')}")


if __name__ == "__main__":
    main()
