"""The ``pleo-auth`` parser, its settings, and the dispatch to the commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from .. import __version__
from ..errors import ConfigurationError, PleoAuthError, ReauthenticationRequired, StoreUnusable
from ..settings import ENDPOINTS, Settings
from ..stores.family_spec import FAMILY_SPEC_HELP
from ..stores.spec import SPEC_HELP
from ._output import error

__all__ = ["EXIT_FAILURE", "EXIT_LOGIN_NEEDED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_LOGIN_NEEDED = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit status:
  0    success
  1    a person must log in (status, refresh), or the demo saw errors
  2    bad usage or settings, including a store this machine cannot use
       (no keyring backend): fix the command line or environment
  3    any other failure: the login was refused or timed out, the token
       endpoint or the store failed
  130  interrupted"""

#: Each setting's flag, for messages that name where a bad value came from.
FLAGS = {
    "client_id": "--client-id",
    "client_secret": "--client-secret",
    "environment": "--environment",
    "store": "--store",
    "token_url": "--token-url",
    "api_url": "--api-url",
    "authorize_url": "--authorize-url",
    "scopes": "--scope",
    "subject": "--subject",
    "client_auth": "--client-auth",
    "encrypt": "--encrypt",
}


def read_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """The settings from the flags and the environment (flags win; blank is unset).

    Raises:
        ConfigurationError: A setting is invalid; the message names its flag or variable.
    """
    given = {name: getattr(args, name, None) for name in FLAGS}
    given["scopes"] = getattr(args, "scope", None)  # --scope, repeatable
    for name, value in given.items():
        if isinstance(value, str) and name != "client_secret":
            given[name] = value.strip() or None
    if given["client_secret"] is not None:
        error(
            "warning: --client-secret is visible to other users of this machine; "
            "prefer the PLEO_CLIENT_SECRET environment variable"
        )
    return Settings.from_env(env, labels=FLAGS, **given)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return value


def _settings_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flags win over the environment)")
    group.add_argument("--client-id", help="OAuth client id [PLEO_CLIENT_ID]")
    group.add_argument(
        "--client-secret",
        help="client secret; prefer the PLEO_CLIENT_SECRET environment variable",
    )
    group.add_argument(
        "--environment",
        choices=sorted(ENDPOINTS),
        help="Pleo environment [PLEO_ENVIRONMENT, default production]",
    )
    group.add_argument(
        "--store",
        help=f"where tokens live: one grant in {SPEC_HELP}; or a grant per Pleo company "
        f"in {FAMILY_SPEC_HELP} [PLEO_STORE, default keyring]",
    )
    group.add_argument(
        "--token-url",
        help="override the token endpoint [PLEO_TOKEN_URL; default: the one the stored "
        "tokens were issued by, else the environment's]",
    )
    group.add_argument("--api-url", help="override the API base URL [PLEO_API_URL]")
    group.add_argument(
        "--authorize-url",
        help="override /oauth/authorize [PLEO_AUTHORIZE_URL; default: beside --token-url]",
    )
    group.add_argument(
        "--encrypt",
        action="store_true",
        default=None,
        help="the tokens are encrypted at rest, with the keys in PLEO_AUTH_KEYS (or the file "
        "PLEO_AUTH_KEYS_FILE names, or the keyring) [PLEO_ENCRYPT]",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    return common


def _add_login(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    login = commands.add_parser(
        "login",
        parents=[common],
        help="log in through the browser and store the tokens",
        description="Log in through the browser and store the tokens. The store is checked "
        "first, so a store this machine cannot use is found out before the browser step. "
        "With a store family (--store family:...), Pleo is asked which company the login "
        "is for, and the tokens become that company's grant, replacing its previous one; "
        "other companies' grants are not touched.",
    )
    login.add_argument(
        "--company",
        metavar="COMPANY",
        help="the Pleo company this login must be for (its id, or urn:pleo:company:ID): "
        "Pleo pre-selects it, and a login for another company is refused with nothing "
        "saved; default: the company the person picks, as Pleo reports it",
    )
    login.add_argument(
        "--scope",
        action="append",
        help="scope(s) to ask for, space-separated or repeated [PLEO_SCOPES]",
    )
    login.add_argument("--port", type=_port, help="callback port on 127.0.0.1 (default: any free)")
    login.add_argument(
        "--redirect-uri",
        help="the redirect URI registered with Pleo (default http://127.0.0.1:PORT/callback)",
    )
    login.add_argument("--no-browser", action="store_true", help="print the URL; open no browser")
    login.add_argument(
        "--timeout", type=_positive, default=300.0, help="seconds to wait for the login (300)"
    )
    login.add_argument("--subject", help="Pleo's urn_pleo_params_oauth_subject [PLEO_SUBJECT]")
    login.add_argument(
        "--client-auth",
        choices=("basic", "body"),
        help="client authentication [PLEO_CLIENT_AUTH, default basic]",
    )


def _add_token_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    status = commands.add_parser(
        "status",
        parents=[common],
        help="show the stored tokens' expiry; exit 1 when a login is needed",
        description="Show where the tokens live, when the access token expires, and which "
        "token endpoint issued them. Exits 1 when there are none and a person must log in. "
        "With a store family, a table of every company: its access token's expiry, when "
        "it was refreshed, and whether it needs a login; exits 1 when any does, or when "
        "the family holds no company.",
    )
    status.add_argument(
        "--company", metavar="COMPANY", help="show this company's grant only (store family)"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print every grant as one JSON document, for monitoring (schema 1, in the "
        "observability guide); never a token",
    )
    refresh = commands.add_parser(
        "refresh",
        parents=[common],
        help="refresh the tokens now, coordinated with other processes",
        description="Refresh the tokens now, at the token endpoint that issued them, "
        "coordinated with every other process that shares the store (one refresh, "
        "whoever asks). Exits 1 when the grant is dead and a person must log in.",
    )
    refresh.add_argument(
        "--company",
        metavar="COMPANY",
        help="the company whose grant to refresh (required with a store family)",
    )
    logout = commands.add_parser(
        "logout",
        parents=[common],
        help="delete the stored tokens; --revoke also ends the grant at Pleo",
        description="Delete the stored tokens from the store. Without --revoke this is "
        "local only: the grant stays valid at Pleo until it expires, and anyone holding a "
        "copy of its tokens can still use it. --revoke ends the installation at Pleo "
        "first (DELETE /v1/installations/me), which revokes every token of the grant; if "
        "Pleo does not confirm, the tokens are kept and the command exits 3.",
    )
    logout.add_argument(
        "--company",
        metavar="COMPANY",
        help="the company whose grant to remove (required with a store family)",
    )
    rotate = commands.add_parser(
        "rotate-key",
        parents=[common],
        help="re-encrypt every stored grant under the first key of PLEO_AUTH_KEYS",
        description="Re-encrypt the stored grant, or every grant of a store family, under "
        "the first key of PLEO_AUTH_KEYS (or of the key file, or the keyring), each under "
        "its refresh lock, so it runs safely beside processes that refresh. Put the new "
        "key first and keep the old ones after it until this has run everywhere. Tokens "
        "stored unencrypted are encrypted. Exits 3 when a grant could not be rotated.",
    )
    rotate.add_argument(
        "--company", metavar="COMPANY", help="rotate this company's grant only (store family)"
    )
    logout.add_argument(
        "--revoke",
        action="store_true",
        help="also end the installation at Pleo (DELETE /v1/installations/me), revoking "
        "all its tokens; without it the grant stays valid at Pleo until it expires",
    )


def _add_local_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    from ._commands import DEMO_SECRET

    defaults = argparse.ArgumentDefaultsHelpFormatter
    emulator = commands.add_parser(
        "emulator",
        help="run a local emulator of Pleo's OAuth server until Ctrl-C",
        description="Run a local emulator of Pleo's OAuth server and API until Ctrl-C, "
        "then print what it saw.",
        formatter_class=defaults,
    )
    emulator.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (0: any free)")
    emulator.add_argument(
        "--token-lifetime", type=_positive, default=3600.0, help="access token lifetime, seconds"
    )
    emulator.add_argument("--client-id", default="pleo-auth-demo", help="the client id it accepts")
    emulator.add_argument(
        "--client-secret", default=DEMO_SECRET, help="the client secret it accepts"
    )
    emulator.add_argument(
        "-v", "--verbose", action="store_true", help="log each request (method, path, status)"
    )

    demo = commands.add_parser(
        "demo",
        help="log in to a local emulator and hammer it from many processes and threads",
        description="Log in to a local emulator, then call it from many processes and "
        "threads while the tokens rotate, and report what the server saw.",
        formatter_class=defaults,
    )
    demo.add_argument("--duration", type=_positive, default=20.0, help="seconds")
    demo.add_argument("--processes", type=_count, default=4, help="worker processes")
    demo.add_argument("--threads", type=_count, default=8, help="threads per process")
    demo.add_argument(
        "--token-lifetime", type=_positive, default=4.0, help="access token lifetime, seconds"
    )
    demo.add_argument(
        "--refresh-margin", type=_positive, default=1.0, help="refresh this early, seconds"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log to stderr")


def build_parser() -> argparse.ArgumentParser:
    """The ``pleo-auth`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pleo-auth",
        description="Log in to Pleo and keep the tokens fresh for every process that shares them.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _settings_flags()
    _add_login(commands, common)
    _add_token_commands(commands, common)
    _add_local_commands(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the ``pleo-auth`` command.

    Args:
        argv: The arguments, without the program name; defaults to ``sys.argv[1:]``.
        env: The environment to read settings from; defaults to ``os.environ``.
        out: Where to write; defaults to ``sys.stdout``.

    Returns:
        The exit status (see :data:`EXIT_CODES`).
    """
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(
            args, os.environ if env is None else env, sys.stdout if out is None else out
        )
    except StoreUnusable as exc:
        error(f"error: {exc.reason}.", *([exc.fix] if exc.fix else []))
        return EXIT_USAGE
    except ConfigurationError as exc:
        error(f"error: {exc}")
        return EXIT_USAGE
    except ReauthenticationRequired as exc:
        error(str(exc))
        return EXIT_LOGIN_NEEDED
    except PleoAuthError as exc:
        error(f"{args.command} failed: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from . import _commands, _demo, _rotate
    from ._grants import read_grants

    if args.command == "emulator":
        return _commands.emulator(args, out)
    if args.command == "demo":
        return _demo.demo(args, out)
    grants, args, env = read_grants(args, env)  # --company is checked before anything
    settings = read_settings(args, env)
    command = {
        "login": _commands.login,
        "status": _commands.status,
        "refresh": _commands.refresh,
        "logout": _commands.logout,
        "rotate-key": _rotate.rotate_key,
    }[args.command]
    return command(args, settings, out, grants)
