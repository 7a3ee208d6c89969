"""A local emulator of Pleo's OAuth 2.0 server, for tests and demos.

Start one, point a client at :attr:`Emulator.token_url` and
:attr:`Emulator.api_url`, and it enforces Pleo's token rules over real HTTP::

    from pleo_auth.testing import Emulator

    with Emulator(access_token_lifetime=60) as emu:
        tokens = emu.issue_tokens()
        ...

This package uses the standard library only, so importing it is cheap.
"""

from __future__ import annotations

from ._emulator import Emulator, EmulatorCounters

__all__ = ["Emulator", "EmulatorCounters"]
