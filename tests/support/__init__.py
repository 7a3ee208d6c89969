"""Helpers for the tests, imported as ``support.<module>``: fixtures and doubles
(the leak guard, the web contract, local servers, a private Secret Service), and
the programs the tests run in fresh interpreters by path (``coordinator_workers.py``,
``fork_warmup_child.py``, ``model_worker.py``, ``gunicorn_app.py``).

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so ``support`` is a
top-level package there; a program run by path puts ``tests/`` first itself when it
needs a sibling.
"""
