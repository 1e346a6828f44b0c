"""A Flask app served by gunicorn, which binds to $PORT by itself, as on Heroku."""

import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return f"Hello from {os.environ.get('DYNO', 'flask-web')} (Flask)\n"
