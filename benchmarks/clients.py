"""How each library's session is built, the same way in every benchmark.

Each anchor gets the fairest settings it offers: Authlib its ``leeway`` and an
``update_token`` callback; requests-oauthlib ``auto_refresh_url`` with a
``token_updater``. Where several processes share one grant, both persist every
rotation to a shared token file and reload it when another process has
rewritten it (a ``stat`` per request, the same staleness check a pleo_auth
``FileStore`` makes), which is the most either library's documentation suggests.
Neither library offers a lock around its refresh, so none is added: that is the
difference being measured.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
import requests.auth

from pleo_auth.tokens import TokenSet

from ._common import CLIENT_ID, CLIENT_SECRET

if TYPE_CHECKING:
    from pleo_auth.testing import ClientSpec

#: The libraries, in the order the reports list them.
LIBRARIES = ("static", "pleo_auth", "requests-oauthlib", "authlib")


def token_dict(tokens: TokenSet) -> dict[str, Any]:
    """The token as both anchors take it: a dict with an integral ``expires_at``."""
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": "Bearer",
        # Authlib only honours an int; truncating errs on the early side.
        "expires_at": int(tokens.expires_at),
    }


def plain_session(access_token: str) -> requests.Session:
    """A plain ``requests.Session`` carrying a static Bearer header: the baseline."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {access_token}"
    return session


class StaticBearer(requests.auth.AuthBase):
    """A fixed Bearer token as a requests auth object. Its repr hides the token.

    Thread safety:
        Immutable; share it freely.
    """

    def __init__(self, access_token: str):
        self._header = f"Bearer {access_token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<StaticBearer>"


def plain_auth_session(access_token: str) -> requests.Session:
    """A plain ``requests.Session`` whose ``auth`` is a static Bearer token.

    Stricter than :func:`plain_session`: with an auth object set, requests skips
    its per-request ``~/.netrc`` lookup, as PleoSession (which always passes one) does.
    """
    session = requests.Session()
    session.auth = StaticBearer(access_token)
    return session


class SharedTokenFile:
    """A token file shared by processes: written atomically on every rotation,
    and re-read by a session when its ``stat`` changes.

    Thread safety:
        ``save`` and ``load_if_changed`` may be called from any thread and process.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._seen: Hashable = None
        self._guard = threading.Lock()

    def save(self, token: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".bench-token.")
        with os.fdopen(fd, "w") as handle:
            json.dump({key: token[key] for key in _FIELDS if key in token}, handle)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any]:
        with open(self.path) as handle:
            loaded: dict[str, Any] = json.load(handle)
        token = {key: loaded[key] for key in _FIELDS if loaded.get(key) is not None}
        if "expires_at" in token:
            token["expires_at"] = int(token["expires_at"])  # Authlib only honours an int
        return token

    def load_if_changed(self) -> dict[str, Any] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._guard:
            if version == self._seen:
                return None
            self._seen = version
        try:
            return self.load()
        except (OSError, ValueError):
            return None


_FIELDS = ("access_token", "refresh_token", "token_type", "expires_at", "expires_in")


def oauthlib_session(
    token: dict[str, Any], token_url: str, shared: SharedTokenFile | None = None
) -> requests.Session:
    """requests-oauthlib's ``OAuth2Session`` with automatic refresh.

    requests-oauthlib refreshes when oauthlib finds the token expired (it has no
    leeway) and hands the new token to ``token_updater``.
    """
    os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator is plain HTTP
    from requests_oauthlib import OAuth2Session

    updater: Callable[[dict[str, Any]], None] = shared.save if shared else _ignore
    session: requests.Session = OAuth2Session(
        CLIENT_ID,
        token=dict(token),
        auto_refresh_url=token_url,
        auto_refresh_kwargs={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        token_updater=updater,
    )
    if shared is None:
        return session
    return _Reloading(session, shared, lambda fresh: setattr(session, "token", fresh))


def authlib_session(
    token: dict[str, Any],
    token_url: str,
    shared: SharedTokenFile | None = None,
    leeway: float = 60.0,
) -> requests.Session:
    """Authlib's ``OAuth2Session``, refreshing ``leeway`` seconds before expiry."""
    from authlib.integrations.requests_client import OAuth2Session

    def update_token(new: dict[str, Any], **_: Any) -> None:
        if shared is not None:
            shared.save(new)

    session: requests.Session = OAuth2Session(
        CLIENT_ID,
        CLIENT_SECRET,
        token=dict(token),
        token_endpoint=token_url,
        update_token=update_token,
        leeway=leeway,
    )
    if shared is None:
        return session
    return _Reloading(session, shared, lambda fresh: setattr(session, "token", fresh))


def _ignore(_token: dict[str, Any]) -> None:
    pass


class _Reloading(requests.Session):
    """Wraps an anchor session: before each request, adopt the shared file's token
    if another process rewrote it. Everything else is the anchor's own behaviour.

    The first request of any thread waits until the file's token is adopted: the
    runner seeds the file only after the sessions are built.
    """

    def __init__(
        self,
        inner: requests.Session,
        shared: SharedTokenFile,
        adopt: Callable[[dict[str, Any]], None],
        *,
        once: bool = False,
    ):
        super().__init__()
        self.inner = inner
        self._shared = shared
        self._adopt = adopt
        self._once = once
        self._adopted = False
        self._first = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if not self._adopted:
            with self._first:
                if not self._adopted:
                    self._adopt(self._shared.load_if_changed() or self._shared.load())
                    self._adopted = True
        elif not self._once:
            fresh = self._shared.load_if_changed()
            if fresh is not None:
                self._adopt(fresh)
        return self.inner.request(method, url, *args, **kwargs)

    def mount(self, prefix: str | bytes, adapter: Any) -> None:
        if hasattr(self, "inner"):
            self.inner.mount(prefix, adapter)
        super().mount(prefix, adapter)

    def close(self) -> None:
        self.inner.close()
        super().close()


# -- factories for the workload runner's worker processes ----------------------------
#
# ``run_workload(..., client_factory="benchmarks.clients:NAME")`` calls one of these
# in every worker process to build the session its threads share. The runner builds
# sessions before it seeds the store, so each session takes its first token from
# the store's file on its first request. The anchors then keep using that file as
# their shared ``token_updater`` file. Every client gets the same connection pool
# as PleoSession mounts (requests' default keeps 10 connections per host, and
# throws away the extra ones 16 threads open), so only the auth layer differs.

POOL_SIZE = 64  # as pleo_auth.session._POOL_SIZE


def _pooled(session: requests.Session) -> requests.Session:
    for prefix in ("https://", "http://"):
        session.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE))
    return session


_PLACEHOLDER = {
    "access_token": "not-loaded-yet",
    "refresh_token": "not-loaded-yet",
    "token_type": "Bearer",
    "expires_at": 2**31 - 1,
}


def _shared_file(spec: ClientSpec) -> SharedTokenFile:
    kind, _, path = spec.store_spec.partition(":")
    if kind != "file" or not path:
        raise ValueError("the benchmark clients share a file: use a file:PATH store spec")
    return SharedTokenFile(path)


def static_worker(spec: ClientSpec) -> requests.Session:
    """A plain Session with the seeded access token as a fixed Bearer token; never
    refreshes. The strict baseline: the token is ``session.auth``, so requests also
    skips its per-request netrc lookup, as it does for PleoSession."""
    inner = _pooled(plain_auth_session("not-loaded-yet"))

    def adopt(token: dict[str, Any]) -> None:
        inner.auth = StaticBearer(token["access_token"])

    return _Reloading(inner, _shared_file(spec), adopt, once=True)


def oauthlib_worker(spec: ClientSpec) -> requests.Session:
    """requests-oauthlib, auto-refreshing, with a shared token_updater file."""
    return _pooled(oauthlib_session(_PLACEHOLDER, spec.token_url, _shared_file(spec)))


def authlib_worker(spec: ClientSpec) -> requests.Session:
    """Authlib with ``leeway`` equal to PleoSession's ``refresh_margin``, and a
    shared token file written by ``update_token``."""
    return _pooled(
        authlib_session(_PLACEHOLDER, spec.token_url, _shared_file(spec), spec.refresh_margin)
    )


#: The ``client_factory`` of each library; None runs the runner's own PleoSession.
FACTORIES: dict[str, str | None] = {
    "static": "benchmarks.clients:static_worker",
    "pleo_auth": None,
    "requests-oauthlib": "benchmarks.clients:oauthlib_worker",
    "authlib": "benchmarks.clients:authlib_worker",
}
