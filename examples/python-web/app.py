"""A small web app: answers on $PORT, as a Manifold web dyno must."""

import os
import socket

from bottle import Bottle, run

app = Bottle()


@app.route("/")
def index():
    greeting = os.environ.get("GREETING", "Hello")
    return f"{greeting} from {os.environ.get('DYNO', 'python-web')} on {socket.gethostname()}\n"


@app.route("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    # Bottle's default server is the standard library's wsgiref: no other dependency.
    run(app, host="0.0.0.0", port=int(os.environ["PORT"]), quiet=True)
