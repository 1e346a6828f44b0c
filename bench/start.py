#!/usr/bin/env python3
"""Dyno start benchmark: Manifold vs crun vs runc, side by side in one run.

Measures, for each runtime, interleaved run by run so that machine noise hits all alike:
  first-line  time from launching the command to the container's first output line
  true        a full run of `true`: create + start + exit + cleanup

Manifold's number is a *complete* dyno: `manifold-agent run` (a tokio process), its shim
(a second process), overlay rootfs, cgroups, its own network namespace with a veth on the
host bridge, log capture, and removal of all of it. crun and runc get an OCI bundle with
Manifold's own spec for the same command (`manifold-agent run --print-spec`): the same bash
start script, namespaces, user, no capabilities, seccomp, mounts and limits, rooted at the
same stack directory (read-only, no overlay), with an empty network namespace (no veth).

crun refuses this host's hybrid cgroup layout, so the whole benchmark runs in a private mount
namespace with /sys/fs/cgroup/unified unmounted (all three runtimes see the same thing).

With --baseline PATH a second Manifold agent binary (e.g. one built from an earlier commit)
runs interleaved too, as `baseline`, so the cost of a change is read from one run.

With two agents, runtimes take turns in blocks (--block, default 4) whose first run is not
counted: each agent installs its own host rules, and the first start after the other agent's
pays for installing them again, which a host running one agent never does.

A warm shim (an agent binary's shim exec'd ahead, waiting for its next dyno) is in place for
Manifold's runs after the first, as it is on a host running the agent: each run hands its dyno
to the one the run before left waiting and execs the next. crun and runc get no such thing.

Usage: bench/start.py [-n RUNS] [--agent PATH] [--baseline PATH] [--block K]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

STACK = "/var/lib/manifold/stacks/testing"


def reexec_in_private_mount_ns():
    if os.environ.get("MANIFOLD_BENCH_NS") == "1":
        return
    if os.path.ismount("/sys/fs/cgroup/unified"):
        env = dict(os.environ, MANIFOLD_BENCH_NS="1")
        script = "umount /sys/fs/cgroup/unified && exec " + " ".join(
            ["'" + a.replace("'", "'\\''") + "'" for a in [sys.executable] + sys.argv])
        os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", "sh", "-c", script], env)


def bundle(root, name, args, agent):
    """An OCI bundle with Manifold's own spec for the same command (`run --print-spec`): the
    same namespaces, user, capabilities, seccomp profile, mounts, masked paths and limits. Only
    the root differs: the stack directory itself, read-only (no overlay, no slug layer), and
    no bind of the host's resolv.conf; and crun/runc get no veth, just an empty netns."""
    path = os.path.join(root, name)
    os.makedirs(path)
    script = args[-1]
    spec = json.loads(subprocess.check_output(
        [agent, "run", "--name", "worker.1", "--print-spec", "--", script]))
    spec["root"] = {"path": STACK, "readonly": True}
    spec["hostname"] = name
    spec["linux"]["cgroupsPath"] = "/manifold-bench/" + name
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in ("/etc/resolv.conf",)]
    # A read-only root cannot grow mount points: cwd /app exists in the stack.
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f)
    return path


def timed(cmd, marker):
    """Seconds to the first stdout line containing `marker` (None: not measured), and to exit."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None and marker is not None and marker.encode() in line:
            first = time.perf_counter() - start
    p.wait()
    total = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with {p.returncode}")
    return first, total


def stats(xs):
    """Median, p95 and minimum in ms. On a machine others load, the minimum is the path
    with the fewest preemptions: read it beside the median."""
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return statistics.median(xs) * 1000, p95 * 1000, xs[0] * 1000


def stop_warm_shims(agents):
    """SIGTERM to the warm shims these agent binaries left waiting (each removes its socket)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if len(args) > 3 and args[0].decode(errors="replace") in agents and args[1:3] == [b"shim", b"--warm"]:
            try:
                os.kill(int(pid), 15)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--agent", default="/var/cache/manifold/target/release/manifold-agent")
    ap.add_argument("--baseline", help="another manifold-agent binary to run side by side")
    ap.add_argument("--only", action="append", help="run only these runtimes (repeatable)")
    ap.add_argument("--block", type=int, default=4,
                    help="with --baseline: consecutive runs per runtime, the first one not counted")
    a = ap.parse_args()
    reexec_in_private_mount_ns()
    tmp = tempfile.mkdtemp(prefix="manifold-bench-")
    try:
        runtimes = {"manifold": a.agent}
        if a.baseline:
            runtimes["baseline"] = a.baseline
        for rt in ["crun", "runc"]:
            if shutil.which(rt) and (not a.only or rt in a.only):
                runtimes[rt] = shutil.which(rt)
        echo = ["echo first-line-$((40+2))"]
        true = ["true"]
        bundles = {}
        for rt in runtimes:
            if rt not in ("manifold", "baseline"):
                bundles[(rt, "echo")] = bundle(tmp, f"{rt}-echo", echo, a.agent)
                bundles[(rt, "true")] = bundle(tmp, f"{rt}-true", true, a.agent)

        def cmd(rt, what, i):
            if rt in ("manifold", "baseline"):
                c = "echo first-line-$((40+2))" if what == "echo" else "true"
                return [runtimes[rt], "run", "--name", "worker.1", "--", c]
            return [runtimes[rt], "run", "--bundle", bundles[(rt, what)], f"b{rt}{what}{os.getpid()}{i}"]

        results = {rt: {"first-line": [], "true": []} for rt in runtimes}
        load_before = f"{os.getloadavg()[0]:.2f}"
        warmup = 3
        # Two agents install different host rules (the network policy is part of them), so
        # the first start after the other agent's re-installs them: in blocks, the first
        # run of each block is a warm-up too.
        block = a.block if a.baseline else 1
        i = 0
        while min(len(r["true"]) for r in results.values()) < a.n:
            for rt in runtimes:
                for j in range(block):
                    first, _ = timed(cmd(rt, "echo", i), "first-line-42")
                    _, total = timed(cmd(rt, "true", i), None)
                    i += 1
                    if i > warmup * len(runtimes) * block and (block == 1 or j > 0):
                        results[rt]["first-line"].append(first)
                        results[rt]["true"].append(total)
        blocks = f", in blocks of {block}" if block > 1 else ""
        print(f"dyno start, n>={a.n} each, interleaved{blocks} ({os.cpu_count()} cores)")
        print(f"load average before / after: {load_before} / {os.getloadavg()[0]:.2f}")
        print(f"{'runtime':<10} {'metric':<11} {'median ms':>10} {'p95 ms':>8} {'min ms':>8}"
              f" {'vs crun':>8} {'min vs crun':>12}")
        for metric in ["first-line", "true"]:
            base = stats(results["crun"][metric]) if "crun" in results else None
            for rt in runtimes:
                med, p95, low = stats(results[rt][metric])
                ratio = f"{med / base[0]:.2f}x" if base else "-"
                low_ratio = f"{low / base[2]:.2f}x" if base else "-"
                print(f"{rt:<10} {metric:<11} {med:>10.1f} {p95:>8.1f} {low:>8.1f}"
                      f" {ratio:>8} {low_ratio:>12}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        stop_warm_shims([a.agent] + ([a.baseline] if a.baseline else []))
        # crun and runc leave the (empty) parent cgroups behind.
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]:
            for d in [os.path.join(root, "manifold-bench")] + [
                    os.path.join(root, c, "manifold-bench") for c in os.listdir(root)
                    if os.path.isdir(os.path.join(root, c))]:
                try:
                    os.rmdir(d)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
