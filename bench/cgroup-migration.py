#!/usr/bin/env python3
"""Cost of moving a process into a cgroup on each v1 controller (`cgroup.procs` writes), the
step libcontainer performs for every dyno. Prints milliseconds per controller for a few
fresh processes, and whether the host's cgroup2 mount has `favordynmods`.

Usage: sudo bench/cgroup-migration.py
"""
import os
import time

CONTROLLERS = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"]
ROOT = "/sys/fs/cgroup"


def main():
    opts = [l for l in open("/proc/self/mountinfo") if " - cgroup2 " in l]
    print("cgroup2 mount:", opts[0].split(" - ")[1].strip() if opts else "none")
    present = [c for c in CONTROLLERS if os.path.isdir(f"{ROOT}/{c}")]
    for c in present:
        os.makedirs(f"{ROOT}/{c}/manifold-probe", exist_ok=True)
    if "cpuset" in present:
        for f in ["cpuset.cpus", "cpuset.mems"]:
            with open(f"{ROOT}/cpuset/manifold-probe/{f}", "w") as out:
                out.write(open(f"{ROOT}/cpuset/{f}").read())
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                times = []
                for c in present:
                    t = time.perf_counter()
                    with open(f"{ROOT}/{c}/manifold-probe/cgroup.procs", "w") as f:
                        f.write(str(os.getpid()))
                    times.append(f"{c}={(time.perf_counter() - t) * 1000:.1f}")
                print(" ".join(times))
                os._exit(0)
            os.waitpid(pid, 0)
            time.sleep(0.2)
    finally:
        for c in present:
            os.rmdir(f"{ROOT}/{c}/manifold-probe")


if __name__ == "__main__":
    main()
