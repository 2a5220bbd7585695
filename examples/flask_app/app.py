"""A Flask app whose view enqueues a job, and whose worker runs it.

From this directory, with a Redis at ``$FLOWD_REDIS_URL`` (default
``redis://localhost:6379/0``)::

    flask --app app run                                   # the web app
    curl -X POST -d email=a@example.com localhost:5000/signup
    flask --app app flowd worker                          # the worker (Ctrl-C stops it)
    flask --app app flowd worker --burst                  # or: process the backlog, exit

The flowd dashboard is at http://localhost:5000/flowd/ (read-only unless
``FLOWD_DASHBOARD_AUTH=user:password`` is set: this example has no login).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, jsonify, request

import flowd
from flowd.contrib.flask import Flowd
from flowd.dashboard import Dashboard
from flowd.dashboard.mount import mount_flask

flowd_ext = Flowd()


@dataclass
class WelcomeEmail(flowd.Job):
    to: str


def send_welcome(task: flowd.Task[WelcomeEmail]) -> None:
    # Jobs run inside an app context: current_app and app extensions work here.
    site = current_app.config["SITE_NAME"]
    print(f"welcome mail to {task.job.to} from {site} (message {task.id})", flush=True)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SITE_NAME="Example Site",
        FLOWD_URL=os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"),
        FLOWD_QUEUES={
            "welcome": {
                "STREAM": "welcome-emails",
                "GROUP": "mailers",
                "JOB": WelcomeEmail,
                "WORKER": send_welcome,
                "CONCURRENCY": 8,
                "CLAIMER": {"MIN_IDLE_TIME": 60, "MAX_RETRIES": 5},
            }
        },
    )
    flowd_ext.init_app(app)

    # The dashboard under /flowd; its buttons only behind a password.
    auth = os.environ.get("FLOWD_DASHBOARD_AUTH") or None
    client = flowd_ext.registry(app).client
    mount_flask(app, Dashboard(client, ["welcome-emails"], auth=auth, read_only=not auth), "/flowd")

    @app.post("/signup")
    def signup() -> Any:
        email = request.form["email"]
        message_id = flowd_ext.enqueue(WelcomeEmail(to=email))
        return jsonify(queued=message_id), 202

    return app
