"""Refreshes take the session's network settings: verify, proxies, cert and trust_env.

Against real parts on loopback: the emulator behind a TLS forwarder whose
certificate a private CA (made with the ``openssl`` command) signed, and a
forwarding proxy that counts what it carries. The rule for sessions that share
tokens but disagree is in ``pleo_auth._network``.
"""

from __future__ import annotations

import gc
import os
import shutil
import types
import urllib.parse
from collections.abc import Iterator
from typing import Any

import backoff._sync
import certifi
import pytest
import requests
import requests.adapters
from support.network_support import CountingProxy, PrivateCA, TlsForwarder, make_private_ca
from support.session_helpers import MakeSession

from pleo_auth import ConfigurationError, MemoryStore, PleoSession, RefreshError, TokenSet
from pleo_auth.testing import Emulator

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed; .ci/run should have installed it")
        pytest.skip("openssl is not installed")
    return make_private_ca(tmp_path_factory.mktemp("private-ca"))


def _port(emulator: Emulator) -> int:
    port = urllib.parse.urlsplit(emulator.url).port
    assert port is not None
    return port


@pytest.fixture
def tls(emulator: Emulator, private_ca: PrivateCA) -> Iterator[TlsForwarder]:
    with TlsForwarder(_port(emulator), private_ca) as forwarder:
        yield forwarder


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the refresh's backoff waits instead of sleeping them."""
    recorded: list[float] = []
    monkeypatch.setattr(backoff._sync, "time", types.SimpleNamespace(sleep=recorded.append))
    return recorded


@pytest.fixture
def proxy() -> Iterator[CountingProxy]:
    with CountingProxy() as counting:
        yield counting


def seeded(emulator: Emulator) -> TokenSet:
    return TokenSet.from_response(emulator.issue_tokens())


def over_tls(
    make_session: MakeSession, emulator: Emulator, tls: TlsForwarder, **kwargs: Any
) -> PleoSession:
    kwargs.setdefault("tokens", seeded(emulator))
    kwargs.setdefault("max_refresh_attempts", 1)
    return make_session(emulator, token_url=tls.url + "/oauth/token", **kwargs)


# -- verify and cert: a private CA -----------------------------------------------------


def test_refresh_trusts_a_private_ca_assigned_to_session_verify_after_construction(
    make_session: MakeSession, emulator: Emulator, tls: TlsForwarder, private_ca: PrivateCA
) -> None:
    session = over_tls(make_session, emulator, tls)
    session.verify = str(private_ca.ca)
    session.refresh()
    assert emulator.counters.refresh_grants == 1
    assert tls.handshakes == 1


def test_an_untrusted_token_endpoint_fails_the_refresh_saying_nothing_was_sent(
    make_session: MakeSession, emulator: Emulator, tls: TlsForwarder, sleeps: list[float]
) -> None:
    seed = seeded(emulator)
    session = over_tls(make_session, emulator, tls, tokens=seed, max_refresh_attempts=2)
    with pytest.raises(RefreshError, match="TLS certificate is not trusted") as caught:
        session.refresh()
    assert "nothing was sent" in str(caught.value)
    assert "set verify on the session" in str(caught.value)
    assert "unanswered" not in str(caught.value)  # no reply was lost: nothing is spent
    tls.close()  # waits for its handlers, which may count a refusal after our error
    assert (tls.refused, tls.handshakes) == (2, 0)
    assert emulator.counters.token_requests == 0
    assert emulator.is_current(seed.access_token, seed.refresh_token)


def test_a_refresh_begun_before_verify_was_assigned_succeeds_on_its_next_attempt(
    make_session: MakeSession,
    emulator: Emulator,
    tls: TlsForwarder,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The timer may start a refresh between PleoSession(...) and the line that sets
    # verify; the user's assignment lands while that refresh waits to retry.
    session = over_tls(make_session, emulator, tls, max_refresh_attempts=2)

    def assign_during_backoff(seconds: float) -> None:
        session.verify = str(private_ca.ca)

    monkeypatch.setattr(backoff._sync, "time", types.SimpleNamespace(sleep=assign_during_backoff))
    session.refresh()
    assert emulator.counters.refresh_grants == 1
    tls.close()
    assert (tls.refused, tls.handshakes) == (1, 1)


def test_an_explicit_session_verify_wins_over_requests_ca_bundle(
    make_session: MakeSession,
    emulator: Emulator,
    tls: TlsForwarder,
    private_ca: PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests lets this variable win over a session's own verify (psf/requests#3829);
    # for the token endpoint, what the user set on the session wins.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    session = over_tls(make_session, emulator, tls)
    session.verify = str(private_ca.ca)
    session.refresh()
    assert emulator.counters.refresh_grants == 1


def test_refresh_presents_the_client_certificate_assigned_to_session_cert(
    make_session: MakeSession, emulator: Emulator, private_ca: PrivateCA
) -> None:
    with TlsForwarder(_port(emulator), private_ca, require_client_cert=True) as mutual:
        refused = over_tls(make_session, emulator, mutual)
        refused.verify = str(private_ca.ca)
        with pytest.raises(RefreshError):
            refused.refresh()
        assert emulator.counters.refresh_grants == 0
        refused.close()

        session = over_tls(make_session, emulator, mutual)
        session.verify = str(private_ca.ca)
        session.cert = (str(private_ca.client_cert), str(private_ca.client_key))
        session.refresh()
    assert emulator.counters.refresh_grants == 1


# -- proxies and trust_env: a real proxy -------------------------------------------------


def test_refresh_goes_through_the_sessions_https_proxy_as_one_connect_tunnel(
    make_session: MakeSession,
    emulator: Emulator,
    tls: TlsForwarder,
    private_ca: PrivateCA,
    proxy: CountingProxy,
) -> None:
    session = over_tls(make_session, emulator, tls)
    session.verify = str(private_ca.ca)
    session.proxies = {"https": proxy.url}
    session.refresh()
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{tls.port}")]
    assert emulator.counters.refresh_grants == 1


def test_refresh_goes_through_the_sessions_http_proxy_updated_in_place(
    make_session: MakeSession, emulator: Emulator, proxy: CountingProxy
) -> None:
    session = make_session(emulator, tokens=seeded(emulator))
    session.refresh()
    assert proxy.requests == []
    session.proxies["http"] = proxy.url  # the dict itself, changed after construction
    session.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]
    assert emulator.counters.refresh_grants == 2


def test_refresh_uses_the_environments_proxy_until_session_trust_env_is_false(
    make_session: MakeSession,
    emulator: Emulator,
    proxy: CountingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    session = make_session(emulator, tokens=seeded(emulator))
    session.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]
    session.trust_env = False
    session.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]  # the second went direct
    assert emulator.counters.refresh_grants == 2


class _CountingAdapter(requests.adapters.HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(str(request.url))
        return super().send(request, *args, **kwargs)


def test_refresh_never_runs_the_sessions_mounted_adapters_hooks_or_headers(
    make_session: MakeSession, emulator: Emulator, proxy: CountingProxy
) -> None:
    session = make_session(emulator, tokens=seeded(emulator))
    adapter = _CountingAdapter()
    session.mount("http://", adapter)
    hooked: list[str] = []
    session.hooks["response"].append(lambda response, **_: hooked.append(response.url))
    session.headers["X-Tenant"] = "acme"
    session.proxies = {"http": proxy.url}
    session.refresh()
    assert (adapter.sent, hooked) == ([], [])
    assert proxy.requests == [("POST", emulator.token_url)]  # its network settings did count
    session.get("/v2/employees").raise_for_status()
    assert adapter.sent == [emulator.api_url + "/v2/employees"]
    assert len(hooked) == 1


# -- sessions that share tokens ------------------------------------------------------------


def test_sessions_sharing_tokens_with_the_same_proxy_refresh_through_it(
    make_session: MakeSession, emulator: Emulator, proxy: CountingProxy
) -> None:
    store = MemoryStore()
    first = make_session(emulator, store, tokens=seeded(emulator))
    second = make_session(emulator, store)
    for session in (first, second):
        session.proxies = {"http": proxy.url}
    second.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]


def test_sessions_sharing_tokens_that_disagree_send_no_refresh_and_name_only_the_setting(
    make_session: MakeSession, emulator: Emulator, proxy: CountingProxy
) -> None:
    store = MemoryStore()
    seed = seeded(emulator)
    first = make_session(emulator, store, tokens=seed)
    second = make_session(emulator, store)
    with_password = proxy.url.replace("http://", "http://user:pr0xy-pa55word@")
    first.proxies = {"http": with_password}
    with pytest.raises(ConfigurationError, match="disagree on proxies, so no refresh was sent"):
        second.refresh()
    with pytest.raises(ConfigurationError) as caught:
        first.refresh()
    assert "pr0xy-pa55word" not in str(caught.value)
    assert emulator.counters.token_requests == 0
    assert emulator.is_current(seed.access_token, seed.refresh_token)

    second.close()  # a closed session no longer counts
    first.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]


def test_a_session_collected_without_close_no_longer_counts(
    make_session: MakeSession, emulator: Emulator, proxy: CountingProxy
) -> None:
    store = MemoryStore()
    first = make_session(emulator, store, tokens=seeded(emulator))
    first.proxies = {"http": proxy.url}
    forgotten = PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
    )
    with pytest.raises(ConfigurationError, match="disagree on proxies"):
        first.refresh()
    del forgotten
    gc.collect()
    first.refresh()
    assert proxy.requests == [("POST", emulator.token_url)]
