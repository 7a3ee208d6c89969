"""The ``pleo-auth`` command: log in, check, refresh and log out, and a local demo.

Settings come from flags or the environment (flags win), read into one
:class:`~pleo_auth.Settings` (:meth:`~pleo_auth.Settings.from_env`):

=====================  ======================  ======================================
flag                   environment             meaning
=====================  ======================  ======================================
``--client-id``        ``PLEO_CLIENT_ID``      your integration's OAuth client id
(avoid the flag)       ``PLEO_CLIENT_SECRET``  its secret; ``--client-secret`` shows
                                               it to every user of ``ps``
``--environment``      ``PLEO_ENVIRONMENT``    ``production`` (default) or ``staging``
``--store``            ``PLEO_STORE``          one grant: ``keyring`` (default),
                                               ``file:PATH`` or
                                               ``redis://HOST:PORT/DB?key=NAME`` or a
                                               database URL with ``?company=ID``; a
                                               grant per company: ``family:file:DIR``,
                                               ``family:redis://...?prefix=P``,
                                               ``family:keyring[:SERVICE]`` or
                                               ``family:`` and a database URL
``--token-url``        ``PLEO_TOKEN_URL``      overrides the token endpoint (emulator);
                                               ``status`` and ``refresh`` default to
                                               the one the stored tokens came from
``--api-url``          ``PLEO_API_URL``        overrides the API base URL
``--authorize-url``    ``PLEO_AUTHORIZE_URL``  overrides /oauth/authorize (default:
                                               beside ``--token-url`` when given)
``--scope`` (login)    ``PLEO_SCOPES``         space-separated scopes to ask for
=====================  ======================  ======================================

With a store family, ``--company`` (a company id or ``urn:pleo:company:<id>``)
names the company whose grant ``refresh`` and ``logout`` work on, and the one a
``login`` must be for (without it, Pleo says which company the login is for);
``status`` lists every company as a table. ``logout --revoke`` also ends the
installation at Pleo; a plain ``logout`` leaves the grant valid there.

A database URL (``postgresql+psycopg://USER@HOST/DB``, ``mysql+pymysql://...``,
``sqlite:///PATH``) keeps grants in a :class:`~pleo_auth.stores.SQLStore` keyed by
the client id. Its password goes in ``PLEO_STORE`` only: ``--store`` refuses one,
and no spec the command prints holds it.

Exit status, the same for every command:

* 0: success.
* 1: a person must log in (``status``: for any company of a family, or for none
  yet; ``refresh``), or the demo saw errors.
* 2: bad usage or settings, a store this machine cannot use (no keyring
  backend) included: fix the command line or the environment.
* 3: any other failure: the login was refused or timed out, the token endpoint
  or the store failed.
* 130: interrupted.

Nothing this command prints contains a token, a code or the client secret.

The package has one module per part: ``_parser`` (the parser, the settings and
the dispatch), ``_commands`` (the commands), ``_loopback`` (the loopback login
server), ``_grants`` (what ``--store`` and ``--company`` name, and a family's
status table), ``_demo`` (the demo and its report), ``_render`` (the one function
that writes a login command) and ``_output`` (everything printed).
"""

from __future__ import annotations

import sys

from ._parser import EXIT_FAILURE, EXIT_LOGIN_NEEDED, EXIT_OK, EXIT_USAGE, build_parser, main
from ._render import login_command

__all__ = [
    "EXIT_FAILURE",
    "EXIT_LOGIN_NEEDED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "login_command",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
