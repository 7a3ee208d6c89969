"""The commands: ``login``, ``status``, ``refresh``, ``logout`` and ``emulator``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import threading
import webbrowser
from typing import TYPE_CHECKING, TextIO

import requests

from .._clock import SYSTEM_CLOCK
from .._urls import same_endpoint
from ..errors import (
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
    RevocationError,
    TokensUnreadable,
)
from ..flow import AuthorizationFlow
from ..session import PleoSession
from ..settings import ENDPOINTS, Settings
from ..stores.base import TokenStore
from ..tokens import TokenSet
from ._grants import Grants, build_store, family_status, require_client_id
from ._loopback import CallbackServer, callback_address, login_through
from ._output import error, say, when

if TYPE_CHECKING:
    from ..testing import Emulator

__all__ = ["emulator", "login", "logout", "refresh", "status"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_FAILURE = 3

#: The emulator's public, well-known demo secret: printing it reveals nothing.
DEMO_SECRET = "demo-secret"

#: How long logout waits for, and may hold, the grant's refresh lock: as a login.
_LOGOUT_LOCK_TIMEOUT = 60.0


def _describe_tokens(tokens: TokenSet, out: TextIO) -> None:
    say(out, f"  scope: {tokens.scope or '(none reported)'}")
    say(out, f"  access token expires: {when(tokens.expires_at, SYSTEM_CLOCK.time())}")
    if tokens.token_url is not None:
        say(out, f"  issued by: {tokens.token_url} (API {tokens.api_url or 'not recorded'})")


# -- the commands that use settings ------------------------------------------------------


def login(args: argparse.Namespace, settings: Settings, out: TextIO, grants: Grants) -> int:
    """Log in through a browser and store the tokens: in the one store, or as the
    grant of the company Pleo names (which must be ``--company``'s, if given)."""
    require_client_id(settings)
    family = grants.family
    if family is not None:
        # Lists the family: a directory others can write, or a Redis that does not
        # answer, is found out before the person logs in.
        family.companies()
    store = family.store(grants.company) if family and grants.company else None
    if family is None:
        store = build_store(settings)
    # Before any URL is shown: a store that refuses (no keyring on a headless box,
    # a token file others can read) must not be found out after the person logged in.
    if store is not None:
        try:
            store.load()
        except TokensUnreadable:
            # Not tokens (a foreign or corrupt document): the login replaces them, as
            # AuthorizationFlow does. Anything else (no keyring, an insecure file) stops here.
            say(out, f"Note: {store.describe()} holds no pleo-auth tokens; logging in replaces it.")
    host, port, path = callback_address(args.redirect_uri, args.port)
    with CallbackServer(host=host, port=port, path=path) as server:
        flow = AuthorizationFlow(
            settings=settings,
            redirect_uri=args.redirect_uri or server.redirect_uri,
            store=family if family is not None else store,
        )

        def present(url: str) -> None:
            if args.no_browser:
                say(out, "Open this URL in a browser to authorise pleo-auth with Pleo:")
                say(out, f"  {url}")
            else:
                say(out, "Opening your browser to authorise pleo-auth with Pleo.")
                say(out, "If it does not open, visit this URL:")
                say(out, f"  {url}")
                if not webbrowser.open(url):
                    say(out, "(No browser could be opened: visit the URL yourself.)")
            say(out, f"Waiting for the callback on {server.redirect_uri} ...")

        done = login_through(flow, server, present, timeout=args.timeout, company=grants.company)
    company = f" to {done.company}" if done.company is not None else ""
    say(out, f"Logged in{company}. Stored the tokens in {done.saved_to}.")
    _describe_tokens(done.tokens, out)
    return EXIT_OK


def status(args: argparse.Namespace, settings: Settings, out: TextIO, grants: Grants) -> int:
    """Show the stored tokens (of every company, as a table, for a family); 1 when
    a person must log in."""
    if getattr(args, "json", False):
        from ._status_json import status_json

        return status_json(settings, grants, out)
    if grants.family is not None:
        return family_status(settings, grants, out)
    store = grants.store(settings, "status")
    say(out, f"Store: {store.describe()}")
    tokens = store.load()
    if tokens is None:
        say(out, "Tokens: none. A person must log in:")
        say(out, f"  {grants.login_command(settings, store)}")
        return EXIT_LOGIN_NEEDED
    say(out, f"Tokens: present (fingerprint {tokens.fingerprint})")
    _describe_tokens(tokens, out)
    if tokens.expires_in() <= 0:
        say(out, "  (expired: the next use refreshes it with the stored refresh token)")
    return EXIT_OK


def refresh(args: argparse.Namespace, settings: Settings, out: TextIO, grants: Grants) -> int:
    """Refresh now, coordinated with every other process over the store."""
    require_client_id(settings)
    store = grants.store(settings, "refresh")
    stored = store.load()
    if stored is not None:
        settings = issuing_settings(settings, stored, store)
    session = PleoSession(settings=settings, store=store)
    try:
        tokens = session.refresh()
    except ReauthenticationRequired as exc:
        error(exc.reason, f"A person must log in: {grants.login_command(settings, store)}")
        return EXIT_LOGIN_NEEDED
    except RefreshError as exc:
        # Name the endpoint: a forgotten --token-url shows up as the wrong host here.
        error(f"refresh failed: {exc}", f"token endpoint tried: {session.token_url}")
        return EXIT_FAILURE
    finally:
        session.close()
    say(out, f"Refreshed. Stored the new tokens in {store.describe()}.")
    _describe_tokens(tokens, out)
    return EXIT_OK


def issuing_settings(settings: Settings, tokens: TokenSet, store: TokenStore) -> Settings:
    """``settings`` pointed at the token endpoint and API that issued ``tokens``.

    Tokens a login recorded their issuer in need no ``--token-url`` or
    ``--api-url`` later. Only the URLs the person named are compared with the
    tokens' (a flag, a ``PLEO_*`` variable, or a ``--environment`` other than
    the default): naming the tokens' own token endpoint alone is no mismatch.
    A named URL that differs is refused: a refresh sent there would fail, or
    spend the tokens of the wrong grant.

    Raises:
        ConfigurationError: ``settings`` name an issuer other than the tokens'.
    """
    if tokens.token_url is None:
        return settings  # saved by 0.1, or by a store of one's own
    environment = ENDPOINTS[settings.environment]
    named_env = settings.environment != "production"  # the default cannot be told apart
    issuer = {"token_url": tokens.token_url, "api_url": tokens.api_url}
    for name, what in (("token_url", "token endpoint"), ("api_url", "API")):
        named = getattr(settings, name) or (getattr(environment, name) if named_env else None)
        recorded = issuer[name]
        if named is not None and recorded is not None and not same_endpoint(named, recorded):
            raise ConfigurationError(
                f"the tokens in {store.describe()} were issued by {tokens.token_url} for the "
                f"API at {tokens.api_url or '(not recorded)'}, but the settings name {named} "
                f"as the {what}: drop --token-url, --api-url and --environment (and their "
                "PLEO_* variables) to use the tokens' own, or log in again"
            )
    return settings.evolve(
        token_url=tokens.token_url,
        api_url=settings.api_url or tokens.api_url or settings.endpoints.api_url,
    )


def logout(args: argparse.Namespace, settings: Settings, out: TextIO, grants: Grants) -> int:
    """Delete the stored tokens; with ``--revoke``, end the installation at Pleo first."""
    store = grants.store(settings, "logout")
    if args.revoke:
        if not end_installation(settings, store, out):
            return EXIT_OK
    else:
        try:
            had_tokens = store.load() is not None
        except PleoAuthError:
            had_tokens = True  # unreadable: clear it all the same
        if not had_tokens:
            say(out, f"No tokens in {store.describe()}; nothing to remove.")
            return EXIT_OK
    # Under the refresh lock, as Integration.remove: a refresh under way in the app
    # saves its pair first and goes with it, instead of writing it back afterwards.
    with store.lock(timeout=_LOGOUT_LOCK_TIMEOUT, lease=_LOGOUT_LOCK_TIMEOUT):
        if grants.family is not None and grants.company is not None:
            grants.family.remove(grants.company)
        else:
            store.clear()
    say(out, f"Logged out: removed the tokens from {store.describe()}.")
    if not args.revoke:
        say(out, "The grant stays valid at Pleo until it expires: `logout --revoke` ends it.")
    return EXIT_OK


def end_installation(settings: Settings, store: TokenStore, out: TextIO) -> bool:
    """End the installation of ``store``'s grant at Pleo (``DELETE
    /v1/installations/me``, which revokes all its tokens). False when there was
    nothing to end: no tokens, or a grant already dead (and so cleared).

    Raises:
        RevocationError: Pleo did not confirm; the tokens are kept.
    """
    require_client_id(settings)
    stored = store.load()
    if stored is None:
        say(out, f"No tokens in {store.describe()}; nothing to end at Pleo or to remove.")
        return False
    settings = issuing_settings(settings, stored, store)
    session = PleoSession(settings=settings, store=store)
    kept = f"the tokens are kept in {store.describe()}"
    try:
        response = session.delete("/v1/installations/me")
    except ReauthenticationRequired as exc:
        say(out, f"{exc.reason} Nothing is left to end at Pleo; the tokens were removed.")
        return False
    except PleoAuthError as exc:
        raise RevocationError(f"could not end the installation at Pleo: {exc}; {kept}") from exc
    except requests.RequestException as exc:
        raise RevocationError(
            f"could not reach Pleo to end the installation: {type(exc).__name__}; {kept}"
        ) from exc
    finally:
        session.close()
    if response.status_code not in (200, 202, 204, 404):
        raise RevocationError(
            f"Pleo answered HTTP {response.status_code} to ending the installation; {kept}"
        )
    say(out, "Ended the installation at Pleo: every token of the grant is revoked.")
    return True


# -- the emulator ------------------------------------------------------------------


def emulator(args: argparse.Namespace, out: TextIO) -> int:
    """Run a local emulator of Pleo's OAuth server until Ctrl-C, then print its counts."""
    from ..testing import Emulator

    if args.verbose:
        # The emulator logs each request's method, path (never its query) and status.
        logging.getLogger("pleo_auth.testing").setLevel(logging.DEBUG)
    server = Emulator(
        access_token_lifetime=args.token_lifetime,
        client_id=args.client_id,
        client_secret=args.client_secret,
        port=args.port,
    )
    # The public demo secret is shown; a secret someone chose is never echoed.
    demo = args.client_secret == DEMO_SECRET
    shown_secret = DEMO_SECRET if demo else "(the value given with --client-secret)"
    secret_env = DEMO_SECRET if demo else '"$SECRET"'
    # Ctrl-C stops it, even one that lands before the wait began.
    with contextlib.suppress(KeyboardInterrupt):
        _serve(server, out, args, shown_secret, secret_env)
    say(out, "Stopped. What the emulator saw:")
    for name, count in dataclasses.asdict(server.counters).items():
        say(out, f"  {name.replace('_', ' ')}: {count}")
    return EXIT_OK


def _serve(
    emulator: Emulator, out: TextIO, args: argparse.Namespace, shown_secret: str, secret_env: str
) -> None:
    with emulator:
        say(out, f"Pleo OAuth emulator running at {emulator.url}")
        say(out, f"  authorize URL: {emulator.authorize_url}")
        say(out, f"  token URL:     {emulator.token_url}")
        say(out, f"  API URL:       {emulator.api_url}")
        say(out, f"  client id:     {emulator.client_id}")
        say(out, f"  client secret: {shown_secret}  (the emulator's own credentials)")
        say(out, f"  access tokens live {args.token_lifetime:g} s")
        say(out, "Log in to it from another terminal:")
        say(
            out,
            f"  PLEO_CLIENT_ID={emulator.client_id} PLEO_CLIENT_SECRET={secret_env} "
            f"pleo-auth login --token-url {emulator.token_url} --api-url {emulator.api_url} "
            "--store file:/tmp/pleo-emulator-tokens.json",
        )
        say(out, "Press Ctrl-C to stop.")
        threading.Event().wait()
