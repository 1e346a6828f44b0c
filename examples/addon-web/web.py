"""A Heroku-style app backed by a database add-on: lists the notes in DATABASE_URL.

GET / answers with the app's greeting and every note, one per line (the release phase and
postdeploy write them); POST /notes?body=TEXT adds one. It talks to PostgreSQL with `psql`,
which the stack has (as Heroku's stacks do), so the app needs no driver to install.
"""

import os
import subprocess
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def psql(script, **variables):
    args = ["psql", os.environ["DATABASE_URL"], "-v", "ON_ERROR_STOP=1", "-q", "-At"]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    done = subprocess.run(args, input=script, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return done.stdout


class Notes(BaseHTTPRequestHandler):
    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        lines = [f"{os.environ.get('GREETING', 'Hello')} from {os.environ.get('DYNO', '?')}"]
        if "DATABASE_URL" not in os.environ:
            lines.append("no database attached")
        else:
            try:
                lines += psql("SELECT id || ' ' || body FROM notes ORDER BY id;").splitlines()
            except RuntimeError as err:
                return self.answer(500, f"database error: {err}\n")
        self.answer(200, "\n".join(lines) + "\n")

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        body = urllib.parse.parse_qs(url.query).get("body", [""])[0]
        if url.path != "/notes" or not body or "DATABASE_URL" not in os.environ:
            return self.answer(400, "POST /notes?body=TEXT, with a database attached\n")
        try:
            psql("INSERT INTO notes (body) VALUES (:'body');", body=body)
        except RuntimeError as err:
            return self.answer(500, f"database error: {err}\n")
        self.answer(201, "noted\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "5000"))), Notes).serve_forever()
