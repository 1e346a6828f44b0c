#!/usr/bin/env python3
"""`manifold ps:scale web=1` to `up`, end to end, for the Python example on a warm host.

Starts an all-in-one node (bench/node.py), deploys examples/python-web once (the build is
not measured), then N times: scale web from 0 to 1 and time until `manifold ps` shows web.1
`up` (its $PORT accepted a connection), then scale back to 0 and wait until it is gone.
Prints the median and p90.

    bench/scale.py [-n 20]
"""

import argparse
import statistics
import time

from node import ROOT, Node


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    with Node() as node:
        node.manifold("apps:create", "bench")
        node.manifold("deploy", f"{ROOT}/examples/python-web", "-a", "bench")
        node.manifold("ps:scale", "web=0", "-a", "bench")
        node.wait("bench", lambda d: not d)
        times = []
        for _ in range(args.n):
            start = time.monotonic()
            node.manifold("ps:scale", "web=1", "-a", "bench")
            node.wait("bench", lambda d: len(d) == 1 and d[0]["state"] == "up", poll=0.005)
            times.append((time.monotonic() - start) * 1000)
            node.manifold("ps:scale", "web=0", "-a", "bench")
            node.wait("bench", lambda d: not d)
        times.sort()
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"ps:scale web=1 to up (python example, warm host), n={len(times)}: "
              f"median {statistics.median(times):.0f} ms, p90 {p90:.0f} ms, "
              f"min {times[0]:.0f} ms")
        node.destroy("bench")


if __name__ == "__main__":
    main()
