"""``pleo-auth demo``: log in to a local emulator, load it from many processes, report.

It uses only the public :mod:`pleo_auth.testing` API, as any user's load test could.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import requests

from ..flow import AuthorizationFlow
from ._loopback import VERDICT_TIMEOUT, CallbackServer, login_through
from ._output import error, say

if TYPE_CHECKING:
    from ..testing import WorkloadProgress, WorkloadReport

__all__ = ["demo", "headless_browser"]

EXIT_OK = 0
EXIT_DEMO_ERRORS = 1
EXIT_FAILURE = 3


def headless_browser(server: CallbackServer) -> Callable[[str], None]:
    """Plays the browser against an auto-approving authorize endpoint (the emulator):
    follows the authorize URL and delivers its redirect to the loopback callback."""

    def present(url: str) -> None:
        def run() -> None:
            try:
                with requests.Session() as http:
                    response = http.get(url, allow_redirects=False, timeout=10)
                    location = response.headers.get("Location")
                    if response.status_code not in (301, 302, 303, 307, 308) or not location:
                        server.fail(f"/oauth/authorize answered HTTP {response.status_code}")
                        return
                    http.get(location, timeout=VERDICT_TIMEOUT + 10).close()
            except requests.RequestException as exc:
                server.fail(f"the headless browser failed: {type(exc).__name__}")

        threading.Thread(target=run, name="pleo-auth-headless-browser", daemon=True).start()

    return present


class _ProgressLine:
    """Prints the demo's progress: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO):
        self._out = out
        self._tty = out.isatty()
        self._last_plain = float("-inf")
        self._shown = False

    def __call__(self, progress: WorkloadProgress) -> None:
        text = (
            f"  {progress.elapsed:5.1f}/{progress.duration:g} s  "
            f"requests {progress.requests:>7}  errors {progress.errors}  "
            f"refreshes {progress.refresh_grants}"
        )
        if self._tty:
            self._out.write("\r" + text)
            self._out.flush()
            self._shown = True
        elif progress.elapsed - self._last_plain >= 2.0:
            self._last_plain = progress.elapsed
            say(self._out, text)

    def done(self) -> None:
        if self._shown:
            self._out.write("\n")
            self._out.flush()


def demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the demo; 0 when every call succeeded and no refresh token was spent twice."""
    from ..stores.file import FileStore
    from ..testing import Emulator, WorkloadError, run_workload

    with (
        tempfile.TemporaryDirectory(prefix="pleo-auth-demo-") as workdir,
        Emulator(access_token_lifetime=args.token_lifetime) as emulator,
    ):
        path = os.path.join(workdir, "tokens.json")
        store = FileStore(path)
        say(out, f"Started the Pleo emulator at {emulator.url}.")
        say(out, "Logging in: /oauth/authorize, the loopback callback, the code exchange ...")
        with CallbackServer() as server:
            flow = AuthorizationFlow(
                emulator.client_id,
                emulator.client_secret,
                redirect_uri=server.redirect_uri,
                scopes="users:read",
                store=store,
                authorize_url=emulator.authorize_url,
                token_url=emulator.token_url,
            )
            tokens = login_through(flow, server, headless_browser(server), timeout=30.0).tokens
        say(out, f"Logged in. Stored the tokens in {store.describe()} (scope {tokens.scope}).")
        say(
            out,
            f"Now {args.processes} processes x {args.threads} threads call GET /v2/employees "
            f"for {args.duration:g} s; access tokens live {args.token_lifetime:g} s, so they "
            "rotate under the load ...",
        )
        progress = _ProgressLine(out)
        try:
            report = run_workload(
                emulator,
                f"file:{path}",
                processes=args.processes,
                threads=args.threads,
                duration=args.duration,
                refresh_margin=args.refresh_margin,
                on_progress=progress,
                seed=False,  # the workers use the tokens of the login above
            )
        except WorkloadError as exc:
            progress.done()
            error(f"demo failed: {exc}")
            return EXIT_FAILURE
        progress.done()
    return _print_report(report, out)


def _print_report(report: WorkloadReport, out: TextIO) -> int:
    replayed = " (requests racing a rotation; replayed with the new tokens)"
    replayed = replayed if report.unauthorized else ""
    rows = [
        ("requests made", f"{report.requests} ({report.rps:.0f}/s)"),
        (
            "latency p50 / p99",
            f"{report.latency_p50 * 1000:.1f} / {report.latency_p99 * 1000:.1f} ms",
        ),
        (
            "refreshes at the server",
            f"{report.refresh_grants} (the schedule calls for {report.rotations_expected}, "
            "give or take one)",
        ),
        ("rejected refreshes", str(report.rejected_refreshes)),
        ("reuse detections", str(report.reuse_detections)),
        ("401s at the server", f"{report.unauthorized}" + replayed),
        ("401s seen by callers", str(report.caller_401s)),
        ("errors seen by callers", str(report.caller_errors)),
    ]
    say(out, "Report:")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        say(out, f"  {label:<{width}}  {value}")
    for kind, count in sorted(report.errors_by_kind.items()):
        sample = report.error_samples.get(kind, "")
        say(out, f"    {count} x {kind}: {sample}")
    if (
        report.caller_errors == 0
        and report.rejected_refreshes == 0
        and report.reuse_detections == 0
    ):
        say(out, "OK: every call succeeded, and no refresh token was ever spent twice.")
        return EXIT_OK
    say(out, "FAILED: see the counts above.")
    return EXIT_DEMO_ERRORS
