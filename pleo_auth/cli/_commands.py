"""The commands: ``login``, ``status``, ``refresh``, ``logout`` and ``emulator``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import threading
import webbrowser
from typing import TYPE_CHECKING, TextIO

from .._clock import SYSTEM_CLOCK
from .._urls import same_endpoint
from ..errors import (
    ConfigurationError,
    PleoAuthError,
    ReauthenticationRequired,
    RefreshError,
    StoreUnusable,
    TokensUnreadable,
)
from ..flow import AuthorizationFlow
from ..session import PleoSession
from ..settings import ENDPOINTS, Settings
from ..stores.base import TokenStore
from ..tokens import TokenSet
from ._loopback import CallbackServer, callback_address, login_through
from ._output import error, say
from ._render import login_command

if TYPE_CHECKING:
    from ..testing import Emulator

__all__ = ["emulator", "login", "logout", "refresh", "status"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_FAILURE = 3

#: The emulator's public, well-known demo secret: printing it reveals nothing.
DEMO_SECRET = "demo-secret"


# -- time, as a person reads it -------------------------------------------------------


def when(expires_at: float, now: float) -> str:
    """``2025-01-31 14:00:00 CET (in 12 min)``: a moment, and how far it is."""
    moment = datetime.datetime.fromtimestamp(expires_at).astimezone()
    left = expires_at - now
    span = _span(abs(left))
    relative = f"in {span}" if left >= 0 else f"{span} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S %Z} ({relative})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _describe_tokens(tokens: TokenSet, out: TextIO) -> None:
    say(out, f"  scope: {tokens.scope or '(none reported)'}")
    say(out, f"  access token expires: {when(tokens.expires_at, SYSTEM_CLOCK.time())}")
    if tokens.token_url is not None:
        say(out, f"  issued by: {tokens.token_url} (API {tokens.api_url or 'not recorded'})")


# -- the commands that use settings ------------------------------------------------------

#: What the command adds where the core says only that a client id is missing.
_CLIENT_ID_HELP = "give --client-id or set PLEO_CLIENT_ID"


def require_client_id(settings: Settings) -> str:
    """The client id, or a usage error naming this command's flag and variable."""
    if not settings.client_id:
        raise ConfigurationError(f"no client id: {_CLIENT_ID_HELP}")
    return settings.client_id


def build_store(settings: Settings) -> TokenStore:
    """The store the settings name; a keyring without a client id names the flag."""
    try:
        return settings.build_store()
    except ConfigurationError as exc:
        if settings.client_id or isinstance(exc, StoreUnusable):
            raise
        raise ConfigurationError(f"{exc}: {_CLIENT_ID_HELP}") from None


def login(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Log in through a browser and store the tokens."""
    require_client_id(settings)
    store = build_store(settings)
    # Before any URL is shown: a store that refuses (no keyring on a headless box,
    # a token file others can read) must not be found out after the person logged in.
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
            store=store,
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

        tokens = login_through(flow, server, present, timeout=args.timeout)
    say(out, f"Logged in. Stored the tokens in {store.describe()}.")
    _describe_tokens(tokens, out)
    return EXIT_OK


def status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Show the stored tokens; 1 when a person must log in."""
    store = build_store(settings)
    say(out, f"Store: {store.describe()}")
    tokens = store.load()
    if tokens is None:
        say(out, "Tokens: none. A person must log in:")
        say(out, f"  {login_command(settings.login_hint(store))}")
        return EXIT_LOGIN_NEEDED
    say(out, f"Tokens: present (fingerprint {tokens.fingerprint})")
    _describe_tokens(tokens, out)
    if tokens.expires_in() <= 0:
        say(out, "  (expired: the next use refreshes it with the stored refresh token)")
    return EXIT_OK


def refresh(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Refresh now, coordinated with every other process over the store."""
    require_client_id(settings)
    store = build_store(settings)
    stored = store.load()
    if stored is not None:
        settings = issuing_settings(settings, stored, store)
    session = PleoSession(settings=settings, store=store)
    try:
        tokens = session.refresh()
    except ReauthenticationRequired as exc:
        error(exc.reason, f"A person must log in: {login_command(settings.login_hint(store))}")
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


def logout(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Delete the stored tokens."""
    store = build_store(settings)
    try:
        had_tokens = store.load() is not None
    except PleoAuthError:
        had_tokens = True  # unreadable: clear it all the same
    store.clear()
    if had_tokens:
        say(out, f"Logged out: removed the tokens from {store.describe()}.")
    else:
        say(out, f"No tokens in {store.describe()}; nothing to remove.")
    return EXIT_OK


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
