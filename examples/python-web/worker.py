"""A background worker: logs a line every few seconds until told to stop."""

import os
import signal
import sys
import time

interval = float(os.environ.get("WORKER_INTERVAL", "5"))
running = True


def stop(signum, _frame):
    global running
    running = False
    print(f"worker: got signal {signum}, stopping", flush=True)


signal.signal(signal.SIGTERM, stop)

tick = 0
while running:
    tick += 1
    print(f"worker: tick {tick}", flush=True)
    time.sleep(interval)
sys.exit(0)
