#!/usr/bin/env python3
"""What disk quotas cost a dyno start: the same agent, with /var/lib/manifold/dynos on the btrfs
that scripts/setup mounts (each dyno's disk/ a subvolume with a qgroup limit) and with that bind
mount lifted (the dynos directory on the host's own filesystem, no quota), in alternating blocks
of 6 starts whose first is not counted. Prints medians of `first-line` (launch to the dyno's
first output line) and of the whole run of an `echo` dyno (start, exit and removal).

Usage (as root, after scripts/setup, with no dyno running): bench/disk-quota.py [-n ROUNDS]
"""
import argparse
import statistics
import subprocess
import time

AGENT = "/var/cache/manifold/target/release/manifold-agent"
DYNOS = "/var/lib/manifold/dynos"
SUBVOLUME = "/var/lib/manifold/.disk/dynos"


def one(agent):
    start = time.perf_counter()
    p = subprocess.Popen([agent, "run", "--name", "worker.1", "--", "echo first-line-$((40+2))"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None and b"first-line-42" in line:
            first = time.perf_counter() - start
    p.wait()
    return first * 1000, (time.perf_counter() - start) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=12, help="rounds of one block per mode")
    ap.add_argument("--agent", default=AGENT)
    a = ap.parse_args()
    if subprocess.run(["mountpoint", "-q", DYNOS]).returncode != 0:
        raise SystemExit(f"{DYNOS} is not the btrfs mount scripts/setup makes")
    results = {"quota (btrfs)": ([], []), "no quota": ([], [])}
    for _ in range(a.n):
        for mode, (firsts, totals) in results.items():
            if mode == "no quota":
                subprocess.run(["umount", DYNOS], check=True)
            try:
                for i in range(6):
                    first, total = one(a.agent)
                    if i > 0:
                        firsts.append(first)
                        totals.append(total)
            finally:
                if mode == "no quota":
                    subprocess.run(["mount", "--bind", SUBVOLUME, DYNOS], check=True)
    for mode, (firsts, totals) in results.items():
        print(f"{mode:14} first-line median {statistics.median(firsts):5.1f} ms   "
              f"whole run median {statistics.median(totals):5.1f} ms   n={len(firsts)}")


if __name__ == "__main__":
    main()
