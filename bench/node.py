"""An all-in-one node for the benchmarks: `manifold-scheduler --with-agent` in a scratch
state directory, its API on 127.0.0.1:18750 with the token `bench`, and the `manifold`
CLI pointed at it. Use as a context manager; leaving it stops the node and removes the
state directory.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/manifold/target"), "release")
LISTEN = "127.0.0.1:18750"


class Node:
    def __init__(self, *scheduler_args, agent_args=()):
        self.state = tempfile.mkdtemp(prefix="manifold-bench-")
        self.env = dict(os.environ, MANIFOLD_API=f"http://{LISTEN}", MANIFOLD_API_TOKEN="bench")
        self.process = subprocess.Popen(
            [f"{BIN}/manifold-scheduler", "--listen", LISTEN, "--state-dir", self.state,
             "--api-token", "bench", *scheduler_args, "--with-agent",
             f"--agent-arg=--buildpacks-dir={ROOT}/buildpacks",
             "--agent-arg=--ports=38000-38099",
             *(f"--agent-arg={a}" for a in agent_args)],
            env=self.env, stderr=subprocess.DEVNULL, start_new_session=True)

    def __enter__(self):
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{LISTEN}/health", timeout=1)
                if "ready" in self.manifold("hosts"):
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        sys.exit("the node did not start")

    def __exit__(self, *_):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()
        shutil.rmtree(self.state, ignore_errors=True)

    def manifold(self, *args):
        """Runs the CLI; its stdout."""
        return subprocess.run([f"{BIN}/manifold", *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def ps(self, app):
        return json.loads(self.manifold("ps", "-a", app, "--json"))

    def wait(self, app, done, poll=0.02, timeout=120):
        """Waits until `done(dynos)`; with `done` None, until no dyno runs on this host."""
        end = time.monotonic() + timeout
        dynos = None
        while time.monotonic() < end:
            if done is None:
                if not os.listdir("/var/lib/manifold/dynos"):
                    return
            else:
                dynos = self.ps(app)
                if done(dynos):
                    return
            time.sleep(poll)
        if done is None:
            sys.exit(f"timed out; dynos left: {len(os.listdir('/var/lib/manifold/dynos'))}")
        states = {}
        for d in dynos or []:
            states[d["state"]] = states.get(d["state"], 0) + 1
        sys.exit(f"timed out; last: {len(dynos or [])} dynos by state {states}")

    def destroy(self, app):
        """Destroys the app and waits until its dynos are gone."""
        self.manifold("apps:destroy", app, "--confirm", app)
        self.wait(app, None)
