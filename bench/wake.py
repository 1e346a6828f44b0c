#!/usr/bin/env python3
"""Wake latency: a request arrives at a sleeping app → its response, through the router.

Starts an all-in-one node (bench/node.py) with `--sleep-after 1s`, deploys a trivial web
app (the tiny busybox app on the `testing` stack, and examples/python-web on `bookworm`),
scales web=1:eco, then N times: waits until the app is asleep (`manifold ps` shows web.1
`idle` and no dyno runs), sends one GET through the router and times it until the response
is complete. Prints median, p90 and p99 per app.

    bench/wake.py [-n 20] [--apps tiny,python]
"""

import argparse
import statistics
import time
import urllib.request

from node import ROOT, Node

ROUTER = "127.0.0.1:18080"
APPS = {
    "tiny": ("testing", f"{ROOT}/scheduler/tests/fixtures/tiny-web", "/cgi-bin/greeting"),
    "python": ("bookworm", f"{ROOT}/examples/python-web", "/"),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--apps", default="tiny,python")
    args = parser.parse_args()
    with Node("--router-listen", ROUTER, "--sleep-after", "1s") as node:
        for name in args.apps.split(","):
            stack, src, path = APPS[name]
            app = f"wake-{name}"
            node.manifold("apps:create", app, "--stack", stack)
            node.manifold("deploy", src, "-a", app)
            node.manifold("ps:scale", "web=1:eco", "-a", app)
            times = []
            for _ in range(args.n):
                node.wait(app, lambda d: len(d) == 1 and d[0]["state"] == "idle")
                req = urllib.request.Request(f"http://{ROUTER}{path}",
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
            node.destroy(app)


if __name__ == "__main__":
    main()
