"""A private desktop Secret Service for tests: D-Bus session bus plus gnome-keyring.

Linux desktop users keep KeyringStore's tokens in gnome-keyring over D-Bus. The
tests run that same stack, unlocked, on a private bus in a scratch HOME, so they
touch nobody's real keyring and need no desktop session.

As on a desktop, the bus starts gnome-keyring on demand (D-Bus activation), and
starts it again if it dies. gnome-keyring 42 to 50 aborts now and then when a
client disconnects while the daemon still handles its request (upstream
gnome-keyring issues 190, 196 and 199: "gkd_secret_service_get_pkcs11_session:
assertion 'client' failed"); the crash tests SIGKILL clients mid-call by the
hundred and trip it. The restarted daemon unlocks the same login keyring from
disk, so a crash costs at most the call in flight. :func:`daemon_starts` counts
the starts, and :func:`stop_restarting` turns the restart off for the tests of a
dead daemon.

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

_SECRETS_NAME = "org.freedesktop.secrets"
_PASSWORD = "test-keyring-password"

# A session bus whose only service directory is ours: the system's would start
# a stock gnome-keyring, whose login keyring stays locked.
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{servicedir}</servicedir>
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

# What D-Bus runs to start the keyring: it notes its pid (for daemon_starts and
# the teardown), then becomes gnome-keyring, unlocking the login keyring with
# the password on its stdin. The first start creates that keyring.
_START_SCRIPT = """#!/bin/sh
echo $$ >> "{pids}"
export DBUS_SESSION_BUS_ADDRESS="$DBUS_STARTER_ADDRESS"
exec gnome-keyring-daemon --foreground --unlock --components=secrets \\
    2>> "{log}" <<EOF
{password}
EOF
"""

_SERVICE_FILE = """[D-BUS Service]
Name={name}
Exec={script}
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


def _paths(workdir: Path) -> tuple[Path, Path, Path]:
    """The service directory, the pid list and the daemon's log under ``workdir``."""
    return (
        workdir / "dbus-services",
        workdir / "keyring-daemon.pids",
        workdir / "keyring-daemon.log",
    )


def daemon_pids(workdir: Path) -> list[int]:
    """Every gnome-keyring D-Bus started for the service in ``workdir``, oldest first."""
    _, pids, _ = _paths(workdir)
    try:
        return [int(line) for line in pids.read_text().split()]
    except FileNotFoundError:
        return []


def daemon_starts(workdir: Path) -> int:
    """How many times D-Bus started gnome-keyring: 1, plus one per crash or kill."""
    return len(daemon_pids(workdir))


def stop_restarting(workdir: Path) -> None:
    """From now on D-Bus starts no keyring daemon: a dead one stays dead."""
    servicedir, _, _ = _paths(workdir)
    for entry in servicedir.iterdir():
        entry.unlink()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live gnome-keyring (not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return comm == "gnome-keyring-d" and state != "Z"


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
    servicedir, pids, log = _paths(workdir)
    servicedir.mkdir(exist_ok=True)
    script = workdir / "start-keyring-daemon"
    script.write_text(_START_SCRIPT.format(pids=pids, log=log, password=_PASSWORD))
    script.chmod(0o755)
    (servicedir / f"{_SECRETS_NAME}.service").write_text(
        _SERVICE_FILE.format(name=_SECRETS_NAME, script=script)
    )
    config = workdir / "session-bus.conf"
    config.write_text(_BUS_CONFIG.format(servicedir=servicedir))
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        _wait_until_serving(address)
        yield {"DBUS_SESSION_BUS_ADDRESS": address}
    finally:
        # D-Bus does not stop what it started, and a daemon may outlive its bus.
        # It goes first, while the bus is there to reap it: an orphan would be
        # left to this machine's init, which in a container may never reap it.
        _kill_daemons(workdir)
        _stop(bus)


def _kill_daemons(workdir: Path) -> None:
    """SIGKILL the live keyring daemons of ``workdir`` and wait until they are reaped."""
    killed = [pid for pid in daemon_pids(workdir) if _alive(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while any(Path(f"/proc/{pid}").exists() for pid in killed):
        if time.monotonic() > deadline:
            return  # not reaped: a zombie costs a pid entry, not a test
        time.sleep(0.01)


def _wait_until_serving(address: str) -> None:
    """Block until the keyring answers on the bus; the timeout only bounds a failure.

    The first call makes D-Bus start the daemon, and waits for it.
    """
    from keyring.backends import SecretService

    saved = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while True:
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
