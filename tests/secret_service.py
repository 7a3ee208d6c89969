"""A private desktop Secret Service for tests: D-Bus session bus plus gnome-keyring.

Linux desktop users keep KeyringStore's tokens in gnome-keyring over D-Bus. The
tests run that same stack, unlocked, on a private bus in a scratch HOME, so they
touch nobody's real keyring and need no desktop session.

Where ``dbus-daemon`` or ``gnome-keyring-daemon`` is missing, tests that need them
are skipped; with ``PLEO_AUTH_REQUIRE_SECRET_SERVICE=1`` (set by ``.ci/run``), or
``CI`` set, they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Set by .ci/run: a missing Secret Service is then a failure, not a skip.
REQUIRE_ENV = "PLEO_AUTH_REQUIRE_SECRET_SERVICE"

# A session bus that never starts services on demand: otherwise a probe sent before
# our gnome-keyring claims its name makes D-Bus start a second, locked one, which
# wins the name and outlives the bus.
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <!-- The limits of Debian's session.conf. dbus-daemon's built-in defaults are
       for a system bus: 512 match rules and 128 pending replies per connection.
       keyring opens a connection per call, gnome-keyring adds a match rule for
       each, and past the limit the daemon drops off the bus mid-test. -->
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_incoming_unix_fds">250000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_outgoing_unix_fds">250000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="service_start_timeout">120000</limit>
  <limit name="auth_timeout">240000</limit>
  <limit name="pending_fd_timeout">150000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_pending_service_starts">10000</limit>
  <limit name="max_names_per_connection">50000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
</busconfig>
"""

_BINARIES = ("dbus-daemon", "gnome-keyring-daemon")
_STARTUP_TIMEOUT = 20.0


def require_binaries() -> None:
    """Skip the test when the stack is missing, or fail when CI requires it."""
    missing = [binary for binary in _BINARIES if shutil.which(binary) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (Debian packages dbus, gnome-keyring)"
    if os.environ.get(REQUIRE_ENV) or os.environ.get("CI"):
        pytest.fail(f"{message}; {REQUIRE_ENV} or CI is set, so this must not be skipped")
    pytest.skip(message)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_secret_service(workdir: Path) -> Iterator[dict[str, str]]:
    """Start a session bus and an unlocked gnome-keyring on it, for this block only.

    Yields:
        The environment variables a process needs to reach the keyring
        (``DBUS_SESSION_BUS_ADDRESS``); the caller sets them, for itself with
        ``monkeypatch.setenv`` or for a child process in its ``env``.
    """
    require_binaries()
    home = workdir / "secret-service-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_RUNTIME_DIR": "",
    }
    config = workdir / "session-bus.conf"
    config.write_text(_BUS_CONFIG)
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    keyring_daemon: subprocess.Popen[bytes] | None = None
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring_daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert keyring_daemon.stdin is not None
        keyring_daemon.stdin.write(b"test-keyring-password")
        keyring_daemon.stdin.close()
        _wait_until_serving(address, keyring_daemon)
        yield {"DBUS_SESSION_BUS_ADDRESS": address}
    finally:
        if keyring_daemon is not None:
            _stop(keyring_daemon)
        _stop(bus)


def _wait_until_serving(address: str, daemon: subprocess.Popen[bytes]) -> None:
    """Block until the keyring answers on the bus; the timeout only bounds a failure."""
    from keyring.backends import SecretService

    saved = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"gnome-keyring-daemon exited with {daemon.returncode}")
            try:
                SecretService.Keyring().get_password("pleo-auth-probe", "probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        if saved is None:
            del os.environ["DBUS_SESSION_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = saved
