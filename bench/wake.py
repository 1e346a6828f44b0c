#!/usr/bin/env python3
"""Wake latency: a request arrives at a sleeping app → its response, through the router.

Starts an all-in-one node (manifold-scheduler --with-agent, --sleep-after 1s) in a scratch
state directory, deploys a trivial web app (the tiny busybox app on the `testing` stack, and
examples/python-web on `bookworm`), scales web=1:eco, then N times: waits until the app is
asleep (`manifold ps` shows web.1 `idle` and no dyno runs), sends one GET through the router
and times it until the response is complete. Prints median, p90 and p99 per app.

    bench/wake.py [-n 20] [--apps tiny,python]
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
APPS = {
    "tiny": ("testing", f"{ROOT}/scheduler/tests/fixtures/tiny-web", "/cgi-bin/greeting"),
    "python": ("bookworm", f"{ROOT}/examples/python-web", "/"),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--apps", default="tiny,python")
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="manifold-bench-")
    listen, router = "127.0.0.1:18750", "127.0.0.1:18080"
    env = dict(os.environ, MANIFOLD_API=f"http://{listen}", MANIFOLD_API_TOKEN="bench")

    def manifold(*a):
        return subprocess.run([f"{BIN}/manifold", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    node = subprocess.Popen(
        [f"{BIN}/manifold-scheduler", "--listen", listen, "--router-listen", router,
         "--state-dir", state, "--api-token", "bench", "--sleep-after", "1s", "--with-agent",
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
        for name in args.apps.split(","):
            stack, src, path = APPS[name]
            app = f"wake-{name}"
            manifold("apps:create", app, "--stack", stack)
            manifold("deploy", src, "-a", app)
            manifold("ps:scale", "web=1:eco", "-a", app)
            times = []
            for _ in range(args.n):
                wait(manifold, app, lambda d: len(d) == 1 and d[0]["state"] == "idle")
                req = urllib.request.Request(f"http://{router}{path}",
                                             headers={"Host": f"{app}.localhost"})
                start = time.monotonic()
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                times.append((time.monotonic() - start) * 1000)
            times.sort()
            pct = lambda p: times[min(len(times) - 1, int(len(times) * p))]
            print(f"wake through the router ({name}, {stack}), n={len(times)}: "
                  f"median {statistics.median(times):.0f} ms, p90 {pct(0.9):.0f} ms, "
                  f"p99 {pct(0.99):.0f} ms, min {times[0]:.0f} ms")
            manifold("apps:destroy", app, "--confirm", app)
        wait(manifold, None, None)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait()
        shutil.rmtree(state, ignore_errors=True)


def wait(manifold, app, done, poll=0.02, timeout=120):
    end = time.monotonic() + timeout
    dynos = None
    while time.monotonic() < end:
        if done is None:
            if not os.listdir("/var/lib/manifold/dynos"):
                return
        else:
            dynos = json.loads(manifold("ps", "-a", app, "--json"))
            if done(dynos):
                return
        time.sleep(poll)
    sys.exit(f"timed out; last: {dynos if done else os.listdir('/var/lib/manifold/dynos')}")


if __name__ == "__main__":
    main()
