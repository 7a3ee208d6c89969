"""How token requests reach the token endpoint: the network settings of the sessions
they serve (``verify``, ``proxies``, ``cert``, ``trust_env``) and nothing else of theirs.

The rule, for sessions that share one set of tokens (and so one token endpoint) in a
process: their network settings are read at every attempt, so a value given before
the first refresh, or assigned at any time later, counts from the next attempt on.
When every open session agrees, their settings are used. When they disagree, the
refresh is refused before anything is sent (:class:`~pleo_auth.ConfigurationError`):
the refresh token belongs to all of them, and sending it through one session's
proxy, or with one session's ``verify=False``, would weaken the others. Sessions that
truly need different network paths need different grants, and so different stores.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import attrs
import requests

from .errors import ConfigurationError

__all__ = ["NETWORK_SETTINGS", "NetworkSettings", "SharedNetwork"]

#: The ``requests.Session`` attributes a token request takes from the sessions it
#: serves. Never their adapters, hooks, auth, headers, cookies or params.
NETWORK_SETTINGS = ("verify", "proxies", "cert", "trust_env")


def _proxies(value: object) -> tuple[tuple[str, Any], ...]:
    if not value:
        return ()
    if not isinstance(value, dict):
        raise ConfigurationError(f"proxies must be a dict, not {type(value).__name__}")
    return tuple(sorted(value.items(), key=lambda item: str(item[0])))


def _cert(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class NetworkSettings:
    """One session's network settings, as a value to compare and to send with.

    Its repr leaves out the proxies: a proxy URL may carry a password.
    """

    verify: Any = True
    proxies: tuple[tuple[str, Any], ...] = attrs.field(default=(), repr=False)
    cert: Any = None
    trust_env: bool = True

    @classmethod
    def of(cls, session: requests.Session) -> NetworkSettings:
        """What ``session`` holds now (its attributes, which a user may reassign)."""
        verify = session.verify
        return cls(
            verify=True if verify is None else verify,
            proxies=_proxies(session.proxies),
            cert=_cert(session.cert),
            trust_env=bool(session.trust_env),
        )

    def differences(self, other: NetworkSettings) -> list[str]:
        """The names of the settings in which ``other`` differs; never their values."""
        return [name for name in NETWORK_SETTINGS if getattr(self, name) != getattr(other, name)]

    def request_arguments(self) -> dict[str, Any]:
        """``verify``, ``proxies`` and ``cert`` as arguments of one request.

        Per request, not on the session: an explicit ``verify`` (a CA bundle, or
        False) then wins over ``REQUESTS_CA_BUNDLE``, which requests would otherwise
        let win over a session's own ``verify`` (psf/requests#3829). ``True`` still
        lets the environment's bundle apply, as requests does.
        """
        return {"verify": self.verify, "proxies": dict(self.proxies), "cert": self.cert}


def _private_session(trust_env: bool) -> requests.Session:
    session = requests.Session()
    session.trust_env = trust_env
    session.headers["Accept"] = "application/json"
    return session


class SharedNetwork:
    """The private ``requests.Session`` of one token endpoint, and the sessions it serves.

    The private session has requests' own adapters and no hooks, whatever the
    served sessions mount: the token request carries the client secret and the
    refresh token, and must not meet a user's adapter, hook or auth.

    Thread safety:
        Every method may be called from any thread. Sessions are held weakly: one
        collected without ``close()`` stops counting.
    """

    def __init__(self, token_url: str) -> None:
        self._token_url = token_url
        self._lock = threading.Lock()
        self._served: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._http = _private_session(trust_env=True)
        _LIVE.add(self)

    def serve(self, session: requests.Session) -> None:
        """Take network settings from ``session`` (for as long as it is open)."""
        with self._lock:
            self._served.add(session)

    def forget(self, session: requests.Session) -> None:
        with self._lock:
            self._served.discard(session)

    def settings(self) -> NetworkSettings:
        """The settings the open sessions agree on; requests' defaults when none is open.

        Raises:
            ConfigurationError: The open sessions disagree; it names the settings.
        """
        agreed: NetworkSettings | None = None
        differing: set[str] = set()
        for mine in self._served_settings():
            if agreed is None:
                agreed = mine
            else:
                differing.update(agreed.differences(mine))
        if differing:
            names = ", ".join(name for name in NETWORK_SETTINGS if name in differing)
            raise ConfigurationError(
                f"the open sessions sharing one set of tokens for {self._token_url} disagree "
                f"on {names}, so no refresh was sent: give them the same {names}, close the "
                "ones no longer in use, or give them separate stores"
            )
        return agreed or NetworkSettings()

    def _served_settings(self) -> list[NetworkSettings]:
        # Sessions stay in this frame only: a ConfigurationError raised in the caller
        # is kept as the coordinator's last failure, and its traceback's frames must
        # not hold the sessions alive.
        with self._lock:
            served = list(self._served)
        return [NetworkSettings.of(session) for session in served]

    def session(self, settings: NetworkSettings) -> requests.Session:
        """The private session to send with, built afresh when ``trust_env`` changes."""
        with self._lock:
            if self._http.trust_env != settings.trust_env:
                self._http.close()
                self._http = _private_session(settings.trust_env)
            return self._http

    def reset_connections(self) -> None:
        """In a forked child: new pools, and a new lock (a parent thread may have held it)."""
        self._lock = threading.Lock()
        self._http = _private_session(self._http.trust_env)

    def close(self) -> None:
        with self._lock:
            self._http.close()


_LIVE: weakref.WeakSet[SharedNetwork] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # Every private session, whoever built it: a session, an Integration, or one
    # whose builder is gone while coordinators still use it. A child must not share
    # its parent's sockets, nor a pool lock a parent thread held at the fork.
    for network in list(_LIVE):
        network.reset_connections()


os.register_at_fork(after_in_child=_reset_after_fork)
