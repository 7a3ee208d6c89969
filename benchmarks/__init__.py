"""Benchmarks of pleo_auth beside requests-oauthlib and Authlib (GitHub issue 5).

Run everything with ``python -m benchmarks`` (``--quick`` for the smoke version,
``--out DIR`` for where the raw results go). Each part is its own module:

* :mod:`benchmarks.hot_path`: per-request cost of the auth layer, stub transport.
* :mod:`benchmarks.scaling`: that cost at 1 to 64 threads, and with 100 sessions.
* :mod:`benchmarks.cold_start`: import time and time to a first request, whole processes.
* :mod:`benchmarks.contention`: threads x processes through the emulator, over rotations.
* :mod:`benchmarks.plot`: request latency over time around rotations, one line per library.

The anchor libraries (requests-oauthlib, Authlib) and matplotlib are the ``bench``
extra; they are imported here only, never by pleo_auth.
"""
