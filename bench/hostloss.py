#!/usr/bin/env python3
"""Host loss to replacement `up`, end to end, with the scheduler's default settings.

Starts a scheduler and two agents on this machine (each agent with its own state dir,
cgroup parent, bridge, subnet, nft table and port range, as two hosts would have), deploys
the tiny test app (testing stack) with web=2 spread over both, then N times: SIGKILL the
agent that runs web dynos on host B, and time until `manifold ps` shows every web dyno
`up` on host A. Host B's agent is then started again (it stops its stale dynos) and the
formation is spread again by a restart. Prints the median and the spread.

    bench/hostloss.py [-n 5] [--deadline 10s]
"""

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/manifold/target"), "release")
APP = os.path.join(ROOT, "scheduler/tests/fixtures/tiny-web")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--deadline", default=None, help="scheduler --heartbeat-deadline (default: its own)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-hostloss-")
    # Dynos run in a user namespace: their root must be able to traverse the state dir.
    os.chmod(work, 0o755)
    listen = "127.0.0.1:18760"
    env = dict(os.environ, MANIFOLD_API=f"http://{listen}", MANIFOLD_API_TOKEN="bench",
               MANIFOLD_AGENT_TOKEN="bench-agent")
    procs = {}

    def manifold(*a):
        r = subprocess.run([f"{BIN}/manifold", *a], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, a, r.stdout, r.stderr)
        return r.stdout

    def dynos():
        return json.loads(manifold("ps", "-a", "loss", "--json"))

    def agent(name, i):
        state = os.path.join(work, name)
        os.makedirs(state, exist_ok=True)
        if not os.path.exists(os.path.join(state, "stacks")):
            os.symlink("/var/lib/manifold/stacks", os.path.join(state, "stacks"))
        procs[name] = subprocess.Popen(
            [f"{BIN}/manifold-agent", "--state-dir", state, "--scheduler", f"http://{listen}",
             "--host-id", name, "--ports", f"{38200 + 100 * i}-{38299 + 100 * i}",
             "--cgroup-parent", f"manifold-bench-{name}", "--bridge", f"mfbench{i}",
             "--subnet", f"10.{240 + i}.0.0/16", "--nft-table", f"mfbench{i}",
             "--buildpacks-dir", os.path.join(ROOT, "buildpacks")],
            env=env, stderr=open(os.path.join(work, f"{name}.log"), "a"), start_new_session=True)

    cmd = [f"{BIN}/manifold-scheduler", "--listen", listen, "--state-dir", os.path.join(work, "scheduler")]
    if args.deadline:
        cmd += ["--heartbeat-deadline", args.deadline]
    procs["scheduler"] = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        agent("host-a", 1)
        agent("host-b", 2)
        wait(lambda: len([h for h in json.loads(manifold("hosts", "--json")) if h["state"] == "ready"]) == 2)
        manifold("apps:create", "loss", "--stack", "testing")
        manifold("deploy", APP, "-a", "loss")
        manifold("ps:scale", "web=2", "-a", "loss")
        times = []
        for _ in range(args.n):
            wait(lambda: spread(dynos()))
            os.killpg(procs["host-b"].pid, signal.SIGKILL)
            procs["host-b"].wait()
            start = time.monotonic()
            wait(lambda: all_on(dynos(), "host-a"), poll=0.01)
            times.append(time.monotonic() - start)
            agent("host-b", 2)
            wait(lambda: len([h for h in json.loads(manifold("hosts", "--json")) if h["state"] == "ready"]) == 2)
            wait(lambda: not os.listdir(os.path.join(work, "host-b", "dynos")))
            manifold("ps:restart", "web.2", "-a", "loss")
        times.sort()
        print(f"host loss (agent SIGKILL) to every web dyno up elsewhere, n={len(times)}: "
              f"median {statistics.median(times):.2f} s, min {times[0]:.2f} s, max {times[-1]:.2f} s"
              f" (heartbeat deadline: {args.deadline or 'default'})")
        manifold("apps:destroy", "loss", "--confirm", "loss")
        for host in ["host-a", "host-b"]:
            wait(lambda: not os.listdir(os.path.join(work, host, "dynos")))
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()
        for i, name in [(1, "host-a"), (2, "host-b")]:
            state = os.path.join(work, name)
            stop_shims(state)
            subprocess.run([f"{BIN}/manifold-agent", "--state-dir", state, "gc"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "link", "del", f"mfbench{i}"], stderr=subprocess.DEVNULL)
            subprocess.run(["nft", "delete", "table", "ip", f"mfbench{i}"], stderr=subprocess.DEVNULL)
            for root in os.listdir("/sys/fs/cgroup"):
                d = os.path.join("/sys/fs/cgroup", root, f"manifold-bench-{name}")
                if os.path.isdir(d):
                    subprocess.run(["find", d, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"],
                                   stderr=subprocess.DEVNULL)
        if os.environ.get("KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def stop_shims(state):
    """Stops the dynos an agent left running (a failed run, or a killed agent's)."""
    pids = []
    for d in glob.glob(os.path.join(state, "dynos", "*", "shim.pid")):
        try:
            pids.append(int(open(d).read().strip()))
            os.kill(pids[-1], signal.SIGTERM)
        except (OSError, ValueError):
            pass
    end = time.monotonic() + 40
    while pids and time.monotonic() < end:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        time.sleep(0.1)


def spread(ds):
    hosts = {d["host"]["id"] for d in ds if d["state"] == "up"}
    return len(ds) == 2 and hosts == {"host-a", "host-b"}


def all_on(ds, host):
    return len(ds) == 2 and all(d["host"]["id"] == host and d["state"] == "up" for d in ds)


def wait(done, poll=0.1, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if done():
                return
        except subprocess.CalledProcessError:
            pass  # the scheduler is not serving yet
        time.sleep(poll)
    sys.exit("timed out")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"manifold {' '.join(e.cmd)} failed: {e.stdout}\n{e.stderr}")
