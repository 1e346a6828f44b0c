#!/usr/bin/env python3
"""Dynos per host: the agent's own memory as idle dynos are added to one host.

Starts an all-in-one node (bench/node.py) whose agent claims enough memory and slots for
the largest step, deploys a tiny app (`idle: sleep infinity`, generic buildpack, eco size)
and scales it up in steps. After each step is all `up` (and a few heartbeats later), it
reads the RSS of the agent daemon and of the scheduler and the PSS of the dynos' shims, and
the agent's CPU over 10 idle seconds (what following that many dynos costs), and prints the
agent's RSS per dyno over its RSS with none: the issue's "agent overhead per dyno" (goal:
under 1 MiB per dyno at 500 dynos, the agent under 500 MiB).

    bench/density.py [--steps 0,50,100,200,300,400,500]
"""

import argparse
import os
import tempfile
import time

from node import Node

DYNOS = "/var/lib/manifold/dynos/"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    """Proportional set size: shared pages (the binary's text) divided among the sharers."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User and system time the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def processes():
    """(pid, argv) of every process."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        yield int(pid), [a.decode(errors="replace") for a in argv if a]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="0,50,100,200,300,400,500")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    most = max(steps)
    src = tempfile.mkdtemp(prefix="manifold-density-")
    with open(os.path.join(src, "Procfile"), "w") as f:
        f.write("idle: sleep infinity\n")
    with Node(agent_args=(f"--memory={most + 16}G", f"--slots={most + 10}",
                          "--heartbeat=2s")) as node:
        node.manifold("apps:create", "density")
        node.manifold("deploy", src, "-a", "density")
        scheduler = node.process.pid
        agent = next(pid for pid, argv in processes()
                     if argv and argv[0].endswith("manifold-agent") and parent(pid) == scheduler)
        base = None
        print(f"{'dynos':>6} {'to up':>7} {'agent RSS':>10} {'per dyno':>9} "
              f"{'shim PSS (avg)':>15} {'scheduler RSS':>14} {'agent CPU idle':>15}", flush=True)
        for n in steps:
            start = time.monotonic()
            node.manifold("ps:scale", f"idle={n}:eco", "-a", "density")
            node.wait("density", lambda d, n=n: len(d) == n and all(x["state"] == "up" for x in d),
                      poll=0.5, timeout=900)
            took = time.monotonic() - start
            time.sleep(5)  # a few heartbeats and log flushes with every dyno running
            cpu0, t0 = cpu_seconds(agent), time.monotonic()
            time.sleep(10)
            cpu = (cpu_seconds(agent) - cpu0) / (time.monotonic() - t0)
            agent_kib = rss_kib(agent)
            shims = [pid for pid, argv in processes()
                     if len(argv) > 3 and argv[1] == "shim" and argv[3].startswith(DYNOS)]
            shim_kib = sum(pss_kib(p) for p in shims) / len(shims) if shims else 0
            if base is None:
                base = agent_kib
            per = (agent_kib - base) / n if n else 0
            print(f"{n:>6} {took:>6.1f}s {agent_kib / 1024:>8.1f}Mi {per:>7.0f}Ki "
                  f"{shim_kib / 1024:>13.2f}Mi {rss_kib(scheduler) / 1024:>12.1f}Mi {cpu * 100:>13.1f}%",
                  flush=True)
        start = time.monotonic()
        node.manifold("apps:destroy", "density", "--confirm", "density")
        node.wait("density", None, poll=0.5, timeout=900)
        print(f"all {most} stopped and cleaned in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
