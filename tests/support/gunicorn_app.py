"""The Flask example with its shared session built at import, for tests/hunt/test_gunicorn.py.

``examples/flask_app.py`` builds its :class:`~pleo_auth.PleoSession` on the first
request, so under ``gunicorn --preload`` every worker would build its own after
the fork, and the fork could never land in the middle of a session's start-up.
Apps that users run build theirs at import (a module-level session), and under
``--preload`` that happens in gunicorn's master, whose proactive timer is warming
up when the workers are forked. This module serves that case: it imports the
example unchanged and builds its shared session before gunicorn forks.

Run as ``gunicorn --pythonpath examples,tests support.gunicorn_app:app`` with the
example's ``PLEO_*`` settings in the environment. pleo_auth's log records go to
stderr with the process id (token fingerprints only, never a token), and so do
the stacks of every thread when ``GUNICORN_APP_STACKS_SIGNAL`` (a signal number)
arrives.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys

from flask_app import app  # examples/flask_app.py

from pleo_auth.contrib.flask import get_session

_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(
    logging.Formatter(
        "%(asctime)s pleo_auth pid=%(process)d %(threadName)s %(levelname)s %(message)s"
    )
)
_logger = logging.getLogger("pleo_auth")
_logger.addHandler(_handler)
_logger.setLevel(logging.INFO)

# The test sends this signal to every process when a client saw an error: each one
# writes the stacks of all its threads to stderr (signal dispositions survive fork).
if os.environ.get("GUNICORN_APP_STACKS_SIGNAL"):
    faulthandler.register(int(os.environ["GUNICORN_APP_STACKS_SIGNAL"]), all_threads=True)

with app.app_context():
    get_session()  # the module-level session: built here, in gunicorn's master

__all__ = ["app"]
