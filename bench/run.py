#!/usr/bin/env python3
"""One-off dynos: how long `manifold run` takes, and how fast output comes through it.

Starts an all-in-one node (bench/node.py), deploys the tiny busybox app (`testing` stack),
then, side by side in one run:
  - `manifold ps`: one API round trip of the CLI (the floor every command pays);
  - `manifold run:detached -- true`: the API places a one-off and answers;
  - `manifold run -- true` (pipes): placed, started on the agent, attached through the
    scheduler, exit status back: the whole round trip a user waits for;
  - `manifold run -- 'head -c N /dev/zero'` into /dev/null: output throughput over the
    three hops (shim → agent → scheduler → CLI), against `head -c N /dev/zero` run
    locally into a pipe.
Prints medians and p90s (ms) and MB/s.

    bench/run.py [-n 20] [--mib 256]
"""

import argparse
import statistics
import subprocess
import time

from node import BIN, ROOT, Node


def timed(cmd, env, **kw):
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kw)
    return (time.monotonic() - start) * 1000


def summary(name, times):
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
    print(f"{name:<44} n={len(times):<3} median {statistics.median(times):7.1f} ms"
          f"   p90 {p90:7.1f} ms")
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    with Node() as node:
        app = "bench-run"
        node.manifold("apps:create", app, "--stack", "testing")
        node.manifold("deploy", f"{ROOT}/scheduler/tests/fixtures/tiny-web", "-a", app)
        cli = f"{BIN}/manifold"
        ps, detached, attached = [], [], []
        for _ in range(args.n):
            ps.append(timed([cli, "ps", "-a", app], node.env))
            detached.append(timed([cli, "run:detached", "-a", app, "--", "true"], node.env))
            attached.append(timed([cli, "run", "-a", app, "--", "true"], node.env))
            node.wait(app, lambda d: not [x for x in d if x["type"] == "run"])
        base = summary("manifold ps (API round trip)", ps)
        summary("manifold run:detached -- true (placed)", detached)
        run = summary("manifold run -- true (pipes, to exit status)", attached)
        print(f"{'':<44} the run's own part: {run - base:.1f} ms over the API round trip")

        size = args.mib << 20
        local, remote = [], []
        for _ in range(3):
            local.append(timed(["sh", "-c", f"head -c {size} /dev/zero | cat > /dev/null"],
                               node.env))
            remote.append(timed([cli, "run", "-a", app, "--", f"head -c {size} /dev/zero"],
                                node.env))
        mbps = lambda ms: (size / 1e6) / (ms / 1000)
        lm, rm = statistics.median(local), statistics.median(remote)
        print(f"output of {args.mib} MiB: locally through a pipe {mbps(lm):7.0f} MB/s;"
              f" through manifold run {mbps(rm):7.0f} MB/s ({rm / lm:.1f}x the time)")
        node.destroy(app)


if __name__ == "__main__":
    main()
